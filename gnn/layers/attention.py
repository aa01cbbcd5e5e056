"""Node attention: one score per nucleus that gates its features."""

from __future__ import annotations

import torch
from torch import nn


class NodeAttention(nn.Module):
    r"""Per-node sigmoid gate.

    .. math:: a_i = \sigma(w^\top h_i + b), \qquad h'_i = a_i\, h_i

    A sigmoid rather than a softmax over the graph's nodes: each score lies in ``(0, 1)`` on its own,
    independent of how many nuclei the image has, so scores compare across images and read directly
    as "how much of this nucleus passes on".

    Shapes
    ------
    feat ``(..., F)`` -> gated feat ``(..., F)`` and scores ``(...)``. The layer is pointwise, so it
    works on sparse ``(N, F)`` and dense ``(B, N, F)`` features alike; ``graph`` is accepted for a
    uniform layer signature and not used.
    """

    def __init__(self, in_feats: int):
        super().__init__()
        self.in_feats = in_feats
        self.score = nn.Linear(in_feats, 1)
        self.reset_parameters()

    def reset_parameters(self):
        self.score.reset_parameters()
        # start open (sigmoid(1) ~ 0.73) so early training sees all nuclei
        nn.init.constant_(self.score.bias, 1.0)

    def extra_repr(self) -> str:
        return f"in_feats={self.in_feats}, gate=sigmoid"

    def forward(self, graph, feat: torch.Tensor):
        return self.gated(feat)

    @torch.jit.export
    def gated(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The gated features and the scores, without the graph (TorchScript callers: the fast occlusion
        path's compiled node update)."""
        scores = torch.sigmoid(self.score(feat)).squeeze(-1)
        return feat * scores.unsqueeze(-1), scores
