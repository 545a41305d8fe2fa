"""Evaluate a trained model: python test.py --config_file configs/... TEST.WEIGHT <file> [KEY VALUE ...]

Prints mAP and CMC and writes them to OUTPUT_DIR/test_results.json (test_results-2.json and so on
when an earlier test's are there; the weights' folder without OUTPUT_DIR; the run folder's
config.yaml when --config_file is left out). Only query and gallery are
read (a tree without the training split will do), and the model takes its class count from the
checkpoint, so a model trained on another dataset can be tested (cross-dataset evaluation).
"""
import json
import os
from typing import Collection, List, Optional, Sequence

from config import ConfigError, switches
from datasets import load_eval_dataset, make_val_loader
from deploy.metadata import given_keys
from processor import EvalResult, FeatureExtractor
from config.cli import base_parser, load_cli_config, run_config_file, weight_in
from processor.cli import start_run
from utils.errors import exits_on_user_error
from processor.evaluation import log_result
from processor.processor import inference_of
from tools.verification_plots import VERIFICATION_PICTURES, save_verification_plots
from utils.distance import DISTANCE_UNIT
from utils.files import atomic_write_text, check_output, fresh_names

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


def write_results(cfg, result: EvalResult, logger,
                  names: Optional[Sequence[str]] = None) -> None:
    """The results JSON and the verification pictures under `names` (`output_names`; default:
    their plain names in OUTPUT_DIR)."""
    path, *pictures = names or default_names(cfg)
    flags = switches(cfg)
    summary = {"weight": cfg.TEST.WEIGHT, "dataset": cfg.DATASETS.NAMES,
               "re_ranking": flags.re_ranking, "flip_feats": flags.flip_feats, **result.as_dict()}
    if result.verification is not None:
        # Its distances are a gallery's (tools/gallery.py --threshold takes the threshold).
        summary["verification"].update(distance=DISTANCE_UNIT,
                                       gallery_threshold=result.verification.threshold)
        save_verification_plots(result.verification, os.path.dirname(path),
                                *map(os.path.basename, pictures))
        logger.info("ROC curve and distance histograms: %s", ", ".join(pictures))
    # Atomic: a full disk or a kill mid-write leaves the previous results, not an empty file.
    atomic_write_text(path, json.dumps(summary, indent=2))
    logger.info("Results written to %s", path)


def default_names(cfg) -> List[str]:
    """The results and pictures in OUTPUT_DIR (or, without one, the weights' folder)."""
    folder = cfg.OUTPUT_DIR or os.path.dirname(os.path.abspath(cfg.TEST.WEIGHT))
    return [os.path.join(folder, name) for name in (RESULTS_NAME, *VERIFICATION_PICTURES)]


def output_names(cfg, config_file: str, overwrite: bool) -> List[str]:
    """`default_names`, or fresh ones when an earlier test's are there (over them with
    `overwrite`); checked before the evaluation, not after it."""
    names = default_names(cfg)
    if not overwrite:
        names = fresh_names(names)
    for name in names:
        check_output(name, os.path.splitext(name)[1], [cfg.TEST.WEIGHT, config_file], overwrite,
                     option=f"the results file '{os.path.basename(name)}'")
    return names


@exits_on_user_error
def main() -> None:
    parser = base_parser("Test a trained TransReID model")
    parser.add_argument("--weight", default="",
                        help="the model to test (.pth, or an .onnx / .xml written by "
                             "tools/export.py); sets TEST.WEIGHT")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace an earlier test's {RESULTS_NAME} and pictures (default: "
                             "write fresh names beside them)")
    args = parser.parse_args()
    opts = list(args.opts or []) + (["TEST.WEIGHT", args.weight] if args.weight else [])
    config_file = run_config_file(args.config_file, weight_in(opts))
    cfg = load_cli_config(config_file, opts + NO_IMAGENET_INIT)
    check_weight_given(cfg)
    names = output_names(cfg, config_file, args.overwrite)
    logger = start_run(cfg, config_file, if_train=False)
    result = run_evaluation(cfg, logger, given_keys(args.config_file, opts))
    write_results(cfg, result, logger, names)


if __name__ == "__main__":
    main()
