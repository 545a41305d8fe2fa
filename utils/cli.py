"""What train.py, test.py and the tools share: `--config_file` plus `KEY VALUE` overrides,
the merged config, the output folder and the logger."""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from typing import Optional

import numpy as np
import torch
from yacs.config import CfgNode

from config import ConfigError, load_config
from utils.device import apply_visible_devices
from utils.logger import setup_logger


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


def load_config_or_exit(config_file: str, opts) -> CfgNode:
    # argparse hands everything after the first KEY VALUE pair to `opts`, options included.
    misplaced = [opt for opt in opts or [] if str(opt).startswith("--")]
    if misplaced:
        sys.exit(f"error: {misplaced[0]} came after the KEY VALUE overrides; put options such "
                 f"as --config_file first: python {os.path.basename(sys.argv[0])} --config_file FILE "
                 "KEY VALUE ...")
    try:
        return load_config(config_file, opts or [])
    except ConfigError as err:
        sys.exit(f"error: {err}")


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def start_run(cfg, config_file: str, if_train: bool, rank: int = 0,
              distributed: bool = False) -> logging.Logger:
    """Make OUTPUT_DIR, start logging there, save the merged config, pin the GPUs."""
    output_dir = cfg.OUTPUT_DIR
    logger = setup_logger("transreid", output_dir, if_train=if_train, distributed_rank=rank)
    if not distributed:
        # torchrun and dist_train.sh choose GPUs through CUDA_VISIBLE_DEVICES themselves.
        apply_visible_devices(cfg.MODEL.DEVICE_ID)
    if not output_dir:
        logger.warning("OUTPUT_DIR is empty: files go to the current folder and no log file is "
                       "written; set OUTPUT_DIR to keep this run's output together")
    if config_file:
        logger.info("Loaded configuration file %s", config_file)
    logger.info("Running with config:\n%s", cfg)
    if output_dir and rank == 0:
        name = "config.yaml" if if_train else "test_config.yaml"
        with open(os.path.join(output_dir, name), "w") as handle:
            handle.write(cfg.dump())
    return logger


def env_int(name: str, default: int) -> int:
    value: Optional[str] = os.environ.get(name)
    return int(value) if value not in (None, "") else default
