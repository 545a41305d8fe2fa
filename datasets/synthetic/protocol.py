"""Which images a synthetic dataset holds and where they go, as the Market-1501 protocol.

Identities 1..N/2 train, the rest test. Every identity is seen by 2 or more cameras with at
least 2 images each, so that after one query per identity and camera is taken out, every query
still has a true match in another camera of the gallery.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np

TRAIN, QUERY, GALLERY = "train", "query", "gallery"
DISTRACTOR_PID, JUNK_PID = 0, -1


@dataclass(frozen=True)
class Shot:
    pid: int  # 1.., or 0 (distractor), -1 (junk)
    cam: int  # 0-based
    frame: int  # unique over the dataset
    split: str


def camera_counts(images: int, num_cameras: int, rng: np.random.Generator) -> List[int]:
    """Images per camera for one identity: 2+ cameras, 2+ images in each camera used."""
    most_cameras = min(num_cameras, images // 2)
    used = rng.choice(num_cameras, size=int(rng.integers(2, most_cameras + 1)), replace=False)
    counts = np.zeros(num_cameras, dtype=int)
    counts[used] = 2
    extra = rng.multinomial(images - 2 * len(used), np.full(len(used), 1.0 / len(used)))
    counts[used] += extra
    return counts.tolist()


def plan_shots(num_ids: int, images_per_id: int, num_cameras: int, rng: np.random.Generator,
               distractor_rate: float = 0.0, junk_rate: float = 0.0) -> List[Shot]:
    """All images of a dataset. The first image of a test identity in each of its cameras is
    its query there; the other images form the gallery, plus distractors (pid 0) and junk
    (pid -1) amounting to the given fractions of the identities' gallery images."""
    shots: List[Shot] = []
    num_train = num_ids // 2
    for pid in range(1, num_ids + 1):
        counts = camera_counts(images_per_id, num_cameras, rng)
        for cam, count in enumerate(counts):
            for i in range(count):
                split = TRAIN if pid <= num_train else (QUERY if i == 0 else GALLERY)
                shots.append(Shot(pid, cam, len(shots), split))
    num_gallery = sum(s.split == GALLERY for s in shots)
    for pid, rate in ((DISTRACTOR_PID, distractor_rate), (JUNK_PID, junk_rate)):
        for _ in range(round(rate * num_gallery)):
            shots.append(Shot(pid, int(rng.integers(num_cameras)), len(shots), GALLERY))
    return shots
