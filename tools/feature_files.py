"""Feature matrices on disk: `<name>.npy` (float32 N x D), its CSV index (one image a row) and a
JSON record of the model that made them, so that features of different models are never ranked
against each other."""
from __future__ import annotations

import csv
import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from datasets.image_list import ImageRecord
from utils.errors import ToolError
from utils.files import atomic_output, check_output

logger = logging.getLogger("transreid.tools")

CSV_COLUMNS = ("index", "path", "pid", "camid", "viewid")
NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file (numpy.lib.format)


def index_csv_path(features_path: str) -> str:
    """The CSV index that goes with a feature matrix: same name, `.csv`."""
    return os.path.splitext(features_path)[0] + ".csv"


def provenance_path(features_path: str) -> str:
    """The record of the model behind a feature matrix: same name, `.json`."""
    return os.path.splitext(features_path)[0] + ".json"


def check_feature_outputs(path: str, inputs: Sequence[str], overwrite: bool) -> None:
    """utils.files.check_output for the three files of a feature set, before extraction."""
    for name, suffix in ((path, ".npy"), (index_csv_path(path), ".csv"),
                         (provenance_path(path), ".json")):
        check_output(name, suffix, inputs, overwrite)


def _cell(value: Optional[int]) -> str:
    return "" if value is None else str(value)


def save_feature_index(features: np.ndarray, records: Sequence[ImageRecord], path: str,
                       provenance: Dict[str, object]) -> str:
    """Write `path` (.npy, float32 N x D), its CSV index and the JSON record of the model that
    made it (`model.trained.feature_provenance`); returns the CSV path.

    The files are written to temporary names first, so an error leaves none half written.
    """
    if not path.endswith(".npy"):
        raise ToolError(f"features file '{path}' must end in .npy")
    csv_path = index_csv_path(path)
    with atomic_output(path) as tmp_npy, atomic_output(csv_path) as tmp_csv, \
            atomic_output(provenance_path(path)) as tmp_json:
        np.save(tmp_npy, features.astype(np.float32))
        with open(tmp_json, "w") as handle:
            json.dump(provenance, handle, indent=2)
        with open(tmp_csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            for i, r in enumerate(records):
                writer.writerow([i, r.path, _cell(r.pid), _cell(r.camid), _cell(r.viewid)])
    return csv_path


def load_feature_index(path: str) -> Tuple[np.ndarray, List[ImageRecord], Optional[Dict[str, object]]]:
    """A feature matrix written by extract_features.py, the records of its CSV index and the
    record of the model that made it (None for files written before there was one). A file
    that is truncated or damaged, or an index that does not list one image per row of the
    matrix, raises a one-line ToolError naming it."""
    csv_path = index_csv_path(path)
    for needed in (path, csv_path):
        if not os.path.isfile(needed):
            raise ToolError(f"'{needed}' does not exist; write both with tools/extract_features.py")
    features = _read_matrix(path)
    rows = _read_index_rows(csv_path)
    if features.ndim != 2 or len(rows) != len(features):
        raise ToolError(f"'{path}' holds {features.shape} features but '{csv_path}' lists "
                        f"{len(rows)} images; re-run tools/extract_features.py")
    records = [_record_of_row(row, csv_path, line) for line, row in enumerate(rows, start=2)]
    provenance = None
    if os.path.isfile(provenance_path(path)):
        provenance = _read_provenance(provenance_path(path))
    return features, records, provenance


REWRITE = "re-run tools/extract_features.py to write it again"


def _read_matrix(path: str) -> np.ndarray:
    with open(path, "rb") as handle:
        head = handle.read(len(NPY_MAGIC))
    if head != NPY_MAGIC:
        raise ToolError(f"'{path}' is not a .npy file (it starts with {head!r}); {REWRITE}")
    try:
        features = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as err:  # numpy's words for a truncated or damaged file
        raise ToolError(f"'{path}' is truncated or damaged ({str(err).splitlines()[0]}); "
                        f"{REWRITE}") from None
    if not np.issubdtype(features.dtype, np.floating):
        raise ToolError(f"'{path}' holds {features.dtype} values, not float features; {REWRITE}")
    return features


def _read_index_rows(csv_path: str) -> List[Dict[str, str]]:
    try:
        with open(csv_path, newline="") as handle:
            table = list(csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ToolError(f"'{csv_path}' is not a readable CSV index ({err}); {REWRITE}") from None
    header = table[0] if table else []
    missing = [column for column in CSV_COLUMNS if column not in header]
    if missing:
        raise ToolError(f"'{csv_path}' lacks the column(s) {missing} of an index "
                        f"({', '.join(CSV_COLUMNS)}); {REWRITE}")
    rows = []
    for line, cells in enumerate(table[1:], start=2):
        if cells and len(cells) != len(header):
            raise ToolError(f"'{csv_path}' line {line} has {len(cells)} cells, not {len(header)} "
                            f"(a truncated or damaged row); {REWRITE}")
        if cells:  # blank lines, as csv.DictReader, are skipped
            rows.append(dict(zip(header, cells)))
    return rows


def _read_provenance(json_path: str) -> Dict[str, object]:
    try:
        with open(json_path, "rb") as handle:
            provenance = json.loads(handle.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ToolError(f"'{json_path}', the record of the model behind its features, is damaged "
                        f"({err}); {REWRITE}") from None
    if not isinstance(provenance, dict):
        raise ToolError(f"'{json_path}', the record of the model behind its features, holds a "
                        f"{type(provenance).__name__}, not a mapping; {REWRITE}")
    return provenance


def _record_of_row(row: Dict[str, str], csv_path: str, line: int) -> ImageRecord:
    try:
        labels = [int(row[k]) if row[k] else None for k in ("pid", "camid", "viewid")]
    except ValueError:
        raise ToolError(f"'{csv_path}' line {line}: pid, camid and viewid must be integers or "
                        f"empty, got {[row[k] for k in ('pid', 'camid', 'viewid')]}") from None
    return ImageRecord(row["path"], *labels)
