"""Does a threshold calibrated for a false-accept rate hold on unseen identities? The issue-23
goal on a trained model's own split (the quickstart's, by default).

    python benchmarks/threshold_check.py --config_file configs/Synthetic/vit_transreid_tiny.yml \\
        --weight logs/synthetic_vit_transreid_tiny/transformer_40.pth [--far 1e-3] [--seeds 5]

The query and gallery of the config's dataset are extracted once (as test.py does); then, for each
seed, the query identities are split in two halves, the threshold for --far is calibrated on the
pairs of one half and its FAR measured on the other's. Prints the verification figures of the
whole split, one line per seed (threshold, measured FAR, ratio to the target; the goal is a ratio
within 0.5-2), and writes the ROC and histogram PNGs to --output-dir.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import describe_device  # noqa: E402
from config import switches  # noqa: E402
from datasets import load_eval_dataset, make_val_loader  # noqa: E402
from model.trained import load_trained  # noqa: E402
from processor import FeatureExtractor, distance_matrix  # noqa: E402
from config.cli import load_cli_config  # noqa: E402
from utils.errors import exits_on_user_error  # noqa: E402
from processor.verification_report import gallery_threshold, verification_report  # noqa: E402
from tools.verification_plots import save_verification_plots  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.verification import verify  # noqa: E402


@exits_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config_file", default="configs/Synthetic/vit_transreid_tiny.yml")
    parser.add_argument("--weight", required=True, help="trained model (.pth)")
    parser.add_argument("--far", type=float, default=1e-3, help="target false-accept rate")
    parser.add_argument("--seeds", type=int, default=5, help="query-identity splits tried")
    parser.add_argument("--output-dir", default="threshold_check", help="PNGs go here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    cfg = load_cli_config(args.config_file, list(args.opts) + [
        "TEST.WEIGHT", args.weight, "MODEL.PRETRAIN_CHOICE", "none"])
    dataset = load_eval_dataset(cfg)
    device = select_device(cfg.MODEL.DEVICE)
    extractor = FeatureExtractor.from_trained(cfg, load_trained(cfg, dataset), device)
    val_loader, num_query = make_val_loader(cfg, dataset=dataset)
    feats, pids, camids, _ = extractor.extract_loader(val_loader)
    feats, pids, camids = feats.cpu(), np.asarray(pids), np.asarray(camids)
    distmat = distance_matrix(cfg, feats[:num_query], feats[num_query:])
    q = (pids[:num_query], pids[num_query:], camids[:num_query], camids[num_query:])

    print(f"machine: {describe_device(device)}")
    print(f"model: {args.weight}; {cfg.DATASETS.NAMES}: {num_query} queries x "
          f"{len(pids) - num_query} gallery; distances: {cfg.TEST.DIST_METRIC}")
    result = verification_report(distmat, *q, target_far=args.far)
    for far, tar in sorted(result.tar_at_far.items(), reverse=True):
        print(f"TAR @ FAR {far:<6g} {100 * tar:5.1f}%  threshold {result.threshold_at_far[far]:.4f}")
    print(f"EER {100 * result.eer:.2f}% at {result.eer_threshold:.4f}; "
          f"{result.num_genuine} genuine, {result.num_impostor} impostor pairs")
    flags = switches(cfg)
    cosine = gallery_threshold(result.threshold, cfg.TEST.DIST_METRIC, flags.feat_norm,
                               flags.re_ranking)
    print(f"gallery threshold for FAR {args.far:g}: "
          + ("not a cosine distance (re-ranking or unnormalised)" if cosine is None
             else f"{cosine:.4f} (cosine distance)"))
    print(f"{'seed':>4}  {'threshold':>9}  {'held-out FAR':>12}  {'ratio':>6}")
    ratios = []
    for seed in range(args.seeds):
        held = verify(distmat, *q, target_far=args.far, seed=seed).held_out
        ratios.append(held.ratio)
        print(f"{seed:>4}  {held.threshold:>9.4f}  {held.measured_far:>12.3g}  {held.ratio:>6.2f}")
    print(f"ratios within 0.5-2: {sum(0.5 <= r <= 2 for r in ratios)} of {len(ratios)}; "
          f"median {np.median(ratios):.2f}")
    for name, path in save_verification_plots(result, args.output_dir).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
