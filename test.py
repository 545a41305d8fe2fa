"""Evaluate a trained model: python test.py --config_file configs/... TEST.WEIGHT <file> [KEY VALUE ...]

Prints mAP and CMC and writes them to OUTPUT_DIR/test_results.json. Only query and gallery are
read (a tree without the training split will do), and the model takes its class count from the
checkpoint, so a model trained on another dataset can be tested (cross-dataset evaluation).
"""
import json
import os

import numpy as np

from config import ConfigError, switches
from datasets import load_eval_dataset, make_val_loader
from processor import EvalResult, evaluate
from processor.inference import evaluation_model, log_result
from utils.checkpoint import atomic_write_text
from utils.cli import base_parser, exits_on_user_error, load_cli_config, start_run
from utils.device import select_device


# The trained weights replace every parameter: building the network skips the ImageNet
# initialisation (and the need for its file), and the saved test_config.yaml says so.
NO_IMAGENET_INIT = ["MODEL.PRETRAIN_CHOICE", "none"]


def check_weight_given(cfg) -> None:
    if not cfg.TEST.WEIGHT:
        raise ConfigError("TEST.WEIGHT is empty; name the trained model to test, e.g. "
                          "TEST.WEIGHT logs/market_vit_transreid_stride/transformer_120.pth")


def average_trials(results) -> EvalResult:
    cmc = np.mean([r.cmc for r in results], axis=0)
    return EvalResult(mAP=float(np.mean([r.mAP for r in results])), cmc=cmc,
                      mINP=float(np.mean([r.mINP for r in results])),
                      num_valid_queries=sum(r.num_valid_queries for r in results),
                      num_queries=sum(r.num_queries for r in results),
                      extra={"trials": [r.as_dict() for r in results]})


def run_vehicleid_trials(cfg, model, device, logger) -> EvalResult:
    """VehicleID draws query and gallery at random: average TEST.VEHICLEID_TRIALS draws."""
    results = []
    for trial in range(cfg.TEST.VEHICLEID_TRIALS):
        val_loader, num_query = make_val_loader(cfg, trial=trial)
        result = evaluate(cfg, model, val_loader, num_query, device)
        logger.info("trial %d: mAP %.1f%%, rank-1 %.1f%%, rank-5 %.1f%%", trial,
                    100 * result.mAP, 100 * result.cmc[0], 100 * result.cmc[4])
        results.append(result)
    return average_trials(results)


def run_evaluation(cfg, logger):
    """-> (result, title) of TEST.WEIGHT on the query and gallery of DATASETS.NAMES."""
    # Loaded (and checked: an empty query or gallery is named here) before any model runs.
    dataset = load_eval_dataset(cfg)
    device = select_device(cfg.MODEL.DEVICE)
    model = evaluation_model(cfg, dataset, device)  # PyTorch, or an exported .onnx / .xml
    if cfg.DATASETS.NAMES == 'VehicleID':
        title = f"Validation Results (mean of {cfg.TEST.VEHICLEID_TRIALS} trials)"
        return run_vehicleid_trials(cfg, model, device, logger), title
    val_loader, num_query = make_val_loader(cfg, dataset=dataset)
    return evaluate(cfg, model, val_loader, num_query, device), "Validation Results"


def write_results(cfg, result: EvalResult, logger) -> None:
    path = os.path.join(cfg.OUTPUT_DIR, "test_results.json")
    summary = {"weight": cfg.TEST.WEIGHT, "dataset": cfg.DATASETS.NAMES,
               "re_ranking": switches(cfg).re_ranking, "flip_feats": switches(cfg).flip_feats,
               **result.as_dict()}
    # Atomic: a full disk or a kill mid-write leaves the previous results, not an empty file.
    atomic_write_text(path, json.dumps(summary, indent=2))
    logger.info("Results written to %s", path)


@exits_on_user_error
def main() -> None:
    parser = base_parser("Test a trained TransReID model")
    args = parser.parse_args()
    cfg = load_cli_config(args.config_file, list(args.opts or []) + NO_IMAGENET_INIT)
    check_weight_given(cfg)
    logger = start_run(cfg, args.config_file, if_train=False)
    result, title = run_evaluation(cfg, logger)
    log_result(logger, result, title)
    if cfg.OUTPUT_DIR:
        write_results(cfg, result, logger)


if __name__ == "__main__":
    main()
