"""Features of your own images with a trained model: one .npy matrix and a CSV index.

python tools/extract_features.py --config_file CONFIG --weight MODEL.pth \\
    --images FOLDER_OR_LIST --output features.npy [KEY VALUE ...]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.common import (add_label_arguments, add_overwrite_argument, add_sie_count_arguments,
                          configure_logging, tool_parser)
from utils.errors import exits_on_user_error

logger = logging.getLogger("transreid.tools")


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser(
        "Extract re-ID features of a folder (searched recursively) or a list file of images. "
        "Writes an N x D float32 .npy matrix and, next to it, a CSV index (index, path, pid, "
        "camid, viewid) whose row i describes feature row i; pid and camid are filled from "
        "Market-style names (0002_c1s1_000451_03.jpg) or the list file, empty otherwise.",
        "python tools/extract_features.py --config_file configs/Market/vit_transreid_stride.yml "
        "--weight logs/market/transformer_120.pth --images my_crops/ --output feats/my_crops.npy "
        "MODEL.DEVICE_ID \"('0')\"", exported_ok=True)
    parser.add_argument("--images", required=True,
                        help="folder of images (searched recursively), a list file with one "
                             "'path [pid camid [viewid]]' per line (paths relative to the list "
                             "file), or one image")
    parser.add_argument("--output", required=True,
                        help="feature matrix to write (.npy); the index goes to the same name "
                             "with .csv")
    add_label_arguments(parser)
    add_sie_count_arguments(parser)
    add_overwrite_argument(parser)
    return parser


@exits_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    return extract(build_parser().parse_args(argv))


def extract(args: argparse.Namespace) -> int:
    # Loaded once the arguments are good: --help and a mistaken option need none of it.
    from datasets.image_list import collect_images
    from tools.feature_files import check_feature_outputs, save_feature_index
    from tools.loading import load_extractor, load_tool_config

    cfg = load_tool_config(args)
    check_feature_outputs(args.output, [args.run_config, cfg.TEST.WEIGHT, args.images],
                          args.overwrite)
    records = collect_images(args.images)
    extractor = load_extractor(args, cfg, camera=args.camera, view=args.view)
    features = extractor.extract_records(records)
    csv_path = save_feature_index(features.numpy(), records, args.output,
                                  extractor.provenance)
    logger.info("Wrote %d x %d features to %s and their index to %s", *features.shape,
                args.output, csv_path)
    return 0


if __name__ == "__main__":
    configure_logging()
    sys.exit(main())
