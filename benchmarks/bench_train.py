"""Training-step and inference speed of a config's model, without the data pipeline.

    python benchmarks/bench_train.py [--config_file CONFIG] [--device cpu|cuda] [--batch N]
        [--steps N] [--warmup N] [--compile | --no-compile] [--sync-debug] [KEY VALUE ...]

Builds the model, loss, optimizers and schedule of the config as train.py does, and times the
real `Trainer.train_step` (forward, loss, backward, optimizer and GradScaler steps) on one
device-resident random batch of the sampler's shape: P identities x DATALOADER.NUM_INSTANCE
images, camera and view labels in the dataset's range. Reports images per second (median step
over the timed steps, after warm-up) and peak GPU memory for

* eager fp16 and eager bf16 training (SOLVER.AMP_DTYPE); on the CPU this repository trains in
  fp32 (AMP is CUDA-only), so there one eager fp32 row stands for both;
* compiled training (MODEL.COMPILE on: the trainer's torch.compile'd forward, the config's
  AMP dtype): by default on CUDA, on the CPU only with --compile (compiling on a small CPU
  takes minutes);
* with --sync-debug (CUDA only), after the timed steps of each training mode, a few more steps
  under `torch.cuda.set_sync_debug_mode("error")`: a step that makes the host wait for the GPU
  (`.item()`, a blocking copy, ...) fails there, and the table says where;
* with --ab-last-block, eager training with the last block on every token (the path before
  the class-token-only last block) against the class-token path, alternating steps on one
  trainer so that load on a shared machine hits both alike;
* eval-mode inference (`model(img, cam_label, view_label)` under no_grad, TEST.IMS_PER_BATCH
  images) in fp32 and under bf16 autocast (CPU autocast on the CPU).

The class count, cameras and views come from the reference datasets' training splits
(--num_classes / --cameras / --views override them), so no dataset is read.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import benchmark_device, describe_device  # noqa: E402
from loss import make_loss  # noqa: E402
from model import make_model  # noqa: E402
from model.backbones.vit_pytorch import Block  # noqa: E402
from config.cli import base_parser, load_cli_config  # noqa: E402
from utils.errors import exits_on_user_error  # noqa: E402
from processor.processor import Trainer  # noqa: E402
from solver import create_scheduler, make_optimizer  # noqa: E402

DEFAULT_CONFIG = "configs/Synthetic/vit_transreid_tiny.yml"
# (identities, cameras, views) of the training splits, as make_dataloader would count them.
TRAIN_SPLITS = {
    "market1501": (751, 6, 1),
    "dukemtmc": (702, 8, 1),
    "occ_duke": (702, 8, 1),
    "msmt17": (1041, 15, 1),
    "veri": (576, 20, 8),
    "VehicleID": (13164, 1, 1),
}


@dataclass
class Row:
    mode: str
    precision: str
    batch: int
    step_s: float
    peak_gib: Optional[float]
    note: str = ""


def split_sizes(cfg, args: argparse.Namespace) -> Tuple[int, int, int]:
    """(classes, cameras, views) of the config's dataset, or the command line's."""
    name = cfg.DATASETS.NAMES
    if name.startswith("synthetic"):
        # Half the identities train (datasets/synthetic/protocol.py).
        default = (cfg.DATASETS.SYNTHETIC.NUM_IDS // 2, cfg.DATASETS.SYNTHETIC.NUM_CAMERAS, 1)
    else:
        default = TRAIN_SPLITS.get(name, (751, 6, 1))
    given = (args.num_classes, args.cameras, args.views)
    return tuple(value if value is not None else fallback for value, fallback in zip(given, default))


def random_batch(cfg, batch: int, sizes: Tuple[int, int, int], device: torch.device,
                 train: bool = True) -> List[torch.Tensor]:
    """(images, identities, cameras, views) as the identity sampler batches them, on `device`."""
    num_classes, cameras, views = sizes
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, *cfg.INPUT.SIZE_TRAIN if train else cfg.INPUT.SIZE_TEST,
                         generator=generator)
    instances = cfg.DATALOADER.NUM_INSTANCE if cfg.DATALOADER.SAMPLER == "softmax_triplet" else 1
    pids = (torch.arange(batch) // instances) % num_classes
    cams = torch.randint(max(cameras, 1), (batch,), generator=generator)
    view_ids = torch.randint(max(views, 1), (batch,), generator=generator)
    return [t.to(device) for t in (images, pids, cams, view_ids)]


def build_trainer(cfg, sizes: Tuple[int, int, int], compile_model: bool) -> Trainer:
    """train.py's build_training without the data: the loaders are not used by train_step."""
    torch.manual_seed(cfg.SOLVER.SEED)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.COMPILE = "on" if compile_model else "off"
    num_classes, cameras, views = sizes
    model = make_model(cfg, num_class=num_classes, camera_num=cameras, view_num=views)
    loss_fn, center_criterion = make_loss(cfg, num_classes=num_classes)
    optimizer, optimizer_center = make_optimizer(cfg, model, center_criterion)
    scheduler = create_scheduler(cfg, optimizer)
    trainer = Trainer(cfg, model, center_criterion, train_loader=None, val_loader=None,
                      optimizer=optimizer, optimizer_center=optimizer_center, scheduler=scheduler,
                      loss_fn=loss_fn, num_query=0, local_rank=0)
    trainer.model.train()
    return trainer


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], object], device: torch.device, warmup: int,
               steps: int) -> Tuple[float, float]:
    """(median seconds of the timed steps, seconds of the first warm-up step)."""
    first = 0.0
    synchronize(device)
    for index in range(warmup):
        start = time.perf_counter()
        step()
        synchronize(device)
        if index == 0:
            first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), first


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def bench_training(cfg, sizes, device, args, amp: str, compile_model: bool) -> Row:
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.AMP_DTYPE = amp
    reset_peak(device)
    trainer = build_trainer(cfg, sizes, compile_model)
    batch = random_batch(cfg, args.batch, sizes, device)
    counter = iter(range(1, 1 << 30))

    def step() -> None:  # what train_epoch does per batch
        loss, accuracy = trainer.train_step(batch, epoch=1, n_iter=next(counter))
        trainer.stats.add(loss, accuracy, args.batch)

    median, first = time_steps(step, device, args.warmup, args.steps)
    precision = amp if trainer.amp_dtype is not None else "fp32"
    notes = ["AMP is CUDA-only: fp32"] if device.type != "cuda" else []
    if compile_model:
        notes = [f"first step {first:.1f} s (compilation)" if trainer.forward.is_compiled
                 else "compilation FAILED: eager (see the warning)"]
    if args.sync_debug:
        notes.append(check_no_sync(step, device))
    note = "; ".join(notes)
    return Row("train compiled" if compile_model else "train eager", precision, args.batch,
               median, peak_gib(device), note)


def check_no_sync(step: Callable[[], object], device: torch.device, steps: int = 3) -> str:
    """Run `steps` more steps with CUDA's sync debug mode at "error": any host-device sync in
    them raises. Returns the verdict for the table (and prints the offending call)."""
    if device.type != "cuda":
        return "sync check skipped (CUDA only)"
    synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(steps):
            step()
    except RuntimeError as error:
        print(f"sync check FAILED: {error}\n{where_in_repository(error)}")
        return "sync check FAILED (see above)"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    synchronize(device)
    return f"no host sync in {steps} steps: passed"


def where_in_repository(error: BaseException) -> str:
    """The frames of `error`'s traceback in this repository's files, innermost last."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frames = traceback.extract_tb(error.__traceback__)
    return "\n".join(f"  {frame.filename}:{frame.lineno} {frame.line}" for frame in frames
                     if frame.filename.startswith(root)) or "  (no frame in this repository)"


@contextlib.contextmanager
def full_last_block():
    """Blocks asked for the class token alone run on every token and slice it instead."""
    forward = Block.forward
    Block.forward = lambda self, x, cls_only=False: forward(self, x)[:, :1] if cls_only else forward(self, x)
    try:
        yield
    finally:
        Block.forward = forward


def bench_last_block(cfg, sizes, device, args) -> List[Row]:
    """Full against class-token-only last block, on alternate steps of one eager trainer."""
    reset_peak(device)
    trainer = build_trainer(cfg, sizes, compile_model=False)
    batch = random_batch(cfg, args.batch, sizes, device)
    contexts = {"full": full_last_block, "class token": contextlib.nullcontext}
    times: Dict[str, List[float]] = {name: [] for name in contexts}
    peaks: Dict[str, Optional[float]] = {name: None for name in contexts}
    for index in range(args.warmup + args.steps):
        for name, context in contexts.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with context():
                seconds, _ = time_steps(lambda: trainer.train_step(batch, epoch=1, n_iter=index + 1),
                                        device, warmup=0, steps=1)
            peaks[name] = peak_gib(device)
            if index >= args.warmup:
                times[name].append(seconds)
    precision = "fp32" if trainer.amp_dtype is None else cfg.SOLVER.AMP_DTYPE
    return [Row(f"train eager, {name} last block", precision, args.batch, statistics.median(times[name]),
                peaks[name], "alternating steps") for name in contexts]


def bench_inference(cfg, sizes, device, args, dtype: Optional[torch.dtype]) -> Row:
    reset_peak(device)
    torch.manual_seed(cfg.SOLVER.SEED)
    model = make_model(cfg, num_class=sizes[0], camera_num=sizes[1], view_num=sizes[2])
    model.to(device).eval()
    batch_size = args.eval_batch or cfg.TEST.IMS_PER_BATCH
    images, _, cams, views = random_batch(cfg, batch_size, sizes, device, train=False)

    @torch.no_grad()
    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return model(images, cam_label=cams, view_label=views)

    median, _ = time_steps(step, device, args.warmup, args.steps)
    precision = "bf16 autocast" if dtype is not None else "fp32"
    return Row("inference", precision, batch_size, median, peak_gib(device))


def print_table(rows: List[Row]) -> None:
    header = ("mode", "precision", "batch", "img/s", "step ms", "peak GiB", "note")
    lines = [header] + [
        (row.mode, row.precision, str(row.batch), f"{row.batch / row.step_s:.1f}",
         f"{1000 * row.step_s:.1f}", "n/a" if row.peak_gib is None else f"{row.peak_gib:.2f}",
         row.note) for row in rows]
    widths = [max(len(line[col]) for line in lines) for col in range(len(header))]
    for index, line in enumerate(lines):
        print(" | ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
        if index == 0:
            print("-+-".join("-" * width for width in widths))


def parse_args() -> argparse.Namespace:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.set_defaults(config_file=DEFAULT_CONFIG)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, help="training batch (default SOLVER.IMS_PER_BATCH)")
    parser.add_argument("--eval_batch", type=int, help="inference batch (default TEST.IMS_PER_BATCH)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="time a torch.compile'd model too (default: on CUDA only)")
    parser.add_argument("--sync-debug", action="store_true",
                        help="prove on CUDA that no training step waits for the GPU (see above)")
    parser.add_argument("--ab-last-block", action="store_true",
                        help="also time the full last block against the class-token one")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["train", "inference"],
                        help="modes to leave out")
    parser.add_argument("--num_classes", type=int, help="identities (default: the dataset's)")
    parser.add_argument("--cameras", type=int, help="cameras (default: the dataset's)")
    parser.add_argument("--views", type=int, help="views (default: the dataset's)")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1")
    return args


@exits_on_user_error
def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args()
    device = benchmark_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_cli_config(args.config_file, list(args.opts) + ["MODEL.DEVICE", str(device),
                                                                   "MODEL.DIST_TRAIN", "False"])
    args.batch = args.batch or cfg.SOLVER.IMS_PER_BATCH
    sizes = split_sizes(cfg, args)
    compile_model = device.type == "cuda" if args.compile is None else args.compile
    print(f"device: {describe_device(device)}; torch {torch.__version__}")
    backbone = cfg.MODEL.TRANSFORMER_TYPE if cfg.MODEL.NAME == "transformer" else cfg.MODEL.NAME
    print(f"config: {args.config_file} ({backbone}, {tuple(cfg.INPUT.SIZE_TRAIN)} images, "
          f"{cfg.SOLVER.OPTIMIZER_NAME}); {sizes[0]} classes, {sizes[1]} cameras, {sizes[2]} views; "
          f"median of {args.steps} steps after {args.warmup}")
    amps = ("fp16", "bf16") if device.type == "cuda" else ("fp32",)
    rows = []
    if "train" not in args.skip:
        rows += [bench_training(cfg, sizes, device, args, amp, compile_model=False) for amp in amps]
        if compile_model:
            rows.append(bench_training(cfg, sizes, device, args, cfg.SOLVER.AMP_DTYPE,
                                       compile_model=True))
    if args.ab_last_block:
        rows += bench_last_block(cfg, sizes, device, args)
    if "inference" not in args.skip:
        rows += [bench_inference(cfg, sizes, device, args, dtype) for dtype in (None, torch.bfloat16)]
    print_table(rows)


if __name__ == "__main__":
    main()
