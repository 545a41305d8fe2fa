"""P x K structure, epoch length and determinism of the samplers; DDP at world size 2."""
from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader

from datasets import (RandomIdentitySampler, RandomIdentitySampler_DDP, ShuffleSampler,
                      set_train_epoch)
from datasets.bases import SeededImageDataset
from datasets.samplers import SeededIndices

# pid -> number of images: some identities have fewer images than K = 4 (drawn with replacement)
IMAGES_PER_PID = {0: 9, 1: 4, 2: 2, 3: 7, 4: 1, 5: 12, 6: 5, 7: 8, 8: 3, 9: 6, 10: 11, 11: 4}
DATA = [(f"{pid}_{i}.jpg", pid, 0, 1) for pid, n in IMAGES_PER_PID.items() for i in range(n)]
K = 4


def pid_of(index):
    return DATA[index][1]


def expected_length(k):
    """The reference's estimate, written out: whole chunks of K, at least one per identity."""
    return sum(max(n, k) // k * k for n in IMAGES_PER_PID.values())


def check_pk_batches(indices, batch_size, k):
    assert len(indices) % batch_size == 0
    for start in range(0, len(indices), batch_size):
        batch = [pid_of(i) for i in indices[start:start + batch_size]]
        groups = [batch[j:j + k] for j in range(0, batch_size, k)]
        assert all(len(set(g)) == 1 for g in groups), batch  # K images of one identity
        assert len({g[0] for g in groups}) == batch_size // k  # P distinct identities


def test_identity_sampler_pk_batches_length_and_determinism():
    sampler = RandomIdentitySampler(DATA, batch_size=12, num_instances=K, seed=7)
    assert len(sampler) == expected_length(K) == 68  # 8+4+4+4+4+12+4+8+4+4+8+4
    sampler.set_epoch(3)
    epoch3 = list(sampler)
    check_pk_batches(epoch3, 12, K)
    assert len(epoch3) <= len(sampler)
    # Without replacement for identities with >= K images: no index repeats there.
    counts = Counter(epoch3)
    assert all(c == 1 for i, c in counts.items() if IMAGES_PER_PID[pid_of(i)] >= K)
    sampler.set_epoch(3)
    assert list(sampler) == epoch3
    assert list(sampler) != epoch3  # the next pass continues with epoch 4
    other_seed = RandomIdentitySampler(DATA, 12, K, seed=8)
    other_seed.set_epoch(3)
    assert list(other_seed) != epoch3


def test_identity_sampler_small_identities_with_replacement():
    sampler = RandomIdentitySampler(DATA, batch_size=8, num_instances=K, seed=0)
    seen = Counter()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        chunks = [indices[i:i + K] for i in range(0, len(indices), K)]
        for chunk in chunks:
            seen[pid_of(chunk[0])] += 1
            if IMAGES_PER_PID[pid_of(chunk[0])] == 1:
                assert len(set(chunk)) == 1  # the single image, K times
    assert seen[4] > 0 and seen[2] > 0


def test_identity_sampler_batch_errors():
    with pytest.raises(ValueError, match="multiple of DATALOADER.NUM_INSTANCE"):
        RandomIdentitySampler(DATA, batch_size=10, num_instances=4)
    with pytest.raises(ValueError, match="needs 16 identities .* only 12"):
        RandomIdentitySampler(DATA, batch_size=64, num_instances=4)


def test_ddp_sampler_world_size_two_splits_the_global_schedule():
    batch_size = 16  # global: P = 4 identities x K = 4, i.e. 2 identities per rank
    ranks = [RandomIdentitySampler_DDP(DATA, batch_size, K, seed=5, world_size=2, rank=r)
             for r in (0, 1)]
    reference = RandomIdentitySampler(DATA, batch_size, K, seed=5)
    for sampler in ranks + [reference]:
        sampler.set_epoch(2)
    per_rank = [list(s) for s in ranks]
    schedule = list(reference)
    assert len(per_rank[0]) == len(per_rank[1]) == len(schedule) // 2
    assert len(ranks[0]) == expected_length(K) // 2
    mini = batch_size // 2
    rebuilt = []
    for b in range(len(schedule) // batch_size):
        rank_batches = [r[b * mini:(b + 1) * mini] for r in per_rank]
        check_pk_batches(rank_batches[0], mini, K)
        check_pk_batches(rank_batches[1], mini, K)
        global_batch = rank_batches[0] + rank_batches[1]
        check_pk_batches(global_batch, batch_size, K)  # P distinct identities across ranks
        rebuilt += global_batch
    assert rebuilt == schedule  # the union, in order, is the global schedule
    # Disjoint: no position of the schedule is used by both ranks.
    assert sum(len(r) for r in per_rank) == len(schedule)


def test_ddp_sampler_deterministic_and_checks_divisibility():
    a = RandomIdentitySampler_DDP(DATA, 16, K, seed=1, world_size=2, rank=1)
    b = RandomIdentitySampler_DDP(DATA, 16, K, seed=1, world_size=2, rank=1)
    a.set_epoch(4), b.set_epoch(4)
    assert list(a) == list(b)
    a.set_epoch(4), b.set_epoch(5)
    assert list(a) != list(b)
    with pytest.raises(ValueError, match=r"world size \(2\) x DATALOADER.NUM_INSTANCE \(4\)"):
        RandomIdentitySampler_DDP(DATA, 12, K, world_size=2, rank=0)


def test_shuffle_sampler_is_a_seeded_permutation():
    sampler = ShuffleSampler(10, seed=3)
    sampler.set_epoch(1)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and len(sampler) == 10
    sampler.set_epoch(1)
    assert list(sampler) == first
    sampler.set_epoch(2)
    assert list(sampler) != first


class Indices(torch.utils.data.Dataset):
    def __len__(self):
        return len(DATA)

    def __getitem__(self, i):
        return i


@pytest.mark.parametrize("make_loader", [
    lambda: DataLoader(Indices(), batch_size=8, sampler=RandomIdentitySampler(DATA, 8, K, 9)),
    lambda: DataLoader(Indices(), batch_sampler=BatchSampler(
        RandomIdentitySampler_DDP(DATA, 16, K, 9, world_size=2, rank=0), 8, drop_last=True)),
    lambda: DataLoader(Indices(), batch_size=8, sampler=ShuffleSampler(len(DATA), 9)),
])
def test_set_train_epoch_reaches_the_sampler(make_loader):
    loader = make_loader()
    set_train_epoch(loader, 6)
    first = [b.tolist() for b in loader]
    set_train_epoch(loader, 6)
    assert [b.tolist() for b in loader] == first
    set_train_epoch(loader, 7)
    assert [b.tolist() for b in loader] != first


def test_seeded_indices_pair_the_inner_order_with_seeds_of_rank_epoch_and_position():
    def pairs(rank, epoch, seed=7):
        sampler = SeededIndices(ShuffleSampler(len(DATA), seed=seed), seed, rank)
        sampler.set_epoch(epoch)
        return list(sampler)

    inner = ShuffleSampler(len(DATA), seed=7)
    inner.set_epoch(3)
    first = pairs(rank=0, epoch=3)
    assert [index for index, _ in first] == list(inner)
    assert first == pairs(rank=0, epoch=3)  # a pure function of (seed, rank, epoch)
    seeds = [seed for _, seed in first]
    assert len(set(seeds)) == len(seeds)
    for other in (pairs(rank=1, epoch=3), pairs(rank=0, epoch=4), pairs(rank=0, epoch=3, seed=8)):
        assert not set(seeds) & {seed for _, seed in other}


def test_seeded_image_dataset_transforms_under_its_seed_and_restores_the_random_state(tmp_path):
    image = tmp_path / "0001_c1_000001.jpg"
    Image.new("RGB", (8, 16), (10, 20, 30)).save(image)

    def draws(img):
        return torch.rand(3).tolist() + [random.random()]

    dataset = SeededImageDataset([(str(image), 0, 0, 1)], transform=draws)
    torch.manual_seed(0)
    random.seed(0)
    expected_next = (torch.rand(1).item(), random.random())
    torch.manual_seed(0)
    random.seed(0)
    first = dataset[(0, 123)][0]
    assert (torch.rand(1).item(), random.random()) == expected_next  # the state was restored
    assert dataset[(0, 123)][0] == first
    assert dataset[(0, 124)][0] != first
