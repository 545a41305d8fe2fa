"""Saved feature sets (tools/feature_files.py) read back whole, and each kind of damage to one of
their three files (.npy matrix, .csv index, .json record of the model) named in one line."""
import re

import numpy as np
import pytest

from datasets.image_list import ImageRecord
from tools.feature_files import load_feature_index, save_feature_index
from utils.errors import ToolError

RECORDS = [ImageRecord("a/0001_c1.jpg", 1, 0, None), ImageRecord("b/x.png", None, None, None),
           ImageRecord("a/0002_c3.jpg", 2, 2, 1)]
PROVENANCE = {"weight": "w.pth", "weight_sha256": "ab", "TEST.FLIP_FEATS": False}


@pytest.fixture
def saved(tmp_path):
    path = str(tmp_path / "gallery.npy")
    features = np.random.default_rng(0).standard_normal((len(RECORDS), 8)).astype(np.float32)
    save_feature_index(features, RECORDS, path, PROVENANCE)
    return path, features


def test_a_saved_feature_set_reads_back_whole(saved):
    path, features = saved
    loaded, records, provenance = load_feature_index(path)
    assert np.array_equal(loaded, features) and loaded.dtype == np.float32
    assert records == RECORDS and provenance == PROVENANCE


def _error(path: str) -> str:
    with pytest.raises(ToolError) as info:
        load_feature_index(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_truncated_or_foreign_matrix_is_named(saved):
    path, _ = saved
    with open(path, "rb") as handle:
        whole = handle.read()
    for kept in (len(whole) - 10, 60):  # inside the data; inside the header
        with open(path, "wb") as handle:
            handle.write(whole[:kept])
        assert re.match(rf"'{re.escape(path)}' is truncated or damaged \(.*\); re-run "
                        r"tools/extract_features.py to write it again$", _error(path))
    with open(path, "wb") as handle:
        handle.write(b"<html>404</html>")
    assert _error(path).startswith(f"'{path}' is not a .npy file (it starts with b'<html>')")
    np.save(path, np.arange(6).reshape(3, 2))
    assert _error(path).startswith(f"'{path}' holds int64 values, not float features")


def test_an_index_that_does_not_match_the_matrix_is_named(saved):
    path, _ = saved
    csv_path = path[:-4] + ".csv"
    with open(csv_path) as handle:
        lines = handle.read().splitlines(keepends=True)
    with open(csv_path, "w") as handle:
        handle.writelines(lines[:-1])  # one image fewer than rows in the matrix
    assert _error(path) == (f"'{path}' holds (3, 8) features but '{csv_path}' lists 2 images; "
                            "re-run tools/extract_features.py")
    with open(csv_path, "w") as handle:
        handle.writelines(lines[:-1] + [lines[-1][:8]])  # a truncated last row
    assert _error(path).startswith(f"'{csv_path}' line 4 has 2 cells, not 5 (a truncated or "
                                   "damaged row)")
    with open(csv_path, "wb") as handle:
        handle.write(b"\x00\xff\xfe junk")
    assert _error(path).startswith(f"'{csv_path}' is not a readable CSV index ('utf-8' codec")
    with open(csv_path, "w") as handle:
        handle.write("index,path\n0,a.jpg\n")
    assert _error(path).startswith(f"'{csv_path}' lacks the column(s) ['pid', 'camid', 'viewid']")


@pytest.mark.parametrize("content, problem", [
    (b'{"weight": "w.pth", "weight_sha', r"is damaged \(Unterminated string starting at: line 1"),
    (b"\xff\xfe\x00junk", r"is damaged \('utf-8' codec can't decode byte 0xff"),
    (b'["w.pth"]', r"holds a list, not a mapping"),
])
def test_a_damaged_model_record_is_named(saved, content, problem):
    path, _ = saved
    json_path = path[:-4] + ".json"
    with open(json_path, "wb") as handle:
        handle.write(content)
    assert re.match(rf"'{re.escape(json_path)}', the record of the model behind its features, "
                    rf"{problem}.*; re-run tools/extract_features.py", _error(path))
