"""The one rule for files the project writes (utils.files.check_output), tool by tool: an output
never replaces an input, a run's checkpoints or an earlier result (without --overwrite), is
refused before any work when it cannot be written, and the refusal is one `error:` line."""
import hashlib
import json
import os
import shutil
import sys
import test as test_script

import pytest
import torch

from tests.test_checkpoint_faults import tmpfs  # noqa: F401  (a fixture)
from tests.test_pipeline import run_script
from tests.test_tools import Setup
from tools import (export, extract_features, plot_training, search, visualize_attention,
                   visualize_ranks)
from utils.files import UnsafeOutputError, check_output, check_output_folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return Setup(str(tmp_path_factory.mktemp("safety_data")), str(tmp_path_factory.mktemp("safety")))


@pytest.fixture(scope="module")
def run_dir(setup, tmp_path_factory):
    """A training run's folder: resume state, weights of an epoch, metrics.csv."""
    run = str(tmp_path_factory.mktemp("run"))
    torch.save({"model": {}, "optimizer": {}, "epoch": 1}, os.path.join(run, "last_checkpoint.pth"))
    shutil.copy(setup.weight, os.path.join(run, "transformer_1.pth"))
    with open(os.path.join(run, "metrics.csv"), "w") as handle:
        handle.write("epoch,iteration,loss\n1,1,2.5\n")
    return run


def digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def refused(main, argv, *protected):
    """Run a tool's main; it must exit with one error line and leave `protected` unchanged."""
    before = {path: digest(path) for path in protected}
    with pytest.raises(SystemExit) as stop:
        main(argv)
    message = str(stop.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    assert {path: digest(path) for path in protected} == before
    return message


def targets(setup, run_dir):
    """Files that no tool may write over: its inputs and a run's checkpoints."""
    return [setup.weight, os.path.join(run_dir, "last_checkpoint.pth"),
            os.path.join(run_dir, "transformer_1.pth"), os.path.join(run_dir, "metrics.csv")]


@pytest.mark.parametrize("index", range(4))
def test_file_outputs_never_replace_inputs_or_checkpoints(setup, run_dir, index):
    target = targets(setup, run_dir)[index]
    protected = targets(setup, run_dir)
    refused(extract_features.main, setup.args("--images", setup.query_dir, "--output", target),
            *protected)
    refused(export.main, setup.args("--format", "onnx", "--output", target), *protected)
    refused(plot_training.main, [run_dir, "--output", target], *protected)
    # --overwrite allows replacing an earlier result, never an input or a file of another kind.
    refused(export.main, setup.args("--format", "onnx", "--output", target, "--overwrite"), *protected)
    refused(plot_training.main, [run_dir, "--output", target, "--overwrite"], *protected)


def test_folder_outputs_that_are_files_are_refused_before_any_work(setup, run_dir):
    protected = targets(setup, run_dir)
    for main, args in ((search.main, ["--query", setup.query_dir, "--gallery", setup.gallery_dir]),
                       (visualize_ranks.main, []),
                       (visualize_attention.main, ["--images", setup.query_dir])):
        message = refused(main, setup.args(*args, "--output-dir", setup.weight), *protected)
        assert "is a file, not a folder" in message


def test_an_output_that_is_a_folder_leaves_no_half_feature_set(setup, tmp_path):
    folder = tmp_path / "feats.npy"
    folder.mkdir()
    message = refused(extract_features.main,
                      setup.args("--images", setup.query_dir, "--output", str(folder)))
    assert "is a folder" in message
    assert sorted(os.listdir(tmp_path)) == ["feats.npy"] and not os.listdir(folder)


def test_an_existing_result_is_replaced_only_with_overwrite(setup, run_dir, tmp_path):
    output = str(tmp_path / "curves.png")
    assert plot_training.main([run_dir, "--output", output]) == 0
    first = digest(output)
    message = refused(plot_training.main, [run_dir, "--output", output], output)
    assert "exists; pass --overwrite" in message
    assert plot_training.main([run_dir, "--output", output, "--overwrite"]) == 0
    assert digest(output) == first  # the same data drawn again, now by consent


def test_test_py_keeps_earlier_results_and_writes_fresh_names(setup, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "test_results.json").write_text('{"mAP": 0.5}')
    monkeypatch.setattr(sys, "argv", ["test.py", *setup.opts, "TEST.WEIGHT", setup.weight,
                                      "OUTPUT_DIR", str(out)])
    test_script.main()
    assert (out / "test_results.json").read_text() == '{"mAP": 0.5}'
    assert json.loads((out / "test_results-2.json").read_text())["weight"] == setup.weight
    assert (out / "verification_roc-2.png").is_file()
    assert not (out / "verification_roc.png").exists()


@pytest.mark.parametrize("script", ["train.py", "test.py"])
def test_a_read_only_output_dir_is_one_error_line(setup, tmpfs, script):
    out = os.path.join(tmpfs("1m", read_only=True), "run")
    result = run_script([script, *setup.opts, "TEST.WEIGHT", setup.weight, "OUTPUT_DIR", out],
                        timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Read-only file system" in lines[-1], lines
    assert out in lines[-1]


def test_a_full_disk_under_the_log_file_is_one_warning_not_a_traceback(tmpfs, capsys):
    from tests.test_checkpoint_faults import fill_up
    from utils.logger import setup_logger
    folder = tmpfs("1m")
    logger = setup_logger("transreid.safety", folder, if_train=True)
    logger.info("first line")
    fill_up(folder, leave=0)
    for _ in range(3):
        logger.info("x" * 100_000)  # more than the page cache lets the handler buffer
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: the log file")]
    assert len(warnings) == 1 and "No space left on device" in warnings[0], err
    for handler in logger.handlers:
        handler.close()


def test_the_rule_itself(tmp_path):
    source = tmp_path / "weights.pth"
    source.write_bytes(b"x")
    link = tmp_path / "alias.npy"
    os.link(source, link)
    with pytest.raises(UnsafeOutputError, match="does not end in .png"):
        check_output(str(source), ".png")
    with pytest.raises(UnsafeOutputError, match="is an input of this command"):
        check_output(str(link), ".npy", inputs=[str(source)], overwrite=True)
    with pytest.raises(UnsafeOutputError, match="exists; pass --overwrite"):
        check_output(str(link), ".npy")
    assert check_output(str(tmp_path / "new" / "deep" / "a.npy"), ".npy") == \
        str(tmp_path / "new" / "deep" / "a.npy")
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(UnsafeOutputError, match="is a file, not a folder"):
        check_output_folder(str(source), ["a.png"])
