import dgl
import numpy as np
import pytest
import torch
from gnn_synth import make_graph

from nucleograph.errors import InputError, ModelError
from nucleograph.gnn.data import to_dgl
from nucleograph.gnn.explain import attention_scores, occlusion, occlusion_naive
from nucleograph.gnn.models import MODEL_NAMES, build_model


def _model(name, rng):
    torch.manual_seed(0)
    m = (
        build_model(
            name, in_feats=4, edge_channels=2, conv_feats=(16, 16, 16), pool_sizes=(8, 4), fc_feats=(32, 16)
        )
        if name != "mlp"
        else build_model(name, in_feats=4, edge_channels=2)
    )
    m.train()  # non-trivial batch-norm running statistics
    with torch.no_grad():
        for _ in range(3):
            m(dgl.batch([make_graph(30, clustered=True, rng=rng), make_graph(30, clustered=False, rng=rng)]))
    return m.eval()


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("hops", [1, 2, 3])
def test_fast_occlusion_equals_naive(name, hops, rng):
    m = _model(name, rng)
    g = make_graph(24, clustered=True, rng=rng)
    naive = occlusion_naive(m, g, hops=hops)
    fast = occlusion(m, g, hops=hops, batch_size=16)
    assert naive.shape == (24,)
    assert np.abs(naive - fast).max() <= 1e-5
    assert not m.training


@pytest.mark.parametrize("name", ["rsf", "rsf-edge"])
def test_occlusion_edge_cases(name, rng):
    m = _model(name, rng)
    graphs = [
        to_dgl(
            rng.normal(size=(3, 4)), [0, 1], [1, 2], np.array([[0.9, 0.8], [0.5, 0.3]])
        ),  # emptied by hops>=1
        to_dgl(rng.normal(size=(4, 4)), [], [], np.zeros((0, 2))),  # isolated nuclei
        to_dgl(rng.normal(size=(6, 4)), [0, 1, 3], [1, 2, 4], np.full((3, 2), 0.5)),  # edges vanish
    ]
    for g in graphs:
        for hops in (0, 1, 3):
            assert np.abs(occlusion_naive(m, g, hops=hops) - occlusion(m, g, hops=hops)).max() <= 1e-5
    # a graph fully removed scores against the uniform prior
    p0 = torch.softmax(m(graphs[0]), 1)[0].max().item()
    assert occlusion(m, graphs[0], hops=2)[1] == pytest.approx(p0 - 0.5, abs=1e-6)


def test_occlusion_target_and_errors(rng):
    m = _model("rsf", rng)
    g = make_graph(20, clustered=False, rng=rng)
    s0, s1 = occlusion(m, g, target=0), occlusion(m, g, target=1)
    assert np.allclose(s0, -s1, atol=1e-6)  # two classes: probabilities sum to one
    with pytest.raises(InputError, match="out of range"):
        occlusion(m, g, target=5)
    with pytest.raises(InputError, match="one image"):
        occlusion(m, dgl.batch([g, g]))


def test_attention_scores(rng):
    m = _model("rsf-attention", rng)
    g = make_graph(25, clustered=True, rng=rng)
    s = attention_scores(m, g)
    assert s.shape == (25,) and ((s > 0) & (s < 1)).all()
    with pytest.raises(ModelError, match="rsf-attention"):
        attention_scores(_model("rsf", rng), g)


@pytest.mark.parametrize(("scale", "paths_used"), [(1.0, set()), (15.0, {"float64"}), (40.0, {"float64", "afresh"})])
def test_fast_occlusion_precision_paths_equal_naive(scale, paths_used, rng, monkeypatch):
    """On a graph much larger than its balls the pooling corrections run as float32 products, in
    float64 for occlusions that remove much of a cluster's mass, and where the removed nuclei held
    virtually all of it (peaked assignments, as trained models have) the occlusion's pooling is summed
    afresh. Every path matches the naive loop."""
    import nucleograph.gnn.explain as ex

    m = _model("rsf", rng)
    with torch.no_grad():
        m.pool1.embed.weight.mul_(scale)  # sharper assignments; at 40x single nuclei hold 1 - 1e-13
    g = make_graph(400, clustered=False, rng=rng)
    paths = {"float64": 0, "afresh": 0}
    heavy_clusters, direct = ex._heavy_clusters, ex._afresh_clusters

    def spy_heavy(r, heavy, *args, **kw):
        paths["float64"] += int(heavy.any(1).sum())
        return heavy_clusters(r, heavy, *args, **kw)

    def spy_direct(r, afresh, *args, **kw):
        paths["afresh"] += int(afresh.any(1).sum())
        return direct(r, afresh, *args, **kw)

    monkeypatch.setattr(ex, "_heavy_clusters", spy_heavy)
    monkeypatch.setattr(ex, "_afresh_clusters", spy_direct)
    fast = occlusion(m, g, hops=1, batch_size=64)
    assert {k for k, v in paths.items() if v} == paths_used
    assert paths["float64"] + paths["afresh"] < g.num_nodes() / 2  # float32 stays the rule
    naive = occlusion_naive(m, g, hops=1)
    assert np.abs(naive - fast).max() <= 1e-5


@pytest.mark.parametrize("name", ["rsf", "rsf-edge"])
def test_float64_cluster_redo_writes_exactly_its_rows_and_columns(name, rng, monkeypatch):
    """The float64 redo of a few clusters per occlusion gives, for each of them, the row of E'^T H' and
    the row and column of E'^T A E' that float64 products over all clusters give, and touches no other
    entry."""
    import nucleograph.gnn.explain as ex

    m = _model(name, rng)
    g = make_graph(120, clustered=True, rng=rng)
    heavy_clusters, products, checked, last = ex._heavy_clusters, ex._pool_products, [], {}

    def spy_products(r, table, f2, de, e_new, dh):
        last["args"] = (e_new, dh)
        return products(r, table, f2, de, e_new, dh)

    def check(r, heavy, table64, f2, de, num_extra, num, t_full, num_o, t_o):
        b, K, L = r.b, t_full.shape[0], t_full.shape[1]
        prod, _ = products(r, table64, f2, de, *last["args"])  # float64, every cluster
        num_ref = num + prod[:, :, :f2] + num_extra  # E'^T dH: float32 products kept (remaining mass only)
        q = prod[:, :, f2:].reshape(b, K, L, K)
        t_ref = t_full + q + q.permute(0, 3, 2, 1)
        mask = np.random.default_rng(len(checked)).random((b, K)) < 0.2  # some occlusions, some clusters
        mask[0] = False
        num_x, t_x = torch.full_like(num_o, torch.nan), torch.full_like(t_o, torch.nan)
        heavy_clusters(r, mask, table64, f2, de, num_extra, num, t_full, num_x, t_x)
        o, k = np.nonzero(mask)
        torch.testing.assert_close(num_x[o, k], num_ref[o, k], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(t_x[o, k], t_ref[o, k], rtol=1e-9, atol=1e-12)  # rows
        torch.testing.assert_close(t_x[o, :, :, k], t_ref[o, :, :, k], rtol=1e-9, atol=1e-12)  # columns
        row_or_col = torch.from_numpy(mask[:, :, None, None] | mask[:, None, None, :]).expand_as(t_x)
        assert bool(t_x[row_or_col].isfinite().all()) and bool(t_x[~row_or_col].isnan().all())
        assert bool(num_x[torch.from_numpy(~mask)].isnan().all())
        checked.append(int(mask.sum()))
        return heavy_clusters(r, heavy, table64, f2, de, num_extra, num, t_full, num_o, t_o)

    monkeypatch.setattr(ex, "_pool_products", spy_products)
    monkeypatch.setattr(ex, "_FLOAT32_BOUND", -1.0)  # call the redo in every batch
    monkeypatch.setattr(ex, "_heavy_clusters", check)
    occlusion(m, g, hops=1, batch_size=32, threads=1)  # one batch at a time: `last` is its own
    assert len(checked) == 4 and min(checked) > 0


@pytest.mark.parametrize("name", ["rsf", "rsf-attention"])
def test_fast_occlusion_on_several_threads_equals_one_thread(name, rng):
    m = _model(name, rng)
    g = make_graph(150, clustered=True, rng=rng)
    before = torch.get_num_threads()
    one = occlusion(m, g, batch_size=16, threads=1)
    several = occlusion(m, g, batch_size=16, threads=3)
    assert torch.get_num_threads() == before and torch.is_grad_enabled()
    np.testing.assert_allclose(several, one, rtol=0, atol=1e-7)  # float32 rounding of other thread counts
    with pytest.raises(InputError, match="threads"):
        occlusion(m, g, threads=0)
