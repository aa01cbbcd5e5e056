"""DGL layers of the RSF family, one per file; ``Dense*`` twins act on padded dense tensors."""

from .attention import NodeAttention
from .edgeconv import DenseEdgeFeatureConv, EdgeFeatureConv
from .pooling import DenseGraphEmbedPooling, GraphEmbedPooling, dense_graph_embed_pool, to_dense_batch
from .rsf import DenseRSFConv, RSFConv, dense_rsf_conv
from .spmm import CSRAdjacency, csr_adjacency

__all__ = [
    "CSRAdjacency",
    "DenseEdgeFeatureConv",
    "DenseGraphEmbedPooling",
    "DenseRSFConv",
    "EdgeFeatureConv",
    "GraphEmbedPooling",
    "NodeAttention",
    "RSFConv",
    "csr_adjacency",
    "dense_graph_embed_pool",
    "dense_rsf_conv",
    "to_dense_batch",
]
