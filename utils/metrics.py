"""Market-1501 protocol CMC and mAP, computed with torch on the features' device in query chunks.

The numbers are the reference's (TransReID utils/metrics.py `eval_func`): for each query, gallery
images of the same identity *and* camera are removed; queries left without a match are skipped;
AP is the mean of the precision at each hit; CMC is 1 from the first hit on.

Ranking ties are broken by gallery index (a stable sort), so results are deterministic; the
reference's `np.argsort` (quicksort) leaves the order of equal distances unspecified.

Instead of sorting every gallery row, each chunk ranks only the query's true matches: every
gallery image is given an int64 key that orders like (distance, gallery index), and a
`searchsorted` of all keys among the sorted keys of the matches counts how many kept images
precede each match. The work is O(G log P) per query (P = images of the query's identity) and
the memory O(chunk × G).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from utils.distance import (DIST_METRICS, check_dist_metric, distance_chunks,  # noqa: F401
                            normalize_rows_, pairwise_distance, query_gallery_distance,
                            rows_per_chunk)
from utils.errors import UserError
from utils.options import yes_no
from utils.reranking import DEFAULT_CHUNK_BYTES, row_chunks
from utils.verification import VerificationResult

logger = logging.getLogger("transreid.metrics")

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[int]]

_INT64_MAX = torch.iinfo(torch.int64).max
# Above this size compute() leaves out the query × gallery matrix unless asked for it
# (MSMT17: 11,659 × 82,161 float32 is 3.8 GB).
_AUTO_DISTMAT_LIMIT_BYTES = 2 * 1024 ** 3


class NoValidQueryError(UserError, ValueError):
    """No query of a test set has a gallery image of its identity from another camera."""


# The figures an evaluation reports, in the order every output shows them: the log lines,
# metrics.csv and TensorBoard, test_results.json and tools/plot_training.py all iterate this
# tuple. 'rank<k>' is CMC at rank k; any other name is an attribute of EvalResult.
METRICS = ("mAP", "rank1", "rank5", "rank10", "mINP")


@dataclass
class EvalResult:
    """What an evaluation gives: mAP, CMC (float32, length max_rank), mINP (Ye et al., TPAMI
    2021: the mean over queries of matches / rank of the hardest match), and over how many
    queries: those without a valid match in the gallery are skipped, as the protocol says."""
    mAP: float
    cmc: np.ndarray
    mINP: float
    num_valid_queries: int
    num_queries: int
    extra: dict = field(default_factory=dict)
    # How well a distance threshold tells same from other identities (evaluate(verification=)).
    verification: Optional[VerificationResult] = None

    @property
    def num_skipped_queries(self) -> int:
        return self.num_queries - self.num_valid_queries

    def metric(self, name: str) -> float:
        """One of METRICS; NaN for a rank beyond the CMC's length."""
        if name.startswith("rank"):
            rank = int(name[len("rank"):])
            return float(self.cmc[rank - 1]) if rank <= len(self.cmc) else float("nan")
        return float(getattr(self, name))

    def metrics(self) -> Dict[str, float]:
        """{name: value} of METRICS, in its order."""
        return {name: self.metric(name) for name in METRICS}

    def as_dict(self) -> dict:
        verification = {} if self.verification is None else \
            {"verification": self.verification.as_dict()}
        return {**self.metrics(), "num_valid_queries": self.num_valid_queries,
                "num_queries": self.num_queries, "cmc": [float(v) for v in self.cmc],
                **verification, **self.extra}

    @classmethod
    def mean(cls, results: Sequence["EvalResult"]) -> "EvalResult":
        """The average of several evaluations (VehicleID's random query/gallery draws); each
        one's figures are kept under extra['trials']."""
        return cls(mAP=float(np.mean([r.mAP for r in results])),
                   cmc=np.mean([r.cmc for r in results], axis=0),
                   mINP=float(np.mean([r.mINP for r in results])),
                   num_valid_queries=sum(r.num_valid_queries for r in results),
                   num_queries=sum(r.num_queries for r in results),
                   extra={"trials": [r.as_dict() for r in results]})


def _as_tensor(values: ArrayLike, device: Optional[torch.device] = None) -> torch.Tensor:
    if isinstance(values, np.ndarray) and not values.flags.c_contiguous:
        values = np.ascontiguousarray(values)
    return torch.as_tensor(values, device=device)


def _as_ids(values: ArrayLike, device: torch.device) -> torch.Tensor:
    return _as_tensor(values, device).long().reshape(-1)


def _stable_order_keys(dist: torch.Tensor) -> torch.Tensor:
    """int64 keys that order each row like a stable ascending sort: by (distance, column index).

    Distances are ranked as float32, the precision the reference's distances have.
    """
    bits = (dist.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into 0.0; they are equal
    # IEEE floats order as sign-magnitude integers; flipping the magnitude bits of negative
    # numbers (sign-extended mask) makes them order as two's-complement integers
    bits ^= (bits >> 31) & 0x7FFFFFFF
    keys = bits.long().mul_(2 ** 32)
    return keys.add_(torch.arange(dist.shape[1], device=dist.device))


class _MarketProtocol:
    """The gallery's identities and cameras, grouped by identity once, to rank query chunks."""

    def __init__(self, g_pids: torch.Tensor, g_camids: torch.Tensor):
        self.g_pids, self.g_camids = g_pids, g_camids
        self.by_pid = torch.argsort(g_pids, stable=True)
        self.pid_values, self.pid_counts = torch.unique_consecutive(g_pids[self.by_pid],
                                                                    return_counts=True)
        self.pid_starts = self.pid_counts.cumsum(0) - self.pid_counts

    def same_identity(self, q_pids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Gallery indices of each query's identity, padded: (indices B×P, present B×P)."""
        if len(self.pid_values) == 0:
            empty = torch.zeros(len(q_pids), 0, dtype=torch.long, device=q_pids.device)
            return empty, empty.bool()
        group = torch.searchsorted(self.pid_values, q_pids).clamp(max=len(self.pid_values) - 1)
        counts = torch.where(self.pid_values[group] == q_pids, self.pid_counts[group], 0)
        width = int(counts.max()) if len(counts) else 0
        slot = torch.arange(width, device=q_pids.device)
        present = slot < counts[:, None]
        position = (self.pid_starts[group][:, None] + slot).clamp(max=len(self.by_pid) - 1)
        return self.by_pid[position], present

    def rank_matches(self, dist: torch.Tensor, q_pids: torch.Tensor, q_camids: torch.Tensor,
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per query: (rank of the first match, AP, INP, has a match), ranks counted from 1
        among the gallery images the protocol keeps."""
        candidates, present = self.same_identity(q_pids)
        same_camera = self.g_camids[candidates] == q_camids[:, None]
        is_match, is_junk = present & ~same_camera, present & same_camera
        num_matches = is_match.sum(1)
        width = candidates.shape[1]
        if width == 0:
            zeros = torch.zeros(len(q_pids), device=dist.device)
            return zeros.long(), zeros.double(), zeros.double(), num_matches > 0

        keys = _stable_order_keys(dist)
        candidate_keys = keys.gather(1, candidates)
        match_keys = torch.where(is_match, candidate_keys, _INT64_MAX).sort(dim=1).values
        # slot of an image = number of matches ranked before it; a match's slot is its own index
        per_slot = torch.zeros(len(q_pids), width + 1, dtype=torch.int32, device=dist.device)
        slots = torch.searchsorted(match_keys, keys)
        per_slot.scatter_add_(1, slots, torch.ones((), dtype=torch.int32,
                                                   device=dist.device).expand_as(slots))
        # junk images (the query's identity and camera) are not ranked: take them out again
        junk_slots = torch.searchsorted(match_keys, candidate_keys)
        per_slot.scatter_add_(1, junk_slots, -is_junk.int())
        match_ranks = per_slot.cumsum(1)[:, :width]

        hit_number = torch.arange(1, width + 1, device=dist.device, dtype=torch.float64)
        precision = torch.where(hit_number <= num_matches[:, None], hit_number / match_ranks, 0.0)
        ap = precision.sum(1) / num_matches.clamp(min=1)
        # INP: the share of the list up to the hardest (last-ranked) match that are matches.
        last = (num_matches - 1).clamp(min=0)[:, None]
        inp = num_matches / match_ranks.gather(1, last).squeeze(1).clamp(min=1).double()
        return match_ranks[:, 0].long(), ap, inp, num_matches > 0


class _ScoreAccumulator:
    """Collects per-query results across chunks and reduces them as the reference does."""

    def __init__(self, max_rank: int, num_gallery: int):
        self.max_rank = max_rank
        self.first_ranks: List[np.ndarray] = []
        self.aps: List[np.ndarray] = []
        self.inps: List[np.ndarray] = []
        self.num_queries = 0
        if num_gallery < max_rank:
            logger.info("Only %d gallery images: CMC beyond rank %d repeats its last value",
                        num_gallery, num_gallery)

    def add(self, first_rank: torch.Tensor, ap: torch.Tensor, inp: torch.Tensor,
            valid: torch.Tensor) -> None:
        self.num_queries += len(valid)
        self.first_ranks.append(first_rank[valid].cpu().numpy())
        self.aps.append(ap[valid].cpu().numpy())
        self.inps.append(inp[valid].cpu().numpy())

    def summary(self) -> EvalResult:
        cmc, mAP = self.result()
        inps = np.concatenate(self.inps)
        return EvalResult(mAP=mAP, cmc=cmc, mINP=float(np.mean(inps)), num_valid_queries=len(inps),
                          num_queries=self.num_queries)

    def result(self) -> Tuple[np.ndarray, float]:
        first_ranks = np.concatenate(self.first_ranks) if self.first_ranks else np.zeros(0, int)
        num_valid = len(first_ranks)
        if num_valid == 0:
            raise NoValidQueryError(
                f"No query has a valid match: none of the {self.num_queries} queries has a "
                "gallery image of its identity from another camera. Check the query/gallery "
                "split and num_query (queries come first, then gallery images).")
        hits_at = np.bincount(np.minimum(first_ranks, self.max_rank + 1) - 1,
                              minlength=self.max_rank + 1)[:self.max_rank]
        # float32 / float32 like the reference's float32 sum divided by the query count
        cmc = hits_at.cumsum().astype(np.float32) / np.float32(num_valid)
        return cmc, float(np.mean(np.concatenate(self.aps)))


def _score_rows(protocol: _MarketProtocol, scores: _ScoreAccumulator, dist: torch.Tensor,
                q_pids: torch.Tensor, q_camids: torch.Tensor, chunk_bytes: int) -> None:
    for rows in row_chunks(len(dist), rows_per_chunk(dist.shape[1], chunk_bytes)):
        scores.add(*protocol.rank_matches(dist[rows], q_pids[rows], q_camids[rows]))


def eval_func(distmat: Union[np.ndarray, torch.Tensor], q_pids: ArrayLike, g_pids: ArrayLike,
              q_camids: ArrayLike, g_camids: ArrayLike, max_rank: int = 50,
              chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Tuple[np.ndarray, float]:
    """Market-1501 CMC (float32, length `max_rank`) and mAP of a query × gallery distance matrix.

    Runs on the device of `distmat` (numpy: CPU), `chunk_bytes` at a time. With fewer than
    `max_rank` gallery images the reference returned a shorter CMC; here it is padded with its
    last value, which is what CMC at those ranks is. Raises ValueError when no query is valid.
    """
    dist = _as_tensor(distmat)
    device = dist.device
    q_pids, q_camids = _as_ids(q_pids, device), _as_ids(q_camids, device)
    g_pids, g_camids = _as_ids(g_pids, device), _as_ids(g_camids, device)
    if dist.dim() != 2 or dist.shape != (len(q_pids), len(g_pids)):
        raise ValueError(f"distmat has shape {tuple(dist.shape)} but there are {len(q_pids)} "
                         f"queries and {len(g_pids)} gallery images")
    scores = _ScoreAccumulator(max_rank, len(g_pids))
    _score_rows(_MarketProtocol(g_pids, g_camids), scores, dist, q_pids, q_camids, chunk_bytes)
    return scores.result()


class R1_mAP_eval:
    """Accumulates (features, pids, camids) batches, queries first, then the gallery.

    `compute()` returns `(cmc, mAP, distmat, pids, camids, qf, gf)` like the reference. The
    distances are produced and scored query chunk by query chunk; `distmat` (a float32 numpy
    array) is assembled only when `return_distmat` is True, or, with the default None, when it
    takes at most 2 GiB (Market-1501 yes, MSMT17 no: then it is None).
    """

    def __init__(self, num_query: int, max_rank: int = 50, feat_norm: Union[bool, str] = True,
                 reranking: Union[bool, str] = False, dist_metric: str = "euclidean",
                 k1: int = 50, k2: int = 15, lambda_value: float = 0.3,
                 return_distmat: Optional[bool] = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        self.num_query = num_query
        self.max_rank = max_rank
        self.feat_norm = yes_no(feat_norm, "TEST.FEAT_NORM")
        self.reranking = yes_no(reranking, "TEST.RE_RANKING")
        self.dist_metric = check_dist_metric(dist_metric)
        self.k1, self.k2, self.lambda_value = k1, k2, lambda_value
        self.return_distmat = return_distmat
        self.chunk_bytes = chunk_bytes
        self.reset()

    def reset(self) -> None:
        self.feats: List[torch.Tensor] = []
        self.pids: List[int] = []
        self.camids: List[int] = []

    def update(self, output: Tuple[torch.Tensor, ArrayLike, ArrayLike]) -> None:
        """One batch: features stay on their device; pids and camids become Python ints."""
        feat, pid, camid = output
        self.feats.append(feat.detach())
        self.pids.extend(torch.as_tensor(pid).reshape(-1).tolist())
        self.camids.extend(torch.as_tensor(camid).reshape(-1).tolist())

    def _distance_chunks(self, qf: torch.Tensor, gf: torch.Tensor,
                         ) -> Iterator[Tuple[slice, torch.Tensor]]:
        return distance_chunks(qf, gf, self.dist_metric, self.reranking, self.k1, self.k2,
                               self.lambda_value, self.chunk_bytes)

    def _keeps_distmat(self, num_gallery: int) -> bool:
        if self.return_distmat is not None:
            return self.return_distmat
        keep = self.num_query * num_gallery * 4 <= _AUTO_DISTMAT_LIMIT_BYTES
        if not keep:
            logger.info("compute() does not assemble the %d x %d distance matrix (over 2 GiB); "
                        "pass return_distmat=True to get it", self.num_query, num_gallery)
        return keep

    def compute(self) -> Tuple[np.ndarray, float, Optional[np.ndarray], List[int], List[int],
                               torch.Tensor, torch.Tensor]:
        """The reference's `(cmc, mAP, distmat, pids, camids, qf, gf)`."""
        result, distmat, qf, gf = self._score(self._keeps_distmat)
        return result.cmc, result.mAP, distmat, self.pids, self.camids, qf, gf

    def evaluate(self) -> EvalResult:
        """mAP, CMC, mINP and the number of queries scored, without the distance matrix."""
        return self._score(lambda _: False)[0]

    def evaluate_with_distances(self) -> Tuple[EvalResult, Optional[np.ndarray]]:
        """`evaluate()` and the query x gallery distances, None when over 2 GiB (as compute())."""
        result, distmat, _, _ = self._score(self._keeps_distmat)
        return result, distmat

    @torch.no_grad()
    def _score(self, keep_distmat: Callable[[int], bool],
               ) -> Tuple[EvalResult, Optional[np.ndarray], torch.Tensor, torch.Tensor]:
        if not self.feats or not 0 < self.num_query < len(self.pids):
            raise ValueError(f"R1_mAP_eval has {len(self.pids)} images for num_query="
                             f"{self.num_query}: it needs the queries then at least one "
                             "gallery image")
        feats = torch.cat(self.feats).float()
        if self.feat_norm:
            logger.info("The test features are L2-normalised")
            normalize_rows_(feats)
        qf, gf = feats[:self.num_query], feats[self.num_query:]
        pids = torch.tensor(self.pids, device=feats.device)
        camids = torch.tensor(self.camids, device=feats.device)
        q_pids, q_camids = pids[:self.num_query], camids[:self.num_query]

        protocol = _MarketProtocol(pids[self.num_query:], camids[self.num_query:])
        scores = _ScoreAccumulator(self.max_rank, len(gf))
        distmat = torch.empty(len(qf), len(gf)) if keep_distmat(len(gf)) else None
        for rows, dist in self._distance_chunks(qf, gf):
            _score_rows(protocol, scores, dist, q_pids[rows], q_camids[rows], self.chunk_bytes)
            if distmat is not None:
                distmat[rows] = dist
        distmat = None if distmat is None else distmat.numpy()
        return scores.summary(), distmat, qf, gf
