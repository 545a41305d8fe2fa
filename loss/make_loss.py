"""The training loss of a config: ID loss, plus triplet and/or center loss."""
from __future__ import annotations

import logging
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from config import switches
from model.backbones.specs import feature_dim

from .center_loss import CenterLoss
from .softmax_loss import CrossEntropyLabelSmooth
from .triplet_loss import TripletLoss

logger = logging.getLogger("transreid.loss")

LABEL_SMOOTHING_EPSILON = 0.1

BranchOutputs = Union[torch.Tensor, Sequence[torch.Tensor]]


def _global_and_local_average(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                              outputs: BranchOutputs, target: torch.Tensor) -> torch.Tensor:
    """`loss_fn` on a single output, or, for JPM's [global, local_1..n] list,
    0.5 × the mean over the local branches + 0.5 × the global branch (as the reference)."""
    if isinstance(outputs, torch.Tensor):
        return loss_fn(outputs, target)
    global_output, *local_outputs = outputs
    global_loss = loss_fn(global_output, target)
    if not local_outputs:
        return global_loss
    local_loss = sum(loss_fn(output, target) for output in local_outputs) / len(local_outputs)
    return 0.5 * local_loss + 0.5 * global_loss


# Every part ReIDLoss can compute, by the names of `last_parts`: metrics.csv's loss columns,
# TensorBoard and tools/plot_training.py iterate this tuple.
LOSS_PARTS = ('id_loss', 'triplet_loss', 'center_loss')


class ReIDLoss(nn.Module):
    """ID_LOSS_WEIGHT × ID + TRIPLET_LOSS_WEIGHT × triplet + CENTER_LOSS_WEIGHT × center.

    Called as the reference's loss_func: `(score, feat, target, target_cam)`, where score and
    feat are tensors or JPM lists. A term whose module is None is left out. The center loss is
    applied to the global feature only: the JPM local features are different embeddings and
    would be pulled towards the same centres.

    After each call `last_parts` holds the unweighted terms of that call ('id_loss', and
    'triplet_loss' / 'center_loss' when used) as detached tensors on the loss's device, so
    that a trainer can log them without a host sync of its own; the returned loss is
    Σ weight × part (`weights` names each part's weight).
    """

    def __init__(self, id_loss: nn.Module, id_weight: float,
                 triplet: Optional[TripletLoss] = None, triplet_weight: float = 1.0,
                 center: Optional[CenterLoss] = None, center_weight: float = 0.0) -> None:
        super().__init__()
        self.id_loss = id_loss
        self.id_weight = id_weight
        self.triplet = triplet
        self.triplet_weight = triplet_weight
        self.center = center
        self.center_weight = center_weight
        self.last_parts: Dict[str, torch.Tensor] = {}

    @property
    def weights(self) -> Dict[str, float]:
        """The weight of each part this loss computes, by the names of `last_parts`."""
        weights = {'id_loss': self.id_weight}
        if self.triplet is not None:
            weights['triplet_loss'] = self.triplet_weight
        if self.center is not None:
            weights['center_loss'] = self.center_weight
        return weights

    def forward(self, score: BranchOutputs, feat: BranchOutputs, target: torch.Tensor,
                target_cam: Optional[torch.Tensor] = None) -> torch.Tensor:
        parts = {'id_loss': _global_and_local_average(self.id_loss, score, target)}
        if self.triplet is not None:
            parts['triplet_loss'] = _global_and_local_average(self.triplet, feat, target)
        if self.center is not None:
            global_feat = feat if isinstance(feat, torch.Tensor) else feat[0]
            parts['center_loss'] = self.center(global_feat, target)
        self.last_parts = {name: part.detach() for name, part in parts.items()}
        weights = self.weights
        return sum(weights[name] * part for name, part in parts.items())


def make_loss(cfg, num_classes: int) -> Tuple[ReIDLoss, CenterLoss]:
    """`(loss_func, center_criterion)` for `cfg`; center_criterion is created in every case
    (its optimizer is built regardless, as the reference) and is on the CPU."""
    # Choices checked by load_config (config.choices), the center loss's sampler too.
    sampler, metric = cfg.DATALOADER.SAMPLER, cfg.MODEL.METRIC_LOSS_TYPE
    center_criterion = CenterLoss(num_classes=num_classes, feat_dim=feature_dim(cfg))

    smoothing = LABEL_SMOOTHING_EPSILON if switches(cfg).label_smooth else 0.0
    id_loss = CrossEntropyLabelSmooth(epsilon=smoothing)
    logger.info("ID loss: cross-entropy with label smoothing %.1f", smoothing)

    # With the plain-shuffle sampler the loss is the ID loss alone, as the reference: its
    # batches need not hold two images of an identity.
    use_metric = sampler == 'softmax_triplet'
    triplet = None
    if use_metric and 'triplet' in metric:
        margin = None if cfg.MODEL.NO_MARGIN else cfg.SOLVER.MARGIN
        triplet = TripletLoss(margin)
        logger.info("triplet loss: %s", triplet.extra_repr())
    center = None
    if 'center' in metric:
        center = center_criterion
        logger.info("center loss: weight %g, feature width %d", cfg.SOLVER.CENTER_LOSS_WEIGHT,
                    center.feat_dim)

    loss_func = ReIDLoss(id_loss, cfg.MODEL.ID_LOSS_WEIGHT,
                         triplet, cfg.MODEL.TRIPLET_LOSS_WEIGHT,
                         center, cfg.SOLVER.CENTER_LOSS_WEIGHT)
    return loss_func, center_criterion
