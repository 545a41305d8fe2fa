"""Logging to the console and to OUTPUT_DIR/{train,test}_log.txt, as the reference does."""
from __future__ import annotations

import logging
import os
import sys


def setup_logger(name: str, save_dir: str, if_train: bool, distributed_rank: int = 0) -> logging.Logger:
    """Configure the `name` logger; ranks other than 0 only report warnings, to the console."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s")

    console = logging.StreamHandler(stream=sys.stdout)
    console.setLevel(logging.INFO if distributed_rank == 0 else logging.WARNING)
    console.setFormatter(formatter)
    logger.addHandler(console)

    if save_dir and distributed_rank == 0:
        os.makedirs(save_dir, exist_ok=True)
        log_name = "train_log.txt" if if_train else "test_log.txt"
        file_handler = logging.FileHandler(os.path.join(save_dir, log_name), mode='a')
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger
