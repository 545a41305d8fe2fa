"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) in torch, with sparse neighbour structures.

Same algorithm and numbers as the reference's numpy `re_ranking` (TransReID utils/reranking.py),
but nothing of size N×N is ever held (N = queries + gallery images):

* the original distance is computed in row chunks and only the k1+1 nearest neighbours and the
  row maxima are kept;
* the k-reciprocal sets and their expansion are computed with gathers on those neighbour lists;
* V (the Gaussian-weighted neighbourhood vectors) and its query expansion are sparse CSR rows;
* the Jaccard overlap of each query chunk with the gallery is accumulated through an inverted
  index (V transposed), so the work is proportional to the non-zeros that actually meet.

Everything runs on the device of the features (CPU or CUDA). Values are float32 where the
reference stores V and the Jaccard distance in float16, so results agree to ~1e-3.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple, Union

import numpy as np
import torch

logger = logging.getLogger("transreid.reranking")

ArrayOrTensor = Union[np.ndarray, torch.Tensor]

DEFAULT_CHUNK_BYTES = 2 * 1024 ** 3
# A candidate's k1/2-reciprocal set joins R*(i) when more than this fraction of it is already in.
_EXPANSION_OVERLAP = 2 / 3


def squared_euclidean_distance(x: torch.Tensor, y: torch.Tensor,
                               x_sq: Optional[torch.Tensor] = None,
                               y_sq: Optional[torch.Tensor] = None) -> torch.Tensor:
    """‖x_i − y_j‖² as the reference computes it: no square root, rounding may make it slightly < 0.

    `x_sq` / `y_sq` are the precomputed squared norms, so chunked callers compute them once.
    """
    x_sq = x.pow(2).sum(1) if x_sq is None else x_sq
    y_sq = y.pow(2).sum(1) if y_sq is None else y_sq
    return torch.addmm(x_sq[:, None], x, y.T, alpha=-2).add_(y_sq)


def _as_float_tensor(array: ArrayOrTensor) -> torch.Tensor:
    return torch.as_tensor(array).float()


def row_chunks(total: int, size: int) -> Iterator[slice]:
    """Consecutive slices of `size` rows (at least 1) covering range(total)."""
    size = max(1, size)
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def _chunks_by_cost(cost: torch.Tensor, budget: int, max_rows: int) -> Iterator[slice]:
    """Consecutive row slices whose summed cost stays within `budget` (at least one row each)."""
    cumulative = np.cumsum(cost.cpu().numpy())
    start, total = 0, len(cumulative)
    while start < total:
        spent = cumulative[start - 1] if start else 0
        end = int(np.searchsorted(cumulative, spent + budget, side="right"))
        end = min(max(end, start + 1), start + max(1, max_rows), total)
        yield slice(start, end)
        start = end


class _OriginalDistance:
    """The reference's original distance over all N images (queries first, then gallery).

    Squared Euclidean distance of the features, plus an optional precomputed N×N distance
    (`local_distmat` in the reference); with `feats=None` only the precomputed one is used.
    """

    def __init__(self, feats: Optional[torch.Tensor], local: Optional[torch.Tensor],
                 device: torch.device, pair_chunk: int):
        self.feats = feats
        self.sq_norms = None if feats is None else feats.pow(2).sum(1)
        self.local = local  # stays where the caller had it; rows move to `device` on demand
        self.device = device
        self.pair_chunk = pair_chunk
        self.num = len(feats) if feats is not None else len(local)

    def block(self, rows: slice, cols: slice = slice(None)) -> torch.Tensor:
        dist = torch.zeros((), device=self.device)
        if self.feats is not None:
            dist = squared_euclidean_distance(self.feats[rows], self.feats[cols],
                                              self.sq_norms[rows], self.sq_norms[cols])
        if self.local is not None:
            dist = dist + self.local[rows, cols].to(self.device, torch.float32)
        return dist

    def pairs(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Distances of the (rows[p], cols[p]) pairs, computed in bounded pieces."""
        pieces = []
        for part in row_chunks(len(rows), self.pair_chunk):
            i, j = rows[part], cols[part]
            dist = torch.zeros(len(i), device=self.device)
            if self.feats is not None:
                dot = torch.einsum("pd,pd->p", self.feats[i], self.feats[j])
                dist = self.sq_norms[i] + self.sq_norms[j] - 2 * dot
            if self.local is not None:
                where = self.local.device
                dist = dist + self.local[i.to(where), j.to(where)].to(dist)
            pieces.append(dist)
        return torch.cat(pieces) if pieces else torch.zeros(0, device=self.device)


@dataclass
class _SparseRows:
    """A CSR matrix: row r holds `cols[ptr[r]:ptr[r+1]]` with `vals[...]`, columns ascending."""

    ptr: torch.Tensor
    cols: torch.Tensor
    vals: torch.Tensor

    @staticmethod
    def coalesce(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor,
                 shape: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Entries sorted by (row, col), duplicates summed."""
        coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, shape,
                                      check_invariants=False).coalesce()
        coo_rows, coo_cols = coo.indices()
        return coo_rows, coo_cols, coo.values()

    @classmethod
    def from_sorted(cls, rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor,
                    num_rows: int) -> "_SparseRows":
        ptr = torch.zeros(num_rows + 1, dtype=torch.long, device=rows.device)
        ptr[1:] = torch.bincount(rows, minlength=num_rows).cumsum(0)
        return cls(ptr, cols, vals)

    @classmethod
    def from_entries(cls, rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor,
                     shape: Tuple[int, int]) -> "_SparseRows":
        """Duplicate (row, col) entries are summed."""
        return cls.from_sorted(*cls.coalesce(rows, cols, vals, shape), shape[0])

    def row_lengths(self, rows: torch.Tensor) -> torch.Tensor:
        return self.ptr[rows + 1] - self.ptr[rows]

    def entries_of(self, rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """All entries of rows `rows` (repeats allowed), row after row: (index into `rows` of
        each entry's row, entry position)."""
        lengths = self.row_lengths(rows)
        owner = torch.arange(len(rows), device=rows.device).repeat_interleave(lengths)
        # position = ptr[row] + (running index − running index of the row's first entry)
        shift = self.ptr[rows] - (lengths.cumsum(0) - lengths)
        return owner, torch.arange(len(owner), device=rows.device).add_(shift[owner])

    def entries_in(self, rows: slice) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Entries of the consecutive rows `rows`: (row counted from rows.start, col, value)."""
        lengths = self.ptr[rows.start + 1:rows.stop + 1] - self.ptr[rows.start:rows.stop]
        local_rows = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device),
                                             lengths)
        first, last = int(self.ptr[rows.start]), int(self.ptr[rows.stop])
        return local_rows, self.cols[first:last], self.vals[first:last]


@dataclass
class _Neighbours:
    """The k nearest images of every image, nearest first, with their distances."""

    ranks: torch.Tensor      # N × k indices
    distances: torch.Tensor  # N × k
    row_max: torch.Tensor    # N: the largest distance of each row, to normalise it


def _nearest_neighbours(distance: _OriginalDistance, k: int, rows_per_chunk: int) -> _Neighbours:
    ranks = torch.empty(distance.num, k, dtype=torch.long, device=distance.device)
    distances = torch.empty(distance.num, k, device=distance.device)
    row_max = torch.empty(distance.num, device=distance.device)
    for rows in row_chunks(distance.num, rows_per_chunk):
        dist = distance.block(rows)
        row_max[rows] = dist.max(1).values
        distances[rows], ranks[rows] = dist.topk(k, dim=1, largest=False, sorted=True)
    return _Neighbours(ranks, distances, row_max)


def _is_reciprocal(ranks: torch.Tensor, rows_per_chunk: int) -> torch.Tensor:
    """mask[i, a]: image i is itself among the neighbours (columns of `ranks`) of ranks[i, a]."""
    mask = torch.empty(ranks.shape, dtype=torch.bool, device=ranks.device)
    for rows in row_chunks(len(ranks), rows_per_chunk):
        own_index = torch.arange(rows.start, rows.stop, device=ranks.device)[:, None, None]
        mask[rows] = (ranks[ranks[rows]] == own_index).any(-1)
    return mask


def _expanded_reciprocal_sets(ranks: torch.Tensor, reciprocal: torch.Tensor,
                              half_ranks: torch.Tensor, half_reciprocal: torch.Tensor,
                              rows: slice) -> Tuple[torch.Tensor, torch.Tensor]:
    """(row, col) entries of R*(i, k1) for the images `rows`: the k1-reciprocal set of i,
    joined with the k1/2-reciprocal set of each member c when more than 2/3 of that set is
    already in i's set."""
    num_rows, num_images = rows.stop - rows.start, len(ranks)
    members = torch.zeros(num_rows, num_images, dtype=torch.bool, device=ranks.device)
    members.scatter_(1, ranks[rows], reciprocal[rows])  # neighbour indices are distinct per row

    candidates = ranks[rows]                                   # B × K
    candidate_sets = half_ranks[candidates]                    # B × K × Kh
    candidate_in_set = half_reciprocal[candidates]             # B × K × Kh
    shared = members.gather(1, candidate_sets.flatten(1)).view_as(candidate_sets) & candidate_in_set
    # float64 and the reference's constant, so the ">" decides exactly as the reference does
    accepted = reciprocal[rows] & (shared.sum(-1).double()
                                   > _EXPANSION_OVERLAP * candidate_in_set.sum(-1).double())
    added = candidate_in_set & accepted[..., None]
    row_index = torch.arange(num_rows, device=ranks.device)[:, None, None].expand_as(added)
    members[row_index[added], candidate_sets[added]] = True
    local_rows, cols = members.nonzero(as_tuple=True)
    return local_rows + rows.start, cols


def _entry_distances(distance: _OriginalDistance, neighbours: _Neighbours, rows: slice,
                     entry_rows: torch.Tensor, entry_cols: torch.Tensor) -> torch.Tensor:
    """Distances of the entries of `rows`: most are among the k nearest, whose distances are
    kept; the rest (neighbours of neighbours) are computed pair by pair."""
    known = torch.full((rows.stop - rows.start, distance.num), float("nan"),
                       device=distance.device)
    known.scatter_(1, neighbours.ranks[rows], neighbours.distances[rows])
    dist = known[entry_rows - rows.start, entry_cols]
    missing = dist.isnan()
    dist[missing] = distance.pairs(entry_rows[missing], entry_cols[missing])
    return dist


def _neighbourhood_vectors(distance: _OriginalDistance, neighbours: _Neighbours, k1: int,
                           rows_per_chunk: int) -> _SparseRows:
    """V: row i has weights exp(-d(i, j)) over R*(i, k1), normalised to sum 1."""
    ranks = neighbours.ranks[:, :k1 + 1]
    half_k = round(k1 / 2) + 1  # round half to even, as the reference's np.around
    reciprocal = _is_reciprocal(ranks, rows_per_chunk)
    half_ranks = ranks[:, :half_k]
    half_reciprocal = _is_reciprocal(half_ranks, rows_per_chunk)
    entries = []
    for rows in row_chunks(distance.num, rows_per_chunk):
        r, c = _expanded_reciprocal_sets(ranks, reciprocal, half_ranks, half_reciprocal, rows)
        entries.append((r, c, _entry_distances(distance, neighbours, rows, r, c)))
    rows, cols, dist = (torch.cat(column) for column in zip(*entries))
    weights = torch.exp(-dist / neighbours.row_max[rows])
    row_sums = torch.zeros(distance.num, device=weights.device).index_add_(0, rows, weights)
    # entries come chunk after chunk from nonzero(): already sorted by (row, col)
    return _SparseRows.from_sorted(rows, cols, weights / row_sums[rows], distance.num)


def _query_expansion(vectors: _SparseRows, neighbours: torch.Tensor,
                     max_entries: int) -> _SparseRows:
    """Row i becomes the mean of the rows of its k2 nearest images (`neighbours`: N × k2)."""
    num, k2 = neighbours.shape
    cost = vectors.row_lengths(neighbours).sum(1)
    parts = []
    for rows in _chunks_by_cost(cost, max_entries, num):
        owner, pos = vectors.entries_of(neighbours[rows].flatten())
        target_rows = torch.arange(rows.start, rows.stop, device=neighbours.device)
        # chunks hold disjoint, increasing rows: coalesced one by one they stay sorted
        parts.append(_SparseRows.coalesce(target_rows.repeat_interleave(k2)[owner],
                                          vectors.cols[pos], vectors.vals[pos] / k2, (num, num)))
    rows, cols, vals = (torch.cat(column) for column in zip(*parts))
    return _SparseRows.from_sorted(rows, cols, vals, num)


def _gallery_columns(vectors: _SparseRows, num_query: int) -> _SparseRows:
    """Inverted index: for each column k, the gallery rows j (from 0) with V[j, k] != 0."""
    num = len(vectors.ptr) - 1
    rows, _, _ = vectors.entries_in(slice(0, num))
    in_gallery = rows >= num_query
    return _SparseRows.from_entries(vectors.cols[in_gallery], rows[in_gallery] - num_query,
                                    vectors.vals[in_gallery], (num, num - num_query))


def _jaccard_overlap(vectors: _SparseRows, inverted: _SparseRows, queries: slice,
                     num_gallery: int) -> torch.Tensor:
    """Σ_k min(V[i, k], V[j, k]) for the queries i in `queries` and every gallery image j.

    Only the k where both rows are non-zero contribute, so each non-zero V[i, k] of the queries
    meets the gallery rows listed for column k in the inverted index.
    """
    query_of_entry, shared_cols, query_vals = vectors.entries_in(queries)
    owner, pos = inverted.entries_of(shared_cols)
    target = (query_of_entry * num_gallery)[owner].add_(inverted.cols[pos])
    shared = torch.minimum(query_vals[owner], inverted.vals[pos])
    overlap = torch.zeros((queries.stop - queries.start) * num_gallery, device=query_vals.device)
    return overlap.index_add_(0, target, shared).view(-1, num_gallery)


def _jaccard_cost(vectors: _SparseRows, inverted: _SparseRows, num_query: int) -> torch.Tensor:
    """Number of (query entry, gallery entry) meetings of each query row in `_jaccard_overlap`."""
    query_of_entry, shared_cols, _ = vectors.entries_in(slice(0, num_query))
    meetings = inverted.row_lengths(shared_cols)
    return torch.zeros(num_query, dtype=torch.long, device=meetings.device).index_add_(
        0, query_of_entry, meetings)


def _features_and_local(probFea: ArrayOrTensor, galFea: ArrayOrTensor,
                        local_distmat: Optional[ArrayOrTensor], only_local: bool,
                        ) -> Tuple[int, Optional[torch.Tensor], Optional[torch.Tensor],
                                   torch.device]:
    """(number of queries, all features or None, local distance or None, device to run on)."""
    query = _as_float_tensor(probFea)
    gallery = _as_float_tensor(galFea).to(query.device)
    num_images = len(query) + len(gallery)
    local = None if local_distmat is None else _as_float_tensor(local_distmat)
    if only_local and local is None:
        raise ValueError("re_ranking(only_local=True) needs local_distmat, the N×N distance of "
                         "all query and gallery images")
    if local is not None and tuple(local.shape) != (num_images, num_images):
        raise ValueError(f"local_distmat has shape {tuple(local.shape)}; it must be "
                         f"({num_images}, {num_images}): queries then gallery images")
    feats = None if only_local else torch.cat([query, gallery])
    return len(query), feats, local, query.device


@torch.no_grad()
def re_ranked_distance_chunks(probFea: ArrayOrTensor, galFea: ArrayOrTensor, k1: int, k2: int,
                              lambda_value: float, local_distmat: Optional[ArrayOrTensor] = None,
                              only_local: bool = False, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                              ) -> Iterator[Tuple[slice, torch.Tensor]]:
    """Yield (query rows, re-ranked distances of those queries to every gallery image).

    Each chunk is a float32 tensor on the features' device. `chunk_bytes` bounds the working
    buffers of one step; the persistent state is O(N·(k1 + k2·|R*|)), never N×N.
    """
    num_query, feats, local, device = _features_and_local(probFea, galFea, local_distmat,
                                                          only_local)
    feat_dim = 1 if feats is None else feats.shape[1]
    distance = _OriginalDistance(feats, local, device,
                                 pair_chunk=max(1, min(chunk_bytes, 2 ** 28) // (8 * feat_dim)))
    num_images = distance.num
    num_gallery = num_images - num_query
    k = min(k1 + 1, num_images)
    rows_per_chunk = max(1, chunk_bytes // (16 * (num_images + k * k)))
    logger.info("Re-ranking %d queries x %d gallery images (k1=%d, k2=%d, lambda=%g) on %s",
                num_query, num_gallery, k1, k2, lambda_value, device)

    neighbours = _nearest_neighbours(distance, max(k, min(k2, num_images)), rows_per_chunk)
    vectors = _neighbourhood_vectors(distance, neighbours, k1, rows_per_chunk)
    if k2 != 1:
        vectors = _query_expansion(vectors, neighbours.ranks[:, :k2],
                                   max_entries=chunk_bytes // 64)
    inverted = _gallery_columns(vectors, num_query)
    cost = _jaccard_cost(vectors, inverted, num_query)
    for queries in _chunks_by_cost(cost, chunk_bytes // 64, chunk_bytes // (16 * num_gallery)):
        overlap = _jaccard_overlap(vectors, inverted, queries, num_gallery)
        jaccard = 1 - overlap / (2 - overlap)
        original = distance.block(queries, slice(num_query, None)) \
            / neighbours.row_max[queries, None]
        yield queries, jaccard.mul_(1 - lambda_value).add_(original, alpha=lambda_value)


def re_ranking(probFea: ArrayOrTensor, galFea: ArrayOrTensor, k1: int, k2: int,
               lambda_value: float, local_distmat: Optional[ArrayOrTensor] = None,
               only_local: bool = False) -> np.ndarray:
    """The reference's API: the whole re-ranked query × gallery distance, a float32 array.

    Features may be numpy arrays or tensors (on any device: the work runs there). For sets whose
    query × gallery matrix does not fit in host memory, iterate `re_ranked_distance_chunks`.
    """
    chunks = [dist.cpu() for _, dist in re_ranked_distance_chunks(
        probFea, galFea, k1, k2, lambda_value, local_distmat, only_local)]
    return torch.cat(chunks).numpy()
