"""A gallery on disk: a folder of append-only feature segments and one small manifest.

    GALLERY/manifest.json        what the gallery is: the files below, the model's provenance,
                                 the feature width, the threshold and the FAR it stands for
    GALLERY/seg-000007.npy       float32 rows x dim, unit rows (written once, never changed)
    GALLERY/seg-000007.csv       label, path, camera of each of those rows
    GALLERY/tomb-000009.npy      int64 ids of removed rows (rewritten whole; 8 bytes a removal)

Rows have global ids: segment s holds ids first_row .. first_row + rows - 1. Adding entries
writes one new segment; removing writes a new tombstone list; nothing unchanged is rewritten,
so adding 1,000 entries to a million costs the same as to ten. `compact` rewrites everything
into one segment when tombstones or segments pile up.

Every file is written under a fresh name (atomically), and the manifest, renamed over the old
one last, is what makes them part of the gallery: a save killed at any point leaves the previous
manifest, which names only complete files. Files that no manifest names are removed by the next
writer (which holds the folder's lock, so none of them is being written).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
import torch

from utils.errors import ToolError
from utils.file_lock import FileLock, describe_holder
from utils.files import atomic_output, atomic_write, atomic_write_text, fsync_path

logger = logging.getLogger("transreid.gallery")

FORMAT = "transreid-gallery"
VERSION = 1
MANIFEST = "manifest.json"
ENTRY_COLUMNS = ("label", "path", "camera")
# Files of a gallery folder; anything else in it is the user's and is never touched.
_OWN_FILE = re.compile(r"(seg|tomb)-\d{6}\.(npy|csv)|ann-\d{6}\.faiss")
REBUILD_HINT = "rebuild it with tools/gallery.py build (or restore the folder from a backup)"


class GalleryError(ToolError):
    """A gallery folder that cannot be used as asked; the message names it and the fix."""


class Entry(NamedTuple):
    """What a gallery knows of one enrolled image besides its feature (a tuple: a million of
    them cost about 4% of their 768-d features, a dataclass with a __dict__ 10%)."""
    label: str
    path: str
    camera: Optional[int] = None


@dataclass
class Segment:
    """One feature file and its entries: global ids first_row .. first_row + rows - 1."""
    name: str
    first_row: int
    rows: int
    bytes: int
    entries_bytes: int

    @property
    def entries_name(self) -> str:
        return os.path.splitext(self.name)[0] + ".csv"


@dataclass
class Manifest:
    """The contents of manifest.json."""
    dim: int
    provenance: Optional[Dict[str, object]]
    index: str = "flat"
    threshold: Optional[float] = None
    threshold_far: Optional[float] = None
    next_row: int = 0
    generation: int = 0
    segments: List[Segment] = field(default_factory=list)
    tombstones: Optional[str] = None
    num_tombstones: int = 0
    # The saved approximate index, if any: {name, kind, rows, built_from, num_tombstones, bytes}:
    # it holds the first `rows` live rows as they were with `num_tombstones` removed rows.
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


def manifest_path(folder: str) -> str:
    return os.path.join(folder, MANIFEST)


def is_gallery(folder: str) -> bool:
    return os.path.isfile(manifest_path(folder))


def read_manifest(folder: str) -> Manifest:
    """The manifest of `folder`, checked; a GalleryError in one line when it is missing or damaged."""
    path = manifest_path(folder)
    if not os.path.isdir(folder):
        raise GalleryError(f"gallery '{folder}' does not exist; create it with tools/gallery.py build")
    if not os.path.isfile(path):
        raise GalleryError(f"'{folder}' is not a gallery (it has no {MANIFEST}); create one with "
                           "tools/gallery.py build")
    try:
        with open(path) as handle:
            raw = json.load(handle)
        if raw.pop("format") != FORMAT:
            raise ValueError("not a gallery manifest")
        if raw.pop("version") > VERSION:
            raise GalleryError(f"gallery '{folder}' was written by a newer version of this "
                               f"code (format {VERSION} here); update the code")
        segments = [Segment(**s) for s in raw.pop("segments")]
        return Manifest(**raw, segments=segments)
    except GalleryError:
        raise
    except (ValueError, KeyError, TypeError) as err:
        raise GalleryError(f"gallery '{folder}' is damaged: {MANIFEST} cannot be read "
                           f"({type(err).__name__}: {err}); {REBUILD_HINT}") from None


def _checked_size(folder: str, name: str, expected: int) -> str:
    path = os.path.join(folder, name)
    try:
        size = os.path.getsize(path)
    except OSError:
        raise GalleryError(f"gallery '{folder}' is damaged: '{name}', which {MANIFEST} lists, "
                           f"is missing; {REBUILD_HINT}") from None
    if size != expected:
        raise GalleryError(f"gallery '{folder}' is damaged: '{name}' has {size} bytes, "
                           f"{MANIFEST} recorded {expected} (truncated or overwritten); "
                           f"{REBUILD_HINT}")
    return path


def read_segment(folder: str, manifest: Manifest, segment: Segment) -> Tuple[np.ndarray, List[Entry]]:
    """A segment's features (memory-mapped, read-only) and entries, checked against the manifest."""
    path = _checked_size(folder, segment.name, segment.bytes)
    entries_path = _checked_size(folder, segment.entries_name, segment.entries_bytes)
    try:
        features = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise GalleryError(f"gallery '{folder}' is damaged: '{segment.name}' is not a feature "
                           f"file ({err}); {REBUILD_HINT}") from None
    if features.shape != (segment.rows, manifest.dim) or features.dtype != np.float32:
        raise GalleryError(f"gallery '{folder}' is damaged: '{segment.name}' holds "
                           f"{features.dtype} {features.shape}, {MANIFEST} says float32 "
                           f"({segment.rows}, {manifest.dim}); {REBUILD_HINT}")
    entries = read_entries(entries_path)
    if len(entries) != segment.rows:
        raise GalleryError(f"gallery '{folder}' is damaged: '{segment.entries_name}' lists "
                           f"{len(entries)} entries for {segment.rows} features; {REBUILD_HINT}")
    return features, entries


def read_entries(path: str) -> List[Entry]:
    # Row by row, not a list of all rows first: each row's strings are freed as the next is
    # read, instead of leaving the allocator's arenas holding a million of them (2% of the
    # features' memory). Interned: the views of one identity share one label string.
    with open(path, newline="") as handle:
        rows = csv.reader(handle)
        if tuple(next(rows, ())) != ENTRY_COLUMNS:
            raise GalleryError(f"'{path}' is not a gallery entry list (its header is not "
                               f"{','.join(ENTRY_COLUMNS)}); {REBUILD_HINT}")
        try:
            return [Entry(sys.intern(label), path_, int(camera) if camera else None)
                    for label, path_, camera in rows]
        except ValueError as err:  # a row of another width, or a camera that is not a number
            raise GalleryError(f"'{path}' is damaged ({err}); {REBUILD_HINT}") from None


def read_tombstones(folder: str, manifest: Manifest) -> np.ndarray:
    """Sorted global ids of the removed rows."""
    if not manifest.tombstones:
        return np.zeros(0, np.int64)
    path = os.path.join(folder, manifest.tombstones)
    try:
        ids = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise GalleryError(f"gallery '{folder}' is damaged: '{manifest.tombstones}' cannot be "
                           f"read ({err}); {REBUILD_HINT}") from None
    if ids.shape != (manifest.num_tombstones,):
        raise GalleryError(f"gallery '{folder}' is damaged: '{manifest.tombstones}' holds "
                           f"{ids.shape} ids, {MANIFEST} says {manifest.num_tombstones}; "
                           f"{REBUILD_HINT}")
    return np.sort(ids.astype(np.int64))


def write_segment(folder: str, manifest: Manifest, features: np.ndarray,
                  entries: List[Entry]) -> Segment:
    """A new segment file pair for rows next_row .. (added to `manifest`, not yet saved)."""
    name = manifest.file_name("seg", ".npy")
    size = atomic_write(os.path.join(folder, name),
                         lambda h: np.save(h, np.ascontiguousarray(features, dtype=np.float32)))
    segment = Segment(name, manifest.next_row, len(features), size, 0)

    text = _entries_csv(entries).encode()
    segment.entries_bytes = atomic_write(os.path.join(folder, segment.entries_name),
                                          lambda h: h.write(text))
    manifest.segments.append(segment)
    manifest.next_row += len(features)
    return segment


def _entries_csv(entries: List[Entry]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ENTRY_COLUMNS)
    writer.writerows((e.label, e.path, "" if e.camera is None else e.camera) for e in entries)
    return buffer.getvalue()


def write_tombstones(folder: str, manifest: Manifest, ids: np.ndarray) -> None:
    """A new tombstone file of `ids` (all removed rows), named in `manifest` (not yet saved)."""
    if len(ids) == 0:
        manifest.tombstones, manifest.num_tombstones = None, 0
        return
    name = manifest.file_name("tomb", ".npy")
    atomic_write(os.path.join(folder, name), lambda h: np.save(h, ids.astype(np.int64)))
    manifest.tombstones, manifest.num_tombstones = name, len(ids)


def write_index_file(folder: str, manifest: Manifest, kind: str, rows: int, built_from: int,
                     write: Callable[[str], None]) -> None:
    """A new approximate-index file, `write(path)` of an index of the first `rows` live rows
    (built, or trained, from the first `built_from`), named in `manifest` (not yet saved)."""
    name = manifest.file_name("ann", ".faiss")
    with atomic_output(os.path.join(folder, name)) as tmp_path:
        write(tmp_path)
        fsync_path(tmp_path)
        size = os.path.getsize(tmp_path)
    manifest.ann = {"name": name, "kind": kind, "rows": rows, "built_from": built_from,
                    "num_tombstones": manifest.num_tombstones, "bytes": size}


def usable_index_file(folder: str, manifest: Manifest, kind: str, live_rows: int) -> Optional[str]:
    """The path of the saved approximate index when it still describes the gallery's first rows
    (no row removed since it was written), else None."""
    ann = manifest.ann
    if not ann or ann["kind"] != kind or ann["num_tombstones"] != manifest.num_tombstones \
            or int(ann["rows"]) > live_rows:
        return None
    path = os.path.join(folder, str(ann["name"]))
    if not os.path.isfile(path) or os.path.getsize(path) != ann["bytes"]:
        logger.warning("gallery '%s': the saved %s index '%s' is missing or damaged; building "
                       "it again", folder, kind, ann["name"])
        return None
    return path


def write_manifest(folder: str, manifest: Manifest) -> None:
    """The commit point of a save: the new manifest replaces the old one in one rename."""
    atomic_write_text(manifest_path(folder), manifest.to_json())
    remove_unlisted_files(folder, manifest)


def remove_unlisted_files(folder: str, manifest: Manifest) -> List[str]:
    """Remove gallery files the manifest does not name (replaced ones, or those of a save that
    was killed before its manifest); call it only while holding the gallery's lock."""
    keep = set(manifest.files())
    removed = [name for name in sorted(os.listdir(folder))
               if _OWN_FILE.fullmatch(name) and name not in keep]
    for name in removed:
        os.remove(os.path.join(folder, name))
    if removed:
        logger.info("removed %d file(s) no longer part of gallery '%s'", len(removed), folder)
    return removed


def iter_live_rows(folder: str, manifest: Manifest, chunk_rows: int = 65536
                   ) -> Iterator[Tuple[np.ndarray, List[Entry], np.ndarray]]:
    """(features, entries, global ids) of the rows not removed, segment by segment, a chunk at a
    time (features as float32 copies of the memory-mapped file)."""
    removed = read_tombstones(folder, manifest)
    for segment in manifest.segments:
        features, entries = read_segment(folder, manifest, segment)
        for start in range(0, segment.rows, chunk_rows):
            stop = min(start + chunk_rows, segment.rows)
            ids = np.arange(segment.first_row + start, segment.first_row + stop)
            keep = ~np.isin(ids, removed, assume_unique=True)
            rows = np.flatnonzero(keep)
            yield (np.asarray(features[start:stop][keep]), [entries[start + i] for i in rows],
                   ids[keep])


LOCK_FILE = ".gallery.lock"


def lock_gallery(folder: str) -> FileLock:
    """The gallery's write lock, or a GalleryError naming the process that holds it."""
    lock = FileLock(os.path.join(folder, LOCK_FILE))
    holder = lock.try_acquire(purpose="gallery writer")
    if holder is not None:
        raise GalleryError(f"gallery '{folder}' is being changed by {describe_holder(holder)}; "
                           "wait for it to finish, then retry")
    return lock


def unit_rows(features) -> np.ndarray:
    """`features` (array or tensor, N x D) as contiguous float32 rows of unit length."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise GalleryError(f"features must be a 2-d N x D matrix, got shape {features.shape}")
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.ascontiguousarray(features / np.maximum(norms, 1e-12))
