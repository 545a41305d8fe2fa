"""Time and memory of one cluster-contrast clustering step at MSMT17 scale.

    python benchmarks/bench_clustering.py [--device cpu|cuda] [--scale 0.25]

Each epoch of training without labels clusters the whole training split: the k-reciprocal
Jaccard distance (`utils.jaccard`) and DBSCAN over it (`utils.clustering.pseudo_labels`).
MSMT17's training split has 32,621 crops of 1,041 identities; here as many 768-d (ViT-B's
width; ViT-S's is 384) L2-normalised features, drawn around one random centre per identity (identity sizes as uneven
as MSMT17's, 2 to 60 crops), with camera offsets shared across identities so that the
neighbourhoods are imperfect. Their settings for MSMT17: k1 30, k2 6, eps 0.7, min_samples 4.

Prints the machine, the seconds of each part, the peak memory (process RSS on the CPU; on a GPU
also the CUDA allocator's peak), the size of the distance graph and the clustering's agreement
with the identities drawn. Their code holds three dense N×N float32 arrays (V, its query
expansion, the distance): 12.8 GB at this size.
"""
import argparse
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import benchmark_device, describe_device  # noqa: E402
from utils.clustering import DBSCAN, cluster_statistics, sort_graph_by_row_values  # noqa: E402
from utils.jaccard import jaccard_distance_graph  # noqa: E402

GIB = 2 ** 30


def peak_resident_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def cpu_seconds() -> float:
    """User + system CPU time of this process: on a shared machine, wall time also counts the
    time other processes held the cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def identity_sizes(images: int, identities: int, generator: torch.Generator) -> torch.Tensor:
    """Uneven identity sizes (2 to 60) summing to `images`."""
    weights = torch.rand(identities, generator=generator).pow(2) + 0.05
    sizes = (weights / weights.sum() * images).round().long().clamp(2, 60)
    while int(sizes.sum()) != images:
        step = 1 if int(sizes.sum()) < images else -1
        pick = torch.randint(identities, (1,), generator=generator)
        if 2 <= int(sizes[pick]) + step <= 60:
            sizes[pick] += step
    return sizes


def clustered_features(args: argparse.Namespace):
    generator = torch.Generator().manual_seed(0)
    sizes = identity_sizes(args.images, args.identities, generator)
    identities = torch.repeat_interleave(torch.arange(args.identities), sizes)
    centres = torch.randn(args.identities, args.dim, generator=generator)
    cameras = torch.randn(15, args.dim, generator=generator)
    camera_of = torch.randint(15, (args.images,), generator=generator)
    features = (centres[identities] + args.noise * torch.randn(args.images, args.dim,
                                                               generator=generator)
                + args.camera * cameras[camera_of])
    return F.normalize(features, dim=1), identities.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of MSMT17's size")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k1", type=int, default=30)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--eps", type=float, default=0.7)
    parser.add_argument("--noise", type=float, default=1.4, help="spread of an identity's crops")
    parser.add_argument("--camera", type=float, default=0.9, help="strength of camera offsets")
    args = parser.parse_args()
    args.images = round(32621 * args.scale)
    args.identities = round(1041 * args.scale)
    device = benchmark_device(args.device)

    features, identities = clustered_features(args)
    features = features.to(device)
    print(f"device: {describe_device(device)}; torch {torch.__version__}")
    print(f"{args.images} images x {args.dim}, {args.identities} identities; k1={args.k1}, "
          f"k2={args.k2}, eps={args.eps}, min_samples=4")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start, start_cpu = time.perf_counter(), cpu_seconds()
    graph = jaccard_distance_graph(features, args.k1, args.k2, max_distance=args.eps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    jaccard_s = time.perf_counter() - start
    start = time.perf_counter()
    graph = sort_graph_by_row_values(graph, copy=False, warn_when_not_sorted=False)
    labels = DBSCAN(eps=args.eps, min_samples=4, metric="precomputed").fit_predict(graph)
    dbscan_s = time.perf_counter() - start

    print(f"Jaccard distance graph: {jaccard_s:.1f} s, {graph.nnz:,} pairs within eps "
          f"({graph.nnz / args.images:.1f} per image)")
    print(f"DBSCAN: {dbscan_s:.1f} s")
    print(f"total: {jaccard_s + dbscan_s:.1f} s ({cpu_seconds() - start_cpu:.1f} s of CPU time, "
          f"user + system); peak process RSS {peak_resident_gib():.2f} GiB")
    if device.type == "cuda":
        print(f"peak CUDA allocated: {torch.cuda.max_memory_allocated(device) / GIB:.2f} GiB")
    print(f"clustering: {cluster_statistics(labels, identities).describe()}")


if __name__ == "__main__":
    main()
