"""The fast path's per-batch tensor steps as TorchScript, compiled once per model (:func:`scripted`).

A batch of occlusions is a few hundred mid-sized tensor operations. Called one by one from Python, each
takes the interpreter lock for its dispatch, so the worker threads of
:func:`nucleograph.gnn.occlusion.fast.occlusion_rsf_windows` wait on each other between operations
(two threads ran 1.4x one, two processes 2.0x). Compiled, each step below is one call that runs its
operations without the lock and without Python's dispatch in between: the node updates up to Pool1's
softmax numerators (:class:`NodeUpdate`), the pooling products (:func:`pool_products`) and the model's
head (traced, :attr:`ScriptedModel.head`). They run the same aten operations in the same order as the
eager code they replace, so the scores are bit-identical (bench/RESULTS.md, issue 20).
"""

from __future__ import annotations

import threading
import warnings
import weakref
from dataclasses import dataclass
from itertools import chain
from typing import List, Optional, Tuple  # noqa: UP035 - TorchScript reads these annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nucleograph.gnn.models import RSFNet
from nucleograph.gnn.occlusion.rows import pad_rows, take_rows


@torch.jit.script
def conv_update(weight: Tensor, pre: Tensor, removed_in: Tensor, delta: Optional[Tensor],  # noqa: UP045
                edges: Tensor) -> Tensor:
    """An RSF convolution's pre-activation on the kept rows it changes, updated in place.

    The convolution is linear, so after its input lost the removed rows and changed by ``delta`` on the
    first kept rows its output changes by ``delta W_0 + sum_l A_l P_l``, ``P_l`` the change of ``V W_l``
    (weights first: fewer rows change than are updated). A removed row's ``P_l = -V W_l`` is multiplied
    from its ``V`` (``removed_in``; a table of them for every nucleus would cost a slide a gigabyte), and
    its own output is never computed (it leaves the graph).

    ``weight`` ``(L + 1, F, O)`` the convolution's, ``pre`` ``(n_out, O)`` the cached pre-activations of the
    rows to update, ``removed_in`` ``(n_removed, F)``, ``delta`` ``(n_changed, F)`` or None, ``edges`` the
    layer's in-edges, channel ``l`` of input row ``i`` at column ``i L + l`` and the removed rows' entries
    negated (:attr:`.rows.BatchRows.conv_edges`): the projections of all ``L`` channels come from one
    product per part of the input, ``(n_in, L O)``.
    """
    if pre.shape[0] == 0:  # the whole graph removed
        return pre
    n_rem, n_out = removed_in.shape[0], weight.shape[2]
    n_ch = 0 if delta is None else delta.shape[0]
    w_edges = weight[1:].transpose(0, 1).reshape(weight.shape[1], -1)  # (F, L O): [W_1 | ... | W_L]
    proj = pre.new_empty([n_rem + n_ch, w_edges.shape[1]])
    torch.matmul(removed_in, w_edges, out=proj[:n_rem])
    if delta is not None:
        torch.matmul(delta, w_edges, out=proj[n_rem:])
        pre[:n_ch].addmm_(delta, weight[0])
    return pre.addmm_(edges, proj.view(-1, n_out))


class NodeUpdate(nn.Module):
    """The new node states of one batch's balls up to Pool1's softmax numerators, each layer one hop
    further out (``docs/occlusion.md``, "Node updates"), with the model's own batch norms and gate.

    ``forward`` takes the image's cached states (:class:`.cache.ImageCache`), the batch's rows ``node``
    and level ends and its three layers' in-edges (:class:`.rows.BatchRows`), and returns ``z_new``
    (kept rows), ``h_new`` and ``dh`` (kept rows whose ``H`` changes) and ``exp(z_new - shift)``.
    """

    def __init__(self, model: RSFNet):
        super().__init__()
        self.w1, self.w2, self.w3 = model.vconv1.weight, model.vconv2.weight, model.pool1.embed.weight
        self.bn1, self.bn2, self.attention = model.bn1, model.bn2, model.attention

    def forward(self, x: Tensor, pre1: Tensor, h1: Tensor, pre2: Tensor, h2: Tensor, z: Tensor, shift: Tensor,
                node: Tensor, n_removed: int, n_vconv1: int, n_vconv2: int, edges1: Tensor, edges2: Tensor,
                edges3: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:  # noqa: UP006
        removed = node[:n_removed]
        rows1, rows2, rows3 = node[n_removed:n_vconv1], node[n_removed:n_vconv2], node[n_removed:]
        p1 = conv_update(self.w1, take_rows(pre1, rows1), take_rows(x, removed), None, edges1)
        dh1 = F.relu(self.bn1(p1)) - take_rows(h1, rows1)
        p2 = conv_update(self.w2, take_rows(pre2, rows2), take_rows(h1, removed), dh1, edges2)
        h_new = F.relu(self.bn2(p2))
        if self.attention is not None:
            h_new, _ = self.attention.gated(h_new)
        dh = h_new - take_rows(h2, rows2)
        z_new = conv_update(self.w3, take_rows(z, rows3), take_rows(h2, removed), dh, edges3)
        # new softmax numerators in float32, as the model computes its softmax: their rounding is relative
        # to the remaining mass, which no correction amplifies
        return z_new, h_new, dh, torch.exp(z_new - shift.to(z_new.dtype))


@torch.jit.script
def pool_products(table: Tensor, padded_node: Tensor, matrices: List[Tensor], de: Tensor,  # noqa: UP006
                  e_new: Tensor, dh: Tensor, flat: Tensor, width: int, changed_flat: Tensor, changed_width: int,
                  b: int) -> Tuple[Tensor, Tensor]:  # noqa: UP006
    """The pooling corrections' products per occlusion in ``table``'s dtype: ``dE^T [H | A E + A dE / 2]``
    ``(b, K, F2 + L K)`` and ``E'^T dH`` ``(b, K, F2)`` (:func:`.pooling.pool_products` names the inputs)."""
    dtype = table.dtype
    de, e_new, dh = de.to(dtype), e_new.to(dtype), dh.to(dtype)
    f2, k = dh.shape[1], de.shape[1]
    rhs = take_rows(table, padded_node)  # (b M, F2 + L K)
    ch = 0
    for a in matrices:  # + A_l dE / 2, into the padded rows
        rhs[:, f2 + ch * k:f2 + (ch + 1) * k].addmm_(a, de, alpha=0.5)
        ch += 1
    prod = torch.bmm(pad_rows(de, flat, b, width).transpose(1, 2), rhs.view(b, -1, table.shape[1]))
    extra = torch.bmm(pad_rows(e_new, changed_flat, b, changed_width).transpose(1, 2),
                      pad_rows(dh, changed_flat, b, changed_width))
    return prod, extra


class _Head(nn.Module):
    def __init__(self, model: RSFNet):
        super().__init__()
        self.model = model

    def forward(self, v: Tensor, adj: Tensor) -> Tensor:
        return self.model.head(v, adj)


@dataclass(frozen=True)
class ScriptedModel:
    """One model's compiled steps; they share its parameters and buffers."""

    node_update: torch.jit.ScriptModule  #: :class:`NodeUpdate`, scripted
    head: torch.jit.ScriptModule  #: :meth:`RSFNet.head`, traced: ``(v, adj) -> logits``


_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _signature(model: RSFNet) -> tuple:
    """What the compiled steps were built from: the mode and the very tensors (a tensor replaced, not
    updated in place, e.g. by assigning a new ``Parameter``, calls for new ones)."""
    return (model.training, model.feat_mean.dtype,
            tuple((id(t), t.data_ptr()) for t in chain(model.parameters(), model.buffers())))


def scripted(model: RSFNet) -> ScriptedModel:
    """``model``'s compiled steps, built on the first call (about 50 ms) and kept while the model lives.

    The head is traced in the model's current mode (the fast path runs in eval mode); in-place updates
    of its parameters (an optimizer's) are seen by the compiled steps, since they share the tensors.
    """
    key = _signature(model)
    with _lock:
        hit = _compiled.get(model)
        if hit is None or hit[0] != key:
            k, c2, n_ch = model.pool1.n_clusters, model.conv_feats[1], model.edge_channels
            dtype = model.feat_mean.dtype
            example = (torch.zeros(2, k, c2, dtype=dtype), torch.zeros(2, n_ch, k, k, dtype=dtype))
            with torch.no_grad(), warnings.catch_warnings():
                # the head's input checks become constants of the trace: every batch passes them
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                head = torch.jit.trace(_Head(model), example, check_trace=False)
            hit = (key, ScriptedModel(torch.jit.script(NodeUpdate(model)), head))
            _compiled[model] = hit
    return hit[1]
