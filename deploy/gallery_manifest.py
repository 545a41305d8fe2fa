"""manifest.json, what a gallery folder is, and the one check of it before any file it names is
read: every field has its type and range, every file name is a plain name of the gallery's own
pattern (so nothing outside the folder is ever read or removed), the segments' rows follow one
another, and from format 2 on every file carries its SHA-256 (`deploy.gallery_store` checks it).
A manifest that fails is named in one line with the field at fault and the fix.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Dict, List, Optional

from utils.errors import ToolError

from .vector_index import EXACT, INDEX_KINDS

FORMAT = "transreid-gallery"
# 2: every file's SHA-256 is recorded. Format 1 galleries (none recorded) are read unverified.
VERSION = 2
CHECKSUMS_SINCE = 2
MANIFEST = "manifest.json"
# Files of a gallery folder; anything else in it is the user's and is never touched.
OWN_FILE = re.compile(r"(seg|tomb)-\d{6}\.(npy|csv)|ann-\d{6}\.faiss")
_NAMED = {"segment": re.compile(r"seg-(\d{6})\.npy"), "tombstones": re.compile(r"tomb-(\d{6})\.npy"),
          "ann": re.compile(r"ann-(\d{6})\.faiss")}
_DIGEST = re.compile(r"[0-9a-f]{64}")
REBUILD_HINT = "rebuild it with tools/gallery.py build (or restore the folder from a backup)"
MAX_DISTANCE = 2.0  # cosine distance of opposite unit rows
_MAX_NPY_HEADER = 65536  # a .npy header of format 1.0, which np.save writes for these rows


class GalleryError(ToolError):
    """A gallery folder that cannot be used as asked; the message names it and the fix."""


@dataclass
class Segment:
    """One feature file and its entries: global ids first_row .. first_row + rows - 1."""
    name: str
    first_row: int
    rows: int
    bytes: int
    entries_bytes: int
    sha256: Optional[str] = None
    entries_sha256: Optional[str] = None

    @property
    def entries_name(self) -> str:
        return os.path.splitext(self.name)[0] + ".csv"


@dataclass
class Manifest:
    """The contents of manifest.json."""
    dim: int
    provenance: Optional[Dict[str, object]]
    index: str = EXACT
    threshold: Optional[float] = None
    threshold_far: Optional[float] = None
    next_row: int = 0
    generation: int = 0
    segments: List[Segment] = field(default_factory=list)
    tombstones: Optional[str] = None
    num_tombstones: int = 0
    tombstones_sha256: Optional[str] = None
    # The saved approximate index, if any: {name, kind, rows, built_from, num_tombstones, bytes,
    # sha256}: it holds the first `rows` live rows as they were with `num_tombstones` removed.
    ann: Optional[Dict[str, object]] = None

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": VERSION, **asdict(self)}, indent=1)

    def file_name(self, kind: str, suffix: str) -> str:
        """A name no file of this gallery has had: the next generation's."""
        self.generation += 1
        return f"{kind}-{self.generation:06d}{suffix}"

    def files(self) -> List[str]:
        names = [n for s in self.segments for n in (s.name, s.entries_name)]
        return (names + ([self.tombstones] if self.tombstones else [])
                + ([str(self.ann["name"])] if self.ann else []))

    def unverified(self) -> List[str]:
        """The files whose SHA-256 the manifest does not record (a format 1 gallery's)."""
        digests = [d for s in self.segments for d in (s.sha256, s.entries_sha256)]
        digests += [self.tombstones_sha256] if self.tombstones else []
        digests += [self.ann.get("sha256")] if self.ann else []
        return [name for name, digest in zip(self.files(), digests) if digest is None]


def manifest_path(folder: str) -> str:
    return os.path.join(folder, MANIFEST)


def is_gallery(folder: str) -> bool:
    return os.path.isfile(manifest_path(folder))


def read_manifest(folder: str) -> Manifest:
    """The manifest of `folder`, checked; a GalleryError in one line when it is missing or damaged."""
    path = manifest_path(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise GalleryError(f"gallery '{folder}' is a file, not a gallery folder; give the folder "
                           "that tools/gallery.py build created")
    if not os.path.isdir(folder):
        raise GalleryError(f"gallery '{folder}' does not exist; create it with tools/gallery.py build")
    if not os.path.isfile(path):
        raise GalleryError(f"'{folder}' is not a gallery (it has no {MANIFEST}); create one with "
                           "tools/gallery.py build")
    try:
        with open(path, "rb") as handle:
            raw = json.loads(handle.read().decode("utf-8"))
    except (ValueError, RecursionError) as err:  # not JSON, not UTF-8, or nested too deep
        raise GalleryError(f"gallery '{folder}' is damaged: {MANIFEST} cannot be read "
                           f"({type(err).__name__}: {err}); {REBUILD_HINT}") from None
    try:
        return checked_manifest(raw)
    except _Invalid as err:
        raise GalleryError(f"gallery '{folder}' is damaged: {MANIFEST}: {err}; {REBUILD_HINT}"
                           ) from None
    except _Newer:
        raise GalleryError(f"gallery '{folder}' was written by a newer version of this code "
                           f"(format {VERSION} here); update the code") from None


class _Invalid(ValueError):
    """What is wrong with one field of a manifest, in words."""


class _Newer(ValueError):
    pass


def _shown(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _integer(value: object, label: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _Invalid(f"{label} is {_shown(value)}, not an integer >= {minimum}")
    return value


def _number(value: object, label: str, low: float, high: float, low_open: bool = False) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (low < value if low_open else low <= value) and value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise _Invalid(f"{label} is {_shown(value)}, not a finite number in {interval}")
    return float(value)


def _digest(value: object, label: str, required: bool) -> Optional[str]:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise _Invalid(f"{label} is {_shown(value)}, not a SHA-256 (64 hex digits)")
    return value


def _file(value: object, label: str, kind: str, generation: int) -> str:
    match = _NAMED[kind].fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise _Invalid(f"{label} names {_shown(value)}, which is not a {kind} file of the "
                       f"gallery folder ({_display(kind)}); "
                       "a manifest names only plain file names inside its folder")
    if int(match.group(1)) > generation:
        raise _Invalid(f"{label} names '{value}', newer than the manifest's generation "
                       f"{generation}")
    return value


def _display(kind: str) -> str:
    return _NAMED[kind].pattern.replace(r"(\d{6})", "NNNNNN").replace("\\", "")


def _fields(raw: object, cls, where: str) -> dict:
    """`raw` as keyword arguments of dataclass `cls`: a JSON object without unknown or missing
    fields."""
    if not isinstance(raw, dict):
        raise _Invalid(f"{where} is {_shown(raw)}, not a JSON object")
    known = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    unknown, missing = sorted(set(raw) - known), sorted(required - set(raw))
    if unknown or missing:
        raise _Invalid(f"{'unknown' if unknown else 'missing'} field '{(unknown or missing)[0]}' "
                       f"in {where}")
    return dict(raw)


def _segments(raw: object, manifest: Manifest, required: bool) -> List[Segment]:
    if not isinstance(raw, list):
        raise _Invalid(f"field 'segments' is {_shown(raw)}, not a list")
    segments, next_row = [], None
    for number, item in enumerate(raw, 1):
        where = f"segment {number}"
        values = _fields(item, Segment, where)
        for key in ("first_row", "rows", "bytes", "entries_bytes"):
            _integer(values[key], f"field '{key}' of {where}")
        _file(values["name"], f"field 'name' of {where}", "segment", manifest.generation)
        for key in ("sha256", "entries_sha256"):
            _digest(values.get(key), f"field '{key}' of {where}", required)
        data = values["rows"] * manifest.dim * 4  # float32 rows after a .npy header
        if not data <= values["bytes"] <= data + _MAX_NPY_HEADER:
            raise _Invalid(f"{where} holds {values['rows']} rows of {manifest.dim}-d float32 "
                           f"features, which do not fit its {values['bytes']} bytes")
        if next_row is not None and values["first_row"] != next_row:
            raise _Invalid(f"{where} starts at row {values['first_row']}, not at {next_row} "
                           "where the one before it ends")
        next_row = values["first_row"] + values["rows"]
        segments.append(Segment(**values))
    if next_row is not None and next_row != manifest.next_row:
        raise _Invalid(f"field 'next_row' is {manifest.next_row}, but the segments end at row "
                       f"{next_row}")
    return segments


def _check_ann(ann: object, generation: int, required: bool) -> None:
    if ann is None:
        return
    if not isinstance(ann, dict) or set(ann) - {"sha256"} != {
            "name", "kind", "rows", "built_from", "num_tombstones", "bytes"}:
        raise _Invalid(f"field 'ann' is {_shown(ann)}, not the record of a saved index")
    _file(ann["name"], "field 'name' of 'ann'", "ann", generation)
    if ann["kind"] not in INDEX_KINDS or ann["kind"] == EXACT:
        raise _Invalid(f"field 'kind' of 'ann' is {_shown(ann['kind'])}, not an approximate "
                       f"index ({', '.join(k for k in INDEX_KINDS if k != EXACT)})")
    for key in ("rows", "built_from", "num_tombstones", "bytes"):
        _integer(ann[key], f"field '{key}' of 'ann'")
    _digest(ann.get("sha256"), "field 'sha256' of 'ann'", required)


def checked_manifest(raw: object) -> Manifest:
    """The Manifest of a parsed manifest.json, every field checked (see the module's doc)."""
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise _Invalid("is not a gallery manifest (no \"format\": \"transreid-gallery\")")
    values = dict(raw)
    del values["format"]
    version = _integer(values.pop("version", None), "field 'version'", 1)
    if version > VERSION:
        raise _Newer()
    required = version >= CHECKSUMS_SINCE  # checksums
    values = _fields(values, Manifest, "the manifest")
    for key in ("dim", "next_row", "generation", "num_tombstones"):
        _integer(values.get(key, 0), f"field '{key}'")
    if values.get("provenance") is not None and not isinstance(values["provenance"], dict):
        raise _Invalid(f"field 'provenance' is {_shown(values['provenance'])}, not an object")
    if values.get("index", EXACT) not in INDEX_KINDS:
        raise _Invalid(f"field 'index' is {_shown(values['index'])}, not one of "
                       f"{', '.join(INDEX_KINDS)}")
    check_threshold(values.get("threshold"), values.get("threshold_far"), _Invalid)
    manifest = Manifest(**{**values, "segments": []})
    manifest.segments = _segments(values.get("segments", []), manifest, required)
    if manifest.num_tombstones > manifest.next_row:
        raise _Invalid(f"field 'num_tombstones' is {manifest.num_tombstones}, more than the "
                       f"{manifest.next_row} rows")
    if manifest.tombstones is None:
        if manifest.num_tombstones:
            raise _Invalid(f"field 'num_tombstones' is {manifest.num_tombstones} without a "
                           "'tombstones' file")
    else:
        _file(manifest.tombstones, "field 'tombstones'", "tombstones", manifest.generation)
        _digest(manifest.tombstones_sha256, "field 'tombstones_sha256'", required)
    _check_ann(manifest.ann, manifest.generation, required)
    return manifest


def check_threshold(threshold: object, far: object, error=GalleryError,
                    names=("field 'threshold'", "field 'threshold_far'")) -> None:
    """A match threshold is None or a finite cosine distance in [0, 2], the FAR it stands for
    None or in (0, 1]; `error` (a GalleryError by default) says which of `names` is not."""
    try:
        if threshold is not None:
            _number(threshold, names[0], 0.0, MAX_DISTANCE)
        if far is not None:
            _number(far, names[1], 0.0, 1.0, low_open=True)
    except _Invalid as err:
        raise error(str(err)) from None
