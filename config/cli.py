"""The command line's config: `--config_file` plus `KEY VALUE` overrides, merged and checked,
and the run folder's config.yaml when the file is left out. Light on purpose: a tool parses its
arguments (and answers --help) before torch is imported."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from yacs.config import CfgNode

from .loader import ConfigError, load_config

logger = logging.getLogger("transreid")


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description,
        epilog="Any KEY VALUE pairs after the options override the config, e.g. "
               "SOLVER.MAX_EPOCHS 10 MODEL.DEVICE cpu (keys: config/defaults.py).")
    parser.add_argument("--config_file", default="", type=str,
                        help="YAML config, e.g. configs/Market/vit_transreid_stride.yml")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs")
    return parser


def load_cli_config(config_file: str, opts) -> CfgNode:
    """`load_config` of a command line's --config_file and KEY VALUE overrides."""
    # argparse hands everything after the first KEY VALUE pair to `opts`, options included.
    misplaced = [opt for opt in opts or [] if str(opt).startswith("--")]
    if misplaced:
        raise ConfigError(f"{misplaced[0]} came after the KEY VALUE overrides; put options such "
                          f"as --config_file first: python {os.path.basename(sys.argv[0])} "
                          "--config_file FILE KEY VALUE ...")
    return load_config(config_file, opts or [])


RUN_CONFIG = "config.yaml"


def weight_in(opts) -> str:
    """The TEST.WEIGHT that KEY VALUE overrides set ('' where none does)."""
    pairs = list(opts or [])
    values = [pairs[i + 1] for i in range(0, len(pairs) - 1, 2) if pairs[i] == "TEST.WEIGHT"]
    return str(values[-1]) if values else ""


def run_config_file(config_file: str, weight: str) -> str:
    """`config_file`, or where it is left out, the config.yaml that train.py saved beside
    `weight` (the run folder's), which built the model."""
    if config_file or not weight:
        return config_file
    saved = os.path.join(os.path.dirname(os.path.abspath(weight)), RUN_CONFIG)
    if not os.path.isfile(saved):
        return config_file
    logger.info("Using %s, the run's config (--config_file to choose another)", saved)
    return saved
