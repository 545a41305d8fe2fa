"""Domains of the synthetic person set: the same task (pedestrians, several cameras each) under
other cameras, lighting, backgrounds and framing, for adaptation without labels (MODEL.TRAIN_MODE
'uda'). A domain is the ranges its cameras and crops are drawn from.

Domain 'A' is the set every earlier version rendered: its ranges and its random streams are those
of that version, so the same settings give the same bytes. Domain 'B' is one site at night: dim,
noisy, blurred cameras under one evening light, white-balanced (a few per cent of colour cast,
where each of A's cameras has up to 28 per cent per channel), dark walls with lit windows, and a
farther framing (smaller, lower people in the crop); its identities are drawn from a stream of
their own, so no person of A walks in B. B's cameras resemble each other, as a target site's
usually do, so the shift between the domains is larger than the one between B's cameras: with
A-sized casts in B, models trained on A match B's people across its cameras too rarely for
clustering to find them (docs/unsupervised.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

Range = Tuple[float, float]

PLAIN, BANDS, TILES, GRADIENT, WINDOWS = range(5)
"""Background textures: a wall plain, with vertical bands, over tiles, shaded, with lit windows."""


@dataclass(frozen=True)
class Domain:
    cast: Range  # per-channel gain
    brightness: Range
    contrast: Range
    blur: Range
    noise: Range
    jpeg_quality: Tuple[int, int]  # [low, high)
    wall: Tuple[int, int]  # channel range [low, high)
    ground: Tuple[int, int]
    horizon: Range
    textures: Tuple[int, ...]
    person_height: Range  # of the crop's height
    person_top: Range  # head's top, share of the crop's height
    stream: Tuple[int, ...]  # prefix of every random stream after the seed


DOMAINS: Dict[str, Domain] = {
    "A": Domain(cast=(0.72, 1.28), brightness=(0.65, 1.3), contrast=(0.7, 1.1), blur=(0.0, 1.1),
                noise=(2.0, 9.0), jpeg_quality=(40, 90), wall=(40, 220), ground=(30, 180),
                horizon=(0.45, 0.8), textures=(PLAIN, BANDS, TILES, GRADIENT),
                person_height=(0.82, 0.97), person_top=(0.01, 0.06), stream=()),
    "B": Domain(cast=(0.93, 1.07), brightness=(0.7, 0.8), contrast=(0.75, 0.85), blur=(0.3, 1.3),
                noise=(4.0, 11.0), jpeg_quality=(35, 75), wall=(60, 75), ground=(45, 60),
                horizon=(0.6, 0.9), textures=(WINDOWS,),
                person_height=(0.76, 0.9), person_top=(0.04, 0.1), stream=(11,)),
}
"""The domains by their DATASETS.SYNTHETIC.DOMAIN name."""
