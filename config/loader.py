"""Build a frozen config from the defaults, a YAML file and command-line overrides."""
from __future__ import annotations

import os
from typing import Sequence

from yacs.config import CfgNode

from .defaults import _C


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says which and why."""


def _merge_file(cfg: CfgNode, config_file: str) -> None:
    if not os.path.isfile(config_file):
        raise ConfigError(f"config file '{config_file}' does not exist; pass --config_file with a "
                          "path such as configs/Synthetic/vit_transreid_tiny.yml")
    try:
        cfg.merge_from_file(config_file)
    except KeyError as err:
        raise ConfigError(f"{config_file}: {err.args[0]}; check the key's spelling against "
                          "config/defaults.py") from None
    except ValueError as err:
        raise ConfigError(f"{config_file}: {err}") from None


def _merge_opts(cfg: CfgNode, opts: Sequence[str]) -> None:
    if len(opts) % 2:
        raise ConfigError(f"overrides come in KEY VALUE pairs; got an odd number: {list(opts)}")
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError) as err:
        raise ConfigError(f"command-line override: {err.args[0] if err.args else err}; check the "
                          "key against config/defaults.py") from None
    except ValueError as err:
        raise ConfigError(f"command-line override: {err}") from None


def load_config(config_file: str = "", opts: Sequence[str] = ()) -> CfgNode:
    """Defaults, then `config_file` (if given), then `KEY VALUE` overrides; returned frozen."""
    cfg = _C.clone()
    if config_file:
        _merge_file(cfg, config_file)
    _merge_opts(cfg, opts)
    cfg.freeze()
    return cfg
