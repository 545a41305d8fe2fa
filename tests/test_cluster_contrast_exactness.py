"""Cluster-contrast's pieces match its own code (tests/fixtures/cluster_contrast, made once by its
generate.py from TransReID-SSL's cluster-contrast-reid): the Jaccard distance within 1e-5, the
neighbours and DBSCAN labels exactly, the centroids, the memory's loss, input gradient and
momentum update within 1e-5, both memories, over two steps."""
import math
import os

import numpy as np
import pytest
import torch

from loss.cluster_memory import ClusterMemory, centroid_update, hard_update
from utils.clustering import cluster_centroids, cluster_statistics, pseudo_labels
from utils.errors import ConfigError
from utils.jaccard import compute_jaccard_distance, jaccard_distance_graph
from utils.reranking import _OriginalDistance, _nearest_neighbours

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'cluster_contrast')
TOLERANCE = 1e-5


@pytest.fixture(scope='module')
def expected():
    return torch.load(os.path.join(FIXTURES, 'expected.pt'), weights_only=True)


def k_values(key: str):
    return tuple(int(k) for k in key.split('_'))


def test_the_fixture_covers_every_case(expected):
    assert sorted(expected['jaccard']) == ['20_1', '30_6', '9_3']
    assert sorted(expected['labels']) == ['0.5', '0.6', '0.7']
    assert len(expected['memory']) == 4
    # labels with several clusters and outliers: a lumping or an all-noise result would show
    assert (expected['labels']['0.5'] == -1).sum() > 0 and expected['labels']['0.5'].max() > 5


@pytest.mark.parametrize('key', ['30_6', '9_3', '20_1'])
def test_neighbours_are_theirs(expected, key):
    features = expected['features']
    k1, _ = k_values(key)
    ranks = _nearest_neighbours(_OriginalDistance(features, None, features.device, 4096), k1,
                                64).ranks
    assert torch.equal(ranks, expected['ranks'][key])


@pytest.mark.parametrize('key', ['30_6', '9_3', '20_1'])
def test_jaccard_distance_matches_theirs(expected, key):
    k1, k2 = k_values(key)
    theirs = expected['jaccard'][key].numpy()
    ours = compute_jaccard_distance(expected['features'], k1=k1, k2=k2)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert np.array_equal(ours < 1, theirs < 1)  # the same pairs meet
    assert np.abs(ours - theirs).max() < TOLERANCE


def test_the_graph_keeps_exactly_the_pairs_within_its_bound_in_any_chunking(expected):
    theirs = expected['jaccard']['30_6'].numpy()
    graph = jaccard_distance_graph(expected['features'], k1=30, k2=6, max_distance=0.6,
                                   chunk_bytes=1_000_000)  # several chunks
    pairs = graph.tocoo()  # the stored pairs, distances of exactly 0 included
    stored = np.zeros(theirs.shape, dtype=bool)
    stored[pairs.row, pairs.col] = True
    assert np.array_equal(stored, theirs <= 0.6)
    assert graph.has_sorted_indices
    assert np.abs(pairs.data - theirs[pairs.row, pairs.col]).max() < TOLERANCE


def test_sizes_that_cannot_work_are_named():
    features = torch.nn.functional.normalize(torch.randn(10, 4), dim=1)
    with pytest.raises(ConfigError, match='k1=30'):
        jaccard_distance_graph(features, k1=30, k2=6)
    with pytest.raises(ConfigError, match='k2=6'):
        jaccard_distance_graph(features, k1=4, k2=6)
    with pytest.raises(ConfigError, match='eps=1.5'):
        pseudo_labels(features, eps=1.5, k1=4, k2=2)


@pytest.mark.parametrize('eps', ['0.6', '0.7', '0.5'])
def test_dbscan_labels_and_centroids_are_theirs(expected, eps):
    labels = pseudo_labels(expected['features'], eps=float(eps), min_samples=4, k1=30, k2=6)
    assert np.array_equal(labels, expected['labels'][eps].numpy())
    centroids = cluster_centroids(expected['features'], labels)
    assert torch.allclose(centroids, expected['centroids'][eps], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize('case', ['0_0.05_0.2', '1_0.05_0.2', '0_0.1_0.5', '1_0.1_0.5'])
def test_memory_loss_gradient_and_update_are_theirs(expected, case):
    hard, temp, momentum = case.split('_')
    memory = ClusterMemory.from_centroids(expected['centroids']['0.6'], temp=float(temp),
                                          momentum=float(momentum), use_hard=hard == '1')
    for batch, theirs in zip(expected['batches'], expected['memory'][case]):
        inputs = batch['inputs'].clone().requires_grad_(True)
        loss = memory(inputs, batch['targets'])
        loss.backward()
        assert abs(loss.item() - theirs['loss'].item()) < TOLERANCE
        assert torch.allclose(inputs.grad, theirs['grad'], rtol=0, atol=TOLERANCE)
        assert torch.allclose(memory.features, theirs['memory'], rtol=0, atol=TOLERANCE)


def test_centroid_update_moves_a_cluster_crop_after_crop():
    memory = torch.tensor([[1., 0.], [0., 1.]])
    inputs = torch.tensor([[0., 1.], [1., 0.], [0.6, 0.8]])
    centroid_update(memory, inputs, torch.tensor([0, 1, 0]), momentum=0.5)
    first = np.array([0.5, 0.5]) / math.sqrt(0.5)  # crop 0 pulls row 0
    second = 0.5 * first + 0.5 * np.array([0.6, 0.8])  # then crop 2 pulls the moved row
    assert np.allclose(memory[0].numpy(), second / np.linalg.norm(second), atol=1e-6)
    assert np.allclose(memory[1].numpy(), np.array([1., 1.]) / math.sqrt(2), atol=1e-6)


def test_hard_update_takes_the_least_similar_crop_of_each_cluster():
    memory = torch.tensor([[1., 0.], [0., 1.]])
    inputs = torch.tensor([[0.8, 0.6], [0., 1.], [0.6, 0.8], [1., 0.]])
    hard_update(memory, inputs, torch.tensor([0, 1, 0, 1]), momentum=0.2)
    row0 = 0.2 * np.array([1., 0.]) + 0.8 * np.array([0.6, 0.8])  # crop 2: 0.6 < 0.8
    row1 = 0.2 * np.array([0., 1.]) + 0.8 * np.array([1., 0.])    # crop 3: 0 < 1
    assert np.allclose(memory.numpy(), np.stack([row0 / np.linalg.norm(row0),
                                                 row1 / np.linalg.norm(row1)]), atol=1e-6)


def test_the_memory_moves_only_in_the_backward():
    memory = ClusterMemory.from_centroids(torch.eye(3, 4), use_hard=True)
    before = memory.features.clone()
    loss = memory(torch.randn(6, 4, requires_grad=True), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.equal(memory.features, before)
    loss.backward()
    assert not torch.equal(memory.features, before)
    assert torch.allclose(memory.features.norm(dim=1), torch.ones(3))


def test_under_autocast_the_loss_and_memory_stay_float32():
    memory = ClusterMemory.from_centroids(torch.randn(5, 8), use_hard=True)
    layer = torch.nn.Linear(8, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        features = layer(torch.randn(6, 8))
        assert features.dtype == torch.bfloat16
        loss = memory(features, torch.tensor([0, 0, 1, 1, 4, 4]))
    loss.backward()
    assert loss.dtype == torch.float32 and memory.features.dtype == torch.float32
    assert layer.weight.grad is not None
    assert torch.allclose(memory.features.norm(dim=1), torch.ones(5))


def plain_nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information over the arithmetic mean of the two entropies, from the counts."""
    n = len(a)
    joint = {}
    for x, y in zip(a, b):
        joint[x, y] = joint.get((x, y), 0) + 1
    pa = {x: np.sum(a == x) / n for x in set(a)}
    pb = {y: np.sum(b == y) / n for y in set(b)}
    mi = sum(c / n * math.log(c / n / (pa[x] * pb[y])) for (x, y), c in joint.items())
    entropy = lambda p: -sum(v * math.log(v) for v in p.values())  # noqa: E731
    return mi / ((entropy(pa) + entropy(pb)) / 2)


def test_statistics_count_clusters_outliers_purity_and_nmi():
    labels = np.array([0, 0, 0, 1, 1, -1, 2, 2, -1])
    truth = np.array([7, 7, 8, 8, 8, 9, 9, 9, 9])
    stats = cluster_statistics(labels, truth)
    assert (stats.num_clusters, stats.num_outliers, stats.num_images) == (3, 2, 9)
    assert stats.purity == pytest.approx(6 / 7)  # clusters keep 2 + 2 + 2 of their 3 + 2 + 2
    kept = labels >= 0
    assert stats.nmi == pytest.approx(plain_nmi(labels[kept], truth[kept]))
    assert '3 clusters, 2 of 9 images un-clustered, purity 0.857' in stats.describe()
    unknown = cluster_statistics(labels)
    assert unknown.purity is None and unknown.nmi is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_on_cuda_the_labels_loss_and_memory_are_theirs(expected):
    device = torch.device('cuda')
    labels = pseudo_labels(expected['features'].to(device), eps=0.6, k1=30, k2=6)
    assert np.array_equal(labels, expected['labels']['0.6'].numpy())
    memory = ClusterMemory.from_centroids(expected['centroids']['0.6'].to(device), use_hard=True)
    for batch, theirs in zip(expected['batches'], expected['memory']['1_0.05_0.2']):
        inputs = batch['inputs'].to(device).requires_grad_(True)
        loss = memory(inputs, batch['targets'].to(device))
        loss.backward()
        assert abs(loss.item() - theirs['loss'].item()) < 1e-4
        assert torch.allclose(memory.features.cpu(), theirs['memory'], rtol=0, atol=1e-4)
