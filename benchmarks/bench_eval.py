"""Time the reference's numpy evaluation against utils.metrics / utils.reranking.

Synthetic features clustered by identity (plus a camera offset, so same-camera images are the
confusing ones) at Market-1501 and MSMT17 scale, 3,840-d (ViT-B/16 with JPM: 5 × 768). Prints
one table row per task with the median time of each implementation, the speed-up, and both mAPs
(which must agree).

    python -m benchmarks.bench_eval                      # everything, on CUDA when available
    python -m benchmarks.bench_eval --device cpu --skip msmt --rerank-scale 0.25
    python -m benchmarks.bench_eval --quick              # 1/8 of every size, one repeat
    python -m benchmarks.bench_eval --skip market msmt --rerank-set msmt   # MSMT17 re-ranking

The reference always runs on the CPU (numpy). At MSMT17 scale its mAP/CMC needs ~20 GB and
minutes, so it runs only with --msmt-reference; its re-ranking there (dense 93,820² arrays,
over 100 GB) never runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

# Runs as `python benchmarks/bench_eval.py` too, not only with -m from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import reference_eval  # noqa: E402
from benchmarks.common import benchmark_device, describe_device  # noqa: E402
from utils.metrics import R1_mAP_eval, eval_func  # noqa: E402

FEAT_DIM = 3840
SCALES = {  # (queries, gallery images, test identities)
    "market": (3368, 15913, 751),
    "msmt": (11659, 82161, 3060),
}
NUM_CAMERAS = 6
# Identity centre vs unit noise: Market-scale mAP about 86% (metrics) and, harder, about 45%
# before re-ranking, so that re-ranking has something to fix without reaching 100%.
IDENTITY_STRENGTH = 0.3
RERANK_IDENTITY_STRENGTH = 0.25
CAMERA_STRENGTH = 0.15


@dataclass
class Split:
    qf: np.ndarray
    gf: np.ndarray
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray


@dataclass
class Row:
    task: str
    size: str
    reference_s: Optional[float]
    new_s: float
    reference_map: Optional[float]
    new_map: float
    repeats: str


def synthetic_split(num_query: int, num_gallery: int, num_ids: int,
                    identity_strength: float = IDENTITY_STRENGTH, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_ids, FEAT_DIM), dtype=np.float32) * identity_strength
    camera_offsets = rng.standard_normal((NUM_CAMERAS, FEAT_DIM), dtype=np.float32) \
        * CAMERA_STRENGTH

    def images(count: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        pids = rng.integers(0, num_ids, count)
        camids = rng.integers(0, NUM_CAMERAS, count)
        feats = rng.standard_normal((count, FEAT_DIM), dtype=np.float32)
        feats += centres[pids]
        feats += camera_offsets[camids]
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        return feats, pids, camids

    qf, q_pids, q_camids = images(num_query)
    gf, g_pids, g_camids = images(num_gallery)
    return Split(qf, gf, q_pids, g_pids, q_camids, g_camids)


def median_time(run: Callable[[], float], repeats: int, device: torch.device,
                warmup: bool) -> Tuple[float, float]:
    """(median seconds, result of the last run); CUDA work is synchronised before each stop."""
    if warmup:
        run()
    times, result = [], float("nan")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def reference_metrics(split: Split) -> float:
    dist = reference_eval.squared_euclidean(split.qf, split.gf)
    return reference_eval.market_eval(dist, split.q_pids, split.g_pids, split.q_camids,
                                      split.g_camids)[1]


def new_metrics(split: Split, device: torch.device, **evaluator_args) -> Callable[[], float]:
    """R1_mAP_eval.compute() on features already on `device`, as after feature extraction."""
    feats = torch.from_numpy(np.concatenate([split.qf, split.gf])).to(device)
    pids = np.concatenate([split.q_pids, split.g_pids])
    camids = np.concatenate([split.q_camids, split.g_camids])

    def run() -> float:
        evaluator = R1_mAP_eval(len(split.qf), feat_norm=True, **evaluator_args)
        evaluator.update((feats, pids, camids))
        return evaluator.compute()[1]
    return run


def bench_metrics(name: str, split: Split, device: torch.device, repeats: int,
                  with_reference: bool) -> List[Row]:
    size = f"{len(split.qf)} x {len(split.gf)}"
    new_s, new_map = median_time(new_metrics(split, device), repeats, device,
                                 warmup=device.type == "cuda")
    ref_s = ref_map = None
    if with_reference:
        ref_s, ref_map = median_time(lambda: reference_metrics(split), repeats, device, False)
    rows = [Row(f"{name} features -> CMC/mAP", size, ref_s, new_s, ref_map, new_map,
                str(repeats))]
    if with_reference:
        dist = reference_eval.squared_euclidean(split.qf, split.gf)
        dist_on_device = torch.from_numpy(dist).to(device)
        ids = (split.q_pids, split.g_pids, split.q_camids, split.g_camids)
        new_s, new_map = median_time(lambda: eval_func(dist_on_device, *ids)[1], repeats,
                                     device, warmup=device.type == "cuda")
        ref_s, ref_map = median_time(lambda: reference_eval.market_eval(dist, *ids)[1],
                                     repeats, device, False)
        rows.append(Row(f"{name} eval_func (distmat given)", size, ref_s, new_s, ref_map,
                        new_map, str(repeats)))
    return rows


def bench_reranking(name: str, split: Split, device: torch.device, repeats: int,
                    with_reference: bool, k1: int = 50, k2: int = 15,
                    lambda_value: float = 0.3) -> Row:
    ids = (split.q_pids, split.g_pids, split.q_camids, split.g_camids)
    run_new = new_metrics(split, device, reranking=True, k1=k1, k2=k2, lambda_value=lambda_value)
    new_s, new_map = median_time(run_new, repeats, device, warmup=device.type == "cuda")
    ref_s = ref_map = None
    if with_reference:  # once: it takes minutes
        ref_s, ref_map = median_time(lambda: reference_eval.market_eval(
            reference_eval.re_ranking(split.qf, split.gf, k1, k2, lambda_value), *ids)[1],
            1, device, False)
    return Row(f"{name} re-ranking + CMC/mAP", f"{len(split.qf)} x {len(split.gf)}", ref_s, new_s,
               ref_map, new_map, f"{repeats} (ref 1)" if with_reference else str(repeats))


def describe_sides(device: torch.device) -> str:
    cpu = describe_device(torch.device("cpu"))
    if device.type == "cuda":
        return f"new: {describe_device(device)}; reference: numpy on the {cpu}"
    return f"new and reference: {cpu}"


def print_table(rows: List[Row], device: torch.device) -> None:
    def seconds(value: Optional[float]) -> str:
        return "skipped" if value is None else f"{value:.3f}"

    def points(value: Optional[float]) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    header = ("task", "query x gallery", "reference s", "new s", "speed-up", "mAP ref",
              "mAP new", "repeats")
    lines = [header]
    for row in rows:
        speedup = "-" if row.reference_s is None else f"{row.reference_s / row.new_s:.1f}x"
        lines.append((row.task, row.size, seconds(row.reference_s), seconds(row.new_s), speedup,
                      points(row.reference_map), points(row.new_map), row.repeats))
    widths = [max(len(line[col]) for line in lines) for col in range(len(header))]
    print(f"device: {describe_sides(device)}; torch {torch.__version__}; {FEAT_DIM}-d features; "
          "median seconds")
    for index, line in enumerate(lines):
        print(" | ".join(cell.ljust(width) for cell, width in zip(line, widths)))
        if index == 0:
            print("-+-".join("-" * width for width in widths))
    for row in rows:
        if row.reference_map is not None and abs(row.reference_map - row.new_map) > 1e-3:
            print(f"WARNING: {row.task}: mAPs differ by more than 0.1 points")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="1/8 of every size, one repeat")
    parser.add_argument("--skip", nargs="*", default=[], choices=["market", "msmt", "rerank"])
    parser.add_argument("--msmt-reference", action="store_true",
                        help="also run the numpy reference at MSMT17 scale (~20 GB, minutes)")
    parser.add_argument("--rerank-repeats", type=int, default=1,
                        help="repeats of the new re-ranking (the reference runs once)")
    parser.add_argument("--rerank-set", default="market", choices=sorted(SCALES),
                        help="dataset size of the re-ranking row")
    parser.add_argument("--rerank-scale", type=float, default=1.0,
                        help="fraction of that size for the re-ranking row")
    parser.add_argument("--no-rerank-reference", action="store_true",
                        help="time only the new re-ranking")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = benchmark_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    shrink = 8 if args.quick else 1
    repeats = 1 if args.quick else args.repeats
    rows: List[Row] = []
    for name in ("market", "msmt"):
        if name in args.skip:
            continue
        num_query, num_gallery, num_ids = SCALES[name]
        split = synthetic_split(num_query // shrink, num_gallery // shrink, num_ids // shrink)
        rows += bench_metrics(name, split, device, repeats,
                              with_reference=name == "market" or args.msmt_reference)
    if "rerank" not in args.skip:
        num_query, num_gallery, num_ids = SCALES[args.rerank_set]
        scale = args.rerank_scale / shrink
        split = synthetic_split(int(num_query * scale), int(num_gallery * scale),
                                max(2, int(num_ids * scale)), RERANK_IDENTITY_STRENGTH)
        with_reference = args.rerank_set == "market" and not args.no_rerank_reference
        rows.append(bench_reranking(args.rerank_set, split, device, args.rerank_repeats,
                                    with_reference))
    print_table(rows, device)


if __name__ == "__main__":
    main()
