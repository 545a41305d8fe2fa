"""What train.py, test.py and the tools share on the command line: `--config_file` plus
`KEY VALUE` overrides, the merged config, the output folder and its logger, and one `error:`
line for a user's mistake."""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from typing import Callable, Optional, TypeVar

from yacs.config import CfgNode

from config import ConfigError, load_config
from utils.device import apply_visible_devices
from utils.errors import UserError
from utils.files import atomic_write_text
from utils.logger import setup_logger

T = TypeVar("T")


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


def load_config_or_exit(config_file: str, opts) -> CfgNode:
    """`load_cli_config` for scripts without `exits_on_user_error`."""
    return exits_on_user_error(load_cli_config)(config_file, opts)


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
    logging.getLogger("transreid").info("Using %s, the run's config (--config_file to choose "
                                        "another)", saved)
    return saved


def exits_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a command-line entry point: a `UserError` becomes one `error: <message>` line on
    stderr (and in the run's log file, when one is open) and exit status 1. Any other exception
    is a bug and keeps its traceback."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> T:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            _log_to_files(err)
            sys.exit(f"error: {err}")
    return wrapper


def _log_to_files(err: UserError) -> None:
    """The error in the log files of `setup_logger` (the console gets the `error:` line)."""
    logger = logging.getLogger("transreid")
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "%s", (err,), None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


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
