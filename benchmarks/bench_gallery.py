"""The lasting gallery (deploy/gallery.py) at 100k, 1M and 2M entries x 768: build, memory,
search speed exact and approximate, recall, and adding 1,000 entries then saving.

    python benchmarks/bench_gallery.py                          # 100k and 1M (2M if memory allows)
    python benchmarks/bench_gallery.py --sizes 100000 200000    # smaller
    python benchmarks/bench_gallery.py --sizes 20000 --queries 200 --repeats 3   # a quick check

Features are shaped like a re-ID gallery, not uniform noise (which no approximate index can
search well and no gallery looks like): identities of `--views` noisy views each (cosine about
0.73 within an identity, about 0 across), unit rows; queries are new views of gallery identities.

Per size, one row per search method:
* build: gallery add + save to disk (exact), or building the index from the features (faiss
  flat, PQ, HNSW, IVF); load: Gallery.open of the saved folder. "saved" rows: build = writing the
  approximate index with the gallery (save_index), load = opening the gallery with it.
* memory, over the raw float32 features: the process's RSS growth when the gallery is opened
  (exact) or faiss's flat index is built; for an approximate index ("saved" row) the size of
  its saved file, which is what it holds (RSS growth misses memory freed earlier and reused).
* ms/query at batch 1 (median of single queries) and at batch 64 (median batch / 64); the
  gallery's exact search and faiss's flat index are timed in turns.
* recall@10: the share of each query's exact top-10 that the method returns.
* add 1k + save: 1,000 entries added to the opened gallery and saved (median of 3).
Sizes whose features would not fit in the available memory (MemAvailable, about 2.5x the raw
features at the peak) are skipped with a line saying so.
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import describe_device  # noqa: E402
from deploy.gallery import Gallery  # noqa: E402
from deploy.gallery_store import Entry  # noqa: E402
from deploy.vector_index import (HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH,  # noqa: E402
                                    HNSW_NEIGHBOURS, IVF_PROBES, PQ_RERANK, import_faiss,
                                    pq_subquantisers)

GIB = 2 ** 30
PEAK_FACTOR = 2.5  # generated features + the gallery's buffer, or the buffer + an index's copy
NOISE = 0.6


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def available_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        fields = dict(line.split(":", 1) for line in meminfo)
    return int(fields["MemAvailable"].split()[0]) * 1024


def identity_centres(num: int, dim: int, views: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((max(num // views, 1), dim), dtype=np.float32)


def reid_like(num: int, centres: np.ndarray, seed: int, views: int = 0,
              chunk: int = 65536) -> Tuple[np.ndarray, np.ndarray]:
    """(unit rows, identity of each), built a chunk at a time into one float32 array: `views`
    noisy views of each identity in turn, or (views 0) new views of random identities."""
    rng = np.random.default_rng(seed)
    ids = np.arange(num) // views % len(centres) if views else rng.integers(0, len(centres), num)
    feats = np.empty((num, centres.shape[1]), np.float32)
    for start in range(0, num, chunk):
        rows = slice(start, min(start + chunk, num))
        block = centres[ids[rows]] + NOISE * rng.standard_normal((rows.stop - start, feats.shape[1]),
                                                                 dtype=np.float32)
        feats[rows] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return feats, ids


def timed(call: Callable[[], object]) -> Tuple[float, object]:
    start = time.perf_counter()
    value = call()
    return time.perf_counter() - start, value


Search = Callable[[np.ndarray, int], Tuple[np.ndarray, np.ndarray]]


def search_speeds(searches: Sequence[Search], queries: np.ndarray, repeats: int
                  ) -> List[Tuple[float, float]]:
    """(median ms per query at batch 1, at batch 64) of each search, taken in turns query by
    query, so that whatever else slows the machine slows each of them alike."""
    for search in searches:
        search(queries[:1], 10)  # warm-up (and lazy builds)
    single: List[List[float]] = [[] for _ in searches]
    batches: List[List[float]] = [[] for _ in searches]
    for q in range(repeats * 8):
        for times, search in zip(single, searches):
            times.append(timed(lambda: search(queries[q:q + 1], 10))[0])
    for b in range(repeats):
        for times, search in zip(batches, searches):
            times.append(timed(lambda: search(queries[64 * b:64 * (b + 1)], 10))[0])
    return [(1e3 * statistics.median(s), 1e3 * statistics.median(b) / 64)
            for s, b in zip(single, batches)]


def recall_at_10(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)]))


def entries_of(ids: np.ndarray, tag: str) -> List[Entry]:
    return [Entry(str(i), f"/gallery/{tag}{n}.jpg", n % 6) for n, i in enumerate(ids)]


def bench_size(num: int, args: argparse.Namespace, folder: str) -> Iterator[Dict[str, object]]:
    """The table's rows for `num` entries, each as soon as it is measured."""
    raw = num * args.dim * 4
    centres = identity_centres(num, args.dim, args.views)
    queries, _ = reid_like(max(args.queries, 64 * args.repeats), centres, 1)
    path = os.path.join(folder, f"gallery_{num}")
    # Exact: the gallery itself, built, saved, and opened again as a user would.
    build_s = _build_and_save(path, *reid_like(num, centres, 0, args.views))
    gc.collect()  # the generated features are gone: only the gallery's own copy is measured
    gallery, rows, exact_top = _exact_rows(path, raw, build_s, queries, args)
    yield from rows
    for kind in args.approximate:
        yield from _approximate_rows(gallery, kind, queries, exact_top, args)
        yield _saved_index_row(gallery, path, kind, raw, queries, exact_top, args)
        gallery = Gallery.open(path, writable=True)
    yield _add_row(gallery, centres)
    gallery.close()
    shutil.rmtree(path)


def _exact_rows(path: str, raw: int, build_s: float, queries: np.ndarray,
                args: argparse.Namespace):
    """(the opened gallery, its row and faiss's flat index's beside it, the exact top-10)."""
    before = resident_bytes()
    load_s, gallery = timed(lambda: Gallery.open(path, writable=True))
    exact = {"method": "gallery exact", "build_s": build_s, "load_s": load_s,
             "memory": (resident_bytes() - before) / raw, "recall": 1.0}
    _, exact_top = gallery.search(queries[:args.queries], 10)
    # Side by side, timed in turns: faiss's own flat index over the same rows.
    before = resident_bytes()
    flat_s, flat = timed(lambda: _flat(import_faiss(), gallery.matrix.rows))
    flat_row = {"method": "faiss IndexFlatIP", "build_s": flat_s,
                "memory": (resident_bytes() - before) / raw,
                "recall": recall_at_10(flat.search(queries[:args.queries], 10)[1], exact_top)}
    (exact["ms1"], exact["ms64"]), (flat_row["ms1"], flat_row["ms64"]) = search_speeds(
        [gallery.search, flat.search], queries, args.repeats)
    del flat
    gc.collect()
    return gallery, [exact, flat_row], exact_top


def _approximate_rows(gallery: Gallery, kind: str, queries: np.ndarray, exact_top: np.ndarray,
                      args: argparse.Namespace) -> Iterator[Dict[str, object]]:
    """The gallery's `kind` index, built from its rows when first searched, then searched at
    each effort (PQ candidates re-ranked, HNSW efSearch, IVF probes) without building again."""
    efforts = {"pq": args.pq_rerank, "hnsw": args.hnsw_ef, "ivf": args.ivf_probes}[kind]
    gallery.use_index(kind, efforts[0])
    build_s, _ = timed(lambda: gallery.search(queries[:1], 10))
    for effort in efforts:
        gallery.use_index(kind, effort)
        row = {"method": f"gallery {kind} {EFFORT_NAMES[kind]} {effort}",
               "recall": recall_at_10(gallery.search(queries[:args.queries], 10)[1], exact_top)}
        if effort == efforts[0]:
            row["build_s"] = build_s
        [(row["ms1"], row["ms64"])] = search_speeds([gallery.search], queries, args.repeats)
        yield row


def _saved_index_row(gallery: Gallery, path: str, kind: str, raw: int, queries: np.ndarray,
                     exact_top: np.ndarray, args: argparse.Namespace) -> Dict[str, object]:
    """Saved with the gallery, the index is read at the next load instead of built. The open
    gallery is closed first, as a user's would be: two copies of 2M rows and the segments'
    page cache do not fit in 24 GiB, and paging would be timed as loading."""
    save_s, _ = timed(gallery.save_index)
    index_bytes = int(gallery.manifest.ann["bytes"])  # what the index holds in memory too
    gallery.close()
    gc.collect()
    load_s, reloaded = timed(lambda: Gallery.open(path, index=kind))
    recall = recall_at_10(reloaded.search(queries[:args.queries], 10)[1], exact_top)
    return {"method": f"gallery {kind} saved", "build_s": save_s, "load_s": load_s,
            "memory": index_bytes / raw, "recall": recall}


def _add_row(gallery: Gallery, centres: np.ndarray) -> Dict[str, object]:
    """Adding 1,000 entries (new views of known identities) to the opened gallery and saving,
    last: recall above is measured on the gallery as built, 10 views to each identity."""
    adds = []
    for attempt in range(3):
        new, new_ids = reid_like(1000, centres, 7 + attempt)
        adds.append(timed(lambda: (gallery.add(new, entries_of(new_ids, f"a{attempt}_")),
                                   gallery.save()))[0])
    return {"method": "gallery add 1k + save", "add_s": statistics.median(adds)}


def _build_and_save(path: str, feats: np.ndarray, ids: np.ndarray) -> float:
    """Seconds to create the gallery of `feats`, add them and save it."""
    entries = entries_of(ids, "g")
    start = time.perf_counter()
    with Gallery.create(path, {"weight": "synthetic", "weight_sha256": "0"},
                        overwrite=True) as gallery:
        gallery.add(feats, entries)
        gallery.save()
    return time.perf_counter() - start


def _flat(faiss, rows: np.ndarray):
    index = faiss.IndexFlatIP(rows.shape[1])
    index.add(rows)
    return index


EFFORT_NAMES = {"pq": "rerank", "hnsw": "ef", "ivf": "probe"}


def cell(row: Dict[str, object], key: str, fmt: str, suffix: str = "") -> str:
    width = int(fmt.split(".")[0])
    return format(row[key], fmt) + suffix if key in row else "-".rjust(width + len(suffix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 2_000_000])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--views", type=int, default=10, help="views per identity (default 10)")
    parser.add_argument("--queries", type=int, default=256, help="queries for recall@10")
    parser.add_argument("--repeats", type=int, default=5, help="batches of 64 timed (x8 singles)")
    parser.add_argument("--approximate", nargs="*", default=["pq", "ivf"],
                        choices=["pq", "hnsw", "ivf"],
                        help="approximate indexes timed (default pq ivf; hnsw takes about 25 "
                             "minutes to build at 1M on 2 cores)")
    parser.add_argument("--pq-rerank", type=int, nargs="+", default=[PQ_RERANK, 64, 256],
                        help="PQ candidates re-ranked exactly per query, timed (the first is "
                             "the gallery's default)")
    parser.add_argument("--hnsw-ef", type=int, nargs="+", default=[64, HNSW_EF_SEARCH, 256],
                        help=f"HNSW efSearch values timed (the gallery uses {HNSW_EF_SEARCH})")
    parser.add_argument("--ivf-probes", type=int, nargs="+", default=[IVF_PROBES, 64, 128],
                        help="IVF probed lists timed (the first is the gallery's default)")
    parser.add_argument("--folder", default=None, help="where galleries are saved (default: a "
                                                       "temporary folder)")
    args = parser.parse_args()
    faiss = import_faiss()
    print(f"machine: {describe_device(torch.device('cpu'))}; faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} OpenMP threads")
    print(f"features: {args.views} noisy views per identity, {args.dim}-d unit rows; PQ "
          f"{pq_subquantisers(args.dim)} x 4 bits; HNSW M {HNSW_NEIGHBOURS}, efConstruction "
          f"{HNSW_EF_CONSTRUCTION}; IVF about 4 sqrt(N) lists")
    header = (f"{'entries':>9}  {'method':<24} {'build s':>8} {'load s':>7} {'memory':>7} "
              f"{'ms/q b1':>8} {'ms/q b64':>9} {'recall@10':>9} {'add1k+save s':>12}")
    print(header)
    print("-" * len(header))
    folder = args.folder or tempfile.mkdtemp(prefix="bench_gallery_")
    try:
        for num in args.sizes:
            need = PEAK_FACTOR * num * args.dim * 4
            if need > available_bytes():
                print(f"{num:>9}  skipped: needs about {need / GIB:.1f} GiB, "
                      f"{available_bytes() / GIB:.1f} GiB available")
                continue
            for row in bench_size(num, args, folder):
                print(f"{num:>9}  {row['method']:<24} {cell(row, 'build_s', '8.2f')} "
                      f"{cell(row, 'load_s', '7.2f')} {cell(row, 'memory', '6.3f', 'x')} "
                      f"{cell(row, 'ms1', '8.3f')} {cell(row, 'ms64', '9.3f')} "
                      f"{cell(row, 'recall', '9.4f')} {cell(row, 'add_s', '12.3f')}", flush=True)
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)
    print("memory: over the raw float32 features; RSS growth (exact: opening the saved gallery; "
          "faiss flat: building it), or the saved index's size (approximate: 'saved' rows)")


if __name__ == "__main__":
    main()
