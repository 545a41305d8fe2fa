"""Deployment side by side in one process: speed of each backend and precision, and the
accuracy of a trained model through each.

    python benchmarks/bench_deploy.py [--config_file configs/Market/vit_transreid_stride.yml]
        [--strides 16 12] [--batch 32] [--reps 10] [--warmup 2]
        [--weight /work/qs/transformer_40.pth --accuracy-config configs/Synthetic/vit_transreid_tiny.yml]

Speed: the config's model (ViT-B/16 TransReID by default, random init: no pretrained weights
are needed) at 256 x 128, for each stride, exported by `processor.export` as tools/export.py
does, and timed on one batch of --batch images: median seconds per batch over --reps rounds,
each round timing every backend once in turn, so that load on a shared machine falls on all
alike. torch fp32 is 1.00x. int8 is calibrated on training crops of the synthetic set (rendered
under --data-root) through the test transforms.

Accuracy (with --weight): mAP / Rank-1 / mINP of the trained model on its config's split
through each backend (the evaluation code of test.py), and the cosine of each backend's
features to torch fp32's.

Backends: torch fp32, torch bf16 (CPU autocast), ONNX Runtime fp32 and int8 (static QDQ,
per-channel), OpenVINO fp32 (f32 hint), bf16 (bf16 hint) and int8 (NNCF); with
--static, also ONNX Runtime and OpenVINO int8 exported with a static batch.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import describe_device  # noqa: E402
from config import load_config  # noqa: E402
from datasets import load_eval_dataset, make_val_loader  # noqa: E402
from model import make_model  # noqa: E402
from model.trained import load_trained  # noqa: E402
from deploy.calibration import calibration_set  # noqa: E402
from deploy.export import ExportPlan, Tolerance, export_model  # noqa: E402
from deploy.formats import EXPORT_FORMATS  # noqa: E402
from processor.evaluation import make_evaluator  # noqa: E402
from processor.inference import FeatureExtractor  # noqa: E402

SPEED_CONFIG = "configs/Market/vit_transreid_stride.yml"
ACCURACY_CONFIG = "configs/Synthetic/vit_transreid_tiny.yml"
MARKET_CLASSES, MARKET_CAMERAS = 751, 6


@dataclass(frozen=True)
class Backend:
    """One row: PyTorch (fmt None) under an AMP dtype, or an exported file."""
    name: str
    fmt: Optional[str] = None
    precision: str = "fp32"
    static: bool = False


BACKENDS = [Backend("torch fp32"), Backend("torch bf16 autocast", precision="bf16"),
            Backend("ORT fp32", "onnx"), Backend("ORT int8 static QDQ", "onnx", "int8"),
            Backend("OpenVINO fp32", "openvino"), Backend("OpenVINO bf16 hint", "openvino", "bf16"),
            Backend("OpenVINO int8 NNCF", "openvino", "int8")]
STATIC_BACKENDS = [Backend("ORT int8, static batch", "onnx", "int8", True),
                   Backend("OpenVINO int8, static batch", "openvino", "int8", True)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config_file", default=SPEED_CONFIG, help="model of the speed part")
    parser.add_argument("--strides", type=int, nargs="+", default=[16, 12])
    parser.add_argument("--size", type=int, nargs=2, default=[256, 128], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=10, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--calibration-size", type=int, default=300)
    parser.add_argument("--static", action="store_true", help="also time static-batch int8")
    parser.add_argument("--only", nargs="+", default=None,
                        help="backend names to keep (substrings), e.g. 'torch fp32' ORT")
    parser.add_argument("--weight", default="", help="trained model of the accuracy part")
    parser.add_argument("--accuracy-config", default=ACCURACY_CONFIG)
    parser.add_argument("--data-root", default="data",
                        help="DATASETS.ROOT_DIR of the synthetic set (calibration, accuracy)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--work-dir", default="", help="where exports go (default: a temp dir)")
    return parser.parse_args()


def chosen_backends(args: argparse.Namespace) -> List[Backend]:
    backends = BACKENDS + (STATIC_BACKENDS if args.static else [])
    if args.only:
        backends = [b for b in backends if any(part in b.name for part in args.only)]
    return backends


def extractor_for(backend: Backend, cfg, weight: str, work: str, calibration,
                  batch: int) -> FeatureExtractor:
    """A FeatureExtractor running `backend` for the model of `weight` (exported into `work`)."""
    if backend.fmt is None:
        amp = ["TEST.AMP_DTYPE", "bf16"] if backend.precision == "bf16" else []
        run_cfg = with_opts(cfg, amp)
        return FeatureExtractor.from_trained(run_cfg, load_trained(run_cfg), torch.device("cpu"),
                                             compile=False)
    suffix = EXPORT_FORMATS[backend.fmt].suffix
    output = os.path.join(work, f"{backend.name.replace(' ', '_').replace(',', '')}{suffix}")
    plan = ExportPlan(fmt=backend.fmt, precision=backend.precision,
                      batch=batch if backend.static else None)
    trained = load_trained(cfg)
    check = calibration_set(cfg, 4, seed=1)
    for line in export_model(trained, plan, output, check, calibration, Tolerance(min_cosine=0.9)):
        print(f"  {backend.name}: {line}", flush=True)
    # The benchmark's config is not the user's: the file's own settings apply (chosen: none).
    return FeatureExtractor.from_config(with_opts(cfg, ["TEST.WEIGHT", output]), chosen=())


def with_opts(cfg, opts: List[str]):
    changed = cfg.clone()
    changed.defrost()
    changed.merge_from_list(opts)
    changed.freeze()
    return changed


def speed_config(args: argparse.Namespace, stride: int, weight: str):
    return load_config(args.config_file, [
        "MODEL.STRIDE_SIZE", f"[{stride}, {stride}]", "MODEL.PRETRAIN_CHOICE", "none",
        "MODEL.DEVICE", "cpu", "INPUT.SIZE_TEST", str(list(args.size)),
        "INPUT.SIZE_TRAIN", str(list(args.size)), "DATASETS.NAMES", "synthetic",
        "DATASETS.ROOT_DIR", args.data_root, "TEST.WEIGHT", weight])


def time_side_by_side(runners: Dict[str, Callable[[], object]], warmup: int,
                      reps: int) -> Dict[str, float]:
    """Median seconds of each runner, timing all of them once per round."""
    times: Dict[str, List[float]] = {name: [] for name in runners}
    for round_ in range(warmup + reps):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def speed(args: argparse.Namespace, backends: List[Backend], work: str) -> Dict[int, Dict[str, float]]:
    """img/s of each backend for each stride."""
    results = {}
    for stride in args.strides:
        weight = os.path.join(work, f"vit_stride{stride}.pth")
        cfg = speed_config(args, stride, weight)
        torch.manual_seed(0)
        model = make_model(cfg, MARKET_CLASSES, MARKET_CAMERAS, 1)
        torch.save(model.state_dict(), weight)
        del model
        calibration = calibration_set(cfg, args.calibration_size)
        print(f"stride {stride}: int8 calibration set: {calibration.description}", flush=True)
        batch = calibration_set(cfg, args.batch, seed=2)
        runners = {}
        for backend in backends:
            try:
                extractor = extractor_for(backend, cfg, weight, work, calibration, args.batch)
            except Exception:  # one backend failing must not hide the others' figures
                traceback.print_exc()
                continue
            runners[backend.name] = (lambda e=extractor: e.features(batch.images, batch.cams,
                                                                    batch.views))
        seconds = time_side_by_side(runners, args.warmup, args.reps)
        results[stride] = {name: args.batch / value for name, value in seconds.items()}
    return results


def accuracy(args: argparse.Namespace, backends: List[Backend], work: str) -> Dict[str, Dict[str, float]]:
    """mAP, Rank-1, mINP and cosine to torch fp32 of the trained model through each backend."""
    # No loader workers: forking after the runtimes (and NNCF) started their threads crashed
    # the process (SIGSEGV) once, and the quickstart's images are small.
    cfg = load_config(args.accuracy_config, ["TEST.WEIGHT", args.weight, "MODEL.DEVICE", "cpu",
                                             "MODEL.PRETRAIN_CHOICE", "none",
                                             "DATASETS.ROOT_DIR", args.data_root,
                                             "DATALOADER.NUM_WORKERS", "0"])
    dataset = load_eval_dataset(cfg)
    calibration = calibration_set(cfg, args.calibration_size)
    print(f"accuracy: int8 calibration set: {calibration.description}", flush=True)
    results, reference = {}, None
    for backend in backends:
        try:
            extractor = extractor_for(backend, cfg, args.weight, work, calibration,
                                      cfg.TEST.IMS_PER_BATCH)
        except Exception:
            traceback.print_exc()
            continue
        loader, num_query = make_val_loader(extractor.cfg, dataset=dataset)
        feats, pids, camids, _ = extractor.extract_loader(loader, show_progress=False)
        evaluator = make_evaluator(cfg, num_query)
        evaluator.update((feats, pids, camids))
        result = evaluator.evaluate()
        reference = feats if reference is None else reference
        cosine = torch.nn.functional.cosine_similarity(feats.double(), reference.double(), dim=1)
        results[backend.name] = dict(mAP=result.mAP, rank1=result.cmc[0], mINP=result.mINP,
                                     cos_min=float(cosine.min()), cos_mean=float(cosine.mean()))
    return results


def print_table(args, backends, speeds, scores) -> None:
    print(f"\nmachine: {describe_device(torch.device('cpu'))}")
    print(f"speed: {args.config_file} (random init), {args.size[0]}x{args.size[1]}, batch "
          f"{args.batch}, median of {args.reps} side-by-side rounds; accuracy: "
          f"{args.weight or '-'} on {args.accuracy_config}'s split")
    header = ["backend"]
    for stride in speeds:
        header += [f"s{stride} img/s", f"s{stride} x"]
    header += ["mAP", "Rank-1", "mINP", "cos min", "cos mean"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for backend in backends:
        cells = [backend.name]
        for stride, rates in speeds.items():
            base = rates.get(BACKENDS[0].name)
            rate = rates.get(backend.name)
            cells += ["-" if rate is None else f"{rate:.2f}",
                      "-" if rate is None or base is None else f"{rate / base:.2f}x"]
        score = scores.get(backend.name)
        if score:
            cells += [f"{100 * score['mAP']:.2f}", f"{100 * score['rank1']:.2f}",
                      f"{100 * score['mINP']:.2f}", f"{score['cos_min']:.6f}",
                      f"{score['cos_mean']:.6f}"]
        else:
            cells += ["-"] * 5
        print("| " + " | ".join(cells) + " |")


def main() -> int:
    args = parse_args()
    backends = chosen_backends(args)
    with tempfile.TemporaryDirectory(dir=args.work_dir or None) as work:
        speeds = {} if args.skip_speed else speed(args, backends, work)
        scores = accuracy(args, backends, work) if args.weight else {}
    print_table(args, backends, speeds, scores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
