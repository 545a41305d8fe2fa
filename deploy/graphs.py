"""The inference graphs that deployment exports: a trained model with flip, the SIE labels and
(for the portable form) the input normalisation inside the graph.

Two forms:

* `LabelledGraph`: the model as `FeatureExtractor` runs it. Inputs: images normalised by the
  config's INPUT.PIXEL_MEAN / PIXEL_STD, and an int64 camera (view) label per image for a model
  with SIE. The runtime side (`deploy.backends`) can then average over cameras exactly as
  PyTorch does.
* `PortableGraph`: one image input, one feature output, as trackers call a re-ID model (boxmot
  feeds only the graph's first input, with ImageNet-normalised RGB crops). The ImageNet
  normalisation is folded back into the model's own, and the SIE camera / view handling is
  built in by one of `CAMERA_MODES`.

Both compute TEST.FLIP_FEATS inside the graph (mean of the image's and its mirror's feature,
before normalisation, as `FeatureExtractor`) and return float32 features, not L2-normalised.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from model.trained import SideInfoCounts, flip_mean

from .formats import EXACT_MEAN, PORTABLE
from .metadata import INPUT_NAMES, DeployMetadata

# torchvision / timm's ImageNet statistics: what trackers (boxmot) feed every re-ID model.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# How the portable form replaces the per-image SIE labels.


class LabelledGraph(nn.Module):
    """The eval-mode model with the SIE labels as plain int64 inputs (one per image) and flip."""

    def __init__(self, model: nn.Module, flip: bool) -> None:
        super().__init__()
        self.model = model
        self.flip = flip
        # The exporter restores the wrapper's mode on every submodule afterwards: keep it eval.
        self.eval()

    def forward(self, images: torch.Tensor, cam_label: torch.Tensor,
                view_label: torch.Tensor) -> torch.Tensor:
        return flip_mean(self.model, images, self.flip, cam_label=cam_label, view_label=view_label)


def label_pairs(cameras: int, views: int, mode: str, camera: int = 0,
                view: int = 0) -> List[Tuple[int, int]]:
    """The (camera, view) pairs whose features a portable graph averages: every known pair for
    the exact mean, one for a fixed camera (view) or a model without SIE."""
    counts = SideInfoCounts(cameras, views)
    counts.check("camera", camera, f"--camera {camera}")
    counts.check("view", view, f"--view {view}")
    if mode != EXACT_MEAN:
        return [(camera if cameras else 0, view if views else 0)]
    return [(c, v) for c in range(max(cameras, 1)) for v in range(max(views, 1))]


def with_averaged_sie(model: nn.Module) -> nn.Module:
    """A copy of `model` whose SIE table is one row, the mean of its rows: one pass gives the
    feature of the average camera (view) embedding, an approximation of the exact mean that
    the export measures and prints. Labels 0 then pick that row."""
    averaged = copy.deepcopy(model)
    base = getattr(averaged, "base", None)
    if getattr(base, "sie_embed", None) is not None:
        # sie_index computes camera * view_num + view: with both labels 0 that is row 0.
        base.sie_embed = nn.Parameter(base.sie_embed.detach().mean(0, keepdim=True))
    return averaged


class PortableGraph(nn.Module):
    """One input (ImageNet-normalised RGB, N x 3 x H x W), one output (N x D features).

    `pixel_mean` / `pixel_std` are the model's own (INPUT.PIXEL_MEAN / STD): the graph undoes
    the ImageNet normalisation and applies the model's, one affine map per channel.
    """

    def __init__(self, model: nn.Module, flip: bool, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], pairs: Sequence[Tuple[int, int]]) -> None:
        super().__init__()
        self.model = model
        self.flip = flip
        imagenet_mean, imagenet_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        mean, std = torch.tensor(list(pixel_mean)), torch.tensor(list(pixel_std))
        # x_model = (x_imagenet * s_in + m_in - m) / s = x_imagenet * scale + shift
        self.register_buffer("scale", (imagenet_std / std).view(1, 3, 1, 1))
        self.register_buffer("shift", ((imagenet_mean - mean) / std).view(1, 3, 1, 1))
        self.pairs = [tuple(pair) for pair in pairs]
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images * self.scale + self.shift
        labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        total = None
        for camera, view in self.pairs:
            feats = flip_mean(self.model, x, self.flip, cam_label=labels + camera,
                              view_label=labels + view)
            total = feats if total is None else total + feats
        return total / len(self.pairs)


def graph_inputs(metadata: DeployMetadata, images: torch.Tensor, cams: torch.Tensor,
                 views: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The graph's inputs for images normalised as the model's config says: the portable form
    takes them ImageNet-normalised instead, and no labels."""
    if metadata.form == PORTABLE:
        return {INPUT_NAMES[0]: to_imagenet(images, metadata.provenance)}
    return dict(zip(INPUT_NAMES, (images, cams, views)))


def to_imagenet(images: torch.Tensor, provenance: Dict[str, object]) -> torch.Tensor:
    """Images normalised by INPUT.PIXEL_MEAN / STD, re-normalised by ImageNet's statistics."""
    def column(values) -> torch.Tensor:
        return torch.tensor(values, dtype=images.dtype).view(1, 3, 1, 1)
    pixels = images * column(provenance["INPUT.PIXEL_STD"]) + column(provenance["INPUT.PIXEL_MEAN"])
    return (pixels - column(IMAGENET_MEAN)) / column(IMAGENET_STD)
