"""Identity classifiers of the re-ID models (`MODEL.ID_LOSS_TYPE`).

'softmax' is a bias-free linear layer; the others are the cosine-margin layers of the reference's
`loss/metric_learning.py` (Arcface, Cosface, AMSoftmax, CircleLoss), which need the labels in
training to put the margin on the target class. Parameter names and layouts are the reference's
so that its checkpoints load (`weight` is classes x features, except AMSoftmax's transposed `W`).
"""
from __future__ import annotations

import math
from typing import Dict, Type

import torch
import torch.nn.functional as F
from torch import nn

from config import check_choice
from config.choices import ID_LOSS_TYPES


class MarginHead(nn.Module):
    """Cosine similarity to class weights, with a margin on the target class; call with labels."""

    def __init__(self, in_features: int, num_classes: int, scale: float, margin: float) -> None:
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        self.s = scale
        self.m = margin
        self._init_weight()

    def _init_weight(self) -> None:
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.in_features))
        nn.init.xavier_uniform_(self.weight)

    def class_weights(self) -> torch.Tensor:
        """Class weights as a (num_classes, in_features) matrix."""
        return self.weight

    def margin_logits(self, cosine: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, feat: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(feat), F.normalize(self.class_weights()))
        one_hot = F.one_hot(label.long(), self.num_classes).to(cosine.dtype)
        return self.margin_logits(cosine, one_hot)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, s={self.s}, m={self.m}"


class Arcface(MarginHead):
    """Additive angular margin: s·cos(θ + m) on the target class (Deng et al., 2019)."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0, margin: float = 0.30) -> None:
        super().__init__(in_features, num_classes, scale, margin)
        self.cos_m = math.cos(margin)
        self.sin_m = math.sin(margin)
        # Beyond θ = π - m, cos(θ + m) stops decreasing; fall back to a linear penalty there.
        self.th = math.cos(math.pi - margin)
        self.mm = math.sin(math.pi - margin) * margin

    def margin_logits(self, cosine: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        # The clamp keeps rounding (|cos| slightly above 1) from producing NaN.
        sine = (1.0 - cosine.pow(2)).clamp_min(0.0).sqrt()
        phi = cosine * self.cos_m - sine * self.sin_m
        phi = torch.where(cosine > self.th, phi, cosine - self.mm)
        return self.s * (one_hot * phi + (1.0 - one_hot) * cosine)


class Cosface(MarginHead):
    """Additive cosine margin: s·(cos θ - m) on the target class (Wang et al., 2018)."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0, margin: float = 0.30) -> None:
        super().__init__(in_features, num_classes, scale, margin)

    def margin_logits(self, cosine: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        return self.s * (cosine - self.m * one_hot)


class AMSoftmax(Cosface):
    """Cosface's maths with the reference's AM-Softmax weight: `W`, features x classes, Xavier-normal."""

    def _init_weight(self) -> None:
        self.W = nn.Parameter(torch.empty(self.in_features, self.num_classes))
        nn.init.xavier_normal_(self.W, gain=1)

    def class_weights(self) -> torch.Tensor:
        return self.W.t()


class CircleLoss(MarginHead):
    """Circle-loss logits with self-paced weights (Sun et al., 2020)."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 256.0, margin: float = 0.25) -> None:
        super().__init__(in_features, num_classes, scale, margin)

    def _init_weight(self) -> None:
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def margin_logits(self, cosine: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        # The weights alpha are constants (detached), as in the paper.
        alpha_p = (1.0 + self.m - cosine.detach()).clamp_min(0.0)
        alpha_n = (cosine.detach() + self.m).clamp_min(0.0)
        logit_p = self.s * alpha_p * (cosine - (1.0 - self.m))
        logit_n = self.s * alpha_n * (cosine - self.m)
        return one_hot * logit_p + (1.0 - one_hot) * logit_n


MARGIN_HEADS: Dict[str, Type[MarginHead]] = {
    'arcface': Arcface,
    'cosface': Cosface,
    'amsoftmax': AMSoftmax,
    'circle': CircleLoss,
}
assert ID_LOSS_TYPES == ('softmax',) + tuple(MARGIN_HEADS), "config/choices.py ID_LOSS_TYPES is stale"


def linear_classifier(in_features: int, num_classes: int) -> nn.Linear:
    """Bias-free linear classifier with N(0, 0.001²) weights, as the reference initialises it."""
    classifier = nn.Linear(in_features, num_classes, bias=False)
    nn.init.normal_(classifier.weight, std=0.001)
    return classifier


def make_classifier(id_loss_type: str, in_features: int, num_classes: int,
                    scale: float, margin: float) -> nn.Module:
    """Classifier for `MODEL.ID_LOSS_TYPE`; margin heads use `SOLVER.COSINE_SCALE/COSINE_MARGIN`."""
    if check_choice('MODEL.ID_LOSS_TYPE', id_loss_type, ID_LOSS_TYPES) == 'softmax':
        return linear_classifier(in_features, num_classes)
    return MARGIN_HEADS[id_loss_type](in_features, num_classes, scale=scale, margin=margin)


def make_bn_neck(num_features: int) -> nn.BatchNorm1d:
    """BN neck of the strong baseline: weight 1, bias 0 and frozen (the bias is not trained)."""
    neck = nn.BatchNorm1d(num_features)
    nn.init.ones_(neck.weight)
    nn.init.zeros_(neck.bias)
    neck.bias.requires_grad_(False)
    return neck
