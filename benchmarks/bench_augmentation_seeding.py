"""Cost of seeding each training image's augmentation (SeededImageDataset vs ImageDataset).

    python benchmarks/bench_augmentation_seeding.py [--config_file CONFIG] [KEY VALUE ...]

Loads and transforms the same training images with the config's train transforms, with and
without the per-image seeding, in alternating passes in one process and one thread, and
prints the median time per image of each and the difference. Defaults to the quickstart
config (synthetic data, rendered into DATASETS.ROOT_DIR if absent).
"""
import os
import statistics
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import build_dataset  # noqa: E402
from datasets.bases import ImageDataset, SeededImageDataset  # noqa: E402
from datasets.transforms import build_train_transforms  # noqa: E402
from config.cli import base_parser, load_cli_config  # noqa: E402
from utils.errors import exits_on_user_error  # noqa: E402

QUICKSTART = "configs/Synthetic/vit_transreid_tiny.yml"
PASSES = 9


def us_per_image(load: Callable[[int], object], count: int) -> float:
    start = time.perf_counter()
    for index in range(count):
        load(index)
    return (time.perf_counter() - start) / count * 1e6


@exits_on_user_error
def main() -> None:
    args = base_parser(__doc__.splitlines()[0]).parse_args()
    cfg = load_cli_config(args.config_file or QUICKSTART, args.opts)
    torch.set_num_threads(1)
    train = build_dataset(cfg).train
    transform = build_train_transforms(cfg)
    plain, seeded = ImageDataset(train, transform), SeededImageDataset(train, transform)
    count = min(500, len(train))
    passes = [(us_per_image(lambda i: plain[i], count),
               us_per_image(lambda i: seeded[(i, i)], count)) for _ in range(PASSES)]
    plain_us, seeded_us = (statistics.median(column) for column in zip(*passes))
    print(f"{count} training images of {cfg.DATASETS.NAMES}, input {list(cfg.INPUT.SIZE_TRAIN)}, "
          f"one thread; medians of {PASSES} alternating passes")
    print(f"unseeded {plain_us:.0f} us/image, seeded {seeded_us:.0f} us/image, "
          f"difference {seeded_us - plain_us:.0f} us ({seeded_us / plain_us:.3f}x)")


if __name__ == "__main__":
    main()
