"""Build a frozen config from the defaults, a YAML file and command-line overrides."""
from __future__ import annotations

import ast
import os
from typing import Any, Callable, Sequence, Tuple

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
    raise ConfigError(f"{key} must be 'yes' or 'no', got '{value}'")


def check_choice(key: str, value: Any, choices: Sequence[Any]) -> Any:
    """`value` when it is one of `choices`; otherwise a ConfigError (a ValueError) that names
    the config `key` and lists what it accepts."""
    if value not in choices:
        raise ConfigError(f"{key} '{value}' is not supported; choose one of {list(choices)}")
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


# --------------------------------------------------------------------------------------------
# Values checked at load time: each of these otherwise fails late (a modulo or batch size of 0
# after the first epoch, a bad metric at the first evaluation) or with a message that does
# not name the key.
# --------------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _non_negative_int(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _positive_int_pair(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_positive_int, value))


def _is_yes_no(value: Any) -> bool:
    try:
        yes_no(value, '')
    except ValueError:
        return False
    return True


# Training always evaluates and saves after the last epoch, whatever the periods.
PERIOD_RULE = "a positive number of epochs; to {do} only after the last epoch, set it to SOLVER.MAX_EPOCHS"

# (key, test, what the key allows), checked in this order.
ValueRule = Tuple[str, Callable[[Any], bool], str]


def _value_rules() -> Tuple[ValueRule, ...]:
    # Imported here, not at the top: utils.metrics imports config (yes_no), so a module-level
    # import would be circular; the one tuple of metrics stays where the evaluator uses it.
    from utils.metrics import DIST_METRICS

    return (
        ('MODEL.STRIDE_SIZE', _positive_int_pair,
         "two positive integers [vertical, horizontal], e.g. [16, 16] or [12, 12]"),
        ('INPUT.SIZE_TRAIN', _positive_int_pair, "two positive integers [height, width], e.g. [256, 128]"),
        ('INPUT.SIZE_TEST', _positive_int_pair, "two positive integers [height, width], e.g. [256, 128]"),
        ('INPUT.PADDING', _non_negative_int, "an integer >= 0 (pixels padded before the random crop)"),
        ('SOLVER.MAX_EPOCHS', _positive_int, "a positive integer"),
        ('SOLVER.IMS_PER_BATCH', _positive_int, "a positive integer (training images per batch)"),
        ('TEST.IMS_PER_BATCH', _positive_int, "a positive integer (test images per batch)"),
        ('DATALOADER.NUM_INSTANCE', _positive_int, "a positive integer (images per identity in a batch)"),
        ('SOLVER.EVAL_PERIOD', _positive_int, PERIOD_RULE.format(do="evaluate")),
        ('SOLVER.CHECKPOINT_PERIOD', _positive_int, PERIOD_RULE.format(do="save transformer_<epoch>.pth")),
        ('SOLVER.LOG_PERIOD', _positive_int, "a positive integer (iterations between log lines)"),
        ('TEST.FEAT_NORM', _is_yes_no, "'yes' or 'no'"),
        # The evaluator lower-cases the metric name, so 'Cosine' works there and here.
        ('TEST.DIST_METRIC', lambda value: str(value).lower() in DIST_METRICS,
         f"one of {list(DIST_METRICS)}"),
    )


def _where_to_fix(config_file: str) -> str:
    return f"fix it in {config_file} or in the command-line overrides" if config_file \
        else "fix the command-line override"


def _check_vit_test_size(cfg: CfgNode, config_file: str) -> None:
    # The ViT is built for INPUT.SIZE_TRAIN (its patch grid and position embedding) and, as the
    # reference's assert, refuses images of any other size: a different SIZE_TEST would fail
    # only at the first evaluation. ResNet-50 pools globally and takes any test size.
    size_train, size_test = list(cfg.INPUT.SIZE_TRAIN), list(cfg.INPUT.SIZE_TEST)
    if cfg.MODEL.NAME == 'transformer' and size_test != size_train:
        raise ConfigError(f"INPUT.SIZE_TEST {size_test} differs from INPUT.SIZE_TRAIN {size_train}, but "
                          "a transformer (MODEL.NAME 'transformer') takes test images only of the size it "
                          f"was built for; set INPUT.SIZE_TEST {size_train} ({_where_to_fix(config_file)})")


def _check_values(cfg: CfgNode, config_file: str = "") -> None:
    """Raise a ConfigError naming the key, its value and what it allows for the first value of
    `cfg` that cannot work; `config_file` is named as the place to fix it."""
    for key, is_allowed, allowed in _value_rules():
        value = _lookup(cfg, key)
        if not is_allowed(value):
            raise ConfigError(f"{key} {value!r} is not allowed; it must be {allowed} "
                              f"({_where_to_fix(config_file)})")
    _check_vit_test_size(cfg, config_file)


def load_config(config_file: str = "", opts: Sequence[str] = ()) -> CfgNode:
    """Defaults, then `config_file` (if given), then `KEY VALUE` overrides; checked by
    `_check_values` and returned frozen."""
    cfg = _C.clone()
    if config_file:
        _merge_file(cfg, config_file)
    _merge_opts(cfg, opts)
    _check_values(cfg, config_file)
    cfg.freeze()
    return cfg
