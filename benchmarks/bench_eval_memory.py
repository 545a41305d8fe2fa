"""Memory that mAP/CMC need beyond the features, at MSMT17 scale.

    python benchmarks/bench_eval_memory.py [--device cpu|cuda] [--dim 3840]

Random features of MSMT17's size (11,659 queries, 82,161 gallery images) go into
`R1_mAP_eval`; the script prints the memory held with the features in place and the peak
while `compute()` runs (process RSS on the CPU, the CUDA allocator's peak on a GPU).
"""
import argparse
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.metrics import R1_mAP_eval  # noqa: E402

GIB = 2 ** 30


def resident_gib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GIB


def peak_resident_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dim", type=int, default=3840, help="feature width (TransReID: 5 x 768)")
    parser.add_argument("--queries", type=int, default=11659)
    parser.add_argument("--gallery", type=int, default=82161)
    args = parser.parse_args()
    device = torch.device(args.device)
    total = args.queries + args.gallery

    generator = torch.Generator(device=device).manual_seed(0)
    feats = torch.randn(total, args.dim, generator=generator, device=device)
    pids = torch.randint(0, 3000, (total,), generator=generator, device=device).tolist()
    camids = torch.randint(0, 15, (total,), generator=generator, device=device).tolist()
    evaluator = R1_mAP_eval(args.queries, max_rank=50, feat_norm=True)
    evaluator.update((feats, pids, camids))

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        held = torch.cuda.memory_allocated(device) / GIB
        torch.cuda.reset_peak_memory_stats(device)
    else:
        held = resident_gib()
    start = time.perf_counter()
    evaluator.compute()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / GIB
    else:
        peak = peak_resident_gib()
    seconds = time.perf_counter() - start

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (process RSS)"
    print(f"device: {name}; {args.queries} x {args.gallery}, {args.dim}-d features "
          f"({feats.numel() * feats.element_size() / GIB:.2f} GiB)")
    print(f"held with the features: {held:.2f} GiB; peak during compute(): {peak:.2f} GiB; "
          f"beyond the features: {peak - held:.2f} GiB; compute() took {seconds:.0f} s")


if __name__ == "__main__":
    main()
