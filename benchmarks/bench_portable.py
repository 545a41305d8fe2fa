"""What the portable export (one image input, SIE handled inside, for trackers) costs a model
with SIE: mAP, Rank-1 and mINP of each camera mode beside the labelled export and the .pth,
on the model's own test set.

    python benchmarks/bench_portable.py --weight logs/synthetic_vit_transreid_tiny/transformer_40.pth

The config is the run folder's config.yaml (or --config_file). Each export is written to a
temporary folder and scored as test.py scores it (features through FeatureExtractor, the
portable form given no camera labels).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import describe_device  # noqa: E402
from config.cli import load_cli_config, run_config_file  # noqa: E402
from datasets import load_eval_dataset, make_val_loader  # noqa: E402
from deploy.calibration import calibration_set  # noqa: E402
from deploy.export import ExportPlan, export_model  # noqa: E402
from model.trained import load_trained  # noqa: E402
from processor import FeatureExtractor  # noqa: E402
from processor.evaluation import evaluate_features  # noqa: E402
from utils.device import select_device  # noqa: E402

# (row, plan of the export; None: the .pth itself)
ROWS: List[Tuple[str, dict]] = [
    (".pth (each image's own camera)", None),
    ("labelled export (each image's own camera)", dict(form="labelled")),
    ("portable, mean (exact mean over cameras)", dict(form="portable", camera_mode="mean")),
    ("portable, averaged (mean SIE embedding)", dict(form="portable", camera_mode="averaged")),
    ("portable, fixed camera 0", dict(form="portable", camera_mode="fixed", camera=0)),
]


def scores(cfg, weight: str, dataset) -> Dict[str, float]:
    run_cfg = cfg.clone()
    run_cfg.defrost()
    run_cfg.merge_from_list(["TEST.WEIGHT", weight])
    run_cfg.freeze()
    extractor = FeatureExtractor.from_config(run_cfg, dataset, chosen=())
    loader, num_query = make_val_loader(extractor.cfg, dataset=dataset)
    result = evaluate_features(extractor.cfg, extractor, loader, num_query)
    return {"mAP": result.mAP, "rank1": float(result.cmc[0]), "mINP": result.mINP}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weight", required=True, help="trained .pth of a model with SIE")
    parser.add_argument("--config_file", default="")
    args = parser.parse_args()
    config_file = run_config_file(args.config_file, args.weight)
    cfg = load_cli_config(config_file, ["TEST.WEIGHT", args.weight, "MODEL.DEVICE", "cpu",
                                        "MODEL.PRETRAIN_CHOICE", "none"])
    dataset = load_eval_dataset(cfg)
    trained = load_trained(cfg, dataset)
    check = calibration_set(cfg, 8, seed=1)
    print(f"# {describe_device(select_device('cpu'))}; {args.weight} on {cfg.DATASETS.NAMES}")
    print(f"{'model':45s} {'mAP':>6s} {'Rank-1':>7s} {'mINP':>6s}")
    with tempfile.TemporaryDirectory() as work:
        for name, plan in ROWS:
            weight = args.weight
            if plan is not None:
                weight = os.path.join(work, f"{len(os.listdir(work))}.onnx")
                for line in export_model(trained, ExportPlan(**plan), weight, check):
                    print(f"  {line}")
            row = scores(cfg, weight, dataset)
            print(f"{name:45s} {100 * row['mAP']:5.1f}% {100 * row['rank1']:6.1f}% "
                  f"{100 * row['mINP']:5.1f}%", flush=True)


if __name__ == "__main__":
    main()
