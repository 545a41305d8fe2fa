"""Train and test image transforms, as the reference."""
from __future__ import annotations

import torchvision.transforms as T
from timm.data.random_erasing import RandomErasing
from torchvision.transforms import InterpolationMode


def build_train_transforms(cfg) -> T.Compose:
    size = list(cfg.INPUT.SIZE_TRAIN)
    return T.Compose([
        T.Resize(size, interpolation=InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=cfg.INPUT.PROB),
        T.Pad(cfg.INPUT.PADDING),
        T.RandomCrop(size),
        T.ToTensor(),
        T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD),
        RandomErasing(probability=cfg.INPUT.RE_PROB, mode="pixel", max_count=1, device="cpu"),
    ])


def build_test_transforms(cfg) -> T.Compose:
    # Bilinear at test time, bicubic in training: as the reference, whose results used it.
    return T.Compose([
        T.Resize(list(cfg.INPUT.SIZE_TEST)),
        T.ToTensor(),
        T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD),
    ])
