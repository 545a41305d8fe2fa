"""Training samplers; each is deterministic in (seed, epoch) and has `set_epoch`.

`RandomIdentitySampler` builds batches of P identities x K (`num_instances`) images, as the
reference. `RandomIdentitySampler_DDP` draws the very same global schedule on every rank (the
seed is shared, so no communication is needed) and gives each rank its own slice of every
global batch. `ShuffleSampler` is the plain shuffle of the 'softmax' sampler.

A pass without a preceding `set_epoch` continues with the next epoch, so that forgetting to
call it still gives every epoch a new order.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from config import ConfigError

from .bases import Sample

# DATALOADER.SAMPLER: 'softmax' shuffles images, 'softmax_triplet' draws P identities x K images.


class EpochSampler(Sampler[int]):
    """Base: a seed, an epoch counter and a random generator per (seed, epoch)."""

    def __init__(self, seed: int):
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _next_generator(self) -> np.random.Generator:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        return rng


class ShuffleSampler(EpochSampler):
    """A random permutation of the dataset per epoch."""

    def __init__(self, num_samples: int, seed: int = 0):
        super().__init__(seed)
        self.num_samples = num_samples

    def __iter__(self) -> Iterator[int]:
        return iter(self._next_generator().permutation(self.num_samples).tolist())

    def __len__(self) -> int:
        return self.num_samples


class SeededIndices(Sampler[Tuple[int, int]]):
    """`(index, augmentation seed)` for each index of `sampler` (see `SeededImageDataset`).

    The seed of the image at position i of an epoch depends on (seed, rank, epoch, i) alone,
    so an image's random augmentation is the same whatever the number of loader workers and
    whether or not they persist, and a resumed run draws what an uninterrupted one would have.
    """

    def __init__(self, sampler: Sampler[int], seed: int, rank: int = 0):
        self.sampler = sampler
        self.seed = seed
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        set_inner_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_inner_epoch):
            set_inner_epoch(epoch)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        indices = list(self.sampler)
        seeds = np.random.SeedSequence([self.seed, self.rank, self.epoch]).generate_state(
            len(indices))
        self.epoch += 1  # as the samplers: the next pass without set_epoch draws anew
        return zip(indices, seeds.tolist())

    def __len__(self) -> int:
        return len(self.sampler)


def indices_by_pid(data_source: Sequence[Sample]) -> Dict[int, List[int]]:
    index_of_pid: Dict[int, List[int]] = defaultdict(list)
    for index, (_, pid, _, _) in enumerate(data_source):
        index_of_pid[pid].append(index)
    return dict(index_of_pid)


def identity_schedule(index_of_pid: Dict[int, List[int]], num_pids_per_batch: int,
                      num_instances: int, rng: np.random.Generator) -> List[int]:
    """Indices of one epoch, as consecutive batches of `num_pids_per_batch` x `num_instances`.

    Every identity's images are shuffled and cut into chunks of K (identities with fewer than K
    images are drawn with replacement up to K; a last incomplete chunk is dropped). Batches
    pick P distinct identities among those with chunks left, each contributing its next chunk,
    until fewer than P identities remain (as the reference).
    """
    chunks: Dict[int, List[List[int]]] = {}
    for pid, indices in index_of_pid.items():
        if len(indices) < num_instances:
            indices = rng.choice(indices, size=num_instances, replace=True).tolist()
        else:
            indices = rng.permutation(indices).tolist()
        chunks[pid] = [indices[i:i + num_instances]
                       for i in range(0, len(indices) - num_instances + 1, num_instances)]

    available = sorted(chunks)
    schedule: List[int] = []
    while len(available) >= num_pids_per_batch:
        picked = rng.choice(len(available), size=num_pids_per_batch, replace=False)
        selected = [available[i] for i in picked]
        for pid in selected:
            schedule.extend(chunks[pid].pop(0))
            if not chunks[pid]:
                available.remove(pid)
    return schedule


def reference_epoch_length(index_of_pid: Dict[int, List[int]], num_instances: int) -> int:
    """The reference's estimate of the samples per epoch: every whole chunk of K images.

    The schedule can end earlier, when fewer than P identities have chunks left; the reference
    reports this estimate as `len(sampler)` all the same.
    """
    total = 0
    for indices in index_of_pid.values():
        num = max(len(indices), num_instances)
        total += num - num % num_instances
    return total


def _check_batch(batch_size: int, num_instances: int, num_pids: int) -> int:
    if num_instances < 1 or batch_size % num_instances:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH ({batch_size}) must be a multiple of "
                         f"DATALOADER.NUM_INSTANCE ({num_instances})")
    num_pids_per_batch = batch_size // num_instances
    if num_pids < num_pids_per_batch:
        raise ConfigError(f"a batch needs {num_pids_per_batch} identities "
                         f"(SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE) but the training set "
                         f"has only {num_pids}; lower SOLVER.IMS_PER_BATCH")
    return num_pids_per_batch


class RandomIdentitySampler(EpochSampler):
    """P identities x K images per batch of `batch_size` (P = batch_size // num_instances)."""

    def __init__(self, data_source: Sequence[Sample], batch_size: int, num_instances: int,
                 seed: int = 0):
        super().__init__(seed)
        self.index_of_pid = indices_by_pid(data_source)
        self.num_instances = num_instances
        self.num_pids_per_batch = _check_batch(batch_size, num_instances, len(self.index_of_pid))
        self.length = reference_epoch_length(self.index_of_pid, num_instances)

    def __iter__(self) -> Iterator[int]:
        return iter(identity_schedule(self.index_of_pid, self.num_pids_per_batch,
                                      self.num_instances, self._next_generator()))

    def __len__(self) -> int:
        return self.length


class RandomIdentitySampler_DDP(EpochSampler):  # noqa: N801 (reference name)
    """Distributed P x K sampler: global batches of `batch_size` = P x K images, each split into
    `world_size` contiguous slices of `batch_size // world_size` (whole identities per rank).

    Every rank computes the same global schedule from (seed, epoch) and yields only its slices,
    so the ranks' indices are disjoint and all ranks run the same number of batches.
    """

    def __init__(self, data_source: Sequence[Sample], batch_size: int, num_instances: int,
                 seed: int = 0, world_size: Optional[int] = None, rank: Optional[int] = None):
        super().__init__(seed)
        self.world_size = dist.get_world_size() if world_size is None else world_size
        self.rank = dist.get_rank() if rank is None else rank
        if batch_size % (self.world_size * num_instances):
            raise ConfigError(f"SOLVER.IMS_PER_BATCH ({batch_size}) must be a multiple of the "
                             f"world size ({self.world_size}) x DATALOADER.NUM_INSTANCE "
                             f"({num_instances}) so that every rank holds whole identities")
        self.index_of_pid = indices_by_pid(data_source)
        self.num_instances = num_instances
        self.batch_size = batch_size
        self.mini_batch_size = batch_size // self.world_size
        self.num_pids_per_batch = _check_batch(batch_size, num_instances, len(self.index_of_pid))
        # As the reference: the single-process estimate shared among the ranks.
        self.length = reference_epoch_length(self.index_of_pid, num_instances) // self.world_size

    def __iter__(self) -> Iterator[int]:
        schedule = identity_schedule(self.index_of_pid, self.num_pids_per_batch,
                                     self.num_instances, self._next_generator())
        start = self.rank * self.mini_batch_size
        mine: List[int] = []
        for batch_start in range(0, len(schedule) - self.batch_size + 1, self.batch_size):
            offset = batch_start + start
            mine.extend(schedule[offset:offset + self.mini_batch_size])
        return iter(mine)

    def __len__(self) -> int:
        return self.length
