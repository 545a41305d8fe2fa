"""Training augmentation split between the loader workers and the training device
(INPUT.DEVICE_AUGMENT).

The reference path (`build_train_transforms`) does all per-pixel work in the workers: resize,
flip, pad, crop, float conversion, normalisation and random erasing. Here the workers keep
only what needs the source image or the per-image seed:

* `WorkerAugment` (worker side): decode is done by the dataset; this resizes (the same bicubic
  resize) to a 3 x H x W uint8 tensor and draws the image's random parameters, in the order
  and from the generators the reference transforms use, so that under the same per-image
  seed (`seeded_random_state`) they are exactly the reference's flip, crop and erasing
  rectangle. The uint8 batch is a quarter of the float one to move.
* `DeviceAugment` (device side): flip, zero pad + crop (one gather), float conversion,
  normalisation and erasing of a whole uint8 batch with those parameters, with no loop over
  the images.

Outside erased rectangles the result equals the reference path bit for bit (the same float32
operations in the same order). Inside them the fill is N(0, 1) noise as timm's 'pixel' mode,
but not timm's numbers: see `seeded_normal`.

With INPUT.DEVICE_AUGMENT the training loader yields `(uint8 images, pids, camids, viewids,
params)`; the trainer then does, once per batch on the device:

    augment = DeviceAugment.from_cfg(cfg).to(device)      # once
    images = augment(images.to(device), params.to(device))

Without a GPU keep it off: the per-pixel work would then run in the training process instead
of in parallel workers (benchmarks/bench_loader.py measures both).
"""
from __future__ import annotations

import enum
import math
import random
from typing import Sequence, Tuple

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image
from torch import nn

from .transforms import train_random_erasing, train_resize

MASK32 = 0xFFFFFFFF
# Attempts at an erasing rectangle that fits, as timm's RandomErasing._erase.
ERASE_ATTEMPTS = 10


class Param(enum.IntEnum):
    """Columns of the int64 parameter rows that `WorkerAugment` draws and `DeviceAugment` reads."""
    FLIP = 0         # 1: flip horizontally
    CROP_TOP = 1     # crop offsets in the padded image
    CROP_LEFT = 2
    ERASE = 3        # 1: erase the rectangle below
    ERASE_TOP = 4
    ERASE_LEFT = 5
    ERASE_HEIGHT = 6
    ERASE_WIDTH = 7
    FILL_SEED = 8    # seed of the rectangle's noise, in [0, 2**32)


NUM_PARAMS = len(Param)


# ------------------------------------------------------------------------------- worker side
class WorkerAugment:
    """PIL image -> (3 x H x W uint8 image resized to INPUT.SIZE_TRAIN, NUM_PARAMS int64 params).

    Called under the image's seed (SeededImageDataset), it makes the same draws as
    `build_train_transforms(cfg)` in the same order: flip from torch's generator
    (RandomHorizontalFlip), crop offsets from torch's generator (RandomCrop.get_params), the
    erasing rectangle from Python's `random` (timm's RandomErasing); then one extra draw from
    torch's generator, the fill seed, where the reference draws its noise.
    """

    def __init__(self, cfg):
        self.resize = train_resize(cfg)
        self.size: Tuple[int, int] = tuple(cfg.INPUT.SIZE_TRAIN)
        self.flip_prob = float(cfg.INPUT.PROB)
        self.padding = int(cfg.INPUT.PADDING)
        self.erasing = train_random_erasing(cfg)
        if not self.erasing.min_count == self.erasing.max_count == 1:
            raise ValueError(f"datasets/device_augment.py reproduces timm's RandomErasing with "
                             f"one rectangle; train_random_erasing gives count "
                             f"{self.erasing.min_count}..{self.erasing.max_count}")

    def __call__(self, img: Image.Image) -> Tuple[torch.Tensor, torch.Tensor]:
        image = F.pil_to_tensor(self.resize(img))
        return image, self.draw_params()

    def draw_params(self) -> torch.Tensor:
        # The order of the reference's draws: flip, crop, erasing (the fill seed is extra).
        flip = bool(torch.rand(1) < self.flip_prob)
        crop_top, crop_left = self._crop_offsets()
        erase = self._erase_rectangle()
        fill_seed = int(torch.randint(0, MASK32 + 1, (1,)))
        return torch.tensor([flip, crop_top, crop_left, *erase, fill_seed], dtype=torch.int64)

    def _crop_offsets(self) -> Tuple[int, int]:
        height, width = self.size
        # get_params reads only the shape: a stride-0 view stands in for the padded image.
        padded = torch.zeros((), dtype=torch.uint8).expand(
            3, height + 2 * self.padding, width + 2 * self.padding)
        top, left, _, _ = T.RandomCrop.get_params(padded, self.size)
        return top, left

    def _erase_rectangle(self) -> Tuple[int, int, int, int, int]:
        """(erase, top, left, height, width): timm's RandomErasing._erase draws with count 1."""
        erasing, (img_h, img_w) = self.erasing, self.size
        if random.random() > erasing.probability:
            return 0, 0, 0, 0, 0
        area = img_h * img_w
        for _ in range(ERASE_ATTEMPTS):
            target_area = random.uniform(erasing.min_area, erasing.max_area) * area
            aspect_ratio = math.exp(random.uniform(*erasing.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < img_w and h < img_h:
                return 1, random.randint(0, img_h - h), random.randint(0, img_w - w), h, w
        return 0, 0, 0, 0, 0


# ------------------------------------------------------------------------------- device side
def erase_area_bound(erasing, size: Sequence[int]) -> int:
    """An upper bound on h * w of the rectangles `erasing` (timm's RandomErasing) draws on an
    image of `size`: h = round(sqrt(a * r)) <= sqrt(a * r) + 0.5, w <= sqrt(a / r) + 0.5, so
    h * w <= a + (sqrt(a * r) + sqrt(a / r)) / 2 + 1/4, where a <= max_area * H * W and, the
    rectangle fitting, sqrt(a * r) <= h + 0.5 <= H - 0.5 and sqrt(a / r) <= W - 0.5."""
    height, width = size
    return min(height * width, math.floor(erasing.max_area * height * width
                                          + (height + width) / 2) + 1)


class DeviceAugment(nn.Module):
    """(B x 3 x H x W uint8 images, B x NUM_PARAMS params from `WorkerAugment`) -> B x 3 x H x W
    float32 images, normalised and augmented as `build_train_transforms` would.

    `max_erase_area` bounds the rectangles' h * w (`erase_area_bound`); 0 turns erasing off
    (INPUT.RE_PROB 0) and spares its noise. No parameters; `.to(device)` moves the mean and
    std. Runs wherever the images are, without a loop over the images and without a host sync.
    """

    def __init__(self, size: Sequence[int], padding: int, mean: Sequence[float],
                 std: Sequence[float], max_erase_area: int = 0):
        super().__init__()
        self.size = tuple(size)
        self.padding = int(padding)
        self.max_erase_area = int(max_erase_area)
        # As T.Normalize: float32 constants, subtract then divide.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)

    @classmethod
    def from_cfg(cls, cfg) -> "DeviceAugment":
        size = cfg.INPUT.SIZE_TRAIN
        max_erase_area = (erase_area_bound(train_random_erasing(cfg), size)
                          if cfg.INPUT.RE_PROB > 0 else 0)
        return cls(size, cfg.INPUT.PADDING, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD,
                   max_erase_area)

    def forward(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        self._check(images, params)
        params = params.to(images.device, non_blocking=True)
        pixels = self._flip_pad_crop(images, params)
        # As T.ToTensor then T.Normalize: x / 255, - mean, / std, in float32.
        out = pixels.float().div(255).sub(self.mean).div(self.std)
        return self._erase(out, params) if self.max_erase_area > 0 else out

    def _check(self, images: torch.Tensor, params: torch.Tensor) -> None:
        expected = ("B", len(self.mean.view(-1)), *self.size)
        if (images.dtype != torch.uint8 or images.dim() != 4
                or tuple(images.shape[1:]) != expected[1:]):
            raise ValueError(f"DeviceAugment expects uint8 images of shape {expected} "
                             f"(INPUT.SIZE_TRAIN), got {images.dtype} {tuple(images.shape)}; "
                             "feed it the batches of a loader built with INPUT.DEVICE_AUGMENT "
                             "True")
        if params.dtype != torch.int64 or tuple(params.shape) != (len(images), NUM_PARAMS):
            raise ValueError(f"DeviceAugment expects int64 params of shape ({len(images)}, "
                             f"{NUM_PARAMS}) from WorkerAugment, got {params.dtype} "
                             f"{tuple(params.shape)}")

    def _flip_pad_crop(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Output pixel (y, x) of image b is its flipped image's pixel (top + y - padding,
        left + x - padding), or 0 where that falls in the padding; one gather for the batch."""
        batch, channels, height, width = images.shape
        rows = (params[:, Param.CROP_TOP, None] - self.padding
                + torch.arange(height, device=images.device))          # B x H
        cols = (params[:, Param.CROP_LEFT, None] - self.padding
                + torch.arange(width, device=images.device))           # B x W
        inside = (((rows >= 0) & (rows < height))[:, :, None]
                  & ((cols >= 0) & (cols < width))[:, None, :])        # B x H x W
        flip = params[:, Param.FLIP, None].bool()
        cols = torch.where(flip, width - 1 - cols, cols)
        index = (rows.clamp(0, height - 1)[:, :, None] * width
                 + cols.clamp(0, width - 1)[:, None, :])
        index = index.view(batch, 1, height * width).expand(batch, channels, height * width)
        pixels = images.reshape(batch, channels, height * width).gather(2, index)
        return pixels.view(batch, channels, height, width) * inside[:, None]

    def _erase(self, out: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Fill each image's rectangle (where ERASE is 1) with its fill seed's noise: pixel
        (top + i, left + j) of channel c takes value i * w + j of the seed's c-th row of
        `max_erase_area` normals, as timm fills its 3 x h x w patch row by row."""
        batch, channels, height, width = out.shape
        dy = torch.arange(height, device=out.device) - params[:, Param.ERASE_TOP, None]
        dx = torch.arange(width, device=out.device) - params[:, Param.ERASE_LEFT, None]
        rect_h, rect_w = params[:, Param.ERASE_HEIGHT, None], params[:, Param.ERASE_WIDTH, None]
        in_rows = (dy >= 0) & (dy < rect_h) & params[:, Param.ERASE, None].bool()   # B x H
        in_cols = (dx >= 0) & (dx < rect_w)                                         # B x W
        inside = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]           # B x 1 x H x W
        # Positions in the rectangle's row-major order; outside it, any valid index.
        position = (dy.clamp(min=0)[:, :, None] * rect_w[:, :, None]
                    + dx.clamp(min=0)[:, None, :]).clamp(max=self.max_erase_area - 1)
        noise = seeded_normal(params[:, Param.FILL_SEED], channels * self.max_erase_area)
        fill = noise.view(batch, channels, self.max_erase_area).gather(
            2, position.view(batch, 1, height * width).expand(batch, channels, height * width))
        return torch.where(inside, fill.view(batch, channels, height, width), out)


# ------------------------------------------------------------------------------ seeded noise
def seeded_normal(seeds: torch.Tensor, count: int) -> torch.Tensor:
    """len(seeds) x count float32 N(0, 1) values; value k of a row is a pure function of its
    seed (< 2**32) and k, computed where `seeds` lie.

    timm's 'pixel' erasing draws its noise from torch's CPU generator; this is the same
    distribution (N(0, 1), cut at 5.8 sigma by 24-bit uniforms) but not the same numbers. A
    counter-based hash instead of a generator makes it one batched computation, the same for an
    image whatever batch it is in, and the same on the CPU and CUDA up to the last bit of
    log/cos/sin. Values 2i and 2i + 1 are the Box-Muller pair of hashes 2i and 2i + 1.
    """
    pairs = (count + 1) // 2
    counters = torch.arange(2 * pairs, device=seeds.device, dtype=torch.int64).view(pairs, 2)
    keys = _mix32(seeds & MASK32)[:, None, None]                     # B x 1 x 1
    bits = _mix32(_mix32(counters)[None] ^ keys) >> 8                 # B x pairs x 2, 24 bits
    scale = 2.0 ** -24
    radius = torch.sqrt(-2.0 * torch.log((bits[..., 0] + 1).float() * scale))  # u in (0, 1]
    angle = (2.0 * math.pi * scale) * bits[..., 1].float()
    normals = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)
    return normals.view(len(seeds), 2 * pairs)[:, :count]



def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (hash-prospector's [16 21f0aaad 15 735a2d97 15]) of int64 values
    in [0, 2**32). Both factors are below 2**31, so every product stays inside int64 (signed
    overflow is undefined in the C++ kernels): the low 32 bits are the uint32 product."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & MASK32
    return x ^ (x >> 15)
