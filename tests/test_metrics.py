"""utils.metrics against a plain, obviously-correct Market-1501 metric written here."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.metrics import R1_mAP_eval, eval_func, pairwise_distance
from utils.reranking import re_ranking


def market_oracle(dist, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Per query: rank the gallery by (distance, index), drop same identity + camera, then
    CMC = 1 from the first match on, AP = mean of the precision at each match."""
    cmc_rows, aps = [], []
    for q in range(len(q_pids)):
        order = sorted(range(len(g_pids)), key=lambda g: (float(dist[q][g]), g))
        kept = [g for g in order if not (g_pids[g] == q_pids[q] and g_camids[g] == q_camids[q])]
        is_match = [g_pids[g] == q_pids[q] for g in kept]
        if not any(is_match):
            continue
        first = is_match.index(True) + 1
        cmc_rows.append([1.0 if rank >= first else 0.0 for rank in range(1, max_rank + 1)])
        hit_positions = [position + 1 for position, hit in enumerate(is_match) if hit]
        aps.append(np.mean([(n + 1) / position for n, position in enumerate(hit_positions)]))
    cmc = np.asarray(cmc_rows, dtype=np.float32).sum(0) / np.float32(len(cmc_rows))
    return cmc, float(np.mean(aps))


def random_split(rng, num_query=40, num_gallery=120, num_ids=15, num_cams=3):
    return (rng.integers(0, num_ids, num_query), rng.integers(0, num_ids, num_gallery),
            rng.integers(0, num_cams, num_query), rng.integers(0, num_cams, num_gallery))


@pytest.mark.parametrize("chunk_bytes", [2 ** 31, 3000])  # one chunk; a few queries per chunk
def test_eval_func_matches_oracle_on_real_valued_distances(chunk_bytes):
    rng = np.random.default_rng(0)
    ids = random_split(rng)
    dist = rng.normal(size=(40, 120)).astype(np.float32)  # negative values must rank first
    cmc, mAP = eval_func(dist, *ids, max_rank=10, chunk_bytes=chunk_bytes)
    expected_cmc, expected_map = market_oracle(dist, *ids, max_rank=10)
    np.testing.assert_array_equal(cmc, expected_cmc)
    assert cmc.dtype == np.float32 and cmc.shape == (10,)
    assert mAP == pytest.approx(expected_map, rel=1e-12)


def test_ties_are_broken_by_gallery_index():
    rng = np.random.default_rng(1)
    ids = random_split(rng)
    dist = rng.integers(0, 4, size=(40, 120)).astype(np.float32)  # about 30 images per value
    dist[0, :2] = [0.0, -0.0]  # equal values whatever their sign bit
    cmc, mAP = eval_func(dist, *ids, max_rank=20, chunk_bytes=5000)
    expected_cmc, expected_map = market_oracle(dist, *ids, max_rank=20)
    np.testing.assert_array_equal(cmc, expected_cmc)
    assert mAP == pytest.approx(expected_map, rel=1e-12)


def test_hand_computed_example_skips_queries_without_a_valid_match():
    # gallery:          0           1           2                  3
    g_pids, g_camids = [1, 2, 1, 1], [1, 1, 0, 2]
    q_pids, q_camids = [1, 3, 2], [0, 0, 1]
    dist = np.array([[0.3, 0.1, 0.05, 0.5],  # image 2 is junk (same camera): 2, 1, 3 kept
                     [0.1, 0.2, 0.3, 0.4],   # identity 3 is not in the gallery: skipped
                     [0.4, 0.1, 0.2, 0.3]],  # identity 2 only seen by its own camera: skipped
                    dtype=np.float32)
    cmc, mAP = eval_func(dist, q_pids, g_pids, q_camids, g_camids, max_rank=3)
    # kept order for query 0: identity 2, 1, 1 -> matches at ranks 2 and 3
    assert mAP == pytest.approx((1 / 2 + 2 / 3) / 2)
    np.testing.assert_array_equal(cmc, [0.0, 1.0, 1.0])


def test_single_gallery_image_pads_cmc_to_max_rank():
    dist = np.array([[0.5], [0.2]], dtype=np.float32)
    cmc, mAP = eval_func(dist, q_pids=[7, 8], g_pids=[7], q_camids=[0, 0], g_camids=[1],
                         max_rank=5)
    assert mAP == 1.0
    np.testing.assert_array_equal(cmc, np.ones(5, dtype=np.float32))


def test_max_rank_beyond_gallery_repeats_the_last_cmc_value():
    rng = np.random.default_rng(2)
    ids = random_split(rng, num_query=30, num_gallery=8, num_ids=4)
    dist = rng.random((30, 8)).astype(np.float32)
    cmc, mAP = eval_func(dist, *ids, max_rank=50)
    expected_cmc, expected_map = market_oracle(dist, *ids, max_rank=8)  # the reference's length
    assert cmc.shape == (50,)
    np.testing.assert_array_equal(cmc[:8], expected_cmc)
    np.testing.assert_array_equal(cmc[8:], np.full(42, expected_cmc[-1]))
    assert mAP == pytest.approx(expected_map, rel=1e-12)


def test_no_valid_query_raises_a_clear_error():
    dist = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="No query has a valid match"):
        eval_func(dist, [1, 2], [1, 1, 2], [0, 0], [0, 0, 0])


def test_distmat_shape_must_match_the_ids():
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*2 queries and 4 gallery"):
        eval_func(np.zeros((2, 3)), [1, 2], [1, 1, 2, 2], [0, 0], [1, 1, 1, 1])


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(3)
    ids = random_split(rng)
    dist = rng.random((40, 120)).astype(np.float32)
    from_numpy = eval_func(dist, *ids)
    from_torch = eval_func(torch.from_numpy(dist), *(torch.from_numpy(x) for x in ids))
    np.testing.assert_array_equal(from_numpy[0], from_torch[0])
    assert from_numpy[1] == from_torch[1]


def clustered_features(rng, num_ids=12, per_id=6, dim=16, noise=0.9):
    pids = np.repeat(np.arange(num_ids), per_id)
    camids = rng.integers(0, 3, len(pids))
    centres = rng.normal(size=(num_ids, dim))
    feats = (centres[pids] + noise * rng.normal(size=(len(pids), dim))).astype(np.float32)
    order = rng.permutation(len(pids))
    return feats[order], pids[order], camids[order]


def fill(evaluator, feats, pids, camids, batch=16):
    for start in range(0, len(feats), batch):
        end = start + batch
        evaluator.update((torch.from_numpy(feats[start:end]), tuple(pids[start:end].tolist()),
                          torch.from_numpy(camids[start:end])))


def normalised(feats):
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


@pytest.mark.parametrize("feat_norm", [True, "yes", False, "no"])
def test_r1_map_eval_euclidean_matches_oracle(feat_norm):
    rng = np.random.default_rng(4)
    feats, pids, camids = clustered_features(rng)
    num_query = 20
    evaluator = R1_mAP_eval(num_query, max_rank=10, feat_norm=feat_norm)
    fill(evaluator, feats, pids, camids)
    cmc, mAP, distmat, all_pids, all_camids, qf, gf = evaluator.compute()

    used = normalised(feats) if feat_norm in (True, "yes") else feats
    q, g = used[:num_query].astype(np.float64), used[num_query:].astype(np.float64)
    expected_dist = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)  # squared, as the reference
    np.testing.assert_allclose(distmat, expected_dist, atol=1e-4)
    expected_cmc, expected_map = market_oracle(distmat, pids[:num_query], pids[num_query:],
                                               camids[:num_query], camids[num_query:], 10)
    np.testing.assert_array_equal(cmc, expected_cmc)
    assert mAP == pytest.approx(expected_map, rel=1e-12)
    assert all_pids == pids.tolist() and all_camids == camids.tolist()
    np.testing.assert_allclose(qf.numpy(), used[:num_query], atol=1e-6)
    assert gf.shape == (len(feats) - num_query, feats.shape[1])


def test_r1_map_eval_cosine_distance_and_optional_distmat():
    rng = np.random.default_rng(5)
    feats, pids, camids = clustered_features(rng)
    evaluator = R1_mAP_eval(20, max_rank=10, feat_norm=False, dist_metric="Cosine",
                            return_distmat=False)
    fill(evaluator, feats, pids, camids)
    cmc, mAP, distmat, *_ = evaluator.compute()
    assert distmat is None
    unit = normalised(feats.astype(np.float64))
    cosine_dist = 1 - unit[:20] @ unit[20:].T
    np.testing.assert_allclose(pairwise_distance(torch.from_numpy(feats[:20]),
                                                 torch.from_numpy(feats[20:]), "cosine").numpy(),
                               cosine_dist, atol=1e-5)
    expected_cmc, expected_map = market_oracle(cosine_dist, pids[:20], pids[20:], camids[:20],
                                               camids[20:], 10)
    np.testing.assert_array_equal(cmc, expected_cmc)
    assert mAP == pytest.approx(expected_map, abs=1e-9)


# cosine re-ranking of raw features is Euclidean re-ranking of unit features
@pytest.mark.parametrize("feat_norm, metric", [("yes", "euclidean"), ("no", "cosine")])
def test_r1_map_eval_with_reranking_scores_the_reranked_distances(feat_norm, metric):
    rng = np.random.default_rng(6)
    feats, pids, camids = clustered_features(rng)
    evaluator = R1_mAP_eval(20, max_rank=10, feat_norm=feat_norm, reranking=True,
                            dist_metric=metric, k1=8, k2=3, lambda_value=0.3)
    fill(evaluator, feats, pids, camids)
    cmc, mAP, distmat, *_ = evaluator.compute()
    unit = torch.from_numpy(normalised(feats))
    expected_dist = re_ranking(unit[:20], unit[20:], k1=8, k2=3, lambda_value=0.3)
    np.testing.assert_allclose(distmat, expected_dist, atol=1e-6)
    expected_cmc, expected_map = market_oracle(distmat, pids[:20], pids[20:], camids[:20],
                                               camids[20:], 10)
    np.testing.assert_array_equal(cmc, expected_cmc)
    assert mAP == pytest.approx(expected_map, rel=1e-12)


def test_distmat_is_left_out_automatically_when_too_large(monkeypatch):
    rng = np.random.default_rng(8)
    feats, pids, camids = clustered_features(rng)
    monkeypatch.setattr("utils.metrics._AUTO_DISTMAT_LIMIT_BYTES", 20 * 52 * 4 - 1)  # 20 x 52
    evaluator = R1_mAP_eval(20, max_rank=10)
    fill(evaluator, feats, pids, camids)
    assert evaluator.compute()[2] is None
    evaluator.return_distmat = True
    assert evaluator.compute()[2].shape == (20, 52)


def test_reset_forgets_previous_batches():
    rng = np.random.default_rng(7)
    feats, pids, camids = clustered_features(rng)
    evaluator = R1_mAP_eval(20, max_rank=10)
    fill(evaluator, feats[::-1].copy(), pids[::-1].copy(), camids[::-1].copy())
    evaluator.reset()
    fill(evaluator, feats, pids, camids)
    assert evaluator.compute()[3] == pids.tolist()


@pytest.mark.parametrize("kwargs, message", [
    (dict(feat_norm="maybe"), "TEST.FEAT_NORM must be"),
    (dict(feat_norm=1), "TEST.FEAT_NORM must be"),
    (dict(reranking="sometimes"), "TEST.RE_RANKING must be"),
    (dict(dist_metric="manhattan"), "TEST.DIST_METRIC 'manhattan' is unknown"),
])
def test_r1_map_eval_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        R1_mAP_eval(10, **kwargs)


def test_compute_needs_queries_and_gallery():
    evaluator = R1_mAP_eval(num_query=5)
    evaluator.update((torch.zeros(5, 4), [1] * 5, [0] * 5))
    with pytest.raises(ValueError, match="5 images for num_query=5"):
        evaluator.compute()
