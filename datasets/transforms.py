"""Train and test image transforms, as the reference."""
from __future__ import annotations

import torchvision.transforms as T
from timm.data.random_erasing import RandomErasing
from torchvision.transforms import InterpolationMode


def train_resize(cfg) -> T.Resize:
    """Bicubic resize to INPUT.SIZE_TRAIN (shared with datasets/device_augment.py)."""
    return T.Resize(list(cfg.INPUT.SIZE_TRAIN), interpolation=InterpolationMode.BICUBIC)


def train_random_erasing(cfg) -> RandomErasing:
    """timm's per-pixel random erasing of one rectangle; datasets/device_augment.py reads its
    area and aspect ranges, so both paths draw the same rectangles."""
    return RandomErasing(probability=cfg.INPUT.RE_PROB, mode="pixel", max_count=1, device="cpu")


def build_train_transforms(cfg) -> T.Compose:
    size = list(cfg.INPUT.SIZE_TRAIN)
    return T.Compose([
        train_resize(cfg),
        T.RandomHorizontalFlip(p=cfg.INPUT.PROB),
        T.Pad(cfg.INPUT.PADDING),
        T.RandomCrop(size),
        T.ToTensor(),
        T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD),
        train_random_erasing(cfg),
    ])


def build_test_transforms(cfg) -> T.Compose:
    # Bilinear at test time, bicubic in training: as the reference, whose results used it.
    return T.Compose([
        T.Resize(list(cfg.INPUT.SIZE_TEST)),
        T.ToTensor(),
        T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD),
    ])
