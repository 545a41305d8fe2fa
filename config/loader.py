"""Build a frozen config from the defaults, a YAML file and command-line overrides."""
from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Tuple

import yaml
from yacs.config import CfgNode

from utils.errors import ConfigError
from utils.options import yes_no

from . import choices
from .defaults import _C
from .keys import check_keys_exist, dotted_keys
from .stages import apply_stage2_solver


@dataclass(frozen=True)
class Switches:
    """The config's yes/no keys as booleans. The config keeps the reference's 'yes'/'no' (or
    'on'/'off') strings, which yacs and saved configs expect; code reads these instead."""
    feat_norm: bool
    re_ranking: bool
    label_smooth: bool
    flip_feats: bool


SWITCH_KEYS = ('TEST.FEAT_NORM', 'TEST.RE_RANKING', 'MODEL.IF_LABELSMOOTH', 'TEST.FLIP_FEATS')


def switches(cfg: CfgNode) -> Switches:
    """`cfg`'s switches, parsed once (when `load_config` builds it) and kept with it; parsed
    again only if a key was changed since (a defrosted clone)."""
    raw = tuple(_lookup(cfg, key) for key in SWITCH_KEYS)
    cached = cfg.__dict__.get('_switches')
    if cached is None or cached[0] != raw:
        # Beside the keys, not among them: dump() and the saved config.yaml stay the reference's.
        cached = (raw, Switches(*(yes_no(value, key) for value, key in zip(raw, SWITCH_KEYS))))
        cfg.__dict__['_switches'] = cached
    return cached[1]


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


SHOWN_CONFIGS = 3  # config files named when a folder is given instead of one


def _missing_config_file(config_file: str) -> ConfigError:
    example = "a path such as configs/Synthetic/vit_transreid_tiny.yml"
    if not os.path.isdir(config_file):
        return ConfigError(f"config file '{config_file}' does not exist; pass --config_file with {example}")
    run_config = os.path.join(config_file, "config.yaml")
    if os.path.isfile(run_config):  # a run folder: train.py saves the config it ran with there
        return ConfigError(f"config file '{config_file}' is a folder; pass the config.yaml in it: "
                           f"--config_file {run_config}")
    yamls = sorted(name for name in os.listdir(config_file) if name.endswith((".yml", ".yaml")))
    if yamls:
        more = f" and {len(yamls) - SHOWN_CONFIGS} more" if len(yamls) > SHOWN_CONFIGS else ""
        return ConfigError(f"config file '{config_file}' is a folder; pass one of its files: "
                           f"{', '.join(os.path.join(config_file, name) for name in yamls[:SHOWN_CONFIGS])}"
                           f"{more}")
    return ConfigError(f"config file '{config_file}' is a folder, not a YAML file; pass --config_file "
                       f"with {example}")


def _merge_file(cfg: CfgNode, config_file: str) -> None:
    if not os.path.isfile(config_file):
        raise _missing_config_file(config_file)
    values = _read_yaml(config_file)
    check_keys_exist(dotted_keys(values), f"{config_file}: ")
    try:
        cfg.merge_from_other_cfg(CfgNode(_protect_strings(values, cfg)))
    except KeyError as err:
        raise ConfigError(f"{config_file}: {err.args[0]}; check the key's spelling against "
                          "config/defaults.py") from None
    except ValueError as err:
        raise ConfigError(f"{config_file}: {err}") from None


def _read_yaml(config_file: str) -> dict:
    """The mapping of sections that `config_file` holds ({} when empty); a file that is not
    UTF-8, not YAML or not a mapping raises one ConfigError line naming it (and the line)."""
    with open(config_file, "rb") as handle:
        data = handle.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ConfigError(f"{config_file} line {line}: byte {data[err.start]:#04x} is not UTF-8; "
                          "save the file as UTF-8 text") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{config_file}{where}: not valid YAML ({what})") from None
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{config_file} holds a YAML {type(values).__name__} ({repr(values)[:40]}), "
                          "not a mapping of sections such as 'MODEL:' with their keys; see "
                          "configs/Synthetic/vit_transreid_tiny.yml")
    for section, value in (values or {}).items():
        if isinstance(_C.get(section), CfgNode) and not isinstance(value, dict):
            raise ConfigError(f"{config_file}: {section} is a section, not a value ({value!r}); "
                              f"write its keys under it, e.g. '{section}:' then '  KEY: value'")
    return values or {}


def _merge_opts(cfg: CfgNode, opts: Sequence[str]) -> None:
    if len(opts) % 2:
        raise ConfigError(f"overrides come in KEY VALUE pairs; got an odd number: {list(opts)}")
    opts = list(opts)
    check_keys_exist(opts[0::2], "command-line override: ")
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


def _number_at_least(low: float) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, (int, float)) and not isinstance(value, bool) \
        and value >= low


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _nonzero_triple(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v != 0 for v in value)


def _size_holds_a_patch(value: Any) -> bool:
    # A ViT cuts 16 x 16 patches; a smaller side leaves no patch (ResNet takes any size >= 1).
    return _positive_int_pair(value) and min(value) >= 16


def _one_of(options: Sequence[Any]) -> Tuple[Callable[[Any], bool], str]:
    return (lambda value: value in options), f"one of {list(options)}"


def _choice_rule(key: str, options: Sequence[Any]) -> ValueRule:
    test, allowed = _one_of(options)
    return key, test, allowed


def _value_rules() -> Tuple[ValueRule, ...]:
    return (
        ('MODEL.STRIDE_SIZE', _positive_int_pair,
         "two positive integers [vertical, horizontal], e.g. [16, 16] or [12, 12]"),
        ('INPUT.SIZE_TRAIN', _positive_int_pair, "two positive integers [height, width], e.g. [256, 128]"),
        ('INPUT.SIZE_TEST', _positive_int_pair, "two positive integers [height, width], e.g. [256, 128]"),
        ('INPUT.PADDING', _non_negative_int, "an integer >= 0 (pixels padded before the random crop)"),
        ('INPUT.PIXEL_STD', _nonzero_triple, "three non-zero numbers (images are divided by them)"),
        ('MODEL.PRETRAIN_HW_RATIO', _positive_int,
         "a positive integer, the height : width of the pre-trained position grid (1 for ImageNet ViTs, "
         "2 for TransReID-SSL's)"),
        ('SOLVER.MAX_EPOCHS', _positive_int, "a positive integer"),
        ('SOLVER.STAGE1.MAX_EPOCHS', _non_negative_int, "an integer >= 0 (CLIP-ReID's stage 1; 0 skips it)"),
        *((f'SOLVER.STAGE1.{key}', _positive_int, "a positive integer") for key in (
            'IMS_PER_BATCH', 'CHECKPOINT_PERIOD', 'LOG_PERIOD')),
        ('MODEL.DIST_HANG_TIMEOUT', _positive_number, "a positive number of seconds"),
        ('SOLVER.IMS_PER_BATCH', _positive_int, "a positive integer (training images per batch)"),
        ('TEST.IMS_PER_BATCH', _positive_int, "a positive integer (test images per batch)"),
        ('DATALOADER.NUM_INSTANCE', _positive_int, "a positive integer (images per identity in a batch)"),
        ('DATALOADER.NUM_WORKERS', _non_negative_int, "an integer >= 0 (0 loads in the main process)"),
        ('SOLVER.BASE_LR', _positive_number, "a positive number"),
        ('SOLVER.WARMUP_EPOCHS', _number_at_least(0), "a number >= 0 (0: no warm-up)"),
        ('SOLVER.EVAL_PERIOD', _positive_int, PERIOD_RULE.format(do="evaluate")),
        ('SOLVER.CHECKPOINT_PERIOD', _positive_int, PERIOD_RULE.format(do="save transformer_<epoch>.pth")),
        ('SOLVER.LOG_PERIOD', _positive_int, "a positive integer (iterations between log lines)"),
        ('TEST.FEAT_NORM', _is_yes_no, "'yes' or 'no'"),
        ('TEST.RE_RANKING', _is_yes_no, "'yes' or 'no' (True or False)"),
        ('MODEL.IF_WITH_CENTER', _is_yes_no, "'yes' or 'no'"),
        ('TEST.FLIP_FEATS', _is_yes_no, "'yes' or 'no' (True or False)"),
        # The evaluator lower-cases the metric name, so 'Cosine' works there and here.
        ('TEST.DIST_METRIC', lambda value: str(value).lower() in choices.DIST_METRICS,
         f"one of {list(choices.DIST_METRICS)}"),
        _choice_rule('MODEL.NAME', choices.MODEL_NAMES),
        _choice_rule('MODEL.PRETRAIN_CHOICE', choices.PRETRAIN_CHOICES),
        _choice_rule('MODEL.NECK', choices.NECK_TYPES),
        _choice_rule('TEST.NECK_FEAT', choices.NECK_FEATS),
        _choice_rule('MODEL.ID_LOSS_TYPE', choices.ID_LOSS_TYPES),
        _choice_rule('MODEL.METRIC_LOSS_TYPE', choices.METRIC_LOSS_TYPES),
        _choice_rule('MODEL.IF_LABELSMOOTH', choices.LABEL_SMOOTH),
        _choice_rule('DATALOADER.SAMPLER', choices.SAMPLERS),
        _choice_rule('SOLVER.OPTIMIZER_NAME', choices.OPTIMIZERS),
        _choice_rule('SOLVER.WARMUP_METHOD', choices.WARMUP_METHODS),
        _choice_rule('SOLVER.AMP_DTYPE', choices.AMP_DTYPES),
        _choice_rule('TEST.AMP_DTYPE', choices.AMP_DTYPES),
        _choice_rule('MODEL.COMPILE', choices.COMPILE_MODES),
        ('MODEL.TRAIN_MODE', lambda value: value in choices.TRAIN_MODES,
         f"one of {list(choices.TRAIN_MODES)} (docs/unsupervised.md)"),
    )


def _where_to_fix(config_file: str) -> str:
    return f"fix it in {config_file} or in the command-line overrides" if config_file \
        else "fix the command-line override"


def _check_vit_test_size(cfg: CfgNode, config_file: str) -> None:
    # The ViT is built for INPUT.SIZE_TRAIN (its patch grid and position embedding) and, as the
    # reference's assert, refuses images of any other size: a different SIZE_TEST would fail
    # only at the first evaluation. So are CLIP-ReID's towers (its attention pool's grid too).
    # ResNet-50 pools globally and takes any test size.
    size_train, size_test = list(cfg.INPUT.SIZE_TRAIN), list(cfg.INPUT.SIZE_TEST)
    if cfg.MODEL.NAME in ('transformer', *choices.CLIP_MODEL_NAMES) and size_test != size_train:
        raise ConfigError(f"INPUT.SIZE_TEST {size_test} differs from INPUT.SIZE_TRAIN {size_train}, but "
                          f"MODEL.NAME '{cfg.MODEL.NAME}' takes test images only of the size it "
                          f"was built for; set INPUT.SIZE_TEST {size_train} ({_where_to_fix(config_file)})")


# The reference's vit_small, which TransReID-SSL's configs name for their own, different ViT-S.
REFERENCE_VIT_SMALL = 'vit_small_patch16_224_TransReID'
SSL_VIT_SMALL = 'vit_small_ssl_patch16_224_TransReID'


def _check_ssl_name_clash(cfg: CfgNode, config_file: str) -> None:
    # A TransReID-SSL YAML as published: their name with their settings would silently build the
    # reference's 768-wide network, which their checkpoint then fails to fit key by key.
    ssl_settings = cfg.MODEL.PRETRAIN_HW_RATIO != 1 or cfg.MODEL.STEM_CONV
    if cfg.MODEL.TRANSFORMER_TYPE == REFERENCE_VIT_SMALL and ssl_settings:
        raise ConfigError(
            f"MODEL.TRANSFORMER_TYPE '{REFERENCE_VIT_SMALL}' with TransReID-SSL's PRETRAIN_HW_RATIO or STEM_CONV "
            "looks like a TransReID-SSL config, whose ViT-S (384 wide, 12 blocks) has that name; here, as in "
            f"TransReID, the name builds the reference's 768-wide 8-block network: set TRANSFORMER_TYPE "
            f"'{SSL_VIT_SMALL}' (or use configs/Market/vit_small_ssl.yml) ({_where_to_fix(config_file)})")


def _check_stem(cfg: CfgNode, config_file: str) -> None:
    # The stem halves the image, then the projection steps by half the stride: both must be even.
    if not cfg.MODEL.STEM_CONV:
        return
    if cfg.MODEL.NAME != 'transformer':
        raise ConfigError(f"MODEL.STEM_CONV is the convolution stem of a ViT, but MODEL.NAME is "
                          f"'{cfg.MODEL.NAME}'; set STEM_CONV False ({_where_to_fix(config_file)})")
    for key in ('MODEL.STRIDE_SIZE', 'INPUT.SIZE_TRAIN'):
        value = list(_lookup(cfg, key))
        if any(side % 2 for side in value):
            raise ConfigError(f"{key} {value} has an odd side, but MODEL.STEM_CONV halves the image and steps "
                              "its patches by half the stride: use even values, e.g. [16, 16] or [12, 12] and "
                              f"[256, 128] ({_where_to_fix(config_file)})")


def _check_transformer(cfg: CfgNode, config_file: str) -> None:
    _check_stem(cfg, config_file)
    if cfg.MODEL.NAME != 'transformer':
        return
    _check_ssl_name_clash(cfg, config_file)
    rules: Tuple[ValueRule, ...] = (
        _choice_rule('MODEL.TRANSFORMER_TYPE', choices.TRANSFORMER_TYPES),
        ('INPUT.SIZE_TRAIN', _size_holds_a_patch,
         "at least [16, 16] for a transformer, whose patches are 16 x 16 pixels"),
    )
    _apply_rules(cfg, rules, config_file)


def _check_identity_batches(cfg: CfgNode, config_file: str) -> None:
    # P identities x K images: the batch must split into whole identities.
    batch, instances = cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE
    if cfg.DATALOADER.SAMPLER == 'softmax_triplet' and batch % instances:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH {batch} is not a multiple of "
                          f"DATALOADER.NUM_INSTANCE {instances}; identity batches hold whole "
                          f"identities of NUM_INSTANCE images ({_where_to_fix(config_file)})")
    if 'center' in cfg.MODEL.METRIC_LOSS_TYPE and cfg.DATALOADER.SAMPLER != 'softmax_triplet':
        # The 'softmax' sampler leaves the loss without its metric terms, so the centers would
        # get no gradient (the reference crashes there with an AttributeError on `grad`).
        raise ConfigError(
            f"MODEL.METRIC_LOSS_TYPE '{cfg.MODEL.METRIC_LOSS_TYPE}' needs DATALOADER.SAMPLER "
            f"'softmax_triplet' (identity-balanced batches); with '{cfg.DATALOADER.SAMPLER}' the "
            "metric losses are left out and the centers would get no gradient. Set "
            "METRIC_LOSS_TYPE 'triplet' to train with the ID loss alone, or DATALOADER.SAMPLER "
            f"'softmax_triplet' to keep the center loss ({_where_to_fix(config_file)})")


def _apply_rules(cfg: CfgNode, rules: Sequence[ValueRule], config_file: str) -> None:
    for key, is_allowed, allowed in rules:
        value = _lookup(cfg, key)
        if not is_allowed(value):
            raise ConfigError(f"{key} {value!r} is not allowed; it must be {allowed} "
                              f"({_where_to_fix(config_file)})")


def _check_values(cfg: CfgNode, config_file: str = "") -> None:
    """Raise a ConfigError naming the key, its value and what it allows for the first value of
    `cfg` that cannot work; `config_file` is named as the place to fix it."""
    _apply_rules(cfg, _value_rules(), config_file)
    _check_transformer(cfg, config_file)
    _check_vit_test_size(cfg, config_file)
    _check_identity_batches(cfg, config_file)
    _apply_rules(cfg, choices.cluster_rules(cfg), config_file)


def load_config(config_file: str = "", opts: Sequence[str] = ()) -> CfgNode:
    """Defaults, then `config_file` (if given), then `KEY VALUE` overrides; checked by
    `_check_values` and returned frozen."""
    cfg = _C.clone()
    if config_file:
        _merge_file(cfg, config_file)
    _merge_opts(cfg, opts)
    apply_stage2_solver(cfg, _C, _where_to_fix(config_file))
    _check_values(cfg, config_file)
    switches(cfg)
    cfg.freeze()
    return cfg
