"""Top-k inner-product search over unit feature rows, with faiss (an optional dependency).

`FeatureMatrix` keeps the rows in one float32 buffer with a little spare room, so that memory for
exact search stays within about 1.03x the raw features (faiss's own flat index grows its storage
by doubling, and copying features into it doubles the peak). Exact search is faiss's brute-force
k-NN (`faiss.knn`, the code of `IndexFlatIP.search`) run on that buffer. The approximate indexes
(HNSW, IVF) hold their own copy of the rows, built when first searched.
"""
from __future__ import annotations

import logging
import math
from typing import Tuple

import numpy as np

from utils.errors import ToolError

logger = logging.getLogger("transreid.gallery")

EXACT, HNSW, IVF = "flat", "hnsw", "ivf"
INDEX_KINDS = (EXACT, HNSW, IVF)
GROWTH = 1.03  # spare room of the buffer: adds within 3% never copy the features
HNSW_NEIGHBOURS, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 16, 120, 128
IVF_PROBES = 24


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
        """Room for `rows` rows and 5% more, so that the next adds copy nothing."""
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


class ApproximateIndex:
    """An HNSW or IVF inner-product index over a FeatureMatrix's rows, added to as rows are."""

    def __init__(self, kind: str, matrix: FeatureMatrix) -> None:
        faiss = import_faiss()
        self.kind = kind
        rows = matrix.rows
        if kind == HNSW:
            self.index = faiss.IndexHNSWFlat(matrix.dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            self.index.hnsw.efSearch = HNSW_EF_SEARCH
        elif kind == IVF:
            # About 4 sqrt(N) lists, trained on 40 rows a list (faiss warns below 39).
            lists = max(1, min(len(rows) // 39, int(4 * math.sqrt(max(len(rows), 1)))))
            self.quantizer = faiss.IndexFlatIP(matrix.dim)
            self.index = faiss.IndexIVFFlat(self.quantizer, matrix.dim, lists,
                                            faiss.METRIC_INNER_PRODUCT)
            self.index.cp.niter = 10  # k-means iterations (faiss: 25); lists move little after
            sample = rows[np.random.default_rng(0).permutation(len(rows))[:40 * lists]]
            self.index.train(np.ascontiguousarray(sample))
            self.index.nprobe = min(IVF_PROBES, lists)
        else:
            raise ToolError(f"unknown index '{kind}'; choose one of {', '.join(INDEX_KINDS)}")
        self.add(rows)

    @classmethod
    def read(cls, kind: str, path: str) -> "ApproximateIndex":
        """An index written by `write`."""
        faiss = import_faiss()
        loaded = cls.__new__(cls)
        loaded.kind, loaded.index = kind, faiss.read_index(path)
        return loaded

    def write(self, path: str) -> None:
        import_faiss().write_index(self.index, path)

    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def effort(self) -> int:
        """Search effort: HNSW's efSearch, or the lists IVF probes (more: slower, better recall)."""
        return self.index.hnsw.efSearch if self.kind == HNSW else self.index.nprobe

    @effort.setter
    def effort(self, value: int) -> None:
        if self.kind == HNSW:
            self.index.hnsw.efSearch = value
        else:
            self.index.nprobe = min(value, self.index.nlist)

    def add(self, rows: np.ndarray) -> None:
        for start in range(0, len(rows), 65536):
            self.index.add(np.ascontiguousarray(rows[start:start + 65536]))

    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k)
