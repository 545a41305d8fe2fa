"""The reference's evaluation, written plainly: the baseline that bench_eval.py times.

Same algorithms and data types as TransReID's utils/metrics.py and utils/reranking.py: full
distance matrices computed with torch on the CPU, then numpy argsorts, per-query loops and float16
V and Jaccard. Kept here for timing and agreement checks only.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch


def squared_euclidean(qf: np.ndarray, gf: np.ndarray) -> np.ndarray:
    """The full query × gallery squared Euclidean distance (no square root), float32, computed
    as the reference's euclidean_distance: torch on the CPU, handed over as numpy."""
    q, g = torch.from_numpy(qf), torch.from_numpy(gf)
    dist = q.pow(2).sum(1, keepdim=True) + g.pow(2).sum(1)[None, :]
    return dist.addmm_(q, g.T, alpha=-2).numpy()


def market_eval(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                q_camids: np.ndarray, g_camids: np.ndarray,
                max_rank: int = 50) -> Tuple[np.ndarray, float]:
    """CMC and mAP with a full argsort and a loop over queries, as the reference's eval_func."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1)
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    all_cmc, all_ap = [], []
    for q_idx in range(num_q):
        order = indices[q_idx]
        kept = ~((g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx]))
        hits = matches[q_idx][kept]
        if not hits.any():
            continue
        cmc = hits.cumsum()
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        precision = hits.cumsum() / np.arange(1.0, len(hits) + 1)
        all_ap.append((precision * hits).sum() / hits.sum())
    if not all_cmc:
        raise ValueError("no valid query")
    cmc = np.asarray(all_cmc).astype(np.float32).sum(0) / len(all_cmc)
    return cmc, float(np.mean(all_ap))


def _k_reciprocal(initial_rank: np.ndarray, i: int, k: int) -> np.ndarray:
    forward = initial_rank[i, :k + 1]
    backward = initial_rank[forward, :k + 1]
    return forward[np.where(backward == i)[0]]


def re_ranking(qf: np.ndarray, gf: np.ndarray, k1: int, k2: int,
               lambda_value: float) -> np.ndarray:
    """k-reciprocal re-ranking with dense N × N arrays, as the reference's re_ranking."""
    query_num = len(qf)
    feats = np.concatenate([qf, gf])
    all_num = len(feats)
    original_dist = squared_euclidean(feats, feats)
    original_dist = np.transpose(original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float16)
    initial_rank = np.argsort(original_dist).astype(np.int32)

    for i in range(all_num):
        k_reciprocal_index = _k_reciprocal(initial_rank, i, k1)
        expansion = k_reciprocal_index
        for candidate in k_reciprocal_index:
            candidate_index = _k_reciprocal(initial_rank, candidate, int(np.around(k1 / 2)))
            if len(np.intersect1d(candidate_index, k_reciprocal_index)) \
                    > 2 / 3 * len(candidate_index):
                expansion = np.append(expansion, candidate_index)
        expansion = np.unique(expansion)
        weight = np.exp(-original_dist[i, expansion])
        V[i, expansion] = weight / np.sum(weight)
    original_dist = original_dist[:query_num, ]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float16)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    del initial_rank
    inv_index = [np.where(V[:, i] != 0)[0] for i in range(all_num)]

    jaccard_dist = np.zeros_like(original_dist, dtype=np.float16)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, all_num], dtype=np.float16)
        non_zero = np.where(V[i, :] != 0)[0]
        for k in non_zero:
            rows = inv_index[k]
            temp_min[0, rows] = temp_min[0, rows] + np.minimum(V[i, k], V[rows, k])
        jaccard_dist[i] = 1 - temp_min / (2 - temp_min)

    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]
