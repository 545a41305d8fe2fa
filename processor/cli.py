"""What train.py and test.py share once their config is loaded: the output folder and its
logger. The command line itself is `config.cli`'s; its one `error:` line, `utils.errors`'."""
from __future__ import annotations

import logging
import os
from typing import Optional

from config.cli import RUN_CONFIG
from utils.device import apply_visible_devices
from utils.files import atomic_write_text
from utils.logger import setup_logger


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
        name = RUN_CONFIG if if_train else "test_config.yaml"
        # Atomic: a full disk leaves no empty or half-written config.
        atomic_write_text(os.path.join(output_dir, name), cfg.dump())
    return logger


def env_int(name: str, default: int) -> int:
    value: Optional[str] = os.environ.get(name)
    return int(value) if value not in (None, "") else default
