"""Exported files read back are verified, and exports write cleanly (docs/deploy.md, 'Damaged
files'): damaged, mismatched and foreign files give one line naming them; an export stopped or
out of room leaves nothing behind; its options are range-checked. The tiny exports are the
session's (tests/deploy_setup.py)."""
import errno
import json
import logging
import os
import re
import shutil
import subprocess

import pytest

pytest.importorskip("onnx")
pytest.importorskip("openvino")

import onnx  # noqa: E402

from config import load_config  # noqa: E402
from deploy import export as deploy_export  # noqa: E402
from processor import FeatureExtractor  # noqa: E402
from tests.deploy_setup import NO_WORKERS  # noqa: E402
from tests.test_checkpoint_faults import load_test_script  # noqa: E402
from tools import export  # noqa: E402
from utils.errors import ToolError  # noqa: E402


def copy_of(deployed, kind: str, folder) -> str:
    """A copy of an export (with OpenVINO's .bin) in `folder`."""
    source = deployed.files[kind]
    for path in (source, os.path.splitext(source)[0] + ".bin"):
        if os.path.exists(path):
            shutil.copy(path, folder)
    return os.path.join(folder, os.path.basename(source))


def opened(path: str):
    return FeatureExtractor.from_files(weight=path, opts=NO_WORKERS)


def flip_bytes(path: str, start: int, count: int = 64) -> None:
    with open(path, "r+b") as handle:
        handle.seek(start)
        data = bytearray(handle.read(count))
        handle.seek(start)
        handle.write(bytes(b ^ 0xFF for b in data))


# ------------------------------------------------------------------------- reading
def test_a_flipped_weight_in_an_onnx_file_is_refused(deployed, tmp_path):
    path = copy_of(deployed, "onnx", tmp_path)
    model = onnx.load(path)
    largest = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    content = open(path, "rb").read()
    offset = content.index(largest.raw_data)
    flip_bytes(path, offset + len(largest.raw_data) // 2)
    assert os.path.getsize(path) == len(content)
    with pytest.raises(ToolError, match=r"weights of '.*fp32.onnx' do not match the SHA-256"):
        opened(path)
    (tmp_path / "intact").mkdir()
    opened(copy_of(deployed, "onnx", tmp_path / "intact"))  # an intact copy runs


def test_an_xml_with_a_changed_bin_of_the_same_size_is_refused(deployed, tmp_path):
    path = copy_of(deployed, "openvino", tmp_path)
    weights = os.path.splitext(path)[0] + ".bin"
    flip_bytes(weights, os.path.getsize(weights) // 2)
    with pytest.raises(ToolError, match=r"fp32.xml' do not match the SHA-256 .* its \.bin"):
        opened(path)


@pytest.mark.parametrize("damage,message", [
    ("no bin", r"has no weights file '.*fp32.bin' beside it"),
    ("short bin", r"OpenVINO cannot read '.*fp32.xml'|do not match the SHA-256"),
    ("text", r"is not an OpenVINO IR model"),
    ("empty", r"is not an OpenVINO IR model"),
    ("html", r"is not an OpenVINO IR model"),
])
def test_unreadable_openvino_files_are_named_in_one_line(deployed, tmp_path, damage, message):
    path = copy_of(deployed, "openvino", tmp_path)
    weights = os.path.splitext(path)[0] + ".bin"
    if damage == "no bin":
        os.remove(weights)
    elif damage == "short bin":
        os.truncate(weights, os.path.getsize(weights) // 2)
    else:
        text = {"text": "model weights go here\n", "empty": "",
                "html": "<!DOCTYPE html><html><body>404 Not Found</body></html>"}[damage]
        with open(path, "w") as handle:
            handle.write(text)
    with pytest.raises(ToolError, match=message) as caught:
        opened(path)
    assert "\n" not in str(caught.value)


def rewrite_metadata(path: str, **changes) -> None:
    model = onnx.load(path)
    entry = model.metadata_props[0]
    entry.value = json.dumps({**json.loads(entry.value), **changes})
    onnx.save(model, path)


@pytest.mark.parametrize("changes,message", [
    ({"input_size": [128, 64]}, r"takes \[64, 32\] images but its metadata says input_size "
                                r"\[128, 64\]"),
    ({"input_size": [64]}, r"unreadable transreid_deploy metadata \(input_size is \[64\]\)"),
    ({"sie_cameras": "three"}, r"unreadable transreid_deploy metadata \(sie_cameras is 'three'\)"),
    ({"sie_cameras": -1}, r"sie_cameras is -1"),
    ({"pixel_std": [0.5, 0.0, 0.5]}, r"pixel_std is \[0.5, 0.0, 0.5\]"),
])
def test_metadata_of_a_wrong_type_or_range_is_named(deployed, tmp_path, changes, message):
    path = copy_of(deployed, "onnx", tmp_path)
    rewrite_metadata(path, **changes)
    with pytest.raises(ToolError, match=message):
        opened(path)


def test_an_onnx_file_with_weights_outside_it_is_refused(deployed, tmp_path):
    path = str(tmp_path / "external.onnx")
    model = onnx.load(deployed.files["onnx"])
    onnx.save(model, path, save_as_external_data=True, location="external.data",
              size_threshold=0)
    with pytest.raises(ToolError, match="keeps weights outside the file"):
        opened(path)


# ------------------------------------------------------------------------- writing
def export_args(deployed, output, *args):
    return ["--weight", deployed.weight, "--output", str(output), "--check-size", "2", *args,
            *deployed.opts]


@pytest.mark.parametrize("args,message", [
    (["--opset", "99"], "--opset 99: this exporter writes opsets 14 to 20"),
    (["--opset", "3"], "--opset 3: this exporter writes opsets 14 to 20"),
    (["--form", "portable", "--camera-mode", "fixed"], "needs at least one of them"),
    (["--camera", "1"], "are for --form portable --camera-mode fixed"),
])
def test_export_options_are_range_checked_before_any_work(deployed, tmp_path, args, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        export.main(export_args(deployed, tmp_path / "m.onnx", *args))
    assert os.listdir(tmp_path) == []


def test_a_stopped_exports_work_folder_is_removed_by_the_next_export(deployed, tmp_path):
    finished = subprocess.Popen(["true"])
    finished.wait()  # its pid names no process now
    stale = tmp_path / f".export_{finished.pid}_abcdefgh"
    live = tmp_path / f".export_{os.getpid()}_abcdefgh"  # an export running now
    for folder in (stale, live):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"partial")
    assert export.main(export_args(deployed, tmp_path / "m.onnx")) == 0
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, "m.onnx"])


def test_a_full_disk_during_export_is_one_line_and_writes_nothing(deployed, tmp_path,
                                                                  monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(deploy_export, "_write", no_space)
    with pytest.raises(SystemExit, match="disk is full.*nothing was written"):
        export.main(export_args(deployed, tmp_path / "m.onnx"))
    assert os.listdir(tmp_path) == []


def test_too_little_space_for_an_export_is_refused_before_any_work(deployed, tmp_path,
                                                                   monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(deploy_export.shutil, "disk_usage",
                        lambda path: usage._replace(free=4096))
    with pytest.raises(SystemExit, match="needs about .* MiB there"):
        export.main(export_args(deployed, tmp_path / "m.onnx"))
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------- test.py
def test_one_identity_scores_and_says_why_there_are_no_verification_figures(deployed,
                                                                            tmp_path):
    """A test split of one identity: mAP and CMC are written, the verification figures are
    named as unavailable instead of a crash after scoring."""
    source = os.path.dirname(os.path.dirname(deployed.query[0]))
    pid = os.path.basename(deployed.query[0]).split("_")[0]
    for split in ("query", "bounding_box_test"):
        (tmp_path / "tree" / split).mkdir(parents=True)
        for name in os.listdir(os.path.join(source, split)):
            if name.startswith(pid + "_"):
                shutil.copy(os.path.join(source, split, name), tmp_path / "tree" / split)
    script = load_test_script()
    cfg = load_config("", deployed.opts + ["TEST.WEIGHT", deployed.weight, "DATASETS.NAMES",
                                           "folder", "DATASETS.ROOT_DIR", str(tmp_path / "tree"),
                                           "OUTPUT_DIR", str(tmp_path / "out")])
    logger = logging.getLogger("test_deploy_faults")
    result = script.run_evaluation(cfg, logger)
    script.write_results(cfg, result, logger)
    written = json.loads((tmp_path / "out" / "test_results.json").read_text())
    assert written["mAP"] == pytest.approx(result.mAP) and 0 < written["mAP"] <= 1
    assert "0 impostor pairs" in written["verification"]["unavailable"]
