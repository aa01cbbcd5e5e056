"""Explanations of a seed ensemble (:class:`nucleograph.gnn.models.SeedEnsemble`): exact, and with two classes
the mean of its members' (the log-odds is linear in the logits)."""

import dgl
import numpy as np
import pytest
import torch
from gnn_synth import make_graph

from nucleograph.gnn.explain import attention_scores, occlusion, occlusion_naive
from nucleograph.gnn.models import SeedEnsemble, build_model
from nucleograph.gnn.service import explain_graph

SMALL = {"conv_feats": (16, 16, 16), "pool_sizes": (8, 4), "fc_feats": (32, 16)}
RSF_MODELS = ["rsf", "rsf-edge", "rsf-attention"]


def _member(name, seed, rng, n_classes):
    torch.manual_seed(seed)
    m = build_model(name, in_feats=4, edge_channels=2, n_classes=n_classes, **SMALL)
    m.train()  # non-trivial batch-norm running statistics
    with torch.no_grad():
        for _ in range(3):
            m(dgl.batch([make_graph(30, clustered=True, rng=rng), make_graph(30, clustered=False, rng=rng)]))
    return m.eval()


def _ensemble(name, rng, n_classes=2, size=3):
    return SeedEnsemble([_member(name, seed, rng, n_classes) for seed in range(size)]).eval()


def _class(model, g):
    with torch.no_grad():
        return int(model(g).argmax(1)[0])


@pytest.mark.parametrize("name", RSF_MODELS)
@pytest.mark.parametrize("output,n_classes", [("logodds", 2), ("prob", 2), ("logodds", 3)])
def test_ensemble_occlusion_equals_naive(name, output, n_classes, rng):
    ens = _ensemble(name, rng, n_classes)
    g = make_graph(24, clustered=True, rng=rng)
    naive = occlusion_naive(ens, g, hops=1, output=output)
    fast = occlusion(ens, g, hops=1, batch_size=8, output=output)
    with torch.no_grad():
        scale = 1.0 if output == "prob" else max(1.0, float(ens(g).abs().max()))
    assert np.abs(naive - fast).max() <= 1e-5 * scale


@pytest.mark.parametrize("name", RSF_MODELS)
@pytest.mark.parametrize("method", ["local", "contribution", "occlusion", "gradxinput"])
def test_two_class_ensemble_scores_are_the_mean_of_its_members(name, method, rng):
    ens = _ensemble(name, rng)
    g = make_graph(30, clustered=True, rng=rng)
    c = _class(ens, g)
    scores = explain_graph(method, ens, g, hops=1, target=None, output="logodds")
    each = [explain_graph(method, m, g, hops=1, target=c, output="logodds") for m in ens.members]
    assert np.allclose(scores, np.mean(each, axis=0), atol=1e-5)
    # the members disagree, so the mean is not any one of them
    assert not np.allclose(each[0], each[1], atol=1e-4)


def test_ensemble_attention_is_the_mean_gate_and_gnnexplainer_runs(rng):
    ens = _ensemble("rsf-attention", rng)
    g = make_graph(30, clustered=True, rng=rng)
    assert np.allclose(attention_scores(ens, g), np.mean([attention_scores(m, g) for m in ens.members], axis=0))
    torch.manual_seed(0)
    scores = explain_graph("gnnexplainer", ens, g, hops=1, target=None, output="logodds")
    assert scores.shape == (30,) and np.isfinite(scores).all()
