"""Domains of the synthetic person set: the same task (pedestrians, several cameras each) under
other cameras, lighting, backgrounds and framing, for adaptation without labels (MODEL.TRAIN_MODE
'uda'). A domain is the ranges its cameras and crops are drawn from.

Domain 'A' is the set every earlier version rendered: its ranges and its random streams are those
of that version, so the same settings give the same bytes. Domain 'B' is a dim, noisy,
colour-cast scene set (evening streets, sodium and LED light) with its own backgrounds (darker
walls, lit windows) and a farther camera (smaller, lower people in the crop); its identities are
drawn from a stream of their own, so no person of A walks in B.
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
    "B": Domain(cast=(0.65, 1.35), brightness=(0.6, 1.0), contrast=(0.65, 1.0), blur=(0.3, 1.3),
                noise=(4.0, 11.0), jpeg_quality=(35, 75), wall=(20, 130), ground=(15, 110),
                horizon=(0.6, 0.9), textures=(PLAIN, WINDOWS, TILES, WINDOWS),
                person_height=(0.76, 0.9), person_top=(0.04, 0.1), stream=(11,)),
}
"""The domains by their DATASETS.SYNTHETIC.DOMAIN name."""
