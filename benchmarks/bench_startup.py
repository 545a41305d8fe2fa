"""How long each command takes to answer --help: what a user waits before any line.

    python benchmarks/bench_startup.py [--repeats 5]

Each command runs in a fresh interpreter, in turns (one round times every command once), and
the median of the rounds is printed, beside how long `import torch` alone takes on the same
machine: a command that answers under that never imported torch.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import cpu_model  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    **{f"{name} --help": [sys.executable, name, "--help"]
       for name in ("train.py", "test.py", "tools/export.py", "tools/extract_features.py",
                    "tools/gallery.py", "tools/search.py", "tools/visualize_ranks.py",
                    "tools/visualize_attention.py", "tools/plot_training.py")},
}


def seconds(command: List[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds (default 5)")
    args = parser.parse_args()
    times: Dict[str, List[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    load = os.getloadavg()[0]
    print(f"# CPU {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {load:.1f}; median of {args.repeats} rounds")
    for name, values in times.items():
        print(f"{name:40s} {statistics.median(values):6.2f} s")


if __name__ == "__main__":
    main()
