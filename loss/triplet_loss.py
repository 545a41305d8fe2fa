"""Triplet loss with batch-hard mining (Hermans et al., 2017), as the TransReID reference."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F


def euclidean_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances (m×n) between the rows of `x` (m×d) and `y` (n×d).

    Expanded as ‖x‖² + ‖y‖² − 2·x·yᵀ and clamped at 1e-12 before the square root, as the
    reference does: the clamp keeps the gradient of sqrt finite at zero distance, and the
    same formula keeps the mined distances equal to the reference's.
    """
    squared = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1, keepdim=True).t()
    squared = squared.addmm(x, y.t(), beta=1, alpha=-2)
    return squared.clamp(min=1e-12).sqrt()


def hard_example_mining(dist_mat: torch.Tensor,
                        labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each anchor (row), the largest distance to a same-label sample (the anchor itself
    included, as the reference) and the smallest distance to a different-label sample.

    Masked max/min give the reference's values for P×K batches and also work when identities
    have different image counts (the reference's reshape needs equal counts).
    """
    if dist_mat.dim() != 2 or dist_mat.size(0) != dist_mat.size(1):
        raise ValueError(f"expected a square distance matrix, got shape {tuple(dist_mat.shape)}")
    same_id = labels.unsqueeze(0) == labels.unsqueeze(1)
    dist_ap = dist_mat.masked_fill(~same_id, float('-inf')).amax(dim=1)
    dist_an = dist_mat.masked_fill(same_id, float('inf')).amin(dim=1)
    return dist_ap, dist_an


class TripletLoss(nn.Module):
    """Batch-hard triplet loss on the hardest positive and negative of each anchor.

    With a margin m: mean(max(0, d_ap − d_an + m)); without one (MODEL.NO_MARGIN), the soft
    margin mean(log(1 + exp(d_ap − d_an))).
    """

    def __init__(self, margin: Optional[float] = None) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Distances in fp32 even under mixed precision: the expanded form cancels badly in fp16.
        with torch.autocast(device_type=features.device.type, enabled=False):
            dist_mat = euclidean_dist(features.float(), features.float())
        dist_ap, dist_an = hard_example_mining(dist_mat, labels)
        ones = torch.ones_like(dist_an)
        if self.margin is None:
            return F.soft_margin_loss(dist_an - dist_ap, ones)
        return F.margin_ranking_loss(dist_an, dist_ap, ones, margin=self.margin)

    def extra_repr(self) -> str:
        return "soft margin" if self.margin is None else f"margin={self.margin}"
