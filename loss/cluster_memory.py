"""Cluster-contrast's memory and loss (Dai et al.; `clustercontrast/models/cm.py` of
alibaba/cluster-contrast-reid, bundled unchanged by TransReID-SSL).

The memory holds one L2-normalised feature per pseudo-identity. The loss is the cross-entropy of
the batch's normalised features against all of them, scaled by 1 / temperature. The memory moves
in the backward pass, after the gradient has used its current rows:

* centroid memory (their `CM`): each crop of the batch, in batch order, pulls its cluster's row
  by momentum, row renormalised after each crop;
* hard memory (their `CM_Hard`, which TransReID-SSL's scripts use): each cluster of the batch is
  pulled by its crop least similar to its row (the first such crop on a tie).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import autograd, nn


def _occurrence(targets: torch.Tensor) -> torch.Tensor:
    """For each position, how many earlier positions hold the same target."""
    order = torch.sort(targets, stable=True).indices
    sorted_targets = targets[order]
    starts = torch.ones_like(sorted_targets, dtype=torch.bool)
    starts[1:] = sorted_targets[1:] != sorted_targets[:-1]
    position = torch.arange(len(targets), device=targets.device)
    group_start = torch.cummax(torch.where(starts, position, 0), 0).values
    occurrence = torch.empty_like(targets)
    occurrence[order] = position - group_start
    return occurrence


def _pull(memory: torch.Tensor, rows: torch.Tensor, inputs: torch.Tensor, momentum: float) -> None:
    """memory[rows] ← normalise(momentum · memory[rows] + (1 − momentum) · inputs); rows distinct."""
    moved = memory[rows] * momentum + inputs * (1. - momentum)
    memory[rows] = moved / moved.norm(dim=1, keepdim=True)


def centroid_update(memory: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor,
                    momentum: float) -> None:
    """Their CM: one crop after another. Crops of different clusters do not interact, so the
    k-th crops of all clusters move together."""
    occurrence = _occurrence(targets)
    for k in range(int(occurrence.max()) + 1 if len(targets) else 0):
        at = occurrence == k
        _pull(memory, targets[at], inputs[at], momentum)


def hard_update(memory: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor,
                momentum: float) -> None:
    """Their CM_Hard: each cluster moves towards its crop least similar to its row."""
    similarity = torch.einsum("bd,bd->b", inputs, memory[targets])
    lowest = torch.full((len(memory),), float("inf"), device=inputs.device,
                        dtype=similarity.dtype).scatter_reduce_(0, targets, similarity, "amin")
    position = torch.arange(len(targets), device=targets.device)
    hardest = torch.full((len(memory),), len(targets), device=targets.device).scatter_reduce_(
        0, targets, torch.where(similarity == lowest[targets], position, len(targets)), "amin")
    classes = torch.unique(targets)
    _pull(memory, classes, inputs[hardest[classes]], momentum)


class _MemoryProduct(autograd.Function):
    """inputs @ memoryᵀ forward; backward gives the input gradient, then moves the memory."""

    @staticmethod
    def forward(ctx, inputs, targets, memory, momentum, use_hard):
        ctx.save_for_backward(inputs, targets)
        ctx.memory, ctx.momentum, ctx.use_hard = memory, momentum, use_hard
        return inputs.mm(memory.t())

    @staticmethod
    def backward(ctx, grad_outputs):
        inputs, targets = ctx.saved_tensors
        grad_inputs = grad_outputs.mm(ctx.memory) if ctx.needs_input_grad[0] else None
        with torch.no_grad():
            update = hard_update if ctx.use_hard else centroid_update
            update(ctx.memory, inputs, targets, ctx.momentum)
        return grad_inputs, None, None, None, None


class ClusterMemory(nn.Module):
    """The memory of `num_clusters` features and its contrastive loss (their `ClusterMemory`;
    their defaults: temperature 0.05, momentum 0.2; TransReID-SSL's scripts set `use_hard`)."""

    def __init__(self, num_features: int, num_clusters: int, temp: float = 0.05,
                 momentum: float = 0.2, use_hard: bool = False):
        super().__init__()
        if temp <= 0:
            raise ValueError(f"the cluster memory's temperature must be positive, got {temp}")
        if not 0 <= momentum <= 1:
            raise ValueError(f"the cluster memory's momentum must lie in [0, 1], got {momentum}")
        self.num_features, self.num_clusters = num_features, num_clusters
        self.temp, self.momentum, self.use_hard = temp, momentum, use_hard
        self.register_buffer("features", torch.zeros(num_clusters, num_features))

    @classmethod
    def from_centroids(cls, centroids: torch.Tensor, temp: float = 0.05, momentum: float = 0.2,
                       use_hard: bool = False) -> "ClusterMemory":
        """A memory started, as theirs each epoch, from the clusters' mean features (normalised)."""
        memory = cls(centroids.shape[1], len(centroids), temp, momentum, use_hard)
        memory.features = F.normalize(centroids.detach().float(), dim=1).to(centroids.device)
        return memory

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if inputs.shape[1] != self.num_features:
            raise ValueError(f"features of width {inputs.shape[1]} for a cluster memory of "
                             f"width {self.num_features}")
        # float32 whatever the autocast: the backward adds these features into the memory
        with torch.autocast(device_type=inputs.device.type, enabled=False):
            inputs = F.normalize(inputs.float(), dim=1)
            logits = _MemoryProduct.apply(inputs, targets, self.features, self.momentum,
                                          self.use_hard)
            return F.cross_entropy(logits / self.temp, targets)
