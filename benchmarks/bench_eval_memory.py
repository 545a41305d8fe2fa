"""Memory and time that mAP/CMC (or re-ranking) need beyond the features, at MSMT17 scale.

    python benchmarks/bench_eval_memory.py [--device cpu|cuda] [--dim 3840]
    python benchmarks/bench_eval_memory.py --rerank          # k-reciprocal re-ranking + mAP/CMC

Features of MSMT17's size (11,659 queries, 82,161 gallery images) go into `R1_mAP_eval`; the
script prints the memory held with the features in place and the peak while `compute()` runs
(process RSS on the CPU, the CUDA allocator's peak on a GPU). Plain mAP/CMC uses random
features; re-ranking uses bench_eval's features clustered by identity, since the size of its
sparse neighbour structures depends on how the neighbourhoods overlap.
"""
import argparse
import os
import resource
import sys
import time
from typing import List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_eval import (RERANK_IDENTITY_STRENGTH, benchmark_device,  # noqa: E402
                                   synthetic_split)
from utils.metrics import R1_mAP_eval  # noqa: E402

GIB = 2 ** 30


def resident_gib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GIB


def peak_resident_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def random_features(args: argparse.Namespace, device: torch.device,
                    ) -> Tuple[torch.Tensor, List[int], List[int]]:
    total = args.queries + args.gallery
    generator = torch.Generator(device=device).manual_seed(0)
    feats = torch.randn(total, args.dim, generator=generator, device=device)
    pids = torch.randint(0, 3000, (total,), generator=generator, device=device).tolist()
    camids = torch.randint(0, 15, (total,), generator=generator, device=device).tolist()
    return feats, pids, camids


def clustered_features(args: argparse.Namespace, device: torch.device,
                       ) -> Tuple[torch.Tensor, List[int], List[int]]:
    if args.dim != 3840:
        raise SystemExit("--rerank uses bench_eval's 3840-d features; leave --dim at 3840")
    split = synthetic_split(args.queries, args.gallery, 3060, RERANK_IDENTITY_STRENGTH)
    feats = torch.cat([torch.from_numpy(split.qf), torch.from_numpy(split.gf)]).to(device)
    pids = split.q_pids.tolist() + split.g_pids.tolist()
    camids = split.q_camids.tolist() + split.g_camids.tolist()
    return feats, pids, camids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dim", type=int, default=3840, help="feature width (TransReID: 5 x 768)")
    parser.add_argument("--queries", type=int, default=11659)
    parser.add_argument("--gallery", type=int, default=82161)
    parser.add_argument("--rerank", action="store_true",
                        help="k-reciprocal re-ranking (k1=50, k2=15, lambda=0.3) before mAP/CMC")
    args = parser.parse_args()
    device = benchmark_device(args.device)

    make_features = clustered_features if args.rerank else random_features
    feats, pids, camids = make_features(args, device)
    evaluator = R1_mAP_eval(args.queries, max_rank=50, feat_norm=True, reranking=args.rerank)
    evaluator.update((feats, pids, camids))

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        held = torch.cuda.memory_allocated(device) / GIB
        torch.cuda.reset_peak_memory_stats(device)
    else:
        held = resident_gib()
    start = time.perf_counter()
    _, mean_ap = evaluator.compute()[:2]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / GIB
    else:
        peak = peak_resident_gib()
    seconds = time.perf_counter() - start

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (process RSS)"
    task = "re-ranking + mAP/CMC" if args.rerank else "mAP/CMC"
    print(f"device: {name}; {task}; {args.queries} x {args.gallery}, {args.dim}-d features "
          f"({feats.numel() * feats.element_size() / GIB:.2f} GiB)")
    print(f"held with the features: {held:.2f} GiB; peak during compute(): {peak:.2f} GiB; "
          f"beyond the features: {peak - held:.2f} GiB; compute() took {seconds:.0f} s; "
          f"mAP {100 * mean_ap:.2f}")


if __name__ == "__main__":
    main()
