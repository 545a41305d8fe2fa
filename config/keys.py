"""The config's key names: a misspelled key is named with the known key nearest in spelling."""
from __future__ import annotations

import difflib
from typing import Any, Iterable, Iterator, Mapping

from yacs.config import CfgNode

from utils.errors import ConfigError

from .defaults import _C

# How alike (difflib's ratio) a known key must be to a misspelled one to be suggested.
KEY_MATCH_CUTOFF = 0.75


def dotted_keys(values: Mapping, prefix: str = "") -> Iterator[str]:
    """`SECTION.KEY` for every value of a nested mapping (a YAML's, or the config's)."""
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            yield from dotted_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _fault(dotted_key: str) -> str:
    """What is wrong with `dotted_key` as a config key; '' when nothing."""
    node: Any = _C
    parts = str(dotted_key).split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, CfgNode):
            value = ".".join(parts[:depth])
            return f"{dotted_key}: {value} is a value, not a section; set {value} itself"
        if part not in node:
            return f"{dotted_key} is not a config key; {suggestion(dotted_key)}"
        node = node[part]
    return ""


def suggestion(unknown: str) -> str:
    match = difflib.get_close_matches(unknown, list(dotted_keys(_C)), n=1, cutoff=KEY_MATCH_CUTOFF)
    return f"did you mean {match[0]}?" if match else "check its spelling against config/defaults.py"


def check_keys_exist(keys: Iterable[str], where: str) -> None:
    """One ConfigError line, starting with `where`, for the first of `keys` that the config
    does not have."""
    for key in keys:
        fault = _fault(key)
        if fault:
            raise ConfigError(where + fault)
