"""What checking a gallery's SHA-256 checksums costs when it is opened, at 1M entries x 768.

    python benchmarks/bench_verify_gallery.py                      # 1M x 768, 3 opens each way
    python benchmarks/bench_verify_gallery.py --rows 100000 --repeats 2    # a quick check

One gallery is saved (one segment of unit rows and its entries), then opened in turns:
* verified: its manifest as saved (every file's SHA-256 recorded), with this process's record of
  files already verified cleared first, so every byte is hashed (as in a new process);
* cached: the same, without clearing: the files were verified by this process and have not
  changed since (same size, mtime and inode), so none is hashed again;
* unverified: the same files under a format 1 manifest (no checksums), read without hashing.
Each open reads the files from the page cache (a first open, not timed, puts them there), so the
difference is the hashing, not the disk. Then 1,000 entries are added to the opened gallery and
saved, twice: the first add also builds the set of enrolled paths that refuses duplicates.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import describe_device  # noqa: E402
from deploy import digests  # noqa: E402
from deploy.gallery import Gallery  # noqa: E402
from deploy.gallery_store import Entry, manifest_path  # noqa: E402
from utils.files import file_sha256  # noqa: E402

CHUNK = 100_000


def build(folder: str, rows: int, dim: int) -> float:
    """Save a gallery of `rows` random unit rows (added a chunk at a time); returns seconds."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    with Gallery.create(folder) as gallery:
        for first in range(0, rows, CHUNK):
            count = min(CHUNK, rows - first)
            feats = rng.standard_normal((count, dim), dtype=np.float32)
            gallery.add(feats, [Entry(str(n // 10), f"/gallery/{n}.jpg", n % 6)
                                for n in range(first, first + count)])
            gallery.matrix.reserve(rows)  # one buffer: growing it by copies would double the peak
        gallery.save()
    return time.perf_counter() - start


def format_one(text: str) -> str:
    """The manifest `text` as a gallery saved before checksums were recorded would have it."""
    manifest = json.loads(text)
    manifest["version"] = 1
    for segment in manifest["segments"]:
        segment["sha256"] = segment["entries_sha256"] = None
    return json.dumps(manifest)


def timed_open(folder: str) -> Tuple[float, float]:
    """(wall seconds, CPU seconds of all the process's threads) of one Gallery.open."""
    start, cpu = time.perf_counter(), time.process_time()
    gallery = Gallery.open(folder)
    seconds = (time.perf_counter() - start, time.process_time() - cpu)
    del gallery
    gc.collect()
    return seconds


def open_times(folder: str, repeats: int) -> Dict[str, List[Tuple[float, float]]]:
    """Seconds of each open, per way (see the module's doc), taken in turns."""
    saved = open(manifest_path(folder)).read()
    unverified = format_one(saved)

    def with_manifest(text: str, clear: bool) -> Callable[[], Tuple[float, float]]:
        def run() -> Tuple[float, float]:
            with open(manifest_path(folder), "w") as handle:
                handle.write(text)
            if clear:
                digests._VERIFIED.clear()
            return timed_open(folder)
        return run

    ways = {"verified": with_manifest(saved, True), "cached": with_manifest(saved, False),
            "unverified": with_manifest(unverified, True)}
    timed_open(folder)  # into the page cache, and verified once
    times: Dict[str, List[Tuple[float, float]]] = {way: [] for way in ways}
    for _ in range(repeats):
        for way, run in ways.items():
            times[way].append(run())
    with open(manifest_path(folder), "w") as handle:
        handle.write(saved)
    return times


def hash_rate(folder: str) -> float:
    """GB/s of hashlib's SHA-256 over the segment, read from the page cache."""
    path = os.path.join(folder, "seg-000001.npy")
    start = time.perf_counter()
    file_sha256(path)
    return os.path.getsize(path) / (time.perf_counter() - start) / 1e9


def add_times(folder: str, dim: int) -> List[float]:
    """Seconds to add 1,000 new entries and save, twice, to the opened gallery."""
    rng = np.random.default_rng(1)
    seconds = []
    with Gallery.open(folder, writable=True) as gallery:
        for turn in range(2):
            feats = rng.standard_normal((1000, dim), dtype=np.float32)
            entries = [Entry("new", f"/new/{turn}_{n}.jpg") for n in range(1000)]
            start = time.perf_counter()
            gallery.add(feats, entries)
            gallery.save()
            seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3, help="timed opens per way")
    parser.add_argument("--work", default=None, help="folder for the gallery (default: a temp)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    work = tempfile.mkdtemp(dir=args.work, prefix="bench_verify_")
    folder = os.path.join(work, "g")
    try:
        print(f"machine: {describe_device(torch.device('cpu'))}; torch {torch.__version__}, "
              f"numpy {np.__version__}, Python {sys.version.split()[0]}")
        built = build(folder, args.rows, args.dim)
        size = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
        print(f"gallery: {args.rows} x {args.dim} float32, {size / 1e9:.2f} GB on disk, "
              f"built and saved in {built:.1f} s")
        times = open_times(folder, args.repeats)
        print(f"SHA-256 alone over the segment: {hash_rate(folder):.2f} GB/s")
        print(f"open, median of {args.repeats}: wall s / CPU s (all threads)")
        for way, values in times.items():
            wall, cpu = zip(*values)
            print(f"  {way:>10}  {statistics.median(wall):6.2f} / {statistics.median(cpu):6.2f}"
                  f"   (each: {' '.join(f'{w:.2f}/{c:.2f}' for w, c in values)})")
        first, second = add_times(folder, args.dim)
        print(f"add 1,000 entries + save: {first:.3f} s the first time (builds the path set), "
              f"{second:.3f} s the second")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
