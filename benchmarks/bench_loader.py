"""Training-loader throughput: the reference augmentation path against INPUT.DEVICE_AUGMENT.

    python benchmarks/bench_loader.py [--workers 1 2] [--images 640] [--epochs 2]
                                      [--device auto|cpu|cuda]

Writes a Market-1501-shaped JPEG set (128 x 64 sources, 4 images per identity, 6 cameras) to
a temporary folder, builds the real training loader of `make_dataloader` on it (256 x 128
output, PK sampler, batch 64) and times whole epochs after a warm-up epoch, per worker count:

* reference:        workers decode, resize, flip, pad, crop, normalise and erase (float32).
* device, loader:   workers decode, resize to uint8 and draw the parameters; the batch is
                    copied to the device and nothing else is done with it: what the workers
                    alone can feed.
* device, +augment: the same plus DeviceAugment on the device: what the trainer gets. On the
                    CPU DeviceAugment runs in the main process, competing with the workers
                    for the cores; on a GPU it is asynchronous (synchronised once an epoch).

Every path copies its batches to the device (pinned memory on CUDA). Prints the medians of
the timed epochs in images per second.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, List, Optional

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import describe_device  # noqa: E402
from config import load_config  # noqa: E402
from datasets import make_dataloader, set_train_epoch  # noqa: E402
from datasets.device_augment import NUM_PARAMS, DeviceAugment, Param  # noqa: E402

SOURCE_SIZE = (128, 64)   # Market-1501's crops, H x W
OUTPUT_SIZE = [256, 128]  # INPUT.SIZE_TRAIN of the Market configs
IMAGES_PER_ID = 4
NUM_CAMERAS = 6
BATCH = 64
PATHS = ("reference", "device, loader", "device, +augment")


def write_market_set(root: str, count: int) -> None:
    """`count` training JPEGs (+ a few query/gallery ones the parser requires), smooth random
    content so that they decode like photographs rather than noise."""
    rng = np.random.default_rng(0)
    top = os.path.join(root, "market1501")
    for folder, images in (("bounding_box_train", count), ("query", 2), ("bounding_box_test", 2)):
        os.makedirs(os.path.join(top, folder))
        for index in range(images):
            pid, cam = index // IMAGES_PER_ID + 1, index % NUM_CAMERAS + 1
            coarse = rng.integers(0, 256, (SOURCE_SIZE[0] // 8, SOURCE_SIZE[1] // 8, 3),
                                  dtype=np.uint8)
            image = Image.fromarray(coarse).resize(SOURCE_SIZE[::-1], Image.BILINEAR)
            image.save(os.path.join(top, folder, f"{pid:04d}_c{cam}s1_{index:06d}_00.jpg"),
                       quality=90)


def epoch_rate(loader, epoch: int, device: torch.device,
               augment: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]) -> float:
    """Images per second of one pass over `loader`, each batch copied to `device`."""
    set_train_epoch(loader, epoch)
    images = 0
    start = time.perf_counter()
    for batch in loader:
        batch = [t.to(device, non_blocking=True) for t in batch]
        if augment is not None:
            augment(batch[0], batch[-1])
        images += len(batch[0])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return images / (time.perf_counter() - start)


def measure(root: str, workers: int, path: str, epochs: int, device: torch.device) -> float:
    opts = ["DATASETS.NAMES", "market1501", "DATASETS.ROOT_DIR", root,
            "MODEL.DEVICE", device.type, "INPUT.SIZE_TRAIN", str(OUTPUT_SIZE),
            "DATALOADER.NUM_WORKERS", str(workers), "DATALOADER.SAMPLER", "softmax_triplet",
            "DATALOADER.NUM_INSTANCE", str(IMAGES_PER_ID), "SOLVER.IMS_PER_BATCH", str(BATCH),
            "INPUT.DEVICE_AUGMENT", str(path != "reference")]
    cfg = load_config("", opts)
    loader = make_dataloader(cfg)[0]
    augment = DeviceAugment.from_cfg(cfg).to(device) if path == "device, +augment" else None
    rates = [epoch_rate(loader, epoch, device, augment) for epoch in range(epochs + 1)]
    del loader  # stops its persistent workers before the next configuration starts its own
    return statistics.median(rates[1:])  # epoch 0 starts the workers: warm-up


def augment_only_rate(device: torch.device) -> float:
    """Images per second of DeviceAugment alone on a batch already on `device`."""
    cfg = load_config("", ["INPUT.SIZE_TRAIN", str(OUTPUT_SIZE)])
    augment = DeviceAugment.from_cfg(cfg).to(device)
    images = torch.randint(0, 256, (BATCH, 3, *OUTPUT_SIZE), dtype=torch.uint8, device=device)
    params = torch.zeros(BATCH, NUM_PARAMS, dtype=torch.int64)
    params[:, Param.FLIP] = torch.arange(BATCH) % 2
    params[:, [Param.CROP_TOP, Param.CROP_LEFT]] = 10
    # A large rectangle on every image: the noise costs the same whatever its size.
    params[:, Param.ERASE:Param.FILL_SEED] = torch.tensor([1, 30, 20, 120, 60])
    params[:, Param.FILL_SEED] = torch.arange(BATCH)
    params = params.to(device)
    augment(images, params)
    repeats = 50 if device.type == "cuda" else 5
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        augment(images, params)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return repeats * BATCH / (time.perf_counter() - start)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=640,
                        help="training images (a multiple of %d)" % IMAGES_PER_ID)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if name == "auto" else name)
    print(f"device: {describe_device(device)}; torch {torch.__version__}")
    print(f"{args.images} JPEGs {SOURCE_SIZE[0]}x{SOURCE_SIZE[1]} -> {OUTPUT_SIZE[0]}x"
          f"{OUTPUT_SIZE[1]}, batch {BATCH}; median img/s of {args.epochs} epochs after a warm-up")
    with tempfile.TemporaryDirectory() as root:
        write_market_set(root, args.images)
        rows = [(workers, path, measure(root, workers, path, args.epochs, device))
                for workers in args.workers for path in PATHS]
    print(f"{'workers':>7} | {'path':<17} | {'img/s':>7}")
    print(f"{'-' * 7}-+-{'-' * 17}-+-{'-' * 7}")
    for workers, path, rate in rows:
        print(f"{workers:>7} | {path:<17} | {rate:7.0f}")
    print(f"DeviceAugment alone, batch {BATCH} already on the device: "
          f"{augment_only_rate(device):.0f} img/s")


if __name__ == "__main__":
    main()
