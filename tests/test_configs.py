"""Config defaults, the YAMLs under configs/, and the loader's errors."""
import os
import re
from pathlib import Path

import pytest

from config import ConfigError, cfg, check_choice, load_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
ALL_YAMLS = sorted(CONFIG_DIR.rglob("*.yml"))

# Every YAML of the reference repository (configs/Market/swin.yml aside: its TRANSFORMER_TYPE
# 'swin' is unknown to the reference's own model factory).
REFERENCE_YAMLS = [
    "transformer_base.yml",
    *(f"{dataset}/{name}.yml"
      for dataset in ("Market", "DukeMTMC", "MSMT17")
      for name in ("vit_base", "vit_jpm", "vit_sie", "vit_transreid", "vit_transreid_384",
                   "vit_transreid_stride", "vit_transreid_stride_384", "deit_transreid_stride")),
    "MSMT17/vit_small.yml", "MSMT17/deit_small.yml",
    *(f"OCC_Duke/{name}.yml" for name in ("vit_base", "vit_jpm", "vit_sie", "vit_transreid",
                                          "vit_transreid_stride", "deit_transreid_stride")),
    *(f"{dataset}/{name}.yml"
      for dataset in ("VeRi", "VehicleID")
      for name in ("vit_base", "vit_transreid", "vit_transreid_stride", "deit_transreid",
                   "deit_transreid_stride")),
]

# The reference's configs/Market/vit_transreid_stride.yml, byte for byte in its settings.
REFERENCE_MARKET_STRIDE_YAML = """\
MODEL:
  PRETRAIN_CHOICE: 'imagenet'
  PRETRAIN_PATH: '/home/heshuting/.cache/torch/checkpoints/jx_vit_base_p16_224-80ecf9dd.pth'
  METRIC_LOSS_TYPE: 'triplet'
  IF_LABELSMOOTH: 'off'
  IF_WITH_CENTER: 'no'
  NAME: 'transformer'
  NO_MARGIN: True
  DEVICE_ID: ('5')
  TRANSFORMER_TYPE: 'vit_base_patch16_224_TransReID'
  STRIDE_SIZE: [12, 12]
  SIE_CAMERA: True
  SIE_COE: 3.0
  JPM: True
  RE_ARRANGE: True

INPUT:
  SIZE_TRAIN: [256, 128]
  SIZE_TEST: [256, 128]
  PROB: 0.5 # random horizontal flip
  RE_PROB: 0.5 # random erasing
  PADDING: 10
  PIXEL_MEAN: [0.5, 0.5, 0.5]
  PIXEL_STD: [0.5, 0.5, 0.5]

DATASETS:
  NAMES: ('market1501')
  ROOT_DIR: ('../../data')

DATALOADER:
  SAMPLER: 'softmax_triplet'
  NUM_INSTANCE: 4
  NUM_WORKERS: 8

SOLVER:
  OPTIMIZER_NAME: 'SGD'
  MAX_EPOCHS: 120
  BASE_LR: 0.008
  IMS_PER_BATCH: 64
  WARMUP_METHOD: 'linear'
  LARGE_FC_LR: False
  CHECKPOINT_PERIOD: 120
  LOG_PERIOD: 50
  EVAL_PERIOD: 120
  WEIGHT_DECAY:  1e-4
  WEIGHT_DECAY_BIAS: 1e-4
  BIAS_LR_FACTOR: 2

TEST:
  EVAL: True
  IMS_PER_BATCH: 256
  RE_RANKING: False
  WEIGHT: ''
  NECK_FEAT: 'before'
  FEAT_NORM: 'yes'

OUTPUT_DIR: '../logs/market_vit_transreid_stride'
"""

# The reference's config/defaults.py, key by key.
REFERENCE_DEFAULTS = {
    "MODEL.DEVICE": "cuda", "MODEL.DEVICE_ID": "0", "MODEL.NAME": "resnet50",
    "MODEL.LAST_STRIDE": 1, "MODEL.PRETRAIN_PATH": "", "MODEL.PRETRAIN_CHOICE": "imagenet",
    "MODEL.NECK": "bnneck", "MODEL.IF_WITH_CENTER": "no", "MODEL.ID_LOSS_TYPE": "softmax",
    "MODEL.ID_LOSS_WEIGHT": 1.0, "MODEL.TRIPLET_LOSS_WEIGHT": 1.0,
    "MODEL.METRIC_LOSS_TYPE": "triplet", "MODEL.DIST_TRAIN": False, "MODEL.NO_MARGIN": False,
    "MODEL.IF_LABELSMOOTH": "on", "MODEL.COS_LAYER": False, "MODEL.DROP_PATH": 0.1,
    "MODEL.DROP_OUT": 0.0, "MODEL.ATT_DROP_RATE": 0.0, "MODEL.TRANSFORMER_TYPE": "None",
    "MODEL.STRIDE_SIZE": [16, 16], "MODEL.JPM": False, "MODEL.SHIFT_NUM": 5,
    "MODEL.SHUFFLE_GROUP": 2, "MODEL.DEVIDE_LENGTH": 4, "MODEL.RE_ARRANGE": True,
    "MODEL.SIE_COE": 3.0, "MODEL.SIE_CAMERA": False, "MODEL.SIE_VIEW": False,
    "INPUT.SIZE_TRAIN": [384, 128], "INPUT.SIZE_TEST": [384, 128], "INPUT.PROB": 0.5,
    "INPUT.RE_PROB": 0.5, "INPUT.PIXEL_MEAN": [0.485, 0.456, 0.406],
    "INPUT.PIXEL_STD": [0.229, 0.224, 0.225], "INPUT.PADDING": 10,
    "DATASETS.NAMES": "market1501", "DATASETS.ROOT_DIR": "../data",
    "DATALOADER.NUM_WORKERS": 8, "DATALOADER.SAMPLER": "softmax", "DATALOADER.NUM_INSTANCE": 16,
    "SOLVER.OPTIMIZER_NAME": "Adam", "SOLVER.MAX_EPOCHS": 100, "SOLVER.BASE_LR": 3e-4,
    "SOLVER.LARGE_FC_LR": False, "SOLVER.BIAS_LR_FACTOR": 1, "SOLVER.SEED": 1234,
    "SOLVER.MOMENTUM": 0.9, "SOLVER.MARGIN": 0.3, "SOLVER.CENTER_LR": 0.5,
    "SOLVER.CENTER_LOSS_WEIGHT": 0.0005, "SOLVER.WEIGHT_DECAY": 0.0005,
    "SOLVER.WEIGHT_DECAY_BIAS": 0.0005, "SOLVER.GAMMA": 0.1, "SOLVER.STEPS": (40, 70),
    "SOLVER.WARMUP_FACTOR": 0.01, "SOLVER.WARMUP_EPOCHS": 5, "SOLVER.WARMUP_METHOD": "linear",
    "SOLVER.COSINE_MARGIN": 0.5, "SOLVER.COSINE_SCALE": 30, "SOLVER.CHECKPOINT_PERIOD": 10,
    "SOLVER.LOG_PERIOD": 100, "SOLVER.EVAL_PERIOD": 10, "SOLVER.IMS_PER_BATCH": 64,
    "TEST.IMS_PER_BATCH": 128, "TEST.RE_RANKING": False, "TEST.WEIGHT": "",
    "TEST.NECK_FEAT": "after", "TEST.FEAT_NORM": "yes", "TEST.DIST_MAT": "dist_mat.npy",
    "TEST.EVAL": False, "OUTPUT_DIR": "", "DEBUG": False,
}


def _lookup(node, dotted_key):
    for part in dotted_key.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("key", sorted(REFERENCE_DEFAULTS))
def test_every_reference_default_exists_with_its_value(key):
    value = _lookup(cfg, key)
    expected = REFERENCE_DEFAULTS[key]
    assert value == expected and type(value) is type(expected), (key, value)


def test_every_reference_yaml_is_present():
    present = {path.relative_to(CONFIG_DIR).as_posix() for path in ALL_YAMLS}
    assert sorted(set(REFERENCE_YAMLS) - present) == []


@pytest.mark.parametrize("path", ALL_YAMLS, ids=lambda p: p.relative_to(CONFIG_DIR).as_posix())
def test_yaml_loads_with_repo_relative_paths(path):
    loaded = load_config(str(path))
    for key in ("MODEL.PRETRAIN_PATH", "DATASETS.ROOT_DIR", "OUTPUT_DIR", "TEST.WEIGHT"):
        assert not os.path.isabs(_lookup(loaded, key)), key
    assert loaded.is_frozen()


# The paper's headline settings of the stride configs that the reference README trains:
# (stride, SIE camera, SIE view, shift, base lr, batch, train size).
README_STRIDE_CONFIGS = {
    "Market/vit_transreid_stride.yml": ([12, 12], True, False, 5, 0.008, 64, [256, 128]),
    "DukeMTMC/vit_transreid_stride.yml": ([12, 12], True, False, 5, 0.008, 64, [256, 128]),
    "MSMT17/vit_transreid_stride.yml": ([12, 12], True, False, 5, 0.008, 64, [256, 128]),
    "OCC_Duke/vit_transreid_stride.yml": ([11, 11], True, False, 5, 0.008, 64, [256, 128]),
    "VeRi/vit_transreid_stride.yml": ([12, 12], True, True, 8, 0.01, 64, [256, 256]),
    "VehicleID/vit_transreid_stride.yml": ([12, 12], False, False, 8, 0.045, 256, [256, 256]),
}


@pytest.mark.parametrize("name", sorted(README_STRIDE_CONFIGS))
def test_readme_stride_configs_keep_reference_hyper_parameters(name):
    loaded = load_config(str(CONFIG_DIR / name))
    stride, sie_camera, sie_view, shift, lr, batch, size = README_STRIDE_CONFIGS[name]
    model, solver = loaded.MODEL, loaded.SOLVER
    assert (model.STRIDE_SIZE, model.SIE_CAMERA, model.SIE_VIEW, model.SHIFT_NUM) == (
        stride, sie_camera, sie_view, shift)
    assert (solver.BASE_LR, solver.IMS_PER_BATCH, loaded.INPUT.SIZE_TRAIN) == (lr, batch, size)
    assert model.JPM and model.NO_MARGIN and model.IF_LABELSMOOTH == 'off'
    assert (solver.OPTIMIZER_NAME, solver.MAX_EPOCHS, solver.BIAS_LR_FACTOR) == ('SGD', 120, 2)
    assert solver.WEIGHT_DECAY == solver.WEIGHT_DECAY_BIAS == 1e-4
    assert loaded.TEST.NECK_FEAT == 'before'


def test_reference_yaml_loads_unchanged(tmp_path):
    path = tmp_path / "vit_transreid_stride.yml"
    path.write_text(REFERENCE_MARKET_STRIDE_YAML)
    loaded = load_config(str(path))
    assert loaded.MODEL.DEVICE_ID == '5'
    assert loaded.MODEL.STRIDE_SIZE == [12, 12]
    assert loaded.DATASETS.NAMES == 'market1501'
    assert loaded.DATASETS.ROOT_DIR == '../../data'
    assert loaded.SOLVER.WEIGHT_DECAY == 1e-4
    assert loaded.MODEL.PRETRAIN_PATH.startswith('/home/heshuting/')


def test_overrides_apply_after_the_file(tmp_path):
    path = tmp_path / "ref.yml"
    path.write_text(REFERENCE_MARKET_STRIDE_YAML)
    loaded = load_config(str(path), ["MODEL.DEVICE_ID", "('0')", "SOLVER.BASE_LR", "0.01"])
    assert (loaded.MODEL.DEVICE_ID, loaded.SOLVER.BASE_LR) == ('0', 0.01)


def test_misspelt_yaml_key_names_file_and_key(tmp_path):
    path = tmp_path / "typo.yml"
    path.write_text("MODEL:\n  STRIDE_SIZ: [12, 12]\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(path) in str(info.value) and "STRIDE_SIZ" in str(info.value)


@pytest.mark.parametrize("content, message", [
    (b"MODEL:\n  NAME: [transformer\n  STRIDE_SIZE: [12, 12]\n",
     r" line 3, column 14: not valid YAML \(expected ',' or '\]', but got ':'\)$"),
    (b"- MODEL.NAME\n- transformer\n", r" holds a YAML list \(\['MODEL.NAME', 'transformer'\]\), not a mapping"),
    (b"MODEL.NAME transformer\n", r" holds a YAML str \('MODEL.NAME transformer'\), not a mapping"),
    (b"MODEL: transformer\n", r": MODEL is a section, not a value \('transformer'\); write its keys under it"),
    (b"MODEL:\n  NAME: 'transformer' # r\xe9sum\xe9\n", r" line 2: byte 0xe9 is not UTF-8; save the file as UTF-8 text$"),
    (b"\xff\xfe\x00M\x00O", r" line 1: byte 0xff is not UTF-8"),
], ids=["syntax", "list", "string", "value for a section", "latin-1", "utf-16"])
def test_a_config_file_that_is_not_a_utf8_yaml_mapping_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "bad.yml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}{message}") as info:
        load_config(str(path))
    assert "\n" not in str(info.value)


def test_an_empty_or_bom_marked_config_file_loads(tmp_path):
    empty, bom = tmp_path / "empty.yml", tmp_path / "bom.yml"
    empty.write_bytes(b"")
    bom.write_bytes("\ufeffSOLVER:\n  BASE_LR: 0.5\n".encode("utf-8"))
    assert load_config(str(empty)) == load_config("")
    assert load_config(str(bom)).SOLVER.BASE_LR == 0.5


def test_odd_override_count_is_an_error():
    with pytest.raises(ConfigError, match="pairs"):
        load_config("", ["SOLVER.BASE_LR"])


@pytest.mark.parametrize("key, fix", [
    ("SOLVER.BASE_LRR", "did you mean SOLVER.BASE_LR?"),
    ("SOLVERR.BASE_LR", "did you mean SOLVER.BASE_LR?"),
    ("MODEL.TRANSFROMER_TYPE", "did you mean MODEL.TRANSFORMER_TYPE?"),
    ("SOLVER.FOO", "check its spelling against config/defaults.py"),  # nothing alike: no guess
])
def test_a_misspelled_key_gets_one_line_with_the_nearest_key(tmp_path, key, fix):
    with pytest.raises(ConfigError) as info:
        load_config("", [key, "0.1"])
    assert str(info.value) == f"command-line override: {key} is not a config key; {fix}"
    section, name = key.split(".")
    path = tmp_path / "typo.yml"
    path.write_text(f"{section}:\n  {name}: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == f"{path}: {key} is not a config key; {fix}"


def test_a_key_below_a_value_is_named_not_a_type_error():
    with pytest.raises(ConfigError) as info:
        load_config("", ["SOLVER.BASE_LR.X", "1"])
    assert str(info.value) == ("command-line override: SOLVER.BASE_LR.X: SOLVER.BASE_LR is a value, "
                               "not a section; set SOLVER.BASE_LR itself")


def test_missing_config_file_is_named(tmp_path):
    missing = tmp_path / "nope.yml"
    with pytest.raises(ConfigError, match="nope.yml"):
        load_config(str(missing))


def test_a_folder_as_config_file_is_called_a_folder_and_its_config_suggested(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("SOLVER:\n  BASE_LR: 0.5\n")
    (run / "other.yml").write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(str(run))
    assert str(info.value) == (f"config file '{run}' is a folder; pass the config.yaml in it: "
                               f"--config_file {run / 'config.yaml'}")
    with pytest.raises(ConfigError) as info:
        load_config(str(CONFIG_DIR / "Synthetic"))
    names = ", ".join(str(CONFIG_DIR / "Synthetic" / name) for name in sorted(
        os.listdir(CONFIG_DIR / "Synthetic"))[:3])
    assert str(info.value).startswith(
        f"config file '{CONFIG_DIR / 'Synthetic'}' is a folder; pass one of its files: {names}")
    with pytest.raises(ConfigError, match=r"is a folder, not a YAML file; pass --config_file with a path"):
        load_config(str(tmp_path / "run" / ".."))  # no config in it


def test_check_choice_returns_the_value_or_names_key_value_and_choices():
    assert check_choice("MODEL.NECK", "no", ("bnneck", "no")) == "no"
    with pytest.raises(ValueError) as info:
        check_choice("MODEL.NECK", "bn", ("bnneck", "no"))
    assert str(info.value) == "MODEL.NECK 'bn' is not supported; choose one of ['bnneck', 'no']"


# --------------------------------------------------------------------------------------------
# Values that cannot work are refused at load time, naming the key, the value and the rule
# --------------------------------------------------------------------------------------------
# (key, bad value on the command line, how it is shown, part of the rule the error states)
BAD_VALUES = [
    ("MODEL.STRIDE_SIZE", "[12]", "[12]", "two positive integers"),
    ("MODEL.STRIDE_SIZE", "[0, 12]", "[0, 12]", "two positive integers"),
    ("INPUT.SIZE_TRAIN", "[96]", "[96]", "two positive integers [height, width]"),
    ("INPUT.SIZE_TRAIN", "[95.5, 47]", "[95.5, 47]", "two positive integers [height, width]"),
    ("INPUT.SIZE_TEST", "[96, 48, 3]", "[96, 48, 3]", "two positive integers [height, width]"),
    ("INPUT.PADDING", "-1", "-1", "an integer >= 0"),
    ("SOLVER.MAX_EPOCHS", "0", "0", "a positive integer"),
    ("SOLVER.IMS_PER_BATCH", "0", "0", "a positive integer"),
    ("TEST.IMS_PER_BATCH", "0", "0", "a positive integer"),
    ("DATALOADER.NUM_INSTANCE", "0", "0", "a positive integer"),
    ("SOLVER.EVAL_PERIOD", "0", "0", "set it to SOLVER.MAX_EPOCHS"),
    ("SOLVER.CHECKPOINT_PERIOD", "0", "0", "set it to SOLVER.MAX_EPOCHS"),
    ("SOLVER.LOG_PERIOD", "-5", "-5", "a positive integer"),
    ("TEST.FEAT_NORM", "maybe", "'maybe'", "'yes' or 'no'"),
    ("TEST.DIST_METRIC", "foo", "'foo'", "one of ['euclidean', 'cosine']"),
]


@pytest.mark.parametrize("key, value, shown, rule", BAD_VALUES, ids=lambda item: str(item))
def test_value_that_cannot_work_is_refused_at_load(key, value, shown, rule):
    with pytest.raises(ConfigError) as info:
        load_config("", [key, value])
    message = str(info.value)
    assert message.startswith(f"{key} {shown} is not allowed; it must be ")
    assert rule in message and "command-line override" in message


def test_bad_value_in_a_yaml_names_the_file(tmp_path):
    path = tmp_path / "zero_batch.yml"
    path.write_text("SOLVER:\n  IMS_PER_BATCH: 0\n")
    with pytest.raises(ConfigError, match=rf"SOLVER\.IMS_PER_BATCH 0 is not allowed.*{path.name}"):
        load_config(str(path))


def test_accepted_choices_are_the_evaluators():
    from utils.metrics import DIST_METRICS, R1_mAP_eval

    for metric in (*DIST_METRICS, "Cosine"):
        cfg = load_config("", ["TEST.DIST_METRIC", metric])
        R1_mAP_eval(1, dist_metric=cfg.TEST.DIST_METRIC)  # the evaluator takes what loads
    for switch in ("yes", "no", "on", "off", "True"):
        cfg = load_config("", ["TEST.FEAT_NORM", switch])
        R1_mAP_eval(1, feat_norm=cfg.TEST.FEAT_NORM)


VIT = ["MODEL.NAME", "transformer", "MODEL.TRANSFORMER_TYPE", "deit_tiny_patch16_224_TransReID"]


def test_vit_test_size_other_than_train_size_is_refused():
    # The audit's case: SIZE_TRAIN changed, SIZE_TEST left at the config's value.
    with pytest.raises(ConfigError) as info:
        load_config(str(CONFIG_DIR / "Synthetic/vit_transreid_tiny.yml"), ["INPUT.SIZE_TRAIN", "[95, 47]"])
    message = str(info.value)
    assert message.startswith("INPUT.SIZE_TEST [96, 48] differs from INPUT.SIZE_TRAIN [95, 47]")
    assert "set INPUT.SIZE_TEST [95, 47]" in message and "vit_transreid_tiny.yml" in message


def test_sizes_that_work_today_still_load():
    # Not a multiple of the stride: the patch grid drops the remainder, train and test alike.
    load_config("", VIT + ["INPUT.SIZE_TRAIN", "[95, 47]", "INPUT.SIZE_TEST", "[95, 47]",
                           "MODEL.STRIDE_SIZE", "[12, 12]", "INPUT.PADDING", "0"])
    # ResNet-50 pools globally: any test size works.
    load_config("", ["MODEL.NAME", "resnet50", "INPUT.SIZE_TRAIN", "[256, 128]",
                     "INPUT.SIZE_TEST", "[384, 192]"])
