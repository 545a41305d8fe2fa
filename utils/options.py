"""Plain values that the config checks and the code below the config share: the reference's
yes/no switches and the distance metrics. Free of torch, so loading a config stays light."""
from __future__ import annotations

from typing import Any

from utils.errors import ConfigError

DIST_METRICS = ('euclidean', 'cosine')


def yes_no(value: Any, key: str) -> bool:
    """A switch given as a bool or as the reference's 'yes' / 'no' strings (the reference took
    any string as yes, 'no' included); `key` names it in the error."""
    text = str(value).strip().lower()
    if text in ('yes', 'true', 'on'):
        return True
    if text in ('no', 'false', 'off'):
        return False
    raise ConfigError(f"{key} must be 'yes' or 'no', got '{value}'")
