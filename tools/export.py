"""Export a trained model to ONNX or OpenVINO IR (fp32, int8, bf16), self-described by its
metadata and checked against PyTorch before it is written.

python tools/export.py --config_file CONFIG --weight MODEL.pth --format onnx|openvino \\
    [--precision fp32|int8|bf16] [--form labelled|portable] [--output FILE] [KEY VALUE ...]

Needs the optional packages onnx and onnxruntime (and openvino for --format openvino, plus nncf
for its int8).
See docs/deploy.md.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deploy.formats import (CAMERA_MODES, EXACT_MEAN, EXPORT_FORMATS, FORMS, LABELLED, OPSETS,
                            PRECISIONS)
from tools.common import (add_sie_count_arguments, bounded_float, configure_logging,
                          non_negative_int, positive_int, tool_parser)
from utils.errors import exits_on_user_error

logger = logging.getLogger("transreid.tools")


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser(
        "Export the inference model to ONNX (.onnx, run by ONNX Runtime) or OpenVINO IR (.xml "
        "+ .bin), in fp32, int8 (static, calibrated on training crops through the test "
        "transforms) or bf16 (OpenVINO's precision hint). The 'labelled' form takes images "
        "normalised as INPUT.PIXEL_MEAN/STD plus the SIE labels 'cam_label' / 'view_label' "
        "(int64, when the model uses them); the 'portable' form, for trackers, takes only "
        "ImageNet-normalised RGB images and handles SIE inside (--camera-mode). Flip "
        "(TEST.FLIP_FEATS) is part of the graph. The metadata (input size, mean/std, feature "
        "size, SIE, provenance) travels in the file. The file is compared with PyTorch and "
        "written only if they agree. Needs: pip install onnx onnxruntime [openvino [nncf]].",
        "python tools/export.py --config_file configs/Market/vit_transreid_stride.yml "
        "--weight logs/market/transformer_120.pth --format openvino --precision int8")
    parser.add_argument("--format", choices=sorted(EXPORT_FORMATS), default="onnx",
                        help="onnx (default) or openvino")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (default), int8 or bf16 (OpenVINO only)")
    parser.add_argument("--form", choices=FORMS, default=LABELLED,
                        help="labelled (default: SIE labels as inputs, FeatureExtractor's form) or "
                             "portable (one ImageNet-normalised input, for trackers)")
    parser.add_argument("--camera-mode", choices=CAMERA_MODES, default=EXACT_MEAN,
                        help="portable form with SIE: 'mean' (exact mean over every camera/view, "
                             "one pass each; default), 'fixed' (--camera/--view), or 'averaged' "
                             "(one pass with the mean SIE embedding; its cosine to 'mean' is "
                             "printed)")
    parser.add_argument("--camera", type=non_negative_int, default=None,
                        help="camera id of --camera-mode fixed")
    parser.add_argument("--view", type=non_negative_int, default=None,
                        help="view id of --camera-mode fixed")
    parser.add_argument("--output", default="",
                        help="file to write (.onnx or .xml; default: the weights' name with "
                             "_<precision> and the format's suffix, -2 and so on after the "
                             "first)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--opset", type=int, default=17,
                        help=f"ONNX opset version, {OPSETS.start} to {OPSETS.stop - 1} (default 17)")
    parser.add_argument("--batch", type=positive_int, default=None,
                        help="static batch size (default: dynamic); runtimes pad the last batch")
    add_sie_count_arguments(parser)
    add_check_arguments(parser)
    return parser


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """The int8 calibration and the check of the written file against PyTorch."""
    parser.add_argument("--calibration-size", type=int, default=300,
                        help="int8: training crops to calibrate on (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration draw")
    parser.add_argument("--check-size", type=positive_int, default=8,
                        help="images of the check against PyTorch (default 8)")
    parser.add_argument("--atol", type=bounded_float(0, math.inf, what="a tolerance"), default=1e-4,
                        help="fp32: allowed absolute difference to PyTorch (default 1e-4)")
    parser.add_argument("--rtol", type=bounded_float(0, math.inf, what="a tolerance"), default=1e-3,
                        help="fp32: allowed difference relative to the largest PyTorch feature "
                             "value (default 1e-3)")
    parser.add_argument("--min-cosine", type=bounded_float(-1, 1, what="a cosine"), default=0.99,
                        help="int8 / bf16: lowest allowed cosine to PyTorch (default 0.99)")



def default_output(weight: str, fmt: str, precision: str) -> str:
    """Beside the weights, named after them: `<weights>_<precision><suffix>`, or a fresh name
    where an earlier export's files are."""
    model_format = EXPORT_FORMATS[fmt]
    from utils.files import fresh_names
    return fresh_names(model_format.files(
        f"{os.path.splitext(weight)[0]}_{precision}{model_format.suffix}"))[0]


@exits_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    return export(build_parser().parse_args(argv))


def export(args: argparse.Namespace) -> int:
    # Loaded once the arguments are good: --help and a mistaken option need none of it.
    from deploy.calibration import calibration_set, check_set
    from deploy.export import ExportPlan, Tolerance, check_outputs, export_model
    from deploy.formats import export_packages
    from model.trained import load_trained
    from tools.loading import load_tool_config
    from utils.errors import require_package

    plan = ExportPlan(fmt=args.format, precision=args.precision, form=args.form,
                      camera_mode=args.camera_mode, camera=args.camera, view=args.view,
                      opset=args.opset, batch=args.batch)
    cfg = load_tool_config(args, ["MODEL.DEVICE", "cpu"])  # exported and checked on the CPU
    output = args.output or default_output(cfg.TEST.WEIGHT, args.format, args.precision)
    check_outputs(output, args.format, [cfg.TEST.WEIGHT, args.run_config], args.overwrite)
    for package in export_packages(args.format, args.precision):
        require_package(package, f"exporting to {args.format} {args.precision}")
    trained = load_trained(cfg, num_cameras=args.num_cameras, num_views=args.num_views)
    calibration = None
    if args.precision == "int8":
        calibration = calibration_set(cfg, args.calibration_size, args.seed)
    check = check_set(cfg, trained.counts, args.precision, args.form, args.check_size,
                      args.seed + 1)
    tolerance = Tolerance(args.atol, args.rtol, args.min_cosine)
    for line in export_model(trained, plan, output, check, calibration, tolerance):
        print(line)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    configure_logging()
    sys.exit(main())
