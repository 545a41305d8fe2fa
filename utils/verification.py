"""Verification figures of a query x gallery distance matrix: "is this the same identity?" at a
distance threshold, rather than the ranking that mAP and CMC score.

Pairs follow the re-ID protocol of the CMC: a query is compared with every gallery entry except
those of its own identity seen by its own camera. A genuine pair shares the identity, an impostor
pair does not. A pair is accepted (called "same") when its distance is <= the threshold, so

    FAR(t) = impostor pairs with distance <= t / impostor pairs
    TAR(t) = genuine pairs with distance <= t / genuine pairs,   FRR = 1 - TAR.

Counting is exact (sort-based) while the pairs fit in `max_exact_pairs`; beyond it (MSMT17 has
about 10^9 pairs) each side is a histogram of `histogram_bins` equal bins between the smallest
and the largest distance, and thresholds fall on bin edges. Either way the matrix is read one
chunk of query rows at a time, so nothing of size queries x gallery is built besides the input.

Pure numpy: no project imports.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

REPORTED_FARS = (1e-2, 1e-3, 1e-4)
DEFAULT_MAX_EXACT_PAIRS = 32_000_000  # 128 MB of float32 impostor distances
DEFAULT_HISTOGRAM_BINS = 1 << 16
ROC_POINTS = 200  # points of the returned ROC curve (for drawing)
DEFAULT_CHUNK_ROWS = 256


@dataclass(frozen=True)
class DistanceCounts:
    """A step CDF: `cum[i]` distances are <= `values[i]` (values ascending), `total` in all."""
    values: np.ndarray
    cum: np.ndarray
    total: int

    def count_at_most(self, thresholds: np.ndarray) -> np.ndarray:
        """How many distances are <= each threshold."""
        index = np.searchsorted(self.values, thresholds, side="right") - 1
        return np.where(index >= 0, self.cum[np.maximum(index, 0)], 0)

    def rate_at_most(self, thresholds: np.ndarray) -> np.ndarray:
        return self.count_at_most(thresholds) / max(self.total, 1)


def exact_counts(distances: np.ndarray) -> DistanceCounts:
    """The exact step CDF of `distances` (sort-based)."""
    values, counts = np.unique(np.asarray(distances, dtype=np.float64), return_counts=True)
    return DistanceCounts(values, np.cumsum(counts), int(len(distances)))


def histogram_counts(histogram: np.ndarray, edges: np.ndarray) -> DistanceCounts:
    """The step CDF of a histogram over bins [edges[i], edges[i+1]): a bin's distances count as
    <= its right edge, and none as <= the lowest edge."""
    values = np.asarray(edges, dtype=np.float64)
    cum = np.concatenate([[0], np.cumsum(histogram)])
    return DistanceCounts(values, cum, int(cum[-1]))


# ------------------------------------------------------------------------ pairs of the protocol
def _row_blocks(distmat, rows: np.ndarray, chunk_rows: int) -> Iterator[Tuple[slice, np.ndarray]]:
    """(positions in `rows`, float32 distances of those query rows), `chunk_rows` at a time, from
    a numpy array, memmap or CPU tensor."""
    for start in range(0, len(rows), chunk_rows):
        index = rows[start:start + chunk_rows]
        yield slice(start, start + len(index)), np.asarray(distmat[index], dtype=np.float32)


def pair_masks(q_pids: np.ndarray, q_camids: np.ndarray, g_pids: np.ndarray,
               g_camids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(genuine, impostor) boolean masks of a block of queries x the gallery; gallery entries of
    the query's identity and camera are in neither (as in the CMC)."""
    same_pid = q_pids[:, None] == g_pids[None, :]
    same_cam = q_camids[:, None] == g_camids[None, :]
    return same_pid & ~same_cam, ~same_pid


@dataclass
class PairDistances:
    """The genuine and impostor distances of a matrix, as step CDFs."""
    genuine: DistanceCounts
    impostor: DistanceCounts
    exact: bool


def protocol_pairs(chunks: Iterable[Tuple[slice, np.ndarray]], q_pids, g_pids, q_camids, g_camids,
                   exact: bool, value_range: Tuple[float, float] = (0.0, 1.0),
                   bins: int = DEFAULT_HISTOGRAM_BINS) -> PairDistances:
    """Genuine and impostor distances of the chunks (query rows, distances to the gallery);
    exact, or histograms of `bins` bins over `value_range` (the smallest and largest distance)."""
    q_pids, q_camids = np.asarray(q_pids), np.asarray(q_camids)
    g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
    low, high = value_range
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    kept: Dict[str, List[np.ndarray]] = {"genuine": [], "impostor": []}
    hists = {"genuine": np.zeros(bins, np.int64), "impostor": np.zeros(bins, np.int64)}
    for rows, dist in chunks:
        genuine, impostor = pair_masks(q_pids[rows], q_camids[rows], g_pids, g_camids)
        for name, mask in (("genuine", genuine), ("impostor", impostor)):
            if exact:
                kept[name].append(dist[mask])
            else:
                hists[name] += np.histogram(dist[mask], edges)[0]
    if exact:
        return PairDistances(*(exact_counts(np.concatenate(kept[n]) if kept[n] else np.zeros(0))
                               for n in ("genuine", "impostor")), exact=True)
    return PairDistances(histogram_counts(hists["genuine"], edges),
                         histogram_counts(hists["impostor"], edges), exact=False)


# ------------------------------------------------------------------------------ figures of pairs
def threshold_at_far(impostor: DistanceCounts, far: float) -> float:
    """The largest threshold whose FAR is <= `far`: at most floor(far x impostors) impostor pairs
    have a distance at or below it (below every distance when that is 0)."""
    allowed = int(np.floor(far * impostor.total + 1e-9))
    first_over = int(np.searchsorted(impostor.cum, allowed, side="right"))
    if first_over >= len(impostor.values):
        return float(impostor.values[-1]) if len(impostor.values) else 0.0
    if first_over == 0:
        return float(np.nextafter(impostor.values[0], -np.inf))
    return float(impostor.values[first_over - 1])


def equal_error(genuine: DistanceCounts, impostor: DistanceCounts) -> Tuple[float, float]:
    """(EER, its threshold): among the thresholds at every distance, the one where FAR and FRR
    are closest (the smallest such), and the mean of the two there."""
    candidates = np.concatenate([genuine.values, impostor.values])
    far = impostor.rate_at_most(candidates)
    frr = 1.0 - genuine.rate_at_most(candidates)
    gap = np.abs(far - frr)
    best = np.flatnonzero(gap == gap.min())
    pick = best[np.argmin(candidates[best])]
    return float((far[pick] + frr[pick]) / 2), float(candidates[pick])


def roc_curve(genuine: DistanceCounts, impostor: DistanceCounts,
              points: int = ROC_POINTS) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FAR, TAR, threshold) at thresholds for FARs spaced evenly on a log scale from one
    impostor pair to all of them."""
    lowest = 1.0 / max(impostor.total, 1)
    targets = np.unique(np.concatenate([np.geomspace(lowest, 1.0, points), [0.0]]))
    thresholds = np.unique([threshold_at_far(impostor, f) for f in targets])
    return impostor.rate_at_most(thresholds), genuine.rate_at_most(thresholds), thresholds


@dataclass
class HeldOutCheck:
    """A threshold calibrated on the pairs of half the query identities, and the FAR it gives on
    the pairs of the other half."""
    target_far: float
    threshold: float
    measured_far: float

    @property
    def ratio(self) -> float:
        return self.measured_far / self.target_far

    def as_dict(self) -> Dict[str, float]:
        return {"target_far": self.target_far, "threshold": self.threshold,
                "measured_far": self.measured_far, "ratio": self.ratio}


@dataclass
class VerificationResult:
    """Verification figures; `as_dict()` holds the numbers for test_results.json, the arrays are
    for drawing (the ROC curve and the distance histograms)."""
    num_genuine: int
    num_impostor: int
    exact: bool
    tar_at_far: Dict[float, float]
    threshold_at_far: Dict[float, float]
    eer: float
    eer_threshold: float
    target_far: float
    threshold: float
    held_out: Optional[HeldOutCheck]
    roc_far: np.ndarray = field(repr=False)
    roc_tar: np.ndarray = field(repr=False)
    genuine: DistanceCounts = field(repr=False)
    impostor: DistanceCounts = field(repr=False)

    def as_dict(self) -> Dict[str, object]:
        return {"num_genuine_pairs": self.num_genuine, "num_impostor_pairs": self.num_impostor,
                "exact_counts": self.exact,
                "tar_at_far": {f"{far:g}": tar for far, tar in self.tar_at_far.items()},
                "threshold_at_far": {f"{far:g}": t for far, t in self.threshold_at_far.items()},
                "eer": self.eer, "eer_threshold": self.eer_threshold,
                "target_far": self.target_far, "threshold": self.threshold,
                "held_out": None if self.held_out is None else self.held_out.as_dict()}


class NoVerificationPairs(ValueError):
    """A matrix without genuine or without impostor pairs: there is nothing to verify."""


def check_pairs(pairs: PairDistances) -> None:
    if pairs.genuine.total == 0 or pairs.impostor.total == 0:
        raise NoVerificationPairs(
            f"{pairs.genuine.total} genuine and {pairs.impostor.total} impostor pairs: "
            "verification needs both (identities seen by two cameras, and two identities)")


def figures(pairs: PairDistances, target_far: float,
            held_out: Optional[HeldOutCheck] = None) -> VerificationResult:
    """TAR at the reported FARs, the EER, the threshold for `target_far` and the ROC curve."""
    check_pairs(pairs)
    fars = sorted(set(REPORTED_FARS) | {target_far}, reverse=True)
    thresholds = {far: threshold_at_far(pairs.impostor, far) for far in fars}
    tars = {far: float(pairs.genuine.rate_at_most(np.array([t]))[0]) for far, t in thresholds.items()}
    eer, eer_threshold = equal_error(pairs.genuine, pairs.impostor)
    roc_far, roc_tar, _ = roc_curve(pairs.genuine, pairs.impostor)
    return VerificationResult(pairs.genuine.total, pairs.impostor.total, pairs.exact, tars,
                              thresholds, eer, eer_threshold, target_far, thresholds[target_far],
                              held_out, roc_far, roc_tar, pairs.genuine, pairs.impostor)


# ------------------------------------------------------------------------------- the entry point
def split_queries(q_pids: np.ndarray, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Query rows of two halves of the query identities (drawn with `seed`), so that no identity
    has pairs on both sides."""
    identities = np.unique(q_pids)
    chosen = np.random.default_rng(seed).permutation(identities)[: len(identities) // 2]
    first = np.isin(q_pids, chosen)
    return np.flatnonzero(first), np.flatnonzero(~first)


def _value_range(distmat, chunk_rows: int) -> Tuple[float, float]:
    low, high = np.inf, -np.inf
    for _, dist in _row_blocks(distmat, np.arange(len(distmat)), chunk_rows):
        low, high = min(low, float(dist.min(initial=np.inf))), max(high, float(dist.max(initial=-np.inf)))
    return low, np.nextafter(high, np.inf)  # the largest distance falls inside the last bin


def verify(distmat, q_pids: Sequence[int], g_pids: Sequence[int], q_camids: Sequence[int],
           g_camids: Sequence[int], target_far: float = 1e-3, check_held_out: bool = True,
           max_exact_pairs: int = DEFAULT_MAX_EXACT_PAIRS, bins: int = DEFAULT_HISTOGRAM_BINS,
           chunk_rows: int = DEFAULT_CHUNK_ROWS, seed: int = 0) -> VerificationResult:
    """Verification figures of a queries x gallery distance matrix (numpy array, memmap or CPU
    tensor; smaller = more alike) under the re-ID protocol; see the module doc.

    With `check_held_out`, the threshold for `target_far` is also calibrated on the pairs of half
    the query identities and its FAR measured on the other half (`HeldOutCheck`).
    """
    if not 0.0 < target_far < 1.0:
        raise ValueError(f"target FAR must lie strictly between 0 and 1, got {target_far}")
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    if tuple(distmat.shape) != (len(q_pids), len(g_pids)):
        raise ValueError(f"distmat has shape {tuple(distmat.shape)} but there are {len(q_pids)} "
                         f"queries and {len(g_pids)} gallery entries")
    exact = len(q_pids) * len(g_pids) <= max_exact_pairs
    value_range = (0.0, 1.0) if exact else _value_range(distmat, chunk_rows)

    def pairs_of(rows: np.ndarray) -> PairDistances:
        return protocol_pairs(_row_blocks(distmat, rows, chunk_rows), q_pids[rows], g_pids,
                              q_camids[rows], g_camids, exact, value_range, bins)

    pairs = pairs_of(np.arange(len(q_pids)))
    check_pairs(pairs)
    held_out = None
    if check_held_out:
        calibration, evaluation = (pairs_of(rows) for rows in split_queries(q_pids, seed))
        if calibration.impostor.total and evaluation.impostor.total:
            threshold = threshold_at_far(calibration.impostor, target_far)
            measured = float(evaluation.impostor.rate_at_most(np.array([threshold]))[0])
            held_out = HeldOutCheck(target_far, threshold, measured)
    return figures(pairs, target_far, held_out)


def self_verification(features: np.ndarray, labels: Sequence[str],
                      cameras: Sequence[Optional[int]], target_far: float) -> VerificationResult:
    """Verification figures of unit `features` compared with each other (cosine distance)
    under the re-ID protocol: pairs of one label and one camera do not count; entries of
    unknown camera share one. Raises ValueError when there are no genuine or impostor pairs."""
    ids = np.unique(list(labels), return_inverse=True)[1]
    cams = np.array([-1 if camera is None else camera for camera in cameras])
    return verify(1.0 - features @ features.T, ids, ids, cams, cams, target_far,
                  check_held_out=False)
