"""Processor building blocks: config switches, device choice, atomic checkpoints, RNG capture."""
import logging
import os
import random
import sys

import numpy as np
import pytest
import torch

from config import cfg as default_cfg
from config import ConfigError, load_config, yes_no
from processor import checkpoint
from processor.checkpoint import restore_rng_states, rng_states
from config.cli import load_cli_config
from processor.processor import amp_dtype
from utils.device import _gpu_index, apply_visible_devices, select_device
from utils.files import atomic_save
from utils.progress import Progress


@pytest.mark.parametrize("value, expected", [("yes", True), ("no", False), ("Yes", True),
                                             (True, True), (False, False), ("off", False),
                                             (np.bool_(True), True)])
def test_yes_no_reads_the_switch(value, expected):
    assert yes_no(value, "TEST.FEAT_NORM") is expected


def test_yes_no_rejects_other_strings_naming_the_key():
    # The reference treated any non-empty string (even 'no') as yes.
    with pytest.raises(ValueError, match="TEST.FEAT_NORM must be 'yes' or 'no', got 'maybe'"):
        yes_no("maybe", "TEST.FEAT_NORM")


def test_amp_dtype_is_full_precision_on_cpu_and_configurable_on_cuda():
    cfg = default_cfg.clone()
    assert amp_dtype(cfg, torch.device("cpu")) is None
    assert amp_dtype(cfg, torch.device("cuda")) is torch.float16
    cfg.SOLVER.AMP_DTYPE = 'bf16'
    assert amp_dtype(cfg, torch.device("cuda")) is torch.bfloat16
    cfg.SOLVER.AMP_DTYPE = 'fp32'
    assert amp_dtype(cfg, torch.device("cuda")) is None
    # Refused when the config loads, not after data and model are built.
    with pytest.raises(ValueError, match="SOLVER.AMP_DTYPE 'half'"):
        load_config("", ["SOLVER.AMP_DTYPE", "half"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a machine without GPU")
def test_cuda_request_falls_back_to_cpu_with_one_warning(caplog, monkeypatch):
    import utils.device
    monkeypatch.setattr(utils.device, "_WARNED", set())  # as in a fresh process
    with caplog.at_level(logging.WARNING, logger="transreid.device"):
        assert select_device("cuda") == torch.device("cpu")
        assert select_device("cuda") == torch.device("cpu")  # a second choice, no second line
    assert caplog.text.count("no GPU is available") == 1


def test_unknown_device_is_an_error():
    with pytest.raises(ValueError, match="MODEL.DEVICE 'tpu'"):
        select_device("tpu")


def test_an_explicit_gpu_index_is_honoured_in_one_process_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert _gpu_index(torch.device("cuda:1"), "cuda:1", local_rank=0) == 1
    assert _gpu_index(torch.device("cuda"), "cuda", local_rank=3) == 1
    with pytest.raises(ValueError, match="MODEL.DEVICE 'cuda:1' pins every process"):
        _gpu_index(torch.device("cuda:1"), "cuda:1", local_rank=1)
    with pytest.raises(ValueError, match="MODEL.DEVICE 'cuda:2' but only 2 GPU"):
        _gpu_index(torch.device("cuda:2"), "cuda:2", local_rank=0)


@pytest.mark.parametrize("text", ["cuda:x", "gpu", "mps"])
def test_device_strings_other_than_cuda_and_cpu_are_refused(text):
    with pytest.raises(ValueError, match=f"MODEL.DEVICE '{text}' is unknown"):
        select_device(text)


def test_device_id_does_not_override_an_explicit_environment(monkeypatch, caplog):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    apply_visible_devices("5")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    with caplog.at_level(logging.INFO, logger="transreid.device"):
        apply_visible_devices("3")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    assert "CUDA_VISIBLE_DEVICES=5 from the environment wins over MODEL.DEVICE_ID '3'" in caplog.text


def test_atomic_save_keeps_the_previous_file_when_writing_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "last_checkpoint.pth")
    atomic_save({"epoch": 1}, path)

    def crash_midway(obj, handle):
        handle.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["last_checkpoint.pth"], "temporary file left behind"


def test_an_option_after_the_overrides_is_named(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])
    with pytest.raises(ConfigError, match="--config_file came after the KEY VALUE overrides; put "
                                          "options such as --config_file first: python train.py"):
        load_cli_config("", ["SOLVER.MAX_EPOCHS", "1", "--config_file", "x.yml"])
    assert load_cli_config("", ["SOLVER.MAX_EPOCHS", "1"]).SOLVER.MAX_EPOCHS == 1


def test_atomic_save_gives_files_the_mode_of_an_ordinary_write(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_save({"epoch": 1}, str(tmp_path / "model.pth"))
        with open(tmp_path / "plain.txt", "w"):
            pass
    finally:
        os.umask(previous)
    mode_of = {name: os.stat(tmp_path / name).st_mode & 0o777 for name in ("model.pth", "plain.txt")}
    assert mode_of == {"model.pth": 0o644, "plain.txt": 0o644}


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    states = rng_states()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    path = str(tmp_path / "rng.pth")
    atomic_save({"rng": states}, path)
    torch.rand(5), np.random.rand(5), random.random()  # move every generator on

    restore_rng_states(torch.load(path, weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_resume_rejects_a_model_only_file(tmp_path):
    path = str(tmp_path / "transformer_120.pth")
    torch.save({"base.cls_token": torch.zeros(1, 1, 4)}, path)
    with pytest.raises(ValueError, match="not a training checkpoint"):
        checkpoint.load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="MODEL.RESUME"):
        checkpoint.load_checkpoint(str(tmp_path / "missing.pth"))


def test_progress_writes_a_few_plain_lines_off_a_terminal(caplog):
    logger = logging.getLogger("transreid.test_progress")
    with caplog.at_level(logging.INFO, logger="transreid.test_progress"):
        items = list(Progress(range(8), 8, "extracting", logger, log_fraction=0.25))
    assert items == list(range(8))
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines] == [
        "extracting: 2/8", "extracting: 4/8", "extracting: 6/8", "extracting: 8/8"]
