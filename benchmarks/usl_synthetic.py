"""Does training without labels help? mAP of a short supervised start, then after USL from it.

    python benchmarks/usl_synthetic.py [--output_dir logs/usl_synthetic] [--supervised_epochs 20]
        [--usl_epochs 10] [KEY VALUE ...]

On the synthetic set of configs/Synthetic/vit_transreid_tiny.yml (smaller: 80 identities of 8
images): trains with labels for --supervised_epochs (OUTPUT_DIR/supervised), then, from its last
weights (MODEL.PRETRAIN_CHOICE finetune), trains MODEL.TRAIN_MODE usl for --usl_epochs on the
same training split without its labels (OUTPUT_DIR/usl; each epoch's clusters, purity and NMI are
in its log). Prints the machine, both evaluations (the same query/gallery) and the wall times.
`KEY VALUE` pairs override both stages' configs (e.g. MODEL.DEVICE cuda).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import describe_device  # noqa: E402
from config import load_config  # noqa: E402
from processor import do_train  # noqa: E402
from processor.cli import start_run  # noqa: E402
from train import build_training  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.errors import exits_on_user_error  # noqa: E402
from utils.seed import set_seed  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs/Synthetic/vit_transreid_tiny.yml")
SMALLER = ["DATASETS.SYNTHETIC.NUM_IDS", "80", "DATASETS.SYNTHETIC.IMAGES_PER_ID", "8",
           "SOLVER.IMS_PER_BATCH", "32", "DATALOADER.NUM_WORKERS", "0"]
# Their USL settings at the data's scale: 8 images of an identity in the training split, not
# Market's 17 (k1 10, k2 3, eps 0.5; k1 30 and eps 0.6 merge a short start's features into a
# few clusters); 20 iterations of 8 clusters x 4 crops; no warm-up.
USL = ["MODEL.TRAIN_MODE", "usl", "MODEL.PRETRAIN_CHOICE", "finetune", "SOLVER.WARMUP_EPOCHS", "0",
       "SOLVER.BASE_LR", "0.00035", "CLUSTER.ITERS_PER_EPOCH", "20", "CLUSTER.K1", "10",
       "CLUSTER.K2", "3", "CLUSTER.EPS", "0.5"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="logs/usl_synthetic")
    parser.add_argument("--supervised_epochs", type=int, default=20)
    parser.add_argument("--usl_epochs", type=int, default=10)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    return parser.parse_args()


def train_stage(opts, title: str):
    """Train per CONFIG + `opts` as train.py does; returns (last evaluation, seconds)."""
    cfg = load_config(CONFIG, opts)
    start_run(cfg, CONFIG, if_train=True)
    set_seed(cfg.SOLVER.SEED)
    start = time.perf_counter()
    result = do_train(cfg, **build_training(cfg), local_rank=0)
    print(f"{title}: mAP {100 * result.mAP:.1f}%, Rank-1 {100 * result.cmc[0]:.1f}% "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    return cfg, result


@exits_on_user_error
def main() -> None:
    args = parse_args()
    schedule = lambda epochs: ["SOLVER.MAX_EPOCHS", str(epochs), "SOLVER.EVAL_PERIOD",  # noqa: E731
                               str(epochs), "SOLVER.CHECKPOINT_PERIOD", str(epochs)]
    supervised_dir = os.path.join(args.output_dir, "supervised")
    base = SMALLER + args.opts
    cfg, before = train_stage(base + schedule(args.supervised_epochs) +
                              ["OUTPUT_DIR", supervised_dir], "supervised start")
    weights = os.path.join(supervised_dir, f"transformer_{args.supervised_epochs}.pth")
    _, after = train_stage(base + USL + schedule(args.usl_epochs) +
                           ["MODEL.PRETRAIN_PATH", weights,
                            "OUTPUT_DIR", os.path.join(args.output_dir, "usl")],
                           f"after {args.usl_epochs} USL epochs")
    print(f"\ndevice: {describe_device(select_device(cfg.MODEL.DEVICE))}")
    print(f"{'model':<34}{'mAP':>8}{'Rank-1':>8}")
    for name, result in ((f"supervised, {args.supervised_epochs} epochs", before),
                         (f"+ USL, {args.usl_epochs} epochs", after)):
        print(f"{name:<34}{100 * result.mAP:>7.1f}%{100 * result.cmc[0]:>7.1f}%")


if __name__ == "__main__":
    main()
