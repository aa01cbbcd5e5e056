"""Graph classifiers of the seed paper (Table I) and two baselines.

Architectures (``c = conv_feats``, ``p = pool_sizes``, ``f = fc_feats``; defaults give ~300k parameters):

``rsf``            VConv1(c1) - VConv2(c2) - Pool1(p1) - VConv3(c3) - Pool2(p2) - FC1(f1) - FC2(f2) - FC3(C)
``rsf-edge``       as ``rsf`` with EdgeConv1 after Pool1, EdgeConv2 after VConv3 and EdgeConv3 after Pool2;
                   EdgeConv1/2 feed the next vertex convolution / pooling, and the channels of EdgeConv3
                   (``(L, p2, p2)``) are flattened into FC1 next to the pooled node features, since
                   nothing else follows Pool2.
``rsf-attention``  as ``rsf`` with a per-nucleus sigmoid gate (:class:`nucleograph.gnn.layers.NodeAttention`) on VConv2.
``mlp``            MLP on the mean of the standardised node features concatenated with log(nucleus count).
``graphstats``     MLP on structure-only statistics of the graph (degrees, spacing, clustering, components,
                   how one-sided each nucleus's neighbourhood is): no node features.

Each vertex convolution is followed by batch norm and ReLU. Batch norm before Pool1 runs on the node
rows of the batched sparse graph (so padding never enters its statistics); after Pool1 every graph
has exactly ``p1`` nodes, so dense tensors carry no padding.

Models take *raw* node features: the :class:`nucleograph.gnn.data.FeatureScaler` fitted on the training graphs is
stored in the model's buffers (``set_scaler``) and applied first, so checkpoints, predictions and
explanations cannot forget it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from types import MappingProxyType

import dgl
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nucleograph.errors import InputError, ModelError

from .data import FeatureScaler
from .keys import CENTROID, EFEAT, FEAT
from .layers import (
    CSRAdjacency,
    DenseEdgeFeatureConv,
    DenseGraphEmbedPooling,
    DenseRSFConv,
    GraphEmbedPooling,
    NodeAttention,
    RSFConv,
)
from .layers.spmm import csr_adjacency, uses_csr


class GraphClassifier(nn.Module):
    """Base class: input checks and the stored feature scaler."""

    #: Whether the logits depend on the node features (gradient explanations need them to).
    reads_node_features = True

    def reset_parameters(self):
        """Re-initialise every layer of the model (each submodule that has ``reset_parameters``)."""
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def __init__(self, in_feats: int, edge_channels: int, n_classes: int):
        super().__init__()
        if n_classes < 2:
            raise ModelError(f"n_classes must be at least 2, got {n_classes}")
        self.in_feats = in_feats
        self.edge_channels = edge_channels
        self.n_classes = n_classes
        self.register_buffer("feat_mean", torch.zeros(in_feats))
        self.register_buffer("feat_std", torch.ones(in_feats))

    def set_scaler(self, scaler: FeatureScaler) -> None:
        """Store a fitted scaler; the model standardises raw features with it from now on."""
        mean = torch.as_tensor(scaler.mean, dtype=self.feat_mean.dtype)
        std = torch.as_tensor(scaler.std, dtype=self.feat_std.dtype)
        if mean.shape != self.feat_mean.shape:
            raise ModelError(f"scaler has {mean.numel()} features, the model {self.in_feats}")
        self.feat_mean.copy_(mean)
        self.feat_std.copy_(std)

    def scaler(self) -> FeatureScaler:
        """The stored scaler, as a :class:`nucleograph.gnn.data.FeatureScaler`."""
        return FeatureScaler(
            self.feat_mean.cpu().float().numpy().copy(), self.feat_std.cpu().float().numpy().copy()
        )

    def input_features(self, graph) -> torch.Tensor:
        """Check ``graph`` and return its standardised node features ``(N, in_feats)``."""
        counts = graph.batch_num_nodes()
        if counts.numel() == 0 or bool((counts == 0).any()):
            empty = torch.nonzero(counts == 0).flatten().tolist() if counts.numel() else [0]
            raise InputError(
                f"graph(s) {empty} of the batch have no nuclei: an image without nuclei cannot be classified; "
                "drop it from the cohort (or check the nucleus detector's threshold)"
            )
        if FEAT not in graph.ndata:
            raise InputError(
                f"the graph has no node features under ndata[{FEAT!r}]; build it with gnn.data.to_dgl"
            )
        feat = graph.ndata[FEAT]
        if feat.dim() != 2 or feat.shape[1] != self.in_feats:
            raise InputError(
                f"node features have shape {tuple(feat.shape)}, the model expects (N, {self.in_feats}); "
                "use the feature set the model was trained on"
            )
        if EFEAT not in graph.edata and self.edge_channels and graph.num_edges() > 0:
            raise InputError(
                f"the graph has no edge channels under edata[{EFEAT!r}]; build it with gnn.data.to_dgl"
            )
        return (feat.to(self.feat_mean.dtype) - self.feat_mean) / self.feat_std

    def edge_features(self, graph) -> torch.Tensor:
        """Edge channels ``(E, L)`` in the model's dtype (empty when the graph has no edges)."""
        dtype = self.feat_mean.dtype
        if graph.num_edges() == 0 and EFEAT not in graph.edata:
            # DGL drops edge schemes when the last edge is removed (e.g. by dgl.remove_nodes)
            return torch.zeros(0, self.edge_channels, dtype=dtype)
        efeat = graph.edata[EFEAT]
        if efeat.dim() == 1:
            efeat = efeat.unsqueeze(-1)
        return efeat.to(dtype)


def _dense_bn(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """Batch norm over all node rows of a ``(B, N, F)`` tensor (no padding after the first pooling)."""
    return bn(x.reshape(-1, x.shape[-1])).view_as(x)


class RSFNet(GraphClassifier):
    """The RSF model of Table I, optionally with edge convolutions or node attention.

    Parameters
    ----------
    in_feats : int
    edge_channels : int
        ``L``.
    n_classes : int
    conv_feats : (int, int, int)
        Widths of VConv1, VConv2, VConv3.
    pool_sizes : (int, int)
        Pooled nodes of Pool1 and Pool2.
    fc_feats : (int, int)
        Widths of FC1 and FC2 (FC3 outputs ``n_classes``).
    edge : bool
        Add the three edge convolutions (``rsf-edge``).
    attention : bool
        Gate VConv2's output with per-nucleus attention (``rsf-attention``).
    edge_activation : {"sigmoid", "relu"}

    Shapes
    ------
    forward(graph) with ``graph`` a batched DGL graph of ``B`` images -> logits ``(B, n_classes)``.
    """

    def __init__(
        self,
        in_feats: int,
        edge_channels: int,
        n_classes: int = 2,
        *,
        conv_feats=(64, 128, 96),
        pool_sizes=(32, 8),
        fc_feats=(256, 64),
        edge: bool = False,
        attention: bool = False,
        edge_activation: str = "sigmoid",
    ):
        super().__init__(in_feats, edge_channels, n_classes)
        if edge_channels < 1:
            raise ModelError("RSF models need at least one edge channel")
        c1, c2, c3 = conv_feats
        p1, p2 = pool_sizes
        f1, f2 = fc_feats
        self.conv_feats, self.pool_sizes, self.fc_feats = (
            tuple(conv_feats),
            tuple(pool_sizes),
            tuple(fc_feats),
        )
        self.use_edge, self.use_attention = edge, attention
        L = edge_channels
        self.vconv1 = RSFConv(in_feats, c1, L)
        self.bn1 = nn.BatchNorm1d(c1)
        self.vconv2 = RSFConv(c1, c2, L)
        self.bn2 = nn.BatchNorm1d(c2)
        self.attention = NodeAttention(c2) if attention else None
        self.pool1 = GraphEmbedPooling(c2, p1, L)
        self.edge1 = DenseEdgeFeatureConv(c2, L, activation=edge_activation) if edge else None
        self.vconv3 = DenseRSFConv(c2, c3, L)
        self.bn3 = nn.BatchNorm1d(c3)
        self.edge2 = DenseEdgeFeatureConv(c3, L, activation=edge_activation) if edge else None
        self.pool2 = DenseGraphEmbedPooling(c3, p2, L)
        self.edge3 = DenseEdgeFeatureConv(c3, L, activation=edge_activation) if edge else None
        fc_in = p2 * c3 + (L * p2 * p2 if edge else 0)
        self.fc1 = nn.Linear(fc_in, f1)
        self.fc2 = nn.Linear(f1, f2)
        self.fc3 = nn.Linear(f2, n_classes)

    def extra_repr(self) -> str:
        return f"edge={self.use_edge}, attention={self.use_attention}"

    def adjacency(self, graph, efeat: torch.Tensor | None = None) -> CSRAdjacency | None:
        """The CSR matrices of ``graph``'s edge channels (or of ``efeat`` ``(E, L)``, given in their
        place) that the sparse layers share (None where they use message passing instead: no edges,
        or channels that need a gradient)."""
        efeat = self.edge_features(graph) if efeat is None else efeat
        return csr_adjacency(graph, efeat) if uses_csr(graph, efeat) else None

    def node_embeddings(
        self, graph, *, adjacency: CSRAdjacency | None = None, feat: torch.Tensor | None = None,
        efeat: torch.Tensor | None = None,
    ):
        """Node states entering Pool1.

        Returns ``h2`` ``(N, c2)`` (after VConv2, batch norm, ReLU and, for ``rsf-attention``, the gate)
        and the attention scores ``(N,)`` (None without attention). ``adjacency``: from
        :meth:`adjacency`, built here when None. ``feat`` (*standardised* ``(N, in_feats)``) and
        ``efeat`` ``(E, L)`` replace the graph's own features and edge channels (explainers that
        differentiate through them or mask them, :mod:`nucleograph.gnn.attribution`).
        """
        feat = self.input_features(graph) if feat is None else feat
        if adjacency is None:
            adjacency = self.adjacency(graph, efeat)
        if efeat is None:
            # the adjacency's own edge tensor: edge_features() returns a new one per call when it casts
            efeat = adjacency.efeat if adjacency is not None else self.edge_features(graph)
        h = F.relu(self.bn1(self.vconv1(graph, feat, efeat, adjacency=adjacency)))
        h = F.relu(self.bn2(self.vconv2(graph, h, efeat, adjacency=adjacency)))
        scores = None
        if self.attention is not None:
            h, scores = self.attention(graph, h)
        return h, scores

    def head(self, v: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """Everything after Pool1: ``v`` ``(B, p1, c2)``, ``adj`` ``(B, L, p1, p1)`` -> logits ``(B, C)``."""
        if self.edge1 is not None:
            adj = self.edge1(adj, v)
        v = F.relu(_dense_bn(self.bn3, self.vconv3(adj, v)))
        if self.edge2 is not None:
            adj = self.edge2(adj, v)
        v, adj = self.pool2(adj, v)
        x = v.flatten(1)
        if self.edge3 is not None:
            x = torch.cat([x, self.edge3(adj, v).flatten(1)], 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)

    def forward(
        self, graph, *, adjacency: CSRAdjacency | None = None, feat: torch.Tensor | None = None,
        efeat: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # one set of CSR matrices for the three sparse layers of this pass (or the caller's, from
        # :meth:`adjacency`, when it runs the model on one graph many times); feat and efeat as in
        # node_embeddings
        if adjacency is None:
            adjacency = self.adjacency(graph, efeat)
        if efeat is None:
            efeat = adjacency.efeat if adjacency is not None else self.edge_features(graph)
        h, _ = self.node_embeddings(graph, adjacency=adjacency, feat=feat, efeat=efeat)
        v, adj = self.pool1(graph, h, efeat, adjacency=adjacency)
        return self.head(v, adj)


def _mlp(width: int, hidden, n_classes: int, *first: nn.Module) -> nn.Sequential:
    """``first`` layers, then Linear + ReLU per ``hidden`` width, then the output layer."""
    layers = list(first)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, n_classes))


class MeanMLP(GraphClassifier):
    """Baseline: MLP on ``[mean of standardised node features, log(nucleus count)]``.

    Shapes
    ------
    forward(graph) with ``B`` images -> logits ``(B, n_classes)``.
    """

    def __init__(self, in_feats: int, edge_channels: int = 0, n_classes: int = 2, *, hidden=(128, 64)):
        super().__init__(in_feats, edge_channels, n_classes)
        self.mlp = _mlp(in_feats + 1, hidden, n_classes)
        self.hidden = tuple(hidden)

    def forward(self, graph) -> torch.Tensor:
        feat = self.input_features(graph)
        with graph.local_scope():
            graph.ndata["_std"] = feat
            mean = dgl.mean_nodes(graph, "_std")
        logn = torch.log(graph.batch_num_nodes().to(feat.dtype)).unsqueeze(1)
        return self.mlp(torch.cat([mean, logn], 1))


#: The statistics :class:`GraphStatsMLP` computes per graph, in its input's order.
GRAPH_STATISTICS = (
    "log_nuclei", "degree_mean", "degree_std", "isolated_share", "low_degree_share", "high_degree_share",
    "weighted_degree_mean", "weighted_degree_std", "edge_weight_mean", "clustering_mean", "clustering_std",
    "components_per_nucleus", "largest_component_share", "one_sidedness_mean", "one_sidedness_std",
)


def graph_statistics(graph) -> torch.Tensor:
    """Structure-only statistics of each graph of a batch: ``(B, len(GRAPH_STATISTICS))``, float64.

    Degrees (mean, spread, the shares of nuclei with no, at most 2 and at least 10 neighbours: cords,
    chain ends, crowds), channel 0 of the edges (``1 - d/threshold``: weighted degree and mean weight,
    i.e. spacing), the local clustering coefficient (triangle density), connected components, and the
    *one-sidedness* of each nucleus: the length of the mean unit vector to its neighbours (0 when they
    surround it, 1 when they all lie on one side, as on the rim of a gland, a ring or a cord), from the
    centroids when the graph has them (else 0). No node features: what a model could learn from the
    arrangement's global statistics alone.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    counts = graph.batch_num_nodes().numpy()
    n = int(counts.sum())
    gid = np.repeat(np.arange(counts.size), counts)
    src, dst = (t.numpy() for t in graph.edges())
    w = graph.edata[EFEAT][:, 0].double().numpy() if graph.num_edges() else np.zeros(0)
    adj = coo_matrix((np.ones(src.size), (dst, src)), shape=(n, n)).tocsr()
    adj.data[:] = 1.0  # duplicate edges count once
    deg = np.asarray(adj.sum(1)).ravel()
    wdeg = np.bincount(dst, weights=w, minlength=n)
    tri = np.asarray((adj @ adj).multiply(adj).sum(1)).ravel() / 2
    clustering = np.divide(2 * tri, deg * (deg - 1), out=np.zeros(n), where=deg > 1)
    side = np.zeros(n)
    if CENTROID in graph.ndata and src.size:
        xy = graph.ndata[CENTROID].double().numpy()
        vec = xy[src] - xy[dst]
        unit = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-9)
        total = np.stack([np.bincount(dst, weights=unit[:, k], minlength=n) for k in range(2)], 1)
        side = np.divide(np.linalg.norm(total, axis=1), deg, out=np.zeros(n), where=deg > 0)
    _, comp = connected_components(adj, directed=False)
    comp_size = np.bincount(comp)
    first = np.unique(comp, return_index=True)[1]  # components never cross graphs (block diagonal)
    n_comp = np.bincount(gid[first], minlength=counts.size)
    largest = np.zeros(counts.size)
    np.maximum.at(largest, gid[first], comp_size)

    def mean(v):
        return np.bincount(gid, weights=v, minlength=counts.size) / counts

    def std(v):
        return np.sqrt(np.maximum(mean(v * v) - mean(v) ** 2, 0))

    e_graph = gid[dst] if src.size else np.zeros(0, dtype=int)
    n_edges = np.bincount(e_graph, minlength=counts.size)
    stats = [np.log(counts), mean(deg), std(deg), mean(deg == 0), mean(deg <= 2), mean(deg >= 10),
             mean(wdeg), std(wdeg), np.bincount(e_graph, weights=w, minlength=counts.size) / np.maximum(n_edges, 1),
             mean(clustering), std(clustering), n_comp / counts, largest / counts, mean(side), std(side)]
    return torch.from_numpy(np.stack(stats, 1))


class GraphStatsMLP(GraphClassifier):
    """Baseline: MLP on the graph's structure statistics alone (:func:`graph_statistics`).

    If it classifies a cohort as well as the GNNs, the GNNs may be reading a global statistic of the
    arrangement (spacing, crowding, how many nuclei sit on rims) rather than the structures a
    pathologist names. Node features are ignored (their scaler is kept only for a uniform checkpoint).

    Shapes
    ------
    forward(graph) with ``B`` images -> logits ``(B, n_classes)``.
    """

    reads_node_features = False

    def __init__(self, in_feats: int, edge_channels: int = 1, n_classes: int = 2, *, hidden=(64, 32)):
        super().__init__(in_feats, edge_channels, n_classes)
        if edge_channels < 1:
            raise ModelError("the graph-statistics baseline reads edge channel 0 (the edge weight)")
        self.mlp = _mlp(len(GRAPH_STATISTICS), hidden, n_classes, nn.BatchNorm1d(len(GRAPH_STATISTICS)))
        self.hidden = tuple(hidden)

    def forward(self, graph) -> torch.Tensor:
        self.input_features(graph)  # the same checks as every model
        x, bn = graph_statistics(graph).to(self.feat_mean.dtype), self.mlp[0]
        # a batch of one graph (a training set's last batch) is standardised with the running statistics
        x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                         training=self.training and x.shape[0] > 1, momentum=bn.momentum, eps=bn.eps)
        return self.mlp[1:](x)


#: The model registry, the one list of models: name -> builder
#: ``(in_feats, edge_channels, n_classes, **kwargs) -> GraphClassifier``. The CLI's choices, the
#: service, :func:`build_model` and the checkpoints (``config["model_name"]``) all read it.
MODELS: MappingProxyType[str, Callable[..., GraphClassifier]] = MappingProxyType(
    {
        "rsf": RSFNet,
        "rsf-edge": partial(RSFNet, edge=True),
        "rsf-attention": partial(RSFNet, attention=True),
        "mlp": MeanMLP,
        "graphstats": GraphStatsMLP,
    }
)
#: The registry's names, in its order.
MODEL_NAMES = tuple(MODELS)
#: The model trained when none is named: the registry's first, the paper's plain RSF.
DEFAULT_MODEL = MODEL_NAMES[0]


def build_model(
    name: str, *, in_feats: int, edge_channels: int, n_classes: int = 2, **kwargs
) -> GraphClassifier:
    """Build one of the registry's models (:data:`MODELS`).

    Parameters
    ----------
    name : str
        A key of :data:`MODELS`: ``"rsf"``, ``"rsf-edge"``, ``"rsf-attention"`` or ``"mlp"``.
    in_feats, edge_channels, n_classes : int
    **kwargs
        Go to :class:`RSFNet` (``conv_feats``, ``pool_sizes``, ``fc_feats``, ``edge_activation``) or
        :class:`MeanMLP` (``hidden``).

    Returns
    -------
    GraphClassifier

    Raises
    ------
    ModelError
        If ``name`` is not in the registry.
    """
    builder = MODELS.get(name)
    if builder is None:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return builder(in_feats, edge_channels, n_classes, **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class SeedEnsemble(GraphClassifier):
    """Members of one architecture, trained on the same split from different seeds; its logits are the
    mean of theirs (``train --ensemble K``).

    A deep ensemble (Lakshminarayanan, Pritzel and Blundell, NeurIPS 2017) averages what each member
    learnt by chance from its initialisation and batch order. Averaging logits keeps every explanation
    exact and simple: a log-odds is linear in the logits for two classes, so local evidence, local
    contribution, occlusion and the gradient methods of the ensemble are the means of its members'
    (``nucleograph.gnn.explain``). An average does not filter: a member that reads something other than
    the class-defining structure keeps its share of the vote and of the scores (``bench/RESULTS.md``,
    issue 18, "Seed ensembles").

    Parameters
    ----------
    members : list of GraphClassifier
        Two or more models of the same architecture and inputs, with the same feature scaler.

    Shapes
    ------
    forward(graph, **kwargs) -> logits ``(B, n_classes)``; ``kwargs`` (``feat``, ``efeat`` of the RSF models)
    go to every member.
    """

    def __init__(self, members: list[GraphClassifier]):
        if len(members) < 2:
            raise ModelError(f"an ensemble needs at least two members, got {len(members)}")
        first = members[0]

        def shape(m):  # the class and every parameter's and buffer's name and shape
            return type(m), [(k, tuple(v.shape)) for k, v in m.state_dict().items()]

        if any(shape(m) != shape(first) for m in members):
            raise ModelError("an ensemble's members must share one architecture and its inputs")
        super().__init__(first.in_feats, first.edge_channels, first.n_classes)
        self.members = nn.ModuleList(members)
        self.reads_node_features = first.reads_node_features
        self.feat_mean.copy_(first.feat_mean)
        self.feat_std.copy_(first.feat_std)

    def set_scaler(self, scaler: FeatureScaler) -> None:
        super().set_scaler(scaler)
        for m in self.members:
            m.set_scaler(scaler)

    def forward(self, graph, **kwargs) -> torch.Tensor:
        first = self.members[0]
        if isinstance(first, RSFNet) and "adjacency" not in kwargs:
            # the CSR matrices depend on the graph and edge channels only: built once for every member
            kwargs["adjacency"] = first.adjacency(graph, kwargs.get("efeat"))
        return torch.stack([m(graph, **kwargs) for m in self.members]).mean(0)


def architecture(model: GraphClassifier) -> GraphClassifier:
    """The model that stands for ``model``'s architecture: an ensemble's first member, else itself."""
    return model.members[0] if isinstance(model, SeedEnsemble) else model
