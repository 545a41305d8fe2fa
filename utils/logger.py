"""Logging to the console and to OUTPUT_DIR/{train,test}_log.txt, as the reference does."""
from __future__ import annotations

import logging
import os
import sys

from utils.files import check_writable_location


class LogFileHandler(logging.FileHandler):
    """A FileHandler that reports a failed write (a full disk, a removed folder) in one line,
    once, instead of logging's traceback per record; the console goes on logging."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        self.failed = True
        err = sys.exc_info()[1]
        reason = getattr(err, "strerror", None) or err
        sys.stderr.write(f"warning: the log file '{self.baseFilename}' can no longer be written "
                         f"({reason}); the log goes on on the console only\n")


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
        log_path = os.path.join(save_dir, "train_log.txt" if if_train else "test_log.txt")
        # A read-only or misplaced OUTPUT_DIR is one error line naming it, not an OSError.
        check_writable_location(log_path, "OUTPUT_DIR")
        os.makedirs(save_dir, exist_ok=True)
        file_handler = LogFileHandler(log_path, mode='a')
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger
