"""The config that train.py saves to OUTPUT_DIR loads back unchanged."""
import glob
import os

import pytest

from config import load_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "**", "*.yml"), recursive=True))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO_ROOT))
def test_saved_config_reloads_equal(path, tmp_path):
    cfg = load_config(path, ["MODEL.DEVICE_ID", "0"])
    saved = tmp_path / "config.yaml"
    saved.write_text(cfg.dump())
    assert load_config(str(saved)) == cfg


@pytest.mark.parametrize("value, expected", [("0", "0"), ("1,2", "1,2"), ("('5')", "5")])
def test_string_keys_stay_strings_on_the_command_line(value, expected):
    assert load_config("", ["MODEL.DEVICE_ID", value]).MODEL.DEVICE_ID == expected
