"""The one error type for mistakes a user can fix.

Every check of user input (config values, dataset trees, weight files, resume state, tool
arguments) raises a subclass of `UserError` whose message names the file, key or value at
fault and says how to fix it. The subclasses keep the built-in base they always had
(`ConfigError` is a `ValueError`, `WeightsNotFoundError` a `FileNotFoundError`, ...), so
existing `except` clauses keep working.

Command-line entry points (`exits_on_user_error`) print a `UserError` as one `error:` line and
exit with status 1; any other exception is a bug and keeps its traceback.
"""
import functools
import importlib
import logging
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A mistake in what the user gave; the message names it and the fix."""


class ToolError(UserError, RuntimeError):
    """Input that a tool or the inference API cannot use: images, feature files, arguments."""


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used; the message says which and why."""


def require_package(name: str, purpose: str):
    """`import name` of an optional dependency, or a ToolError with the pip command."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ToolError(f"{purpose} needs the optional package {name}: pip install {name}") from None


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
