"""Does training without labels help? UDA, USL and USL with tracks on the synthetic domains.

    python benchmarks/usl_synthetic.py [--output_dir logs/usl_synthetic] [--seeds 1,2,3]
        [--supervised_epochs 40] [--start_epoch 10] [--adapt_epochs 20] [--tracks dataset]
        [--verbose] [KEY VALUE ...]

Per seed (SOLVER.SEED; the data are the same for every seed), on the tiny synthetic model at
64x32 (120 identities a domain, half of them to train; domain A in 9 cameras, 18 images an
identity; domain B in 2 cameras, 8 images an identity; no SIE, no JPM, as TransReID-SSL's
cluster-contrast ViT):

1. supervised: trained with labels on domain A (DATASETS.SYNTHETIC.DOMAIN 'A') for
   --supervised_epochs, evaluated on A and on B (direct transfer);
2. UDA: MODEL.TRAIN_MODE uda on B's training split, without its labels, from (1)'s last weights;
3. UDA, true clusters: (2) with B's true identities in place of the clustering, the most the
   recipe can gain from (1) (an upper bound, not a method);
4. USL: MODEL.TRAIN_MODE usl on B from a start that never saw B's labels: (1)'s checkpoint at
   --start_epoch (a short supervised start on A), evaluated on B before and after;
5. USL + tracks: (4) with CLUSTER.TRACKS --tracks, which clusters with dataset.train_tracks (each
   identity's consecutive frames in one camera); skipped, saying so, where that key is absent.

Prints the machine, a table per seed (mAPs, the last epoch's clusters and purity, wall times),
then the mean and spread over the seeds and the margins: UDA over direct transfer (and with true
clusters), USL over its start, USL + tracks over USL. `KEY VALUE` pairs override every stage
(e.g. MODEL.DEVICE cuda).
Stage outputs go to OUTPUT_DIR/seed<N>/<stage>; a folder of an earlier run is refused.
"""
import argparse
import contextlib
import io
import logging
import math
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import describe_device  # noqa: E402
from config import cfg as default_cfg  # noqa: E402
from config import load_config  # noqa: E402
from datasets import make_dataloader  # noqa: E402
from model import make_model  # noqa: E402
from processor import do_inference, do_train  # noqa: E402
from processor.cli import start_run  # noqa: E402
from test import run_evaluation  # noqa: E402
from train import build_training  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.errors import exits_on_user_error  # noqa: E402
from utils.seed import set_seed  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs/Synthetic/vit_transreid_tiny.yml")
# Small enough for 3 seeds in about 23 minutes on 2 CPU cores: 60 training identities a
# domain, 64x32 crops (10 tokens at stride 12). No SIE (B's cameras are not A's) and no JPM, as
# their USL/UDA ViT. B: 8 crops an identity in 2 cameras.
SMALL = ["DATASETS.SYNTHETIC.NUM_IDS", "120", "DATASETS.SYNTHETIC.IMAGES_PER_ID", "8",
         "DATASETS.SYNTHETIC.NUM_CAMERAS", "2", "DATASETS.SYNTHETIC.IMAGE_SIZE", "[64, 32]",
         "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]", "INPUT.PADDING", "3",
         "MODEL.SIE_CAMERA", "False", "MODEL.JPM", "False", "SOLVER.IMS_PER_BATCH", "32",
         "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_EPOCHS", "1"]
DOMAIN = "DATASETS.SYNTHETIC.DOMAIN"
# Domain A in 9 cameras, 2 crops an identity in each: a model trained from scratch on 2 cameras
# learns those cameras' colour casts and matches people across new cameras near chance; on 9 it
# learns to look past a cast (docs/unsupervised.md).
SOURCE = ["DATASETS.SYNTHETIC.NUM_CAMERAS", "9", "DATASETS.SYNTHETIC.IMAGES_PER_ID", "18"]
# Their USL settings at the data's scale: 8 crops of an identity (Market has 17), so k1 10,
# k2 3, eps 0.4 (k1 30 / eps 0.6 merge such features into a few clusters; over 4 seeds eps 0.4
# beat 0.5 for UDA and for tracks, which bring back the crops it leaves out, and came within a
# point of it for USL: docs/unsupervised.md); 60 iterations of 8 clusters x 4 crops per epoch,
# 4 passes over B's 480 training crops as their 200 x 256 are over Market's 12,936 (with 10,
# even true clusters lose mAP: the restarted BN neck and the memory have not settled); their
# optimizer (SGD, lr 3.5e-4, weight decay 5e-4; the quickstart's AdamW at that lr wipes out
# what the start knew), no warm-up.
UNLABELLED = ["MODEL.PRETRAIN_CHOICE", "finetune", "SOLVER.WARMUP_EPOCHS", "0",
              "SOLVER.OPTIMIZER_NAME", "SGD", "SOLVER.WEIGHT_DECAY", "0.0005",
              "SOLVER.WEIGHT_DECAY_BIAS", "0.0005", "SOLVER.BASE_LR", "0.00035",
              "CLUSTER.ITERS_PER_EPOCH", "60", "CLUSTER.K1", "10", "CLUSTER.K2", "3",
              "CLUSTER.EPS", "0.4", DOMAIN, "B"]
ARMS = ("chance", "direct", "uda", "uda_true", "usl_start", "usl", "tracks")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="logs/usl_synthetic")
    parser.add_argument("--seeds", type=lambda text: [int(seed) for seed in text.split(",")],
                        default=[1, 2, 3], help="comma-separated SOLVER.SEEDs")
    parser.add_argument("--supervised_epochs", type=int, default=40)
    parser.add_argument("--start_epoch", type=int, default=10,
                        help="the supervised checkpoint USL starts from")
    parser.add_argument("--adapt_epochs", type=int, default=20, help="UDA and USL epochs")
    parser.add_argument("--tracks", default="dataset", help="the value of CLUSTER.TRACKS")
    parser.add_argument("--adapt", type=str.split, default=[], metavar="'KEY VALUE ...'",
                        help="overrides of the UDA and USL runs only (after the recipe above), "
                             "in one quoted argument")
    parser.add_argument("--verbose", action="store_true", help="training logs on the console")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    args = parser.parse_args()
    if not 1 <= args.start_epoch <= args.supervised_epochs:
        parser.error(f"--start_epoch {args.start_epoch} must lie in 1..--supervised_epochs")
    return args


def stage_config(opts: List[str], verbose: bool, if_train: bool = True):
    """The stage's config, and its logger; unless `verbose`, the console shows its warnings
    only (the stage's log file keeps everything)."""
    cfg = load_config(CONFIG, opts)
    if verbose:
        return cfg, start_run(cfg, CONFIG, if_train=if_train)
    with contextlib.redirect_stdout(io.StringIO()) as hidden:
        logger = start_run(cfg, CONFIG, if_train=if_train)
    for handler in logger.handlers:
        if getattr(handler, "stream", None) is hidden:
            handler.setStream(sys.stdout)
            handler.setLevel(logging.WARNING)
    return cfg, logger


def true_clusters(loss_fn) -> None:
    """Cluster with the training split's true identities: the recipe's gain from perfect
    pseudo-labels."""
    _, labels = np.unique(loss_fn.true_labels, return_inverse=True)
    loss_fn.cluster = lambda feats: labels.copy()


def train_stage(opts: List[str], verbose: bool,
                prepare: Optional[Callable[[object], None]] = None) -> Dict[str, object]:
    """Train per CONFIG + `opts` as train.py does (`prepare` given the loss first): its last
    evaluation, the last epoch's clustering (None with labels) and the seconds."""
    cfg, _ = stage_config(opts, verbose)
    set_seed(cfg.SOLVER.SEED)
    start = time.perf_counter()
    parts = build_training(cfg)
    if prepare is not None:
        prepare(parts["loss_fn"])
    clusterings = []
    clustering = getattr(parts["loss_fn"], "start_epoch", None)
    if clustering is not None:
        def recording(*args):
            clusterings.append(clustering(*args))
            return clusterings[-1]
        parts["loss_fn"].start_epoch = recording
    result = do_train(cfg, **parts, local_rank=0)
    return dict(mAP=100 * result.mAP, clusters=clusterings[-1] if clusterings else None,
                seconds=time.perf_counter() - start)


def evaluate_stage(opts: List[str], weight: str, output_dir: str, verbose: bool) -> float:
    """mAP (%) of the weights `weight` on the query and gallery of CONFIG + `opts`."""
    cfg, logger = stage_config(opts + ["TEST.WEIGHT", weight, "MODEL.PRETRAIN_CHOICE", "none",
                                       "OUTPUT_DIR", output_dir], verbose, if_train=False)
    return 100 * run_evaluation(cfg, logger).mAP


def chance_stage(opts: List[str], output_dir: str, verbose: bool) -> float:
    """mAP (%) of the untrained network (seeded by SOLVER.SEED) on CONFIG + `opts`: chance."""
    cfg, _ = stage_config(opts + ["OUTPUT_DIR", output_dir], verbose, if_train=False)
    set_seed(cfg.SOLVER.SEED)
    _, _, val_loader, num_query, num_classes, cameras, views = make_dataloader(cfg)
    model = make_model(cfg, num_class=num_classes, camera_num=cameras, view_num=views)
    return 100 * do_inference(cfg, model, val_loader, num_query).mAP


def tracks_option(value: str) -> Optional[List[str]]:
    """CLUSTER.TRACKS `value`, or None (said once) where the config has no such key yet."""
    if "TRACKS" in default_cfg.CLUSTER:
        return ["CLUSTER.TRACKS", value]
    return None


def schedule(epochs: int, checkpoint_period: int) -> List[str]:
    return ["SOLVER.MAX_EPOCHS", str(epochs), "SOLVER.EVAL_PERIOD", str(epochs),
            "SOLVER.CHECKPOINT_PERIOD", str(checkpoint_period)]


def run_seed(seed: int, args: argparse.Namespace) -> Dict[str, object]:
    """Every arm of one seed; their mAPs (%), last clusterings and seconds."""
    folder = os.path.join(args.output_dir, f"seed{seed}")
    base = SMALL + ["SOLVER.SEED", str(seed)] + args.opts
    on_b = base + [DOMAIN, "B"]
    period = math.gcd(args.start_epoch, args.supervised_epochs)
    sup_dir = os.path.join(folder, "supervised")
    row: Dict[str, object] = {"seed": seed}
    # SOURCE before the user's overrides, which apply to every stage
    on_a = SMALL + SOURCE + ["SOLVER.SEED", str(seed)] + args.opts + [DOMAIN, "A"]
    supervised = train_stage(on_a + schedule(args.supervised_epochs, period)
                             + ["OUTPUT_DIR", sup_dir], args.verbose)
    row["source"], row["supervised_s"] = supervised["mAP"], supervised["seconds"]
    last = os.path.join(sup_dir, f"transformer_{args.supervised_epochs}.pth")
    start = os.path.join(sup_dir, f"transformer_{args.start_epoch}.pth")
    row["chance"] = chance_stage(on_b + ["MODEL.PRETRAIN_CHOICE", "none"],
                                 os.path.join(folder, "chance"), args.verbose)
    row["direct"] = evaluate_stage(on_b, last, os.path.join(folder, "direct"), args.verbose)
    row["usl_start"] = evaluate_stage(on_b, start, os.path.join(folder, "usl_start"),
                                      args.verbose)
    adapt = base + UNLABELLED + args.adapt + schedule(args.adapt_epochs, args.adapt_epochs)
    uda = ["MODEL.TRAIN_MODE", "uda", "MODEL.PRETRAIN_PATH", last]
    usl = ["MODEL.TRAIN_MODE", "usl", "MODEL.PRETRAIN_PATH", start]
    arms = [("uda", uda, None), ("uda_true", uda, true_clusters), ("usl", usl, None)]
    tracks = tracks_option(args.tracks)
    if tracks is not None:
        arms.append(("tracks", usl + tracks, None))
    for name, opts, prepare in arms:
        result = train_stage(adapt + opts + ["OUTPUT_DIR", os.path.join(folder, name)],
                             args.verbose, prepare)
        row[name], row[f"{name}_clusters"] = result["mAP"], result["clusters"]
        row[f"{name}_s"] = result["seconds"]
    print(format_row(row), flush=True)
    return row


def describe_clusters(stats) -> str:
    if stats is None:
        return "-"
    return f"{stats.num_clusters}c/{stats.num_outliers}o/{stats.purity:.2f}"


def optional(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


HEADER = (f"{'seed':>4} {'A mAP':>6} {'chance':>6} {'direct':>6} {'UDA':>6} {'UDA*':>6} "
          f"{'start':>6} "
          f"{'USL':>6} {'+trk':>6}  {'UDA clusters':>14} {'USL clusters':>14} "
          f"{'+trk clusters':>14}  "
          f"{'sup s':>5} {'UDA s':>5} {'USL s':>5} {'trk s':>5}")


def format_row(row: Dict[str, object]) -> str:
    get = row.get
    return (f"{row['seed']:>4} {row['source']:>6.1f} {row['chance']:>6.1f} "
            f"{row['direct']:>6.1f} {row['uda']:>6.1f} {row['uda_true']:>6.1f} "
            f"{row['usl_start']:>6.1f} "
            f"{row['usl']:>6.1f} {optional(get('tracks')):>6}  "
            f"{describe_clusters(get('uda_clusters')):>14} "
            f"{describe_clusters(get('usl_clusters')):>14} "
            f"{describe_clusters(get('tracks_clusters')):>14}  "
            f"{row['supervised_s']:>5.0f} {row['uda_s']:>5.0f} {row['usl_s']:>5.0f} "
            f"{optional(get('tracks_s'), 0):>5}")


def spread(values: List[float], sign: str = "+") -> str:
    """mean ± sample standard deviation [min, max] (`sign` '' for levels, '+' for margins)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    mean, low, high = (format(v, f"{sign}.1f") for v in
                       (statistics.mean(values), min(values), max(values)))
    return f"{mean} ± {sd:.1f} [{low}, {high}]"


def summarise(rows: List[Dict[str, object]]) -> None:
    print("\nmean ± sd over seeds [min, max]:")
    for arm in ("source",) + ARMS:
        values = [row[arm] for row in rows if arm in row]
        if values:
            print(f"  {arm:<10} mAP {spread(values, sign='')}")
    print("margins, mAP points (mean ± sd [min, max]):")
    for title, better, base in (("UDA - direct transfer on B", "uda", "direct"),
                                ("UDA*, true clusters - direct", "uda_true", "direct"),
                                ("USL - its start on B", "usl", "usl_start"),
                                ("USL + tracks - USL", "tracks", "usl")):
        pairs = [row[better] - row[base] for row in rows if better in row]
        if pairs:
            wins = sum(value > 0 for value in pairs)
            print(f"  {title:<28} {spread(pairs)} (better in {wins} of {len(pairs)} seeds)")
        else:
            print(f"  {title:<28} not measured")


@exits_on_user_error
def main() -> None:
    args = parse_args()
    cfg = load_config(CONFIG, SMALL + args.opts)
    print(f"device: {describe_device(select_device(cfg.MODEL.DEVICE))}", flush=True)
    if tracks_option(args.tracks) is None:
        print("USL + tracks: skipped, this config has no CLUSTER.TRACKS key (clustering with "
              "dataset.train_tracks is not built in this checkout)", flush=True)
    print("mAP (%) on B but 'A mAP' ('chance': the untrained network; 'UDA*': UDA with B's "
          "true identities as its clusters); clusters: count/outliers/purity of the last epoch")
    print(HEADER, flush=True)
    start = time.perf_counter()
    rows = [run_seed(seed, args) for seed in args.seeds]
    print("\n" + HEADER)
    for row in rows:
        print(format_row(row))
    summarise(rows)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
