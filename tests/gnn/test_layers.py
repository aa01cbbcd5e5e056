import subprocess
import sys

import dgl
import pytest
import torch
from gnn_synth import make_graph
from torch import nn

from nucleograph.errors import InputError
from nucleograph.gnn.dense import to_dense
from nucleograph.gnn.keys import EFEAT, FEAT
from nucleograph.gnn.layers import (
    DenseEdgeFeatureConv,
    DenseGraphEmbedPooling,
    DenseRSFConv,
    EdgeFeatureConv,
    GraphEmbedPooling,
    NodeAttention,
    RSFConv,
    csr_adjacency,
    dense_graph_embed_pool,
    dense_rsf_conv,
)
from nucleograph.gnn.layers.pooling import segment_softmax
from nucleograph.gnn.layers.spmm import csr_matrix, csr_mm, neighbour_combine, neighbour_stack


@pytest.fixture
def batch(rng):
    return dgl.batch([make_graph(30, clustered=True, rng=rng), make_graph(12, clustered=False, rng=rng)])


@pytest.mark.parametrize(("fin", "fout"), [(4, 8), (8, 3)])  # aggregate-first and project-first
def test_rsf_conv_matches_dense(batch, fin, fout):
    torch.manual_seed(0)
    x = torch.randn(batch.num_nodes(), fin)
    conv = RSFConv(fin, fout, 2)
    dense = DenseRSFConv(fin, fout, 2)
    dense.load_state_dict(conv.state_dict())
    adj, xd, mask = to_dense(batch, x)
    out = conv(batch, x)
    ref = dense(adj, xd)[mask]
    assert torch.allclose(out, ref, atol=1e-5)
    # the reference's aggregate-then-multiply form (gnn.dense) gives the same
    assert torch.allclose(dense_rsf_conv(adj, xd, dense.weight, dense.bias)[mask], ref, atol=1e-5)
    assert set(batch.ndata) == {FEAT, "centroid", "nucleus_id"}  # nothing leaked
    assert "W_0" not in repr(conv) and "edge_channels=2" in repr(conv)


def test_rsf_conv_formula_on_tiny_graph():
    g = dgl.graph(([0, 1], [1, 0]))
    g.edata[EFEAT] = torch.tensor([[0.5], [0.5]])
    conv = RSFConv(1, 1, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[2.0]], [[3.0]]]))
        conv.bias.fill_(1.0)
    out = conv(g, torch.tensor([[1.0], [10.0]]))
    assert out.flatten().tolist() == [2 * 1 + 3 * 0.5 * 10 + 1, 2 * 10 + 3 * 0.5 * 1 + 1]


def test_rsf_conv_wrong_channels_message(batch):
    with pytest.raises(InputError, match="edge_channels"):
        RSFConv(4, 4, 3)(batch, batch.ndata[FEAT])


def test_pooling_matches_dense_and_is_convex(batch):
    torch.manual_seed(0)
    pool = GraphEmbedPooling(4, 5, 2)
    dense = DenseGraphEmbedPooling(4, 5, 2)
    dense.load_state_dict(pool.state_dict())
    x = batch.ndata[FEAT]
    v, a, s = pool(batch, x, return_assignment=True)
    assert v.shape == (2, 5, 4) and a.shape == (2, 2, 5, 5)
    counts = batch.batch_num_nodes().tolist()
    for col_sum in torch.split(s, counts):
        assert torch.allclose(col_sum.sum(0), torch.ones(5), atol=1e-5)  # softmax over each graph's nodes
    adj, xd, mask = to_dense(batch, x)
    vd, ad, _ = dense(adj, xd, mask, return_assignment=True)
    assert torch.allclose(v, vd, atol=1e-5) and torch.allclose(a, ad, atol=1e-5)


def test_segment_softmax_equals_dgls_softmax_nodes_with_gradients(batch):
    # the pooling's per-graph softmax against DGL's own (segment max and sum), values and gradients
    logits = torch.randn(batch.num_nodes(), 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(batch.num_nodes(), 5, dtype=torch.float64)
    ours = segment_softmax(logits, batch.batch_num_nodes())
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), logits)
    with batch.local_scope():
        batch.ndata["x"] = logits
        theirs = dgl.softmax_nodes(batch, "x")
    (grad_theirs,) = torch.autograd.grad((theirs * weights).sum(), logits)
    assert torch.allclose(ours, theirs, atol=1e-12) and torch.allclose(grad_ours, grad_theirs, atol=1e-12)
    one = batch.batch_num_nodes()[:1]
    assert torch.allclose(segment_softmax(logits[: int(one)], one), torch.softmax(logits[: int(one)], 0))


def test_dense_pool_masks_padding_with_minus_inf():
    adj = torch.zeros(1, 1, 3, 3)
    feat = torch.tensor([[[1.0], [3.0], [100.0]]])
    logits = torch.zeros(1, 3, 1)
    v, _, s = dense_graph_embed_pool(adj, feat, logits, torch.tensor([[True, True, False]]))
    assert s[0, 2, 0] == 0 and v.item() == pytest.approx(2.0)


def test_edge_conv_sparse_matches_dense_and_keeps_pattern(batch):
    torch.manual_seed(0)
    conv = EdgeFeatureConv(4, 2, activation="relu")
    dense = DenseEdgeFeatureConv(4, 2, activation="relu")
    dense.load_state_dict(conv.state_dict())
    x = batch.ndata[FEAT]
    out = conv(batch, x)
    assert out.shape == (batch.num_edges(), 2) and (out >= 0).all()
    adj, xd, mask = to_dense(batch, x)
    ad = dense(adj, xd)
    src, dst = batch.edges()
    counts = batch.batch_num_nodes()
    gid = torch.repeat_interleave(torch.arange(2), counts)
    local = torch.arange(batch.num_nodes()) - (torch.cumsum(counts, 0) - counts)[gid]
    assert torch.allclose(ad[gid[dst], :, local[dst], local[src]], out, atol=1e-5)
    assert ((adj != 0).any(1, keepdim=True) | (ad == 0)).all()  # no new edges


def test_dense_edge_conv_is_its_formula_with_other_channel_counts_and_gradients():
    torch.manual_seed(1)
    conv = DenseEdgeFeatureConv(5, 3, out_channels=2)
    nn.init.normal_(conv.bias)
    adj = torch.rand(2, 3, 4, 4) * (torch.rand(2, 1, 4, 4) < 0.6)
    adj[:, 0] *= torch.rand(2, 4, 4) < 0.5  # pairs with only some channels set are edges too
    feat = torch.randn(2, 4, 5, requires_grad=True)
    mask = (adj != 0).any(1, keepdim=True)
    want = torch.sigmoid(torch.einsum("blij,lo->boij", adj, conv.edge_weight)
                         + (feat @ conv.dst_weight).transpose(1, 2).unsqueeze(-1)
                         + (feat @ conv.src_weight).transpose(1, 2).unsqueeze(-2)
                         + conv.bias.view(1, -1, 1, 1)) * mask
    g_want = torch.autograd.grad(want.square().sum(), [feat, *conv.parameters()])
    got = conv(adj, feat)
    g_got = torch.autograd.grad(got.square().sum(), [feat, *conv.parameters()])
    assert got.shape == (2, 2, 4, 4) and torch.allclose(got, want, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_got, g_want, strict=True))


def test_edge_conv_rejects_unknown_activation():
    with pytest.raises(InputError, match="activation"):
        EdgeFeatureConv(4, 2, activation="tanh")


def test_attention_gates_and_returns_scores():
    att = NodeAttention(6)
    x = torch.randn(10, 6)
    y, s = att(None, x)
    assert s.shape == (10,) and ((s > 0) & (s < 1)).all()
    assert torch.allclose(y, x * s[:, None])


def test_shared_adjacency_gives_the_same_sums_and_rejects_other_tensors(batch):
    torch.manual_seed(0)
    efeat = batch.edata[EFEAT]
    adjacency = csr_adjacency(batch, efeat)
    conv, pool = RSFConv(4, 3, 2), GraphEmbedPooling(4, 5, 2)
    x = batch.ndata[FEAT]
    assert torch.equal(conv(batch, x, efeat, adjacency=adjacency), conv(batch, x, efeat))
    shared = pool(batch, x, efeat, adjacency=adjacency)
    assert all(torch.equal(a, b) for a, b in zip(shared, pool(batch, x, efeat), strict=True))
    with pytest.raises(InputError, match="csr_adjacency"):
        conv(batch, x, efeat.clone(), adjacency=adjacency)
    efeat.mul_(1.0)  # an in-place change, even one that keeps the values, outdates the matrices
    with pytest.raises(InputError, match="changed in place"):
        conv(batch, x, efeat, adjacency=adjacency)


def test_csr_matrix_spends_torchs_beta_warning_quietly():
    # a fresh process: torch warns on its first CSR tensor only, which this session has long made
    code = (
        "import torch\n"
        "from nucleograph.gnn.layers.spmm import csr_matrix\n"
        "a = csr_matrix(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([2.0]), (1, 1))\n"
        "assert (a @ torch.ones(1, 1)).item() == 2.0\n"
    )
    run = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_csr_mm_writes_every_row_of_its_uninitialised_output(dtype):
    # empty rows and a matrix without entries: the product must write their zeros, never leave what the
    # (uninitialised) output held; the freed NaN blocks below are what such an output is likely to reuse
    x = torch.randn(3, 5, dtype=dtype)
    for crow, col, val in (([0, 2, 2, 3, 3], [0, 2, 1], [1.0, 2.0, 3.0]), ([0, 0, 0, 0, 0], [], [])):
        a = csr_matrix(torch.tensor(crow), torch.tensor(col, dtype=torch.int64), torch.tensor(val, dtype=dtype), (4, 3))
        assert a.crow_indices().dtype == torch.int32 and a.col_indices().dtype == torch.int32  # MKL's own
        for _ in range(20):
            garbage = [torch.full((4, 5), float("nan"), dtype=dtype) for _ in range(4)]
            del garbage
            out = csr_mm(a, x)
            assert not out.isnan().any() and torch.allclose(out, a.to_dense() @ x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_interleaved_csr_products_are_their_formulas_with_gradients(dtype):
    # a directed graph with unsorted in-edges, a node without in-edges and a self-loop; three channels
    src, dst = torch.tensor([3, 0, 2, 1, 4, 2, 0, 4]), torch.tensor([0, 1, 1, 1, 1, 2, 3, 4])
    graph = dgl.graph((src, dst), num_nodes=6)
    efeat = torch.rand(8, 3, dtype=dtype)
    adj = torch.zeros(3, 6, 6, dtype=dtype)
    adj[:, dst, src] = efeat.T  # A_l[i, j] = channel l of edge j -> i
    x = torch.randn(6, 5, dtype=dtype, requires_grad=True)
    stacked = neighbour_stack(graph, efeat, x)
    expected = torch.stack([x, *(adj[ch] @ x for ch in range(3))], 1)
    assert stacked.shape == (6, 4, 5) and torch.allclose(stacked, expected)
    proj = torch.randn(6, 4, 2, dtype=dtype, requires_grad=True)
    combined = neighbour_combine(graph, efeat, proj)
    assert torch.allclose(combined, proj[:, 0] + sum(adj[ch] @ proj[:, ch + 1] for ch in range(3)))
    if dtype == torch.float64:  # the backward products (the transposed matrices) against finite differences
        assert torch.autograd.gradcheck(lambda v: neighbour_stack(graph, efeat, v), (x,))
        assert torch.autograd.gradcheck(lambda p: neighbour_combine(graph, efeat, p), (proj,))
