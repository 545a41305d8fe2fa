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
from torch.utils.data import Sampler

from utils.errors import ConfigError

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

    def pass_length(self) -> int:
        """Indices of one pass: `num_instances` per pseudo-identity, 1 for a single crop."""
        return sum(self.num_instances if len(indices) > 1 else 1
                   for indices in self.index_of_pid.values())


class IterationSampler(Sampler[int]):
    """`iters` batches of `batch_size` indices from passes of a RandomMultipleGallerySampler,
    as their IterLoader restarting a drop_last DataLoader: each pass's last incomplete batch is
    dropped. The passes of epoch e draw from (seed, e) alone, so a resumed epoch repeats."""

    def __init__(self, sampler: RandomMultipleGallerySampler, batch_size: int, iters: int):
        self.sampler, self.batch_size, self.iters = sampler, batch_size, iters
        self.batches_per_pass = sampler.pass_length() // batch_size
        if self.batches_per_pass == 0:
            raise ConfigError(
                f"one pass over the clustered images gives {sampler.pass_length()} images, fewer "
                f"than SOLVER.IMS_PER_BATCH {batch_size}: too few clusters for a batch (the log "
                f"gives this epoch's clustering). Lower SOLVER.IMS_PER_BATCH, or change "
                f"CLUSTER.EPS / K1: a smaller one splits large clusters, a larger one clusters "
                f"more of the images left out")
        self.seed, self.epoch = sampler.seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.iters * self.batch_size

    def __iter__(self) -> Iterator[int]:
        # One seed per epoch for the inner sampler, whose counter then numbers the passes.
        self.sampler.seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        self.sampler.set_epoch(0)
        self.epoch += 1
        indices: List[int] = []
        while len(indices) < len(self):
            one_pass = list(self.sampler)
            indices += one_pass[:self.batches_per_pass * self.batch_size]
        return iter(indices[:len(self)])
