"""Query x gallery distances as the evaluator ranks them: squared Euclidean (the reference's) or
1 - cosine, or k-reciprocal re-ranking; whole, or query chunk by query chunk."""
from __future__ import annotations

from typing import Iterator, Tuple

import torch
import torch.nn.functional as F

from utils.errors import ConfigError
from utils.options import DIST_METRICS
from utils.reranking import (DEFAULT_CHUNK_BYTES, re_ranked_distance_chunks, row_chunks,
                             squared_euclidean_distance)

# The one distance users read (axes, legends, captions, printed results): 1 - cosine similarity
# of L2-normalised features. ASCII, so that Pillow's built-in font draws it (it has no U+2212).
DISTANCE_UNIT = "cosine distance (1 - cos)"

# Distance, sort key, searchsorted slot, masks and temporaries of one query × gallery entry
# while a chunk is ranked (utils/metrics.py): what sizes a chunk.
_BYTES_PER_ENTRY = 40


def check_dist_metric(metric: str) -> str:
    name = str(metric).lower()
    if name not in DIST_METRICS:
        raise ConfigError(f"TEST.DIST_METRIC '{metric}' is unknown; use one of {DIST_METRICS}")
    return name


def pairwise_distance(qf: torch.Tensor, gf: torch.Tensor,
                      metric: str = "euclidean") -> torch.Tensor:
    """Query × gallery distances: squared Euclidean (as the reference) or 1 − cosine similarity."""
    return _GalleryDistance(gf, metric)(qf)


class _GalleryDistance:
    """Distances from query chunks to a fixed gallery; the gallery-side terms are computed once."""

    def __init__(self, gf: torch.Tensor, metric: str):
        self.cosine = check_dist_metric(metric) == "cosine"
        self.gallery = F.normalize(gf, dim=1) if self.cosine else gf
        self.gallery_sq = None if self.cosine else gf.pow(2).sum(1)

    def __call__(self, qf: torch.Tensor) -> torch.Tensor:
        if self.cosine:
            # 1 − cos ranks like the reference's arccos(cos) without its clipping, which made
            # all pairs with cos > 1 − 1e-5 tie
            return torch.addmm(torch.ones((), device=qf.device), F.normalize(qf, dim=1),
                               self.gallery.T, alpha=-1)
        return squared_euclidean_distance(qf, self.gallery, y_sq=self.gallery_sq)


def distance_chunks(qf: torch.Tensor, gf: torch.Tensor, dist_metric: str = "euclidean",
                    reranking: bool = False, k1: int = 50, k2: int = 15, lambda_value: float = 0.3,
                    chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[Tuple[slice, torch.Tensor]]:
    """(query rows, their distances to every gallery image), chunk by chunk, as R1_mAP_eval
    ranks them: `dist_metric`, or k-reciprocal re-ranking (TEST.RE_RANKING_K1/K2/LAMBDA)."""
    if reranking:
        if check_dist_metric(dist_metric) == "cosine":
            # re-ranking divides each row by its maximum, so squared Euclidean distances of
            # unit vectors, 2 (1 − cos), give exactly the result of 1 − cos
            qf, gf = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
        yield from re_ranked_distance_chunks(qf, gf, k1, k2, lambda_value,
                                             chunk_bytes=chunk_bytes)
        return
    distance = _GalleryDistance(gf, dist_metric)
    for rows in row_chunks(len(qf), rows_per_chunk(len(gf), chunk_bytes)):
        yield rows, distance(qf[rows])


def normalize_rows_(feats: torch.Tensor) -> torch.Tensor:
    """L2-normalise each row in place (MSMT17's features are large), as TEST.FEAT_NORM does."""
    return feats.div_(feats.norm(dim=1, keepdim=True).clamp_min_(1e-12))


def query_gallery_distance(qf: torch.Tensor, gf: torch.Tensor, feat_norm: bool,
                           dist_metric: str = "euclidean", reranking: bool = False, k1: int = 50,
                           k2: int = 15, lambda_value: float = 0.3) -> torch.Tensor:
    """The whole query x gallery matrix as R1_mAP_eval ranks it: TEST.FEAT_NORM, then
    re-ranking or `dist_metric`; on the CPU."""
    qf, gf = qf.float(), gf.float()
    if feat_norm:
        qf, gf = normalize_rows_(qf.clone()), normalize_rows_(gf.clone())
    chunks = distance_chunks(qf, gf, dist_metric, reranking, k1, k2, lambda_value)
    return torch.cat([dist.cpu() for _, dist in chunks])


def rows_per_chunk(num_gallery: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // (_BYTES_PER_ENTRY * max(1, num_gallery)))
