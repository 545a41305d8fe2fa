"""What checking every ZIP member's CRC-32 (`utils.files.verify_zip`) adds to reading a weights
file (`model.weights.load_file`, which TEST.WEIGHT, MODEL.PRETRAIN_PATH and MODEL.RESUME go
through).

    python benchmarks/bench_weights_crc.py [--config_file CONFIG] [--repeats N] [--out DIR]

The file is the state dict of the config's model (ViT-B TransReID with JPM and SIE for the
default Market config, about 410 MB), built untrained and saved with torch.save. It is timed
with a warm page cache (it was just written, and is read once before timing), so the figures
are the CPU cost of the check, not the disk's: medians over N reads of torch.load alone (as
load_file did before the check), of verify_zip alone, and of load_file (both), and the ratio.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import describe_device  # noqa: E402
from config import load_config  # noqa: E402
from model import make_model  # noqa: E402
from model.weights import TRAINED_MISSING_HINT, load_file  # noqa: E402
from utils import files  # noqa: E402
from utils.files import verify_zip  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs/Market/vit_transreid_stride.yml")
NUM_CLASSES, NUM_CAMERAS = 751, 6  # Market-1501's training identities and cameras


def timings(call: Callable[[], object], repeats: int) -> List[float]:
    seconds = []
    for _ in range(repeats):
        files._VERIFIED.clear()  # verify_zip checks a file once per process: time every check
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config_file", default=DEFAULT_CONFIG)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="", help="folder for the weights file (default: a "
                                                  "temporary folder, removed after)")
    args = parser.parse_args()
    cfg = load_config(args.config_file, ["MODEL.PRETRAIN_CHOICE", "none", "MODEL.DEVICE", "cpu"])
    with tempfile.TemporaryDirectory(dir=args.out or None) as folder:
        path = os.path.join(folder, "weights.pth")
        torch.save(make_model(cfg, NUM_CLASSES, NUM_CAMERAS, 1).state_dict(), path)
        size_mb = os.path.getsize(path) / 1e6
        assert verify_zip(path) is None, "a file just written by torch.save fails its CRC check"
        torch.load(path, map_location="cpu", weights_only=True)  # warm the page cache
        plain = timings(lambda: torch.load(path, map_location="cpu", weights_only=True), args.repeats)
        crc = timings(lambda: verify_zip(path), args.repeats)
        checked = timings(lambda: load_file(path, TRAINED_MISSING_HINT), args.repeats)
    print(f"machine: {describe_device(torch.device('cpu'))}")
    print(f"file: state dict of {cfg.MODEL.TRANSFORMER_TYPE} ({os.path.basename(args.config_file)}), "
          f"{size_mb:.0f} MB, warm page cache, {args.repeats} reads each")
    for name, seconds in (("torch.load alone", plain), ("verify_zip alone", crc),
                          ("load_file (check + load)", checked)):
        median = statistics.median(seconds)
        print(f"{name:26s} median {median:.3f} s  (min {min(seconds):.3f}, max {max(seconds):.3f}; "
              f"{size_mb / median:.0f} MB/s)")
    print(f"load_file / torch.load: {statistics.median(checked) / statistics.median(plain):.2f}x")


if __name__ == "__main__":
    main()
