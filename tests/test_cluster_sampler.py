"""Cluster-contrast's sampler: a group per pseudo-identity, an anchor then companions from other
cameras when there are any, un-clustered images never drawn, a new order per epoch."""
from collections import Counter

import pytest

from datasets.cluster_sampler import RandomMultipleGallerySampler

K = 4
# pid -> cameras of its crops: several cameras (enough or too few others), one camera, one crop
CAMERAS = {0: [0, 0, 1, 2, 2, 3, 1], 1: [0, 1], 2: [5, 5, 5, 5, 5], 3: [4], -1: [0, 1, 2]}


def samples():
    return [(f'{pid}_{n}.jpg', pid, cam, 0) for pid, cams in CAMERAS.items()
            for n, cam in enumerate(cams)]


def groups(sampler, data):
    """Cut one pass into groups: a new group begins where the pseudo-identity changes."""
    found = []
    for index in sampler:
        pid = data[index][1]
        if found and found[-1][0] == pid:
            found[-1][1].append(index)
        else:
            found.append((pid, [index]))
    return found


def test_every_pseudo_identity_gives_one_group_and_outliers_none():
    data = samples()
    sampler = RandomMultipleGallerySampler(data, num_instances=K, seed=3)
    drawn = groups(sampler, data)
    assert sorted(pid for pid, _ in drawn) == [0, 1, 2, 3]
    assert len(sampler) == 4 * K
    sizes = {pid: len(group) for pid, group in drawn}
    assert sizes == {0: K, 1: K, 2: K, 3: 1}  # a single crop gives just itself, as theirs


@pytest.mark.parametrize('seed', range(8))
def test_companions_come_from_other_cameras_when_there_are_any(seed):
    data = samples()
    for pid, group in groups(RandomMultipleGallerySampler(data, K, seed=seed), data):
        anchor_cam = data[group[0]][2]
        companion_cams = [data[i][2] for i in group[1:]]
        if pid in (0, 1):
            assert anchor_cam not in companion_cams
        if pid == 2:  # one camera: other crops, never the anchor itself
            assert group[0] not in group[1:]
        if pid == 0 and sum(cam != anchor_cam for cam in CAMERAS[0]) >= K:
            assert len(set(group[1:])) == K - 1  # enough candidates: no repeats


def test_too_few_candidates_are_drawn_with_replacement():
    data = samples()
    sampler = RandomMultipleGallerySampler(data, K, seed=0)
    pid1 = [group for _ in range(3) for pid, group in groups(sampler, data) if pid == 1]
    # pid 1 has one crop on another camera: its K - 1 companions are that crop, repeated
    assert all(Counter(group[1:]).most_common(1)[0][1] == K - 1 for group in pid1)


def test_orders_depend_on_seed_and_epoch_only():
    data = samples()
    first = RandomMultipleGallerySampler(data, K, seed=1)
    again = RandomMultipleGallerySampler(data, K, seed=1)
    epochs = [list(first) for _ in range(4)]
    assert [list(again) for _ in range(4)] == epochs
    assert len({tuple(epoch) for epoch in epochs}) > 1
    again.set_epoch(2)
    assert list(again) == epochs[2]


def test_bad_group_size_is_refused():
    with pytest.raises(ValueError, match='num_instances'):
        RandomMultipleGallerySampler(samples(), num_instances=0)
