"""utils.reranking against the reference algorithm, re-implemented plainly here with sets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.metrics import eval_func
from utils.reranking import re_ranked_distance_chunks, re_ranking


def reranking_oracle(qf, gf, k1, k2, lambda_value, original=None):
    """Zhong et al. 2017 as the reference computes it, in float64 with dense arrays."""
    feats = np.concatenate([qf, gf]).astype(np.float64)
    num, num_query = len(feats), len(qf)
    if original is None:
        original = ((feats[:, None, :] - feats[None, :, :]) ** 2).sum(-1)
    dist = (original / original.max(axis=0)).T  # the reference normalises columns, transposed
    order = np.argsort(dist, axis=1, kind="stable")

    def reciprocal(i, k):
        return {j for j in order[i, :k + 1] if i in order[j, :k + 1]}

    V = np.zeros((num, num))
    for i in range(num):
        own = reciprocal(i, k1)
        expanded = set(own)
        for candidate in own:
            theirs = reciprocal(candidate, round(k1 / 2))
            if len(theirs & own) > 2 / 3 * len(theirs):
                expanded |= theirs
        members = sorted(expanded)
        weights = np.exp(-dist[i, members])
        V[i, members] = weights / weights.sum()
    if k2 != 1:
        V = np.stack([V[order[i, :k2]].mean(0) for i in range(num)])
    overlap = np.minimum(V[:num_query, None, :], V[None, num_query:, :]).sum(-1)
    jaccard = 1 - overlap / (2 - overlap)
    return jaccard * (1 - lambda_value) + dist[:num_query, num_query:] * lambda_value


def clustered_split(seed, num_ids=16, per_id=8, dim=24, noise=1.0, num_query=32):
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(num_ids), per_id)
    camids = rng.integers(0, 4, len(pids))
    centres = rng.normal(size=(num_ids, dim))
    feats = centres[pids] + noise * rng.normal(size=(len(pids), dim))
    feats = (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32)
    order = rng.permutation(len(pids))
    feats, pids, camids = feats[order], pids[order], camids[order]
    q, g = slice(0, num_query), slice(num_query, None)
    return feats[q], feats[g], (pids[q], pids[g], camids[q], camids[g])


@pytest.mark.parametrize("k1, k2", [(20, 6), (12, 1), (25, 4)])  # k2 = 1: no query expansion
def test_matches_reference_algorithm(k1, k2):
    qf, gf, ids = clustered_split(seed=k1)
    result = re_ranking(qf, gf, k1, k2, 0.3)
    expected = reranking_oracle(qf, gf, k1, k2, 0.3)
    assert result.shape == expected.shape and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, atol=1e-4)
    assert abs(eval_func(result, *ids)[1] - eval_func(expected, *ids)[1]) < 1e-3  # 0.1 points


def test_reranking_changes_the_ranking_and_helps_on_clustered_data():
    qf, gf, ids = clustered_split(seed=3, noise=1.2)
    plain = ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1)
    reranked = re_ranking(qf, gf, 20, 6, 0.3)
    assert eval_func(reranked, *ids)[1] > eval_func(plain, *ids)[1]


def test_torch_input_and_small_chunks_give_the_same_distances():
    qf, gf, _ = clustered_split(seed=4)
    reference = re_ranking(qf, gf, 20, 6, 0.3)
    from_tensors = re_ranking(torch.from_numpy(qf), torch.from_numpy(gf), 20, 6, 0.3)
    np.testing.assert_array_equal(from_tensors, reference)
    chunks = list(re_ranked_distance_chunks(qf, gf, 20, 6, 0.3, chunk_bytes=20_000))
    assert len(chunks) > 1
    assert [rows.start for rows, _ in chunks] == sorted(rows.start for rows, _ in chunks)
    np.testing.assert_allclose(torch.cat([dist for _, dist in chunks]).numpy(), reference,
                               atol=1e-6)


def test_local_distmat_is_added_or_used_alone():
    qf, gf, _ = clustered_split(seed=5, num_ids=8, per_id=6, num_query=12)
    rng = np.random.default_rng(0)
    local = rng.random((len(qf) + len(gf),) * 2)
    local = (local + local.T).astype(np.float32)  # a distance is symmetric
    feats = np.concatenate([qf, gf]).astype(np.float64)
    feature_dist = ((feats[:, None, :] - feats[None, :, :]) ** 2).sum(-1)

    combined = re_ranking(qf, gf, 10, 3, 0.3, local_distmat=local)
    np.testing.assert_allclose(
        combined, reranking_oracle(qf, gf, 10, 3, 0.3, original=feature_dist + local), atol=1e-4)
    alone = re_ranking(qf, gf, 10, 3, 0.3, local_distmat=torch.from_numpy(local), only_local=True)
    np.testing.assert_allclose(alone, reranking_oracle(qf, gf, 10, 3, 0.3, original=local),
                               atol=1e-4)


def test_k1_larger_than_the_set_uses_every_image():
    qf, gf, _ = clustered_split(seed=6, num_ids=3, per_id=4, num_query=4)
    np.testing.assert_allclose(re_ranking(qf, gf, 30, 20, 0.3),
                               reranking_oracle(qf, gf, 30, 20, 0.3), atol=1e-4)


def test_bad_local_distmat_is_reported():
    qf, gf, _ = clustered_split(seed=7, num_ids=4, per_id=4, num_query=4)
    with pytest.raises(ValueError, match="needs local_distmat"):
        re_ranking(qf, gf, 5, 2, 0.3, only_local=True)
    with pytest.raises(ValueError, match=r"local_distmat has shape \(3, 3\).*\(16, 16\)"):
        re_ranking(qf, gf, 5, 2, 0.3, local_distmat=np.zeros((3, 3)))
