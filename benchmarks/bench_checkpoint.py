"""How long the training loop stalls per epoch to save `last_checkpoint.pth`: the write in the
loop (as before) against `Checkpointer.save_state`, which copies the state off the device and
leaves the write to a background thread.

    python benchmarks/bench_checkpoint.py [--config_file CONFIG] [--device cpu|cuda]
                                          [--epochs N] [--epoch-seconds S] [--out DIR]

The state is a full training state of the config's model (ViT-B TransReID for the default
Market config: about 100 M parameters with the SGD momentum, the center loss and the random
states), built untrained. Each "epoch" changes every parameter in place, saves, then stands for
the rest of an epoch (S seconds), during which the background write runs. The stall is the time
the saving call takes to return; the medians over N epochs are printed, with the time the
write itself took, and the saved file is checked to hold the state of its epoch, not a later one.
The first background save allocates its copy (page faults); later ones reuse its buffers.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import describe_device  # noqa: E402
from config import load_config  # noqa: E402
from loss.center_loss import CenterLoss  # noqa: E402
from model import make_model  # noqa: E402
from processor.checkpoint import Checkpointer, TrainingObjects, rng_states  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.files import atomic_save  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs/Market/vit_transreid_stride.yml")
NUM_CLASSES, NUM_CAMERAS = 751, 6  # Market-1501's training identities and cameras


def build_checkpointer(config_file: str, device: torch.device, out_dir: str) -> Checkpointer:
    cfg = load_config(config_file, ["MODEL.PRETRAIN_CHOICE", "none", "OUTPUT_DIR", out_dir])
    model = make_model(cfg, num_class=NUM_CLASSES, camera_num=NUM_CAMERAS, view_num=1).to(device)
    centers = CenterLoss(NUM_CLASSES, getattr(model, "in_planes", 768))
    centers = centers.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.008, momentum=0.9)
    optimizer_center = torch.optim.SGD(centers.parameters(), lr=0.5)
    for param in model.parameters():  # momentum buffers, as after a first step
        param.grad = torch.zeros_like(param)
    optimizer.step()
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    return Checkpointer(cfg, TrainingObjects(model, optimizer, optimizer_center, centers, scaler))


def train_a_little(checkpointer: Checkpointer, device: torch.device) -> None:
    """Change every parameter in place, as an epoch of training does."""
    with torch.no_grad():
        for param in checkpointer.objects.model.parameters():
            param.add_(1.0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def first_value(checkpointer: Checkpointer) -> float:
    return float(next(checkpointer.objects.model.parameters()).detach().flatten()[0])


def run(checkpointer: Checkpointer, device: torch.device, mode: str, epochs: int,
        epoch_seconds: float):
    """-> (stall seconds per epoch, write seconds per epoch) of `mode` 'sync' or 'async'."""
    stalls, writes = [], []
    for epoch in range(1, epochs + 1):
        train_a_little(checkpointer, device)
        expected = first_value(checkpointer)
        rng = [rng_states(device)]
        start = time.perf_counter()
        if mode == "sync":  # the write in the loop, as before
            atomic_save(checkpointer.training_state(epoch, 0.0, rng), checkpointer.last_path)
            stalls.append(time.perf_counter() - start)
            writes.append(stalls[-1])
        else:
            checkpointer.save_state(epoch, 0.0, rng)
            stalls.append(time.perf_counter() - start)
            train_a_little(checkpointer, device)  # the next epoch changes the live tensors
            checkpointer.writer.wait()
            writes.append(time.perf_counter() - start)
        saved = torch.load(checkpointer.last_path, map_location="cpu", mmap=True, weights_only=True)
        first = next(iter(v for k, v in saved["model"].items() if v.is_floating_point()))
        assert saved["epoch"] == epoch and float(first.flatten()[0]) == expected, \
            "the saved state is not the one of its epoch"
        time.sleep(max(epoch_seconds - (time.perf_counter() - start), 0.0))
    checkpointer.close()
    return stalls, writes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config_file", default=DEFAULT_CONFIG)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--epoch-seconds", type=float, default=3.0,
                        help="time between two saves, in which the background write runs")
    parser.add_argument("--out", default="", help="folder to write to (default: a temporary one)")
    args = parser.parse_args()
    device = select_device(args.device)
    with tempfile.TemporaryDirectory(dir=args.out or None) as out_dir:
        checkpointer = build_checkpointer(args.config_file, device, out_dir)
        results = {mode: run(checkpointer, device, mode, args.epochs, args.epoch_seconds)
                   for mode in ("sync", "async")}
        size = os.path.getsize(checkpointer.last_path) / 2**20
    print(f"device: {describe_device(device)}; torch {torch.__version__}; "
          f"{os.path.basename(args.config_file)}; last_checkpoint.pth {size:.0f} MiB; "
          f"{args.epochs} epochs")
    print(f"{'save':<28}{'stall per epoch (median ms)':>30}{'write (median ms)':>20}   stalls (ms)")
    for mode, label in (("sync", "write in the loop (before)"), ("async", "save_state (after)")):
        stalls, writes = results[mode]
        print(f"{label:<28}{1000 * statistics.median(stalls):>30.0f}"
              f"{1000 * statistics.median(writes):>20.0f}   {[round(1000 * t) for t in stalls]}")


if __name__ == "__main__":
    main()
