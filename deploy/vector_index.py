"""Top-k inner-product search over unit feature rows, with faiss (an optional dependency).

`FeatureMatrix` keeps the rows in one float32 buffer with a little spare room, so that memory for
exact search stays within about 1.03x the raw features (faiss's own flat index grows its storage
by doubling, and copying features into it doubles the peak). Exact search is faiss's brute-force
k-NN (`faiss.knn`, the code of `IndexFlatIP.search`) run on that buffer.

The approximate indexes are built when first searched:
* pq: 4-bit product-quantised codes scanned with SIMD (`IndexPQFastScan`, 8 bytes a 768-d row)
  of the rows centred and rotated (OPQ); the best candidates are re-ranked with the exact rows
  of the buffer, so the distances returned are exact and only a true neighbour missing from the
  candidates costs recall. A scan of every code needs no navigation, which is why it keeps its
  recall on features whose identities are spread evenly over the sphere, where HNSW's greedy
  routing loses its way. Centring matters for trained models' features, which share a large
  common direction: the fast scan's 8-bit lookup tables would spend their range on it
  (docs/gallery.md has the recall with and without). On unit rows, L2 ranks as the inner
  product does, and neither centring nor a rotation changes L2.
* hnsw, ivf: faiss's `IndexHNSWFlat` and `IndexIVFFlat`, each with its own copy of the rows.
"""
from __future__ import annotations

import logging
import math
from typing import Optional, Tuple

import numpy as np

from utils.errors import ToolError

logger = logging.getLogger("transreid.gallery")

EXACT, PQ, HNSW, IVF = "flat", "pq", "hnsw", "ivf"
INDEX_KINDS = (EXACT, PQ, HNSW, IVF)
TRAINED_KINDS = (PQ, IVF)  # their quantisers learn from the rows at hand
GROWTH = 1.03  # spare room of the buffer: adds within 3% never copy the features
REBUILD_GROWTH = 4  # a trained index is built again once the rows outgrow its training this much
HNSW_NEIGHBOURS, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 16, 120, 128
IVF_PROBES = 24
PQ_DIMS_PER_CODE = 48  # dimensions per 4-bit sub-quantiser: 16 of them (8 bytes) for 768-d rows
PQ_MIN_CODES = 16  # sub-quantisers of narrow rows (at most one per dimension): 8 bytes or more
PQ_RERANK = 128  # candidates re-ranked exactly per query (at least 2k)
PQ_TRAIN_ROWS, PQ_MIN_TRAIN = 65536, 1024  # fewer rows are repeated: faiss wants 39 per centroid
OPQ_ITERATIONS = 10  # faiss: 50 (docs/gallery.md says why fewer)


def check_index_kind(kind: str) -> str:
    """The one check of an index kind (a ToolError listing the kinds)."""
    if kind not in INDEX_KINDS:
        raise ToolError(f"unknown index '{kind}'; choose one of {', '.join(INDEX_KINDS)}")
    return kind


def import_faiss():
    """faiss, or one line naming the pip command."""
    # Its loader logs a failed import of each legacy per-CPU build it tries (at INFO), although
    # one library with dynamic dispatch serves every CPU: noise in a tool's output.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss
    except ImportError:
        raise ToolError("gallery search needs faiss: pip install faiss-cpu") from None
    return faiss


class FeatureMatrix:
    """Rows of a fixed width in a growable float32 buffer (views of it are invalidated by `add`)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._buffer = np.empty((0, dim), np.float32)
        self._rows = 0

    def __len__(self) -> int:
        return self._rows

    @property
    def rows(self) -> np.ndarray:
        """The live rows (a view)."""
        return self._buffer[:self._rows]

    @property
    def nbytes(self) -> int:
        return self._buffer.nbytes

    def reserve(self, rows: int) -> None:
        """Room for `rows` rows and 3% more, so that the next adds copy nothing."""
        if rows > len(self._buffer):
            grown = np.empty((int(rows * GROWTH) + 1024, self.dim), np.float32)
            grown[:self._rows] = self.rows
            self._buffer = grown

    def add(self, features: np.ndarray) -> None:
        needed = self._rows + len(features)
        self.reserve(needed)
        self._buffer[self._rows:needed] = features
        self._rows = needed

    def keep(self, mask: np.ndarray, chunk_rows: int = 65536) -> None:
        """Keep the rows where `mask` is True, in order, moving them down in place a chunk at a
        time (no second copy of the features)."""
        write = 0
        for start in range(0, self._rows, chunk_rows):
            stop = min(start + chunk_rows, self._rows)
            block = self._buffer[start:stop][mask[start:stop]]
            self._buffer[write:write + len(block)] = block
            write += len(block)
        self._rows = write


def exact_search(matrix: FeatureMatrix, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """(inner products, row positions), k best per query, best first."""
    faiss = import_faiss()
    return faiss.knn(queries, matrix.rows, k, metric=faiss.METRIC_INNER_PRODUCT)


def pq_subquantisers(dim: int) -> int:
    """The divisor of `dim` nearest dim / PQ_DIMS_PER_CODE, or PQ_MIN_CODES for narrow rows
    (faiss cuts rows into equal parts)."""
    target = max(dim / PQ_DIMS_PER_CODE, min(dim, PQ_MIN_CODES))
    return min((m for m in range(1, dim + 1) if dim % m == 0), key=lambda m: abs(m - target))


def training_rows(rows: np.ndarray, count: int, at_least: int = 1) -> np.ndarray:
    """Up to `count` rows drawn at random (seeded), repeated up to `at_least` when fewer."""
    picked = rows[np.sort(np.random.default_rng(0).permutation(len(rows))[:count])]
    return np.ascontiguousarray(np.resize(picked, (max(len(picked), at_least), rows.shape[1])))


def rerank(rows: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int,
           chunk: int = 256) -> Tuple[np.ndarray, np.ndarray]:
    """(inner products, positions) of the k best candidate rows of each query, computed exactly
    from `rows`, best first; candidates of -1 (none) come last with position -1."""
    similarity = np.empty((len(queries), k), np.float32)
    positions = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), chunk):  # bounds the gathered rows to chunk x candidates
        block = slice(start, start + chunk)
        found = candidates[block]
        scores = np.matmul(rows[np.maximum(found, 0)], queries[block, :, None])[..., 0]
        scores[found < 0] = -np.inf
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        similarity[block] = np.take_along_axis(scores, best, 1)
        positions[block] = np.take_along_axis(found, best, 1)
    return similarity, positions


def rotated_pq(faiss, dim: int):
    """(index, its parts): centring, an OPQ rotation and 4-bit fast-scan PQ codes, by L2. The
    parts are built here, so Python must keep them alive (a read index owns its own)."""
    codes = pq_subquantisers(dim)
    centre, rotation = faiss.CenteringTransform(dim), faiss.OPQMatrix(dim, codes)
    rotation.niter = OPQ_ITERATIONS
    # Trained against 4-bit codes, like those it feeds (faiss's default trains 8-bit ones).
    rotation.pq = trainer = faiss.ProductQuantizer(dim, codes, 4)
    codes_index = faiss.IndexPQFastScan(dim, codes, 4, faiss.METRIC_L2)
    index = faiss.IndexPreTransform(codes_index)
    index.prepend_transform(rotation)
    index.prepend_transform(centre)
    return index, (centre, rotation, trainer, codes_index)


class ApproximateIndex:
    """A PQ, HNSW or IVF inner-product index over a FeatureMatrix's rows, added to as rows are.
    `built_from` is the number of rows it was built (and trained) from."""

    def __init__(self, kind: str, matrix: FeatureMatrix) -> None:
        if check_index_kind(kind) == EXACT:
            raise ToolError("the exact search needs no approximate index")
        faiss = import_faiss()
        self.kind, self.matrix, self.built_from, self.rerank = kind, matrix, len(matrix), PQ_RERANK
        logger.info("Building the %s index of %d entries", kind, len(matrix))
        rows = matrix.rows
        if kind == PQ:
            self.index, self._parts = rotated_pq(faiss, matrix.dim)
            self.index.train(training_rows(rows, PQ_TRAIN_ROWS, PQ_MIN_TRAIN))
        elif kind == HNSW:
            self.index = faiss.IndexHNSWFlat(matrix.dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            self.index.hnsw.efSearch = HNSW_EF_SEARCH
        else:
            # About 4 sqrt(N) lists, trained on 40 rows a list (faiss warns below 39).
            lists = max(1, min(len(rows) // 39, int(4 * math.sqrt(max(len(rows), 1)))))
            self.quantizer = faiss.IndexFlatIP(matrix.dim)
            self.index = faiss.IndexIVFFlat(self.quantizer, matrix.dim, lists,
                                            faiss.METRIC_INNER_PRODUCT)
            self.index.cp.niter = 10  # k-means iterations (faiss: 25); lists move little after
            self.index.train(training_rows(rows, 40 * lists))
            self.index.nprobe = min(IVF_PROBES, lists)
        self.add(rows)

    @classmethod
    def read(cls, kind: str, path: str, matrix: FeatureMatrix,
             built_from: int) -> Optional["ApproximateIndex"]:
        """An index written by `write`, over (the first rows of) `matrix`; None, with a warning,
        when the file cannot be read (the caller builds the index again)."""
        faiss = import_faiss()
        try:
            index = faiss.read_index(path)
        except (RuntimeError, MemoryError) as err:  # faiss's own: content it cannot parse
            logger.warning("the saved index '%s' cannot be read (%s); building it again", path,
                           (str(err).strip().splitlines() or [type(err).__name__])[-1])
            return None
        except (OSError, ValueError) as err:  # the file itself: named, not a traceback
            raise ToolError(f"cannot read the saved index '{path}' ({type(err).__name__}: "
                            f"{err}); check the file, or delete it to have it built again"
                            ) from None
        loaded = cls.__new__(cls)
        loaded.kind, loaded.matrix, loaded.built_from = kind, matrix, built_from
        loaded.index, loaded.rerank = index, PQ_RERANK
        return loaded

    def write(self, path: str) -> None:
        import_faiss().write_index(self.index, path)

    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def outgrown(self) -> bool:
        """Whether a trained index now covers REBUILD_GROWTH times the rows it learnt from (a
        PQ or IVF built on a small gallery would keep its first, poor quantiser for ever)."""
        return self.kind in TRAINED_KINDS and len(self) > REBUILD_GROWTH * max(self.built_from, 1)

    @property
    def effort(self) -> int:
        """Search effort (more: slower, better recall): the PQ candidates re-ranked per query,
        HNSW's efSearch, or the lists IVF probes."""
        if self.kind == PQ:
            return self.rerank
        return self.index.hnsw.efSearch if self.kind == HNSW else self.index.nprobe

    @effort.setter
    def effort(self, value: int) -> None:
        if self.kind == PQ:
            self.rerank = value
        elif self.kind == HNSW:
            self.index.hnsw.efSearch = value
        else:
            self.index.nprobe = min(value, self.index.nlist)

    def add(self, rows: np.ndarray) -> None:
        for start in range(0, len(rows), 65536):
            self.index.add(np.ascontiguousarray(rows[start:start + 65536]))

    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        if self.kind != PQ:
            return self.index.search(queries, k)
        wanted = max(self.rerank, 2 * k)
        if wanted >= len(self):  # every row is a candidate: the exact search is the same
            return exact_search(self.matrix, queries, k)
        _, candidates = self.index.search(queries, wanted)
        return rerank(self.matrix.rows, queries, candidates, k)


class GallerySearch:
    """How a gallery's rows are searched: exactly, or through an approximate index of `kind`,
    built when first searched (or read from a saved file), extended as rows are added and
    built again when outgrown. `effort`: see `ApproximateIndex.effort` (None: its default)."""

    def __init__(self, kind: str) -> None:
        self.kind = check_index_kind(kind)
        self.approximate: Optional[ApproximateIndex] = None
        self.effort: Optional[int] = None

    def use(self, kind: str, effort: Optional[int] = None) -> None:
        if check_index_kind(kind) != self.kind:
            self.kind, self.approximate = kind, None
        self.effort = effort

    def added(self, rows: np.ndarray) -> None:
        if self.approximate is not None:
            self.approximate.add(rows)

    def index(self, matrix: FeatureMatrix) -> ApproximateIndex:
        """The approximate index of `matrix`'s rows, built if missing or outgrown."""
        if self.approximate is None or self.approximate.outgrown:
            self.approximate = ApproximateIndex(self.kind, matrix)
        if self.effort is not None:
            self.approximate.effort = self.effort
        return self.approximate

    def search(self, matrix: FeatureMatrix, queries: np.ndarray,
               k: int) -> Tuple[np.ndarray, np.ndarray]:
        """(inner products, row positions), k best per query, best first."""
        if self.kind == EXACT:
            return exact_search(matrix, queries, k)
        return self.index(matrix).search(queries, k)
