"""Cluster-contrast's training sampler (`RandomMultipleGallerySampler` in
clustercontrast/utils/data/sampler.py), over pseudo-identities.

For each pseudo-identity in random order: one random crop, then K − 1 (`num_instances` − 1)
crops of the same pseudo-identity from other cameras, or, when all its crops share the anchor's
camera, from its other crops. The K − 1 are drawn without replacement only when at least K
candidates exist, and a pseudo-identity of one crop gives just that crop, as theirs. Images
labelled −1 (un-clustered) are never drawn.

Their draws come from the global `random`, `numpy` and `torch` generators; this one draws the
same distribution from one generator per (seed, epoch), as the other samplers here.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterator, List, Sequence

import numpy as np

from .bases import Sample
from .samplers import EpochSampler


class RandomMultipleGallerySampler(EpochSampler):
    """Indices of one pass: a group of up to `num_instances` crops per pseudo-identity."""

    def __init__(self, data_source: Sequence[Sample], num_instances: int = 4, seed: int = 0):
        super().__init__(seed)
        if num_instances < 1:
            raise ValueError(f"num_instances must be at least 1, got {num_instances}")
        self.num_instances = num_instances
        self.index_of_pid: Dict[int, List[int]] = defaultdict(list)
        self.cams_of_pid: Dict[int, List[int]] = defaultdict(list)
        for index, (_, pid, camid, _) in enumerate(data_source):
            if pid < 0:
                continue
            self.index_of_pid[pid].append(index)
            self.cams_of_pid[pid].append(camid)
        self.pids = list(self.index_of_pid)

    def __len__(self) -> int:
        return len(self.pids) * self.num_instances

    def _companions(self, candidates: List[int], rng: np.random.Generator) -> List[int]:
        replace = len(candidates) < self.num_instances
        return rng.choice(candidates, size=self.num_instances - 1, replace=replace).tolist()

    def _group(self, pid: int, rng: np.random.Generator) -> List[int]:
        indices, cams = self.index_of_pid[pid], self.cams_of_pid[pid]
        anchor = int(rng.integers(len(indices)))
        other_cams = [k for k, cam in enumerate(cams) if cam != cams[anchor]]
        others = other_cams or [k for k in range(len(indices)) if k != anchor]
        if not others:
            return [indices[anchor]]
        return [indices[anchor]] + [indices[k] for k in self._companions(others, rng)]

    def __iter__(self) -> Iterator[int]:
        rng = self._next_generator()
        order = rng.permutation(len(self.pids))
        return iter([index for position in order.tolist()
                     for index in self._group(self.pids[position], rng)])
