"""The training loss of a config: ID loss, plus triplet and/or center loss, plus CLIP-ReID's
image-to-text cross-entropy for its models."""
from __future__ import annotations

import logging
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from config import switches
from config.stages import is_clipreid
from model.backbones.specs import feature_dim
from model.clipreid_objectives import i2t_logits

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


def _sum_over_outputs(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      outputs: BranchOutputs, target: torch.Tensor) -> torch.Tensor:
    """`loss_fn` summed over CLIP-ReID's lists (two classifiers' scores; three features), as its
    make_loss does."""
    if isinstance(outputs, torch.Tensor):
        return loss_fn(outputs, target)
    return sum(loss_fn(output, target) for output in outputs)


# Every part ReIDLoss can compute, by the names of `last_parts`: metrics.csv's loss columns,
# TensorBoard and tools/plot_training.py iterate this tuple.
LOSS_PARTS = ('id_loss', 'triplet_loss', 'center_loss', 'i2t_loss')


class ReIDLoss(nn.Module):
    """ID_LOSS_WEIGHT × ID + TRIPLET_LOSS_WEIGHT × triplet + CENTER_LOSS_WEIGHT × center.

    Called as the reference's loss_func: `(score, feat, target, target_cam)`, where score and
    feat are tensors or JPM lists. A term whose module is None is left out. The center loss is
    applied to the global feature only: the JPM local features are different embeddings and
    would be pulled towards the same centres.

    CLIP-ReID (`clip_style`): the ID and triplet terms are summed over its lists instead of
    JPM's average, and with `i2t_weight` the call takes a fifth argument, the images' projected
    features, for the image-to-text cross-entropy (smoothed as the ID loss) against every
    identity's text feature, which `start_training` computes once from the trained prompts.

    After each call `last_parts` holds the unweighted terms of that call ('id_loss', and
    'triplet_loss' / 'center_loss' when used) as detached tensors on the loss's device, so
    that a trainer can log them without a host sync of its own; the returned loss is
    Σ weight × part (`weights` names each part's weight).
    """

    def __init__(self, id_loss: nn.Module, id_weight: float,
                 triplet: Optional[TripletLoss] = None, triplet_weight: float = 1.0,
                 center: Optional[CenterLoss] = None, center_weight: float = 0.0,
                 clip_style: bool = False, i2t_weight: float = 0.0, text_chunk: int = 64) -> None:
        super().__init__()
        self.reduce = _sum_over_outputs if clip_style else _global_and_local_average
        self.i2t_weight = i2t_weight
        self.text_chunk = text_chunk
        self.text_features: Optional[torch.Tensor] = None
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
        if self.i2t_weight:
            weights['i2t_loss'] = self.i2t_weight
        return weights

    def start_training(self, model: nn.Module, device: torch.device) -> None:
        """Before the first step: every identity's text feature, the image-to-text loss's fixed
        targets (CLIP-ReID's stage 2 computes them once, in chunks of STAGE2.IMS_PER_BATCH)."""
        if self.i2t_weight:
            self.text_features = model.identity_text_features(self.text_chunk).to(device)

    def forward(self, score: BranchOutputs, feat: BranchOutputs, target: torch.Tensor,
                target_cam: Optional[torch.Tensor] = None,
                image_projection: Optional[torch.Tensor] = None) -> torch.Tensor:
        parts = {'id_loss': self.reduce(self.id_loss, score, target)}
        if self.triplet is not None:
            parts['triplet_loss'] = self.reduce(self.triplet, feat, target)
        if self.center is not None:
            global_feat = feat if isinstance(feat, torch.Tensor) else feat[0]
            parts['center_loss'] = self.center(global_feat, target)
        if self.i2t_weight:
            parts['i2t_loss'] = self.id_loss(self._i2t_logits(image_projection), target)
        self.last_parts = {name: part.detach() for name, part in parts.items()}
        weights = self.weights
        return sum(weights[name] * part for name, part in parts.items())


    def _i2t_logits(self, image_projection: Optional[torch.Tensor]) -> torch.Tensor:
        if image_projection is None or self.text_features is None:
            raise RuntimeError("the image-to-text loss needs the images' projected features (the "
                               "model's third training output) and start_training() before the first step")
        return i2t_logits(image_projection, self.text_features.to(image_projection.dtype))


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

    clip_style = is_clipreid(cfg)
    i2t_weight = cfg.MODEL.I2T_LOSS_WEIGHT if clip_style else 0.0
    if clip_style:
        logger.info("CLIP-ReID: ID and triplet losses summed over its outputs; image-to-text "
                    "loss, weight %g", i2t_weight)
    loss_func = ReIDLoss(id_loss, cfg.MODEL.ID_LOSS_WEIGHT,
                         triplet, cfg.MODEL.TRIPLET_LOSS_WEIGHT,
                         center, cfg.SOLVER.CENTER_LOSS_WEIGHT,
                         clip_style=clip_style, i2t_weight=i2t_weight,
                         text_chunk=cfg.SOLVER.STAGE2.IMS_PER_BATCH)
    return loss_func, center_criterion
