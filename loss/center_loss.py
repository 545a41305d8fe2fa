"""Center loss (Wen et al., ECCV 2016)."""
from __future__ import annotations

import torch
from torch import nn


class CenterLoss(nn.Module):
    """Mean over the batch of the squared distance between each feature and its class centre.

    The centres are learned parameters (randn-initialised as the reference), updated by their
    own optimizer (SOLVER.CENTER_LR). The module is created on the CPU: move it to the
    training device with `.to(device)` like the model.

    The reference expands ‖x − c‖² over every class and masks all but the target one; picking
    each sample's centre gives the same value (up to the reference's 1e-12 floor on the masked
    entries) with a B×D instead of a B×K computation.
    """

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if features.shape[1:] != (self.feat_dim,):
            raise ValueError(f"center loss expects features of width {self.feat_dim}, got shape "
                             f"{tuple(features.shape)}")
        own_centers = self.centers[labels]
        squared_dist = (features.float() - own_centers).pow(2).sum(dim=1)
        return squared_dist.clamp(min=1e-12, max=1e12).mean()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, feat_dim={self.feat_dim}"
