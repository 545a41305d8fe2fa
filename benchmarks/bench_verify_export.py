"""What verifying an exported file costs when it is opened: the SHA-256 of its weights (ONNX:
the initializers; OpenVINO: the .bin) beside reading its metadata and opening its runtime
session, for ViT-B/16 TransReID at 256 x 128 (random weights: the cost depends on the size).

    python benchmarks/bench_verify_export.py [--repeats 5]

Each figure is the median of --repeats opens in one process, the per-process cache cleared
before each (a second open of an unchanged file in one process is not hashed again).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import describe_device  # noqa: E402
from config import load_config  # noqa: E402
from deploy import metadata  # noqa: E402
from deploy.backends import ExportedModel  # noqa: E402
from deploy.calibration import random_check_set  # noqa: E402
from deploy.export import ExportPlan, export_model  # noqa: E402
from deploy.formats import backend_module, resolve_format  # noqa: E402
from model import make_model  # noqa: E402
from model.trained import load_trained  # noqa: E402

CONFIG = "configs/Market/vit_transreid_stride.yml"


def median_seconds(work: Callable[[], object], repeats: int) -> float:
    times: List[float] = []
    for _ in range(repeats):
        metadata._INSPECTED.clear()
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def costs(path: str, repeats: int) -> Dict[str, float]:
    """Seconds to read the metadata alone, to read it and hash the weights, and to open the file
    whole (metadata, verification, runtime session) as FeatureExtractor does."""
    runtime = backend_module(resolve_format(path))
    return {"metadata": median_seconds(lambda: runtime.inspect(path), repeats),
            "sha256": median_seconds(lambda: runtime.inspect(path)[1](), repeats),
            "open": median_seconds(lambda: ExportedModel(path), repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        weight = os.path.join(work, "vit_b.pth")
        opts = ["MODEL.PRETRAIN_CHOICE", "none", "MODEL.DEVICE", "cpu", "TEST.WEIGHT", weight]
        cfg = load_config(CONFIG, opts)
        torch.manual_seed(0)
        torch.save(make_model(cfg, 751, 6, 1).state_dict(), weight)
        trained = load_trained(cfg)
        check = random_check_set(cfg, trained.counts, 2)
        print(f"# {describe_device(torch.device('cpu'))}, torch {torch.__version__}; "
              f"ViT-B/16 TransReID stride 12, {list(cfg.INPUT.SIZE_TEST)}; median of "
              f"{args.repeats}")
        print(f"{'file':10s} {'MB':>7s} {'metadata':>9s} {'+ hash':>8s} {'open':>7s}  (seconds; "
              "open: metadata, hash and the runtime's session)")
        for fmt, name in (("onnx", "vit_b.onnx"), ("openvino", "vit_b.xml")):
            path = os.path.join(work, name)
            export_model(trained, ExportPlan(fmt=fmt), path, check)
            size = sum(os.path.getsize(f) for f in resolve_format(path).files(path))
            row = costs(path, args.repeats)
            print(f"{fmt:10s} {size / 1e6:7.1f} {row['metadata']:9.2f} "
                  f"{row['sha256'] - row['metadata']:8.2f} {row['open']:7.2f}", flush=True)


if __name__ == "__main__":
    main()
