"""Does CLIP-ReID's text stage help the tiny CLIP-shaped model on the synthetic set?

    python benchmarks/clipreid_synthetic.py [--output_dir logs/clipreid_synthetic] [KEY VALUE ...]

Trains configs/Synthetic/vit_clipreid_tiny.yml from the same seed, as train.py does:
(a) both stages: stage 1 learns the prompts, stage 2 adds the image-to-text loss;
(b) without the text stage: no stage-1 epoch and MODEL.I2T_LOSS_WEIGHT 0, so stage 2 is ID +
triplet alone on the same network, data and schedule;
(c) stage 2 with the image-to-text loss against untrained prompts (no stage-1 epoch): what the
learnt prompts add over random text targets.
Prints the machine, stage 1's first and last epoch losses, each run's final mAP / Rank-1 and the
wall times. `--arms` picks some of a, b, c; `KEY VALUE` pairs override every run's config (e.g.
MODEL.DEVICE cuda).
"""
import argparse
import logging
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import describe_device  # noqa: E402
from config import load_config  # noqa: E402
from processor.cli import start_run  # noqa: E402
from train import build_training, run_training  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.errors import exits_on_user_error  # noqa: E402
from utils.seed import set_seed  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs/Synthetic/vit_clipreid_tiny.yml")
ARMS = {
    "a": ("(a) both stages", []),
    "b": ("(b) without the text stage", ["SOLVER.STAGE1.MAX_EPOCHS", "0", "MODEL.I2T_LOSS_WEIGHT", "0.0"]),
    "c": ("(c) untrained prompts", ["SOLVER.STAGE1.MAX_EPOCHS", "0"]),
}
STAGE1_LOSS = re.compile(r"Stage 1 epoch\[\d+\] done\. Loss: ([\d.]+)")


class LossLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.losses = []

    def emit(self, record: logging.LogRecord) -> None:
        match = STAGE1_LOSS.search(record.getMessage())
        if match:
            self.losses.append(float(match.group(1)))


def train_arm(opts, title: str):
    cfg = load_config(CONFIG, opts)
    start_run(cfg, CONFIG, if_train=True)
    set_seed(cfg.SOLVER.SEED)
    lines = LossLines()
    logging.getLogger("transreid.train").addHandler(lines)
    start = time.perf_counter()
    try:
        result = run_training(cfg, build_training(cfg), 0)
    finally:
        logging.getLogger("transreid.train").removeHandler(lines)
    seconds = time.perf_counter() - start
    stage1 = (f"stage-1 loss {lines.losses[0]:.3f} -> {lines.losses[-1]:.3f} over {len(lines.losses)} epochs; "
              if lines.losses else "")
    print(f"{title}: {stage1}mAP {100 * result.mAP:.1f}%, Rank-1 {100 * result.cmc[0]:.1f}% ({seconds:.0f} s)",
          flush=True)
    return cfg, result


@exits_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="logs/clipreid_synthetic")
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=sorted(ARMS))
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    args = parser.parse_args()
    results = {}
    for arm in args.arms:
        title, opts = ARMS[arm]
        cfg, results[arm] = train_arm(args.opts + opts + ["OUTPUT_DIR", os.path.join(args.output_dir, arm)], title)
    print(describe_device(select_device(cfg.MODEL.DEVICE)), flush=True)
    for other in sorted(set(results) - {"a"}):
        if "a" in results:
            print(f"(a) - ({other}): {100 * (results['a'].mAP - results[other].mAP):+.1f} mAP points, "
                  f"{100 * (results['a'].cmc[0] - results[other].cmc[0]):+.1f} Rank-1 points")


if __name__ == "__main__":
    main()
