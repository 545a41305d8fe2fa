"""Evaluate a trained model: python test.py --config_file configs/... TEST.WEIGHT <file> [KEY VALUE ...]

Prints mAP and CMC and writes them to OUTPUT_DIR/test_results.json. Only query and gallery are
read (a tree without the training split will do), and the model takes its class count from the
checkpoint, so a model trained on another dataset can be tested (cross-dataset evaluation).
"""
import json
import os
from typing import Collection, Optional

from config import ConfigError, switches
from datasets import load_eval_dataset, make_val_loader
from deploy.metadata import given_keys
from processor import EvalResult, FeatureExtractor
from processor.cli import base_parser, exits_on_user_error, load_cli_config, start_run
from processor.evaluation import log_result
from processor.processor import inference_of
from processor.verification_report import gallery_threshold
from tools.verification_plots import VERIFICATION_PICTURES, save_verification_plots
from utils.files import atomic_write_text, check_output

# The trained weights replace every parameter: building the network skips the ImageNet
# initialisation (and the need for its file), and the saved test_config.yaml says so.
NO_IMAGENET_INIT = ["MODEL.PRETRAIN_CHOICE", "none"]
RESULTS_NAME = "test_results.json"


def check_weight_given(cfg) -> None:
    if not cfg.TEST.WEIGHT:
        raise ConfigError("TEST.WEIGHT is empty; name the trained model to test, e.g. "
                          "TEST.WEIGHT logs/market_vit_transreid_stride/transformer_120.pth")


def run_evaluation(cfg, logger, chosen: Optional[Collection[str]] = None) -> EvalResult:
    """mAP/CMC/mINP of TEST.WEIGHT on the query and gallery of DATASETS.NAMES; the mean over the
    dataset's query/gallery draws where its protocol has several (VehicleID). An exported file
    is fed as it was exported, refusing a setting of `chosen` keys (None: all) that differs."""
    # Loaded (and checked: an empty query or gallery is named here) before any model runs.
    dataset = load_eval_dataset(cfg)
    extractor = FeatureExtractor.from_config(cfg, dataset, chosen=chosen)
    cfg = extractor.cfg  # an exported file's settings on top: the loaders feed it
    if dataset.num_trials == 1:
        val_loader, num_query = make_val_loader(cfg, dataset=dataset)
        return inference_of(cfg, extractor, val_loader, num_query, verification=True)
    results = []
    for trial in range(dataset.num_trials):
        val_loader, num_query = make_val_loader(cfg, trial=trial)
        results.append(inference_of(cfg, extractor, val_loader, num_query,
                                    title=f"Validation Results - trial {trial}"))
    result = EvalResult.mean(results)
    log_result(logger, result, f"Validation Results (mean of {len(results)} trials)")
    return result


def write_results(cfg, result: EvalResult, logger) -> None:
    path = results_path(cfg)
    flags = switches(cfg)
    summary = {"weight": cfg.TEST.WEIGHT, "dataset": cfg.DATASETS.NAMES,
               "re_ranking": flags.re_ranking, "flip_feats": flags.flip_feats, **result.as_dict()}
    if result.verification is not None:
        # The target-FAR threshold as a gallery's cosine distance (tools/gallery.py --threshold).
        summary["verification"].update(dist_metric=cfg.TEST.DIST_METRIC, gallery_threshold=(
            gallery_threshold(result.verification.threshold, cfg.TEST.DIST_METRIC,
                              flags.feat_norm, flags.re_ranking)))
        pictures = save_verification_plots(result.verification, cfg.OUTPUT_DIR)
        logger.info("ROC curve and distance histograms: %s", ", ".join(pictures.values()))
    # Atomic: a full disk or a kill mid-write leaves the previous results, not an empty file.
    atomic_write_text(path, json.dumps(summary, indent=2))
    logger.info("Results written to %s", path)


def results_path(cfg) -> str:
    return os.path.join(cfg.OUTPUT_DIR, RESULTS_NAME)


@exits_on_user_error
def main() -> None:
    parser = base_parser("Test a trained TransReID model")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace OUTPUT_DIR/{RESULTS_NAME} of an earlier test")
    args = parser.parse_args()
    cfg = load_cli_config(args.config_file, list(args.opts or []) + NO_IMAGENET_INIT)
    check_weight_given(cfg)
    if cfg.OUTPUT_DIR:  # before the evaluation, not after it
        for name in (RESULTS_NAME, *VERIFICATION_PICTURES):
            check_output(os.path.join(cfg.OUTPUT_DIR, name), os.path.splitext(name)[1],
                         [cfg.TEST.WEIGHT, args.config_file], args.overwrite,
                         option=f"OUTPUT_DIR/{name}")
    logger = start_run(cfg, args.config_file, if_train=False)
    result = run_evaluation(cfg, logger, given_keys(args.config_file, args.opts or []))
    if cfg.OUTPUT_DIR:
        write_results(cfg, result, logger)


if __name__ == "__main__":
    main()
