r"""Gradient explanations and GNNExplainer: per-nucleus scores of one image's graph.

Every method here explains the *log-odds* of one class ``c`` (the predicted class, or ``target``),
the logit margin

.. math:: f_c(G) = z_c - \log \sum_{j \ne c} e^{z_j}

(for two classes simply :math:`z_c - z_{1-c}`; :math:`p_c = \sigma(f_c)`), which keeps its resolution
where the class probability saturates at 1 (issue 18).

Feature attributions are taken in the model's *standardised* feature space, :math:`\tilde x = (x -
\mu) / \sigma` with the training cohort's scaler (the model's ``feat_mean``/``feat_std`` buffers),
against the baseline :math:`\tilde x' = 0`, i.e. every nucleus at the cohort's mean features in the
same graph. Because :math:`\tilde x` is an affine function of the raw features :math:`x`,
:math:`(\tilde x - \tilde x') \cdot \partial f / \partial \tilde x = (x - \mu) \cdot \partial f /
\partial x`, so the gradients are taken with respect to the raw features of the graph and every
:class:`nucleograph.gnn.models.GraphClassifier` (the MLP baseline too) can be explained.

:func:`gradient_x_input`
    :math:`s_i = \sum_f (\tilde x_{if} - 0) \, \partial f_c / \partial \tilde x_{if}`: one backward pass.
:func:`integrated_gradients`
    :math:`s_i = \sum_f (\tilde x_{if} - \tilde x'_{if}) \int_0^1 \partial f_c(\tilde x' + \alpha
    (\tilde x - \tilde x')) / \partial \tilde x_{if} \, d\alpha` by the trapezoid rule, several
    interpolated copies of the graph per model pass. Complete: :math:`\sum_i s_i \approx f_c(x) -
    f_c(x')`.
:func:`gnnexplainer_scores`
    ``dgl.nn.GNNExplainer`` on an RSF model through :class:`RSFExplainerAdapter` (an edge weight
    scales every edge channel wherever the model reads them); a nucleus scores the mean mask of
    its incident edges.

All of them run the model in eval mode (its mode restored afterwards), never write a gradient
into the model's parameters, and return ``np.ndarray`` of shape ``(N,)``, float64.
"""

from __future__ import annotations

import copy

import dgl
import numpy as np
import torch
from dgl.nn import GNNExplainer
from torch import nn

from nucleograph.errors import InputError, ModelError
from nucleograph.gnn.keys import FEAT
from nucleograph.gnn.models import GraphClassifier, RSFNet, architecture
from nucleograph.gnn.occlusion.reference import EvalMode, check_single_graph, pick_target

__all__ = [
    "RSFExplainerAdapter",
    "gnnexplainer_scores",
    "gradient_x_input",
    "integrated_gradients",
    "log_odds",
]


def log_odds(logits: torch.Tensor, target: int) -> torch.Tensor:
    r"""The logit margin of class ``target``, :math:`z_c - \log \sum_{j \ne c} e^{z_j}`.

    Parameters
    ----------
    logits : torch.Tensor, shape (B, C)
    target : int
        ``c``, a class index.

    Returns
    -------
    torch.Tensor, shape (B,)
        :math:`\log (p_c / (1 - p_c))` of each row, differentiable.
    """
    others = torch.ones(logits.shape[1], dtype=torch.bool, device=logits.device)
    others[target] = False
    return logits[:, target] - torch.logsumexp(logits[:, others], 1)


def _check(model, graph) -> None:
    if not isinstance(model, GraphClassifier):
        raise ModelError(f"explanations need a nucleograph GraphClassifier, got {type(model).__name__}")
    if not model.reads_node_features:
        raise ModelError(f"a {type(model).__name__} reads no node features: gradient x input and integrated "
                         "gradients would score every nucleus 0; use occlusion, which removes nuclei instead")
    check_single_graph(graph)


def _target(model: GraphClassifier, graph, target: int | None) -> int:
    """The class to explain: ``target`` checked, or the class the model predicts (call in EvalMode)."""
    logits = model(graph)[0].double().cpu().numpy()
    return pick_target(logits, target)


def _raw_features(model: GraphClassifier, graph) -> torch.Tensor:
    model.input_features(graph)  # the input checks (shape, missing features) with their messages
    return graph.ndata[FEAT].detach().to(model.feat_mean.dtype)


def gradient_x_input(model: GraphClassifier, graph, *, target: int | None = None) -> np.ndarray:
    r"""Gradient x input of the log-odds, summed over each nucleus's features.

    .. math:: s_i = \sum_f (\tilde x_{if} - \tilde x'_{if}) \,
              \frac{\partial f_c}{\partial \tilde x_{if}}(\tilde x), \qquad \tilde x' = 0

    with :math:`\tilde x` the standardised features and the baseline :math:`\tilde x' = 0` the
    training cohort's mean nucleus (the model's ``feat_mean``). It is the first-order Taylor estimate
    of how much the log-odds would fall if the nucleus's features were set to the cohort mean.

    Parameters
    ----------
    model : GraphClassifier
        Run in eval mode (restored afterwards); its parameters get no gradient.
    graph : dgl.DGLGraph
        One image's graph (raw features under ``ndata["feat"]``).
    target : int, optional
        Class to explain; default the class predicted for the graph.

    Returns
    -------
    np.ndarray, shape (N,), float64
        Signed: positive where the nucleus's deviation from the mean raises the class's log-odds.

    Raises
    ------
    InputError
        ``graph`` is a batch or has no nuclei or the wrong features, or ``target`` is out of range.
    ModelError
        ``model`` is not a nucleograph model.

    Examples
    --------
    >>> s = gradient_x_input(model, graph)  # doctest: +SKIP
    >>> s.shape == (graph.num_nodes(),)  # doctest: +SKIP
    True
    """
    _check(model, graph)
    with EvalMode(model):
        c = _target(model, graph, target)
        x = _raw_features(model, graph)
        with torch.enable_grad(), graph.local_scope():
            xin = x.clone().requires_grad_(True)
            graph.ndata[FEAT] = xin
            f = log_odds(model(graph), c).sum()
            (grad,) = torch.autograd.grad(f, xin)
    return ((x.double() - model.feat_mean.double()) * grad.double()).sum(1).cpu().numpy()


def _baseline(model: GraphClassifier, x: torch.Tensor, baseline) -> torch.Tensor:
    """The baseline's raw features ``(N, F)``: the cohort mean, or ``baseline`` checked."""
    if baseline is None:
        return model.feat_mean.to(x.dtype).expand_as(x)
    b = torch.as_tensor(np.asarray(baseline), dtype=x.dtype)
    if b.shape not in (x.shape[1:], x.shape):
        raise InputError(f"baseline has shape {tuple(b.shape)}; give raw features of shape ({x.shape[1]},) "
                         f"for every nucleus or ({x.shape[0]}, {x.shape[1]}) per nucleus, or None for the "
                         "cohort mean")
    if not bool(torch.isfinite(b).all()):
        raise InputError("baseline has NaN or infinite values; give finite raw features")
    return b.expand_as(x)


def _trapezoid(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``alpha`` and weights ``w`` of the trapezoid rule on ``[0, 1]`` with ``steps`` points."""
    alphas = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    w = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
    w[0] = w[-1] = 0.5 / (steps - 1)
    return alphas, w


def integrated_gradients(
    model: GraphClassifier,
    graph,
    *,
    target: int | None = None,
    steps: int = 32,
    baseline=None,
    batch_size: int = 8,
) -> np.ndarray:
    r"""Integrated Gradients of the log-odds, summed over each nucleus's features.

    .. math:: s_i = \sum_f (\tilde x_{if} - \tilde x'_{if}) \int_0^1
              \frac{\partial f_c}{\partial \tilde x_{if}}\big(\tilde x' + \alpha (\tilde x - \tilde x')\big)
              \, d\alpha

    along the straight path from the baseline :math:`\tilde x'` (default: every nucleus at the
    training cohort's mean features, :math:`\tilde x' = 0` standardised) to the graph's features,
    in the same graph (the edges are not interpolated). The integral is the trapezoid rule on
    ``steps`` equally spaced points :math:`\alpha_k = k / (\text{steps} - 1)`; ``batch_size`` copies of
    the graph with interpolated features go through the model in one pass.

    Completeness: :math:`\sum_i s_i = f_c(\tilde x) - f_c(\tilde x')` up to the quadrature error,
    which shrinks as ``steps`` grows (the model is piecewise smooth: ReLU) and to float rounding.

    Parameters
    ----------
    model : GraphClassifier
        Run in eval mode (restored afterwards); its parameters get no gradient.
    graph : dgl.DGLGraph
        One image's graph (raw features under ``ndata["feat"]``).
    target : int, optional
        Class to explain; default the class predicted for the graph.
    steps : int
        Points of the path, at least 2 (the model runs ``steps`` times, forward and backward).
    baseline : array-like, optional
        *Raw* baseline features, shape ``(F,)`` (the same for every nucleus) or ``(N, F)``; default
        the model's ``feat_mean``.
    batch_size : int
        Path points per model pass (memory grows linearly with it).

    Returns
    -------
    np.ndarray, shape (N,), float64
        Signed: positive where moving the nucleus from the baseline to its features raised the log-odds.

    Raises
    ------
    InputError
        ``graph`` is a batch or has no nuclei or the wrong features, ``target`` is out of range,
        ``steps < 2``, ``batch_size < 1`` or ``baseline`` has the wrong shape or is not finite.
    ModelError
        ``model`` is not a nucleograph model.

    Examples
    --------
    >>> s = integrated_gradients(model, graph, steps=64)  # doctest: +SKIP
    >>> s.sum()  # ~ log-odds of the graph minus that of the mean-feature graph  # doctest: +SKIP
    """
    _check(model, graph)
    if int(steps) != steps or steps < 2:
        raise InputError(f"steps must be an integer >= 2, got {steps!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    with EvalMode(model):
        c = _target(model, graph, target)
        x = _raw_features(model, graph)
        b = _baseline(model, x, baseline)
        alphas, weights = _trapezoid(int(steps))
        total = torch.zeros(x.shape, dtype=torch.float64)
        batches = {}  # chunk size -> the batched copies of the graph
        with torch.enable_grad():
            for start in range(0, int(steps), int(batch_size)):
                a = alphas[start:start + int(batch_size)].to(x.dtype)
                k = a.numel()
                if k not in batches:
                    batches[k] = dgl.batch([graph] * k)
                bg = batches[k]
                xin = (b + a.view(-1, 1, 1) * (x - b)).reshape(-1, x.shape[1]).requires_grad_(True)
                with bg.local_scope():
                    bg.ndata[FEAT] = xin
                    f = log_odds(model(bg), c)
                w = weights[start:start + k].to(f.dtype)
                (grad,) = torch.autograd.grad((f * w).sum(), xin)
                total += grad.view(k, *x.shape).double().sum(0)
    return ((x.double() - b.double()) * total).sum(1).cpu().numpy()


class RSFExplainerAdapter(nn.Module):
    r"""An RSF model with the call signature ``dgl.nn.GNNExplainer`` needs.

    ``forward(graph, feat, eweight=None)`` runs the wrapped :class:`nucleograph.gnn.models.RSFNet` on
    *standardised* node features ``feat`` (so GNNExplainer's feature mask, which multiplies them,
    moves a feature towards the cohort mean) and scales every edge channel of edge ``e`` by
    :math:`w_e`:

    .. math:: a_{l,e} \mapsto w_e \, a_{l,e}, \qquad l = 1..L

    The model reads its edge channels in the two vertex convolutions before Pool1 and in Pool1 (the
    embedding and :math:`S^\top A_l S`); everything after Pool1 sees only the pooled adjacency. So an
    edge with :math:`w_e = 0` carries no message anywhere in the model. With ``eweight`` None or all
    ones the logits are exactly the model's own.

    Parameters
    ----------
    model : RSFNet
        ``rsf``, ``rsf-edge`` or ``rsf-attention``.

    Shapes
    ------
    forward(graph, feat ``(N, in_feats)``, eweight ``(E,)`` or None) -> logits ``(B, n_classes)``.

    Raises
    ------
    ModelError
        ``model`` is not an RSF model (the MLP baseline has no edges to mask).
    """

    def __init__(self, model: RSFNet):
        super().__init__()
        if not isinstance(architecture(model), RSFNet):
            raise ModelError(f"GNNExplainer masks the edges of an RSF model; {type(model).__name__} has none "
                             "(use integrated gradients or occlusion for it)")
        self.model = model

    def forward(self, graph, feat: torch.Tensor, eweight: torch.Tensor | None = None) -> torch.Tensor:
        efeat = self.model.edge_features(graph)
        if eweight is not None:
            efeat = efeat * eweight.reshape(-1, 1).to(efeat.dtype)
        return self.model(graph, feat=feat, efeat=efeat)


class _LogOddsKept(nn.Module):
    r"""The objective GNNExplainer sees: two logits ``(f_c(G_M) - f_c(G), -1)``.

    GNNExplainer maximises the log-probability of the class the wrapped model predicts for the
    unmasked graph; here that is column 0 (``0 > -1``), and its log-probability is
    :math:`-\text{softplus}(\Delta - 1)` with :math:`\Delta = f_c(G) - f_c(G_M)` the drop in the
    class's log-odds the masks cause. Unlike :math:`\log p_c` of a confident model (gradient
    :math:`1 - p_c \approx 10^{-7}`), it does not saturate, and it lets ``c`` be any class.
    """

    def __init__(self, adapter: RSFExplainerAdapter, target: int, full: float):
        super().__init__()
        self.adapter, self.target, self.full = adapter, target, full

    def forward(self, graph, feat, eweight=None):
        kept = log_odds(self.adapter(graph, feat, eweight), self.target) - self.full
        return torch.stack([kept, torch.full_like(kept, -1.0)], 1)


def _node_means(graph, edge_values: torch.Tensor) -> np.ndarray:
    """Mean of ``edge_values`` ``(E,)`` over each node's in- and out-edges (0 for an isolated node)."""
    src, dst = graph.edges()
    n = graph.num_nodes()
    total = torch.zeros(n, dtype=torch.float64)
    total.index_add_(0, src.long(), edge_values.double())
    total.index_add_(0, dst.long(), edge_values.double())
    count = torch.bincount(src.long(), minlength=n) + torch.bincount(dst.long(), minlength=n)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total)).numpy()


def gnnexplainer_scores(
    model: RSFNet,
    graph,
    *,
    target: int | None = None,
    epochs: int = 100,
    lr: float = 0.01,
    seed: int = 0,
    return_masks: bool = False,
):
    r"""GNNExplainer (``dgl.nn.GNNExplainer.explain_graph``) edge masks as per-nucleus scores.

    GNNExplainer learns an edge mask :math:`M \in (0, 1)^E` and a feature mask :math:`F \in (0, 1)^D`
    (one per feature, shared by all nuclei) that keep the prediction while being small:

    .. math:: \min_{M, F} \; \text{softplus}\big(f_c(G) - f_c(G_{M,F}) - 1\big)
              + \alpha_1 \|M\|_1 + \alpha_2 H(M) + \beta_1 \overline{F} + \beta_2 H(F)

    with DGL's default coefficients, where :math:`G_{M,F}` scales edge ``e``'s channels by
    :math:`M_e` (:class:`RSFExplainerAdapter`) and multiplies the standardised features by
    :math:`F` (a masked feature moves to the cohort mean). The prediction term is the log-probability
    GNNExplainer maximises, taken of the log-odds drop rather than of :math:`p_c` (which saturates;
    see ``_LogOddsKept``). A nucleus scores the mean mask over its incident edges (in and out):
    high where the edges it sends and receives are needed to keep the class's log-odds.

    Parameters
    ----------
    model : RSFNet
        ``rsf``, ``rsf-edge`` or ``rsf-attention``; a frozen copy is explained, so the model itself is
        never changed, put in another mode or given gradients.
    graph : dgl.DGLGraph
        One image's graph (raw features).
    target : int, optional
        Class to explain; default the class predicted for the graph.
    epochs : int
        Optimisation steps (Adam, each one forward and backward pass of the model).
    lr : float
        Adam's learning rate.
    seed : int
        Seeds the random initial masks; the same seed gives the same scores (torch's global random
        state is restored afterwards).
    return_masks : bool
        Also return the edge mask ``(E,)`` and the feature mask ``(D,)``.

    Returns
    -------
    np.ndarray, shape (N,), float64
        In ``[0, 1]``; an isolated nucleus (no edges to mask) scores 0, as does every nucleus of a
        graph without edges. With ``return_masks``: ``(scores, edge_mask, feat_mask)``, float64 arrays
        of shapes ``(E,)`` and ``(D,)`` (a graph without edges learns no masks: both zeros).

    Raises
    ------
    InputError
        ``graph`` is a batch or has no nuclei or the wrong features, ``target`` is out of range, or
        ``epochs``/``lr`` is not positive.
    ModelError
        ``model`` is not an RSF model.
    """
    _check(model, graph)
    if int(epochs) != epochs or epochs < 1:
        raise InputError(f"epochs must be a positive integer, got {epochs!r}")
    if not lr > 0:
        raise InputError(f"lr must be positive, got {lr!r}")
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    adapter = RSFExplainerAdapter(frozen)
    with torch.no_grad():
        feat = frozen.input_features(graph)
        c = pick_target(frozen(graph)[0].double().numpy(), target)
        full = float(log_odds(adapter(graph, feat), c)[0])
    if graph.num_edges() == 0:
        scores = np.zeros(graph.num_nodes())
        return (scores, np.zeros(0), np.zeros(feat.shape[1])) if return_masks else scores
    explainer = GNNExplainer(_LogOddsKept(adapter, c, full), num_hops=3, lr=lr, num_epochs=int(epochs), log=False)
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)
        feat_mask, edge_mask = explainer.explain_graph(graph, feat)
    scores = _node_means(graph, edge_mask)
    return (scores, edge_mask.double().numpy(), feat_mask.double().numpy()) if return_masks else scores
