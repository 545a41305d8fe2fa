"""Build a frozen config from the defaults, a YAML file and command-line overrides."""
from __future__ import annotations

import ast
import os
from typing import Any, Sequence

import yaml
from yacs.config import CfgNode

from .defaults import _C


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says which and why."""


def yes_no(value: Any, key: str) -> bool:
    """A switch given as a bool or as the reference's 'yes' / 'no' strings (the reference took
    any string as yes, 'no' included); `key` names it in the error."""
    text = str(value).strip().lower()
    if text in ('yes', 'true', 'on'):
        return True
    if text in ('no', 'false', 'off'):
        return False
    raise ValueError(f"{key} must be 'yes' or 'no', got '{value}'")


def check_choice(key: str, value: Any, choices: Sequence[Any]) -> Any:
    """`value` when it is one of `choices`; otherwise a ValueError that names the config `key`
    and lists what it accepts."""
    if value not in choices:
        raise ValueError(f"{key} '{value}' is not supported; choose one of {list(choices)}")
    return value


def _as_string_if_expected(value: Any, default: Any) -> Any:
    """Stop yacs turning a string such as DEVICE_ID '0' into the int 0 where the default is a
    string (the reference's "('0')" spelling still gives '0')."""
    if not (isinstance(default, str) and isinstance(value, str)):
        return value
    try:
        decoded = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
    return value if isinstance(decoded, str) else repr(value)


def _protect_strings(values: Any, defaults: CfgNode) -> Any:
    if not isinstance(values, dict):
        return values
    return {key: (_protect_strings(value, defaults[key]) if isinstance(defaults.get(key), CfgNode)
                  else _as_string_if_expected(value, defaults.get(key)))
            for key, value in values.items()}


def _merge_file(cfg: CfgNode, config_file: str) -> None:
    if not os.path.isfile(config_file):
        raise ConfigError(f"config file '{config_file}' does not exist; pass --config_file with a "
                          "path such as configs/Synthetic/vit_transreid_tiny.yml")
    try:
        with open(config_file) as handle:
            values = yaml.safe_load(handle) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{config_file} is not valid YAML: {err}") from None
    try:
        cfg.merge_from_other_cfg(CfgNode(_protect_strings(values, cfg)))
    except KeyError as err:
        raise ConfigError(f"{config_file}: {err.args[0]}; check the key's spelling against "
                          "config/defaults.py") from None
    except ValueError as err:
        raise ConfigError(f"{config_file}: {err}") from None


def _merge_opts(cfg: CfgNode, opts: Sequence[str]) -> None:
    if len(opts) % 2:
        raise ConfigError(f"overrides come in KEY VALUE pairs; got an odd number: {list(opts)}")
    opts = list(opts)
    for i in range(0, len(opts), 2):
        default = _lookup(cfg, opts[i])
        opts[i + 1] = _as_string_if_expected(opts[i + 1], default)
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError) as err:
        raise ConfigError(f"command-line override: {err.args[0] if err.args else err}; check the "
                          "key against config/defaults.py") from None
    except ValueError as err:
        raise ConfigError(f"command-line override: {err}") from None


def _lookup(cfg: CfgNode, dotted_key: str) -> Any:
    node: Any = cfg
    for part in str(dotted_key).split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return None
        node = node[part]
    return node


def load_config(config_file: str = "", opts: Sequence[str] = ()) -> CfgNode:
    """Defaults, then `config_file` (if given), then `KEY VALUE` overrides; returned frozen."""
    cfg = _C.clone()
    if config_file:
        _merge_file(cfg, config_file)
    _merge_opts(cfg, opts)
    cfg.freeze()
    return cfg
