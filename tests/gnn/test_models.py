import dgl
import numpy as np
import pytest
import torch
from gnn_synth import make_graph

from nucleograph.errors import InputError, ModelError
from nucleograph.gnn.data import FeatureScaler, to_dgl
from nucleograph.gnn.dense import DenseRSFReference
from nucleograph.gnn.models import (
    DEFAULT_MODEL,
    MODEL_NAMES,
    MODELS,
    MeanMLP,
    RSFNet,
    build_model,
    count_parameters,
)

RSF = ("rsf", "rsf-edge", "rsf-attention")


@pytest.mark.parametrize("name", RSF)
@pytest.mark.parametrize("in_feats", [16, 32])
def test_about_300k_parameters(name, in_feats):
    n = count_parameters(build_model(name, in_feats=in_feats, edge_channels=2))
    assert 255_000 <= n <= 345_000


def test_registry_builds_each_model_it_names():
    assert MODEL_NAMES == ("rsf", "rsf-edge", "rsf-attention", "mlp", "graphstats") == tuple(MODELS)
    assert DEFAULT_MODEL == "rsf"
    built = {name: build_model(name, in_feats=4, edge_channels=2) for name in MODEL_NAMES}
    assert isinstance(built["mlp"], MeanMLP) and all(isinstance(built[n], RSFNet) for n in RSF)
    assert built["rsf-edge"].use_edge and built["rsf-attention"].use_attention
    assert not (built["rsf"].use_edge or built["rsf"].use_attention)


def test_unknown_model_name():
    with pytest.raises(ModelError, match="choose one of"):
        build_model("gcn", in_feats=4, edge_channels=2)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shapes_tiny_and_isolated(name, rng):
    torch.manual_seed(0)
    m = build_model(name, in_feats=4, edge_channels=2).eval()
    one = to_dgl(
        rng.normal(size=(1, 4)), [], [], np.zeros((0, 2)), centroids=np.zeros((1, 2)), nucleus_ids=[0]
    )
    isolated = to_dgl(
        rng.normal(size=(5, 4)), [], [], np.zeros((0, 2)), centroids=np.zeros((5, 2)), nucleus_ids=range(5)
    )
    g = dgl.batch([make_graph(20, clustered=True, rng=rng), one, isolated])
    out = m(g)
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    assert torch.allclose(m(one), out[1:2], atol=1e-5)  # batching does not change a graph's output


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_empty_graph_is_a_clear_error(name, rng):
    m = build_model(name, in_feats=4, edge_channels=2)
    empty = to_dgl(np.zeros((0, 4)), [], [], np.zeros((0, 2)), centroids=np.zeros((0, 2)), nucleus_ids=[])
    with pytest.raises(InputError, match="no nuclei"):
        m(dgl.batch([make_graph(5, clustered=False, rng=rng), empty]))


def test_wrong_feature_count_message(rng):
    m = build_model("rsf", in_feats=7, edge_channels=2)
    with pytest.raises(InputError, match="expects"):
        m(make_graph(5, clustered=False, rng=rng))


@pytest.mark.parametrize("name", RSF)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_dense_reference_matches(name, mode, rng):
    torch.manual_seed(0)
    m = build_model(name, in_feats=4, edge_channels=2)
    g = dgl.batch([make_graph(40, clustered=True, rng=rng), make_graph(9, clustered=False, rng=rng)])
    m.set_scaler(FeatureScaler.fit([g]))
    m.train(mode == "train")
    ref = DenseRSFReference(m)
    assert torch.allclose(m(g), ref.forward_graph(g), atol=1e-4)
    ref2 = DenseRSFReference.from_state_dict(name, m.state_dict(), in_feats=4, edge_channels=2)
    ref2.train(mode == "train")
    assert torch.allclose(ref.forward_graph(g), ref2.forward_graph(g), atol=1e-5)
