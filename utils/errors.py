"""The one error type for mistakes a user can fix.

Every check of user input (config values, dataset trees, weight files, resume state, tool
arguments) raises a subclass of `UserError` whose message names the file, key or value at
fault and says how to fix it. The subclasses keep the built-in base they always had
(`ConfigError` is a `ValueError`, `WeightsNotFoundError` a `FileNotFoundError`, ...), so
existing `except` clauses keep working.

Command-line entry points (`processor.cli.exits_on_user_error`) print a `UserError` as one `error:` line and
exit with status 1; any other exception is a bug and keeps its traceback.
"""
import importlib


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
