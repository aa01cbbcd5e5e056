import gc
import weakref

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
from nucleograph.gnn.occlusion.reference import hop_ball
from nucleograph.gnn.occlusion.scripted import scripted

OUTPUTS = ["logodds", "prob"]


def _model(name, rng, n_classes=2):
    torch.manual_seed(0)
    m = (
        build_model(
            name, in_feats=4, edge_channels=2, n_classes=n_classes, conv_feats=(16, 16, 16), pool_sizes=(8, 4),
            fc_feats=(32, 16)
        )
        if name not in ("mlp", "graphstats")
        else build_model(name, in_feats=4, edge_channels=2, n_classes=n_classes)
    )
    m.train()  # non-trivial batch-norm running statistics
    with torch.no_grad():
        for _ in range(3):
            m(dgl.batch([make_graph(30, clustered=True, rng=rng), make_graph(30, clustered=False, rng=rng)]))
    return m.eval()


def _tolerance(m, g, output: str) -> float:
    """How far the fast path may be from the naive loop.

    Probability drops: 1e-5, as always (a probability is bounded). Log-odds drops: 1e-5 per unit of the
    whole graph's largest |logit| (at least 1). Both paths compute the logits in float32, in different
    orders (closed-form pooling corrections, batched heads), so they differ by float32 rounding, which is
    relative to the logits' size and never cancels in a log-odds (observed: 2e-7 at |z| < 1, 1e-5 at
    |z| = 50 with a confident head). At |z| <= 1 this is 4x stricter than the probability bound, as
    |dp| = p (1 - p) |d logodds| <= |d logodds| / 4.
    """
    if output == "prob":
        return 1e-5
    with torch.no_grad():
        return 1e-5 * max(1.0, float(m(g).abs().max()))


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("hops", [1, 2, 3])
def test_fast_occlusion_equals_naive(name, hops, output, rng):
    m = _model(name, rng)
    g = make_graph(24, clustered=True, rng=rng)
    naive = occlusion_naive(m, g, hops=hops, output=output)
    fast = occlusion(m, g, hops=hops, batch_size=16, output=output)
    assert naive.shape == (24,)
    assert np.abs(naive - fast).max() <= _tolerance(m, g, output)
    assert not m.training


def test_default_output_is_logodds_from_the_logits(rng):
    """Default: the drop of the class's log-odds z_c - logsumexp_{j != c} z_j (three classes), which for
    the naive loop is the direct formula on each occluded graph's logits."""
    m = _model("rsf", rng, n_classes=3)
    g = make_graph(20, clustered=True, rng=rng)
    with torch.no_grad():
        z = m(g)[0].double()
        c = int(z.argmax())
        z_i = m(dgl.node_subgraph(g, torch.arange(1, 20, dtype=g.idtype)))[0].double()  # nucleus 0 removed

    def logodds(v):
        return float(v[c] - torch.logsumexp(torch.cat([v[:c], v[c + 1:]]), 0))

    naive = occlusion_naive(m, g, hops=0)
    assert naive[0] == pytest.approx(logodds(z) - logodds(z_i), abs=1e-12)
    np.testing.assert_array_equal(occlusion(m, g, hops=0), occlusion(m, g, hops=0, output="logodds"))
    assert np.abs(occlusion(m, g, hops=0) - naive).max() <= _tolerance(m, g, "logodds")
    with pytest.raises(InputError, match="logodds, prob"):
        occlusion(m, g, output="logit")
    with pytest.raises(InputError, match="logodds, prob"):
        occlusion_naive(m, g, output="probability")


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("name", ["rsf", "mlp"])
def test_an_emptied_graph_scores_against_the_uniform_prior(name, n_classes, rng):
    """Every path gives a graph emptied by the removal the uniform prior 1/C: log-odds log(1/(C-1))."""
    m = _model(name, rng, n_classes=n_classes)
    g = to_dgl(rng.normal(size=(3, 4)), [0, 1], [1, 2], np.array([[0.9, 0.8], [0.5, 0.3]]))  # 0 - 1 - 2
    with torch.no_grad():
        z = m(g)[0].double()
    p = torch.softmax(z, 0)
    c = int(z.argmax())
    for output, prior, v0 in (("prob", 1 / n_classes, float(p[c])),
                              ("logodds", np.log(1 / (n_classes - 1)), float(torch.log(p[c] / (1 - p[c]))))):
        naive = occlusion_naive(m, g, hops=2, output=output)
        fast = occlusion(m, g, hops=2, output=output)
        assert np.allclose(naive, v0 - prior, atol=1e-9) and np.allclose(fast, v0 - prior, atol=1e-9), output


@pytest.mark.parametrize("name", ["rsf", "rsf-attention"])
def test_logodds_do_not_saturate_where_probabilities_do(name, rng):
    """A confidently classified graph (logits ~50 apart): p_c rounds to exactly 1 with or without any one
    nucleus, so the probability drops are all 0, ties that carry no ranking. The log-odds drops of the
    same occlusions are resolved (under 1% ties, the issue's target), and the fast path still equals the
    naive loop. Nuclei whose occlusions remove the same nuclei (equal closed neighbourhoods) have equal
    scores by definition: each such group counts once."""
    m = _model(name, rng)
    with torch.no_grad():  # a confident head, as after training on an easy cohort
        m.fc3.weight.mul_(300.0)
        m.fc3.bias.mul_(300.0)
    g = make_graph(120, clustered=True, rng=rng)
    with torch.no_grad():
        z = m(g)[0]
    assert float(z.max() - z.min()) > 40

    balls = {}  # one nucleus per distinct set of removed nuclei
    for i in range(g.num_nodes()):
        balls.setdefault(frozenset(hop_ball(g, i, 1).tolist()), i)
    distinct = np.array(sorted(balls.values()))
    assert distinct.size > 90

    def tied(s):  # the share of distinct occlusions whose score equals another one's
        _, inverse, counts = np.unique(s[distinct], return_inverse=True, return_counts=True)
        return float(np.mean(counts[inverse] > 1))

    prob, logodds = occlusion(m, g, output="prob"), occlusion(m, g)
    assert np.mean(np.abs(prob) < 1e-7) > 0.9 and tied(prob) > 0.9
    assert tied(logodds) < 0.01 and np.median(np.abs(logodds)) > 1e-2
    assert np.abs(logodds - occlusion_naive(m, g)).max() <= _tolerance(m, g, "logodds")


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("name", ["rsf", "rsf-edge"])
def test_occlusion_edge_cases(name, output, rng):
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
            naive, fast = occlusion_naive(m, g, hops=hops, output=output), occlusion(m, g, hops=hops, output=output)
            assert np.abs(naive - fast).max() <= _tolerance(m, g, output)
    # a graph fully removed scores against the uniform prior (two classes: p = 1/2, log-odds 0)
    with torch.no_grad():
        p0 = torch.softmax(m(graphs[0]).double(), 1)[0].max().item()
    v0 = p0 - 0.5 if output == "prob" else np.log(p0 / (1 - p0))
    assert occlusion(m, graphs[0], hops=2, output=output)[1] == pytest.approx(v0, abs=1e-6)


@pytest.mark.parametrize("output", OUTPUTS)
def test_occlusion_target_and_errors(output, rng):
    m = _model("rsf", rng)
    g = make_graph(20, clustered=False, rng=rng)
    s0, s1 = occlusion(m, g, target=0, output=output), occlusion(m, g, target=1, output=output)
    # two classes: probabilities sum to one, and log-odds are z0 - z1 and z1 - z0
    assert np.allclose(s0, -s1, atol=1e-6)
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


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize(("scale", "paths_used"), [(1.0, set()), (15.0, {"float64"}), (40.0, {"float64", "afresh"})])
def test_fast_occlusion_precision_paths_equal_naive(scale, paths_used, output, rng):
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

    fast = occlusion(m, g, hops=1, batch_size=64, precision=Observed(), output=output)
    assert {k for k, v in paths.items() if v} == paths_used
    assert paths["float64"] + paths["afresh"] < g.num_nodes() / 2  # float32 stays the rule
    naive = occlusion_naive(m, g, hops=1, output=output)
    assert np.abs(naive - fast).max() <= _tolerance(m, g, output)


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


@pytest.mark.parametrize("name", ["rsf", "rsf-attention", "rsf-edge"])
def test_compiled_steps_follow_the_model_they_were_built_for(name, rng):
    """The fast path's compiled steps (TorchScript, made once per model) share the model's tensors: an
    in-place update (an optimizer's step) is seen, a replaced tensor or another mode gets new steps, and
    they do not keep the model alive."""
    m = _model(name, rng)
    g = make_graph(40, clustered=True, rng=rng)
    first = scripted(m)
    assert scripted(m) is first
    np.testing.assert_allclose(occlusion(m, g), occlusion_naive(m, g), rtol=0, atol=_tolerance(m, g, "logodds"))
    with torch.no_grad():  # in place: the same steps see it
        m.vconv2.weight.mul_(1.5)
        m.fc1.weight.add_(0.1)
    assert scripted(m) is first
    np.testing.assert_allclose(occlusion(m, g), occlusion_naive(m, g), rtol=0, atol=_tolerance(m, g, "logodds"))
    m.bn3.running_mean = m.bn3.running_mean + 0.5  # replaced: new steps
    assert scripted(m) is not first
    np.testing.assert_allclose(occlusion(m, g), occlusion_naive(m, g), rtol=0, atol=_tolerance(m, g, "logodds"))
    in_eval = scripted(m)
    m.train()  # the head is traced in the model's mode: another mode, other steps
    in_training = scripted(m)
    assert in_training is not in_eval and scripted(m.eval()) is not in_training
    ref = weakref.ref(m)
    del m, first
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("output", OUTPUTS)
def test_fast_occlusion_is_finite_when_an_occlusion_lifts_a_cluster_far_above_the_shift(output):
    """Removing a nucleus can raise a cluster's assignment logits far above the image's softmax shift
    (E' ~ 1e26 here, node 248): the float32 corrections overflow while the rounding bound stays small.
    Those clusters must be summed afresh: every score finite and equal to the naive loop (was NaN)."""
    rng = np.random.default_rng(1)
    m = _model("rsf", rng)
    with torch.no_grad():
        m.pool1.embed.weight.mul_(15.0)
    g = make_graph(300, clustered=True, rng=rng)
    fast = occlusion(m, g, hops=1, batch_size=32, threads=1, output=output)
    naive = occlusion_naive(m, g, hops=1, output=output)
    assert np.isfinite(fast).all()
    assert np.abs(naive - fast).max() <= _tolerance(m, g, output)
