"""The k-reciprocal Jaccard distance that cluster-contrast clusters (Dai et al.; its
`clustercontrast/utils/faiss_rerank.py:compute_jaccard_distance`, as TransReID-SSL bundles it).

It is the Jaccard half of `utils.reranking` on one set of images, with three differences in the
maths, kept here because cluster-contrast's published figures were made with them:

* the neighbour lists hold k1 images (the image itself first), not k1 + 1;
* the weights over R*(i) are a softmax of the negative distance 2 − 2·x_i·x_j (their features are
  L2-normalised), not exp(−d / row maximum);
* there is no original-distance term (λ = 0) and negative distances are clipped to 0.

Their search options (faiss on GPU or CPU, flat L2) are all exact, so the neighbours are found
here by an exact torch search on the features' device. Nothing N×N is held: the result is a
sparse matrix of the pairs closer than `max_distance`; every missing pair is at distance 1.
"""
from __future__ import annotations

import logging
from typing import List, Tuple

import numpy as np
import scipy.sparse
import torch

from utils.errors import ConfigError
from utils.reranking import (DEFAULT_CHUNK_BYTES, _OriginalDistance, _SparseRows,
                             _chunks_by_cost, _expanded_reciprocal_sets, _gallery_columns,
                             _is_reciprocal, _jaccard_cost, _jaccard_overlap,
                             _nearest_neighbours, _query_expansion, row_chunks)

logger = logging.getLogger("transreid.jaccard")


def _check_sizes(num_images: int, k1: int, k2: int) -> None:
    if k1 < 1 or k2 < 1:
        raise ConfigError(f"the Jaccard distance needs k1 >= 1 and k2 >= 1, got k1={k1}, k2={k2}")
    if k2 > k1:
        raise ConfigError(f"the Jaccard distance's k2={k2} is larger than k1={k1}: the query "
                          f"expansion averages among the k1 nearest images; lower k2")
    if num_images <= k1:
        raise ConfigError(f"clustering {num_images} images with k1={k1} neighbours: k1 must be "
                          f"smaller than the number of images; lower k1 or add images")


def _softmax_weights(feats: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                     num_rows: int) -> torch.Tensor:
    """softmax over each row's entries of −(2 − 2·x_row·x_col), as their F.softmax(-dist)."""
    logits = torch.einsum("pd,pd->p", feats[rows], feats[cols]).mul_(2).sub_(2)
    row_max = torch.full((num_rows,), float("-inf"), device=feats.device)
    row_max.scatter_reduce_(0, rows, logits, reduce="amax")
    weights = (logits - row_max[rows]).exp_()
    sums = torch.zeros(num_rows, device=feats.device).index_add_(0, rows, weights)
    return weights / sums[rows]


def _neighbourhood_vectors(feats: torch.Tensor, ranks: torch.Tensor, k1: int,
                           rows_per_chunk: int) -> _SparseRows:
    """V: row i has softmax weights over R*(i, k1); `ranks` holds the k1 nearest images."""
    half_ranks = ranks[:, :int(np.around(k1 / 2)) + 1]
    reciprocal = _is_reciprocal(ranks, rows_per_chunk)
    half_reciprocal = _is_reciprocal(half_ranks, rows_per_chunk)
    pieces = [_expanded_reciprocal_sets(ranks, reciprocal, half_ranks, half_reciprocal, rows)
              for rows in row_chunks(len(ranks), rows_per_chunk)]
    rows, cols = (torch.cat(column) for column in zip(*pieces))
    weights = _softmax_weights(feats, rows, cols, len(ranks))
    return _SparseRows.from_sorted(rows, cols, weights, len(ranks))


def _close_pairs(vectors: _SparseRows, num_images: int, max_distance: float,
                 chunk_bytes: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, distances) of the pairs that share a neighbour and lie within max_distance."""
    inverted = _gallery_columns(vectors, 0)
    cost = _jaccard_cost(vectors, inverted, num_images)
    found: List[Tuple[torch.Tensor, ...]] = []
    for rows in _chunks_by_cost(cost, chunk_bytes // 64, chunk_bytes // (16 * num_images)):
        overlap = _jaccard_overlap(vectors, inverted, rows, num_images)
        distance = (1 - overlap / (2 - overlap)).clamp_(min=0)
        local_rows, cols = ((overlap > 0) & (distance <= max_distance)).nonzero(as_tuple=True)
        found.append((local_rows + rows.start, cols, distance[local_rows, cols]))
    return tuple(torch.cat(column).cpu().numpy() for column in zip(*found))


@torch.no_grad()
def jaccard_distance_graph(features: torch.Tensor, k1: int = 20, k2: int = 6,
                           max_distance: float = 1.0,
                           chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> scipy.sparse.csr_matrix:
    """The Jaccard distance of every pair of images within `max_distance`, as a float32 CSR
    matrix (each row's columns ascending; an image normally stores itself, at about 0).

    A pair missing from the matrix is at distance 1 (its neighbourhoods do not meet) or farther
    than `max_distance`. Runs on the features' device; `chunk_bytes` bounds one step's buffers.
    """
    feats = torch.as_tensor(features).float()
    num_images = len(feats)
    _check_sizes(num_images, k1, k2)
    rows_per_chunk = max(1, chunk_bytes // (16 * (num_images + k1 * k1)))
    logger.info("Jaccard distance of %d images (k1=%d, k2=%d) on %s", num_images, k1, k2,
                feats.device)
    distance = _OriginalDistance(feats, None, feats.device,
                                 pair_chunk=max(1, min(chunk_bytes, 2 ** 28) // (8 * feats.shape[1])))
    ranks = _nearest_neighbours(distance, k1, rows_per_chunk).ranks
    vectors = _neighbourhood_vectors(feats, ranks, k1, rows_per_chunk)
    if k2 != 1:
        vectors = _query_expansion(vectors, ranks[:, :k2], max_entries=chunk_bytes // 64)
    rows, cols, values = _close_pairs(vectors, num_images, max_distance, chunk_bytes)
    indptr = np.zeros(num_images + 1, dtype=np.int64)
    indptr[1:] = np.bincount(rows, minlength=num_images).cumsum()
    return scipy.sparse.csr_matrix((values.astype(np.float32), cols, indptr),
                                   shape=(num_images, num_images))


def compute_jaccard_distance(features: torch.Tensor, k1: int = 20, k2: int = 6,
                             chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> np.ndarray:
    """Their API: the whole N×N float32 Jaccard distance (1 where neighbourhoods do not meet).

    N×N floats: for large sets (MSMT17's 32,621 images need 4.3 GB) use `jaccard_distance_graph`.
    """
    graph = jaccard_distance_graph(features, k1, k2, 1.0, chunk_bytes).tocoo()
    dense = np.ones(graph.shape, dtype=np.float32)
    dense[graph.row, graph.col] = graph.data
    return dense
