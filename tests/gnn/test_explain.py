import dgl
import numpy as np
import pytest
import torch
from gnn_synth import make_graph

from nucleograph.errors import InputError, ModelError
from nucleograph.gnn.data import to_dgl
from nucleograph.gnn.explain import Precision, attention_scores, occlusion, occlusion_naive
from nucleograph.gnn.models import MODEL_NAMES, build_model
from nucleograph.gnn.occlusion.cache import PoolingSums
from nucleograph.gnn.occlusion.pooling import pool_products, redo_float64


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
def test_fast_occlusion_precision_paths_equal_naive(scale, paths_used, rng):
    """On a graph much larger than its balls the pooling corrections run as float32 products, in
    float64 for occlusions that remove much of a cluster's mass, and where the removed nuclei held
    virtually all of it (peaked assignments, as trained models have) the occlusion's pooling is summed
    afresh. Every path matches the naive loop."""
    m = _model("rsf", rng)
    with torch.no_grad():
        m.pool1.embed.weight.mul_(scale)  # sharper assignments; at 40x single nuclei hold 1 - 1e-13
    g = make_graph(400, clustered=False, rng=rng)
    paths = {"float64": 0, "afresh": 0}

    class Observed(Precision):  # the default tiers, counting the occlusions that leave float32
        def tiers(self, state):
            heavy, afresh = super().tiers(state)
            paths["float64"] += int(heavy.any(1).sum())
            paths["afresh"] += int(afresh.any(1).sum())
            return heavy, afresh

    fast = occlusion(m, g, hops=1, batch_size=64, precision=Observed())
    assert {k for k, v in paths.items() if v} == paths_used
    assert paths["float64"] + paths["afresh"] < g.num_nodes() / 2  # float32 stays the rule
    naive = occlusion_naive(m, g, hops=1)
    assert np.abs(naive - fast).max() <= 1e-5


@pytest.mark.parametrize("name", ["rsf", "rsf-edge"])
def test_float64_cluster_redo_writes_exactly_its_rows_and_columns(name, rng):
    """The float64 redo of a few clusters per occlusion gives, for each of them, the row of E'^T H' and
    the row and column of E'^T A E' that float64 products over all clusters give, and touches no other
    entry."""
    m = _model(name, rng)
    g = make_graph(120, clustered=True, rng=rng)
    checked = []

    class Checked(Precision):  # float32_bound=-1 below: every batch redoes its clusters in float64
        def tiers(self, state):
            b, (K, L, _) = state.change.batch.b, state.sums.adj.shape[1:]
            f2 = state.sums.num.shape[2]
            image = state.change.image
            prod, _ = pool_products(state.change, torch.float64)  # float64, every cluster
            num_ref = image.totals.num + prod[:, :, :f2] + state.extra  # E'^T dH: float32 products kept
            q = prod[:, :, f2:].reshape(b, K, L, K)
            t_ref = image.totals.adj + q + q.permute(0, 3, 2, 1)
            mask = np.random.default_rng(len(checked)).random((b, K)) < 0.2  # some occlusions, some clusters
            mask[0] = False
            num_x, t_x = torch.full_like(state.sums.num, torch.nan), torch.full_like(state.sums.adj, torch.nan)
            redo_float64(state, mask, PoolingSums(num_x, state.sums.den, t_x))
            o, k = np.nonzero(mask)
            torch.testing.assert_close(num_x[o, k], num_ref[o, k], rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(t_x[o, k], t_ref[o, k], rtol=1e-9, atol=1e-12)  # rows
            torch.testing.assert_close(t_x[o, :, :, k], t_ref[o, :, :, k], rtol=1e-9, atol=1e-12)  # columns
            row_or_col = torch.from_numpy(mask[:, :, None, None] | mask[:, None, None, :]).expand_as(t_x)
            assert bool(t_x[row_or_col].isfinite().all()) and bool(t_x[~row_or_col].isnan().all())
            assert bool(num_x[torch.from_numpy(~mask)].isnan().all())
            checked.append(int(mask.sum()))
            return super().tiers(state)

    occlusion(m, g, hops=1, batch_size=32, threads=1, precision=Checked(float32_bound=-1.0))
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


def test_fast_occlusion_is_finite_when_an_occlusion_lifts_a_cluster_far_above_the_shift():
    """Removing a nucleus can raise a cluster's assignment logits far above the image's softmax shift
    (E' ~ 1e26 here, node 248): the float32 corrections overflow while the rounding bound stays small.
    Those clusters must be summed afresh: every score finite and equal to the naive loop (was NaN)."""
    rng = np.random.default_rng(1)
    m = _model("rsf", rng)
    with torch.no_grad():
        m.pool1.embed.weight.mul_(15.0)
    g = make_graph(300, clustered=True, rng=rng)
    fast = occlusion(m, g, hops=1, batch_size=32, threads=1)
    naive = occlusion_naive(m, g, hops=1)
    assert np.isfinite(fast).all()
    assert np.abs(naive - fast).max() <= 1e-5
