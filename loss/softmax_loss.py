"""Identity (classification) loss."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy against the smoothed target (1 - ε)·one_hot + ε/K (Szegedy et al., 2016).

    This is the reference's CrossEntropyLabelSmooth; torch's `label_smoothing` computes the same
    target, so it is used directly. ε = 0 is the plain cross-entropy.
    """

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"label-smoothing epsilon must lie in [0, 1), got {epsilon}")
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, label_smoothing=self.epsilon)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}"
