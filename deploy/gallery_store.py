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
manifest, which names only complete files. Files that no manifest names, and the temporary
files of a save killed before its rename, are removed by the next writer (which holds the
folder's lock, so none of them is being written).

Each file's SHA-256 is recorded in the manifest as it is written and checked as it is read back
(`deploy.digests`), so a file changed on disk since, even at the same size, is named instead of
searched. What the manifest itself must hold is checked first (`deploy.gallery_manifest`).
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import sys
from typing import Iterator, List, NamedTuple, Optional, Set, Tuple

import numpy as np
import torch

from utils.file_lock import FileLock, describe_holder
from utils.files import atomic_write, atomic_write_text, file_sha256, remove_stale_temp_files

from .digests import BackgroundDigest, HashingReader, HashingWriter, needs_check, remember_good
from .gallery_manifest import (FORMAT, MANIFEST, OWN_FILE, REBUILD_HINT, VERSION,  # noqa: F401
                               GalleryError, Manifest, Segment, is_gallery, manifest_path,
                               read_manifest)

logger = logging.getLogger("transreid.gallery")

ENTRY_COLUMNS = ("label", "path", "camera")
_OWN_FILE = OWN_FILE  # files of a gallery folder; anything else in it is the user's


class Entry(NamedTuple):
    """What a gallery knows of one enrolled image besides its feature (a tuple: a million of
    them cost about 4% of their 768-d features, a dataclass with a __dict__ 10%)."""
    label: str
    path: str
    camera: Optional[int] = None


def entry_label(label: object) -> str:
    """A label as entries keep it: a number as its value (`0112`, the id as a Market-style file
    name writes it, and `112` are one identity), anything else as given."""
    text = str(label).strip()
    return str(int(text)) if text.lstrip("-").isdigit() else text


def _damaged(path: str) -> GalleryError:
    return GalleryError(f"'{path}' is damaged: its SHA-256 is not the one {MANIFEST} recorded "
                        f"(its bytes changed since it was saved); {REBUILD_HINT}")


def _check_digest(path: str, expected: str, actual: str) -> None:
    if actual != expected:
        raise _damaged(path)
    remember_good(path, expected)


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
    """A segment's features (memory-mapped, read-only: their SHA-256 is checked by
    `iter_live_rows` as it copies them) and entries (checked here), checked against the manifest."""
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
    entries = read_entries(entries_path, segment.entries_sha256)
    if len(entries) != segment.rows:
        raise GalleryError(f"gallery '{folder}' is damaged: '{segment.entries_name}' lists "
                           f"{len(entries)} entries for {segment.rows} features; {REBUILD_HINT}")
    return features, entries


def read_entries(path: str, sha256: Optional[str] = None) -> List[Entry]:
    """The entries of a segment's .csv, hashed as they are read when `sha256` is given."""
    with open(path, "rb") as raw:
        hashing = HashingReader(raw) if needs_check(path, sha256) else None
        text = io.TextIOWrapper(io.BufferedReader(hashing) if hashing else raw,
                                encoding="utf-8", newline="")
        entries = _parse_entries(path, text)
        if hashing is not None:
            text.read()  # the rest, if any, to hash the whole file
            _check_digest(path, sha256, hashing.hexdigest())
    return entries


def _parse_entries(path: str, text) -> List[Entry]:
    # Row by row, not a list of all rows first: each row's strings are freed as the next is
    # read, instead of leaving the allocator's arenas holding a million of them (2% of the
    # features' memory). Interned: the views of one identity share one label string.
    try:
        rows = csv.reader(text)
        if tuple(next(rows, ())) != ENTRY_COLUMNS:
            raise GalleryError(f"'{path}' is not a gallery entry list (its header is not "
                               f"{','.join(ENTRY_COLUMNS)}); {REBUILD_HINT}")
        return [Entry(sys.intern(label), path_, int(camera) if camera else None)
                for label, path_, camera in rows]
    except (ValueError, csv.Error) as err:  # another width, a camera not a number, not UTF-8
        raise GalleryError(f"'{path}' is damaged ({err}); {REBUILD_HINT}") from None


def read_tombstones(folder: str, manifest: Manifest) -> np.ndarray:
    """Sorted global ids of the removed rows."""
    if not manifest.tombstones:
        return np.zeros(0, np.int64)
    path = os.path.join(folder, manifest.tombstones)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        if needs_check(path, manifest.tombstones_sha256):
            _check_digest(path, manifest.tombstones_sha256, hashlib.sha256(data).hexdigest())
        ids = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as err:
        raise GalleryError(f"gallery '{folder}' is damaged: '{manifest.tombstones}' cannot be "
                           f"read ({err}); {REBUILD_HINT}") from None
    if ids.shape != (manifest.num_tombstones,) or ids.dtype.kind not in "iu":
        raise GalleryError(f"gallery '{folder}' is damaged: '{manifest.tombstones}' holds "
                           f"{ids.dtype} {ids.shape} ids, {MANIFEST} says {manifest.num_tombstones}; "
                           f"{REBUILD_HINT}")
    return np.sort(ids.astype(np.int64))


def _save_array(path: str, array: np.ndarray) -> Tuple[int, str]:
    """(size, SHA-256) of `array` written as the .npy file `path` (atomically)."""
    digest = []

    def write(handle) -> None:
        hashing = HashingWriter(handle)
        np.save(hashing, array)
        digest.append(hashing.hexdigest())

    size = atomic_write(path, write)
    return size, digest[0]


def write_segment(folder: str, manifest: Manifest, features: np.ndarray,
                  entries: List[Entry]) -> Segment:
    """A new segment file pair for rows next_row .. (added to `manifest`, not yet saved)."""
    name = manifest.file_name("seg", ".npy")
    size, sha256 = _save_array(os.path.join(folder, name),
                               np.ascontiguousarray(features, dtype=np.float32))
    segment = Segment(name, manifest.next_row, len(features), size, 0, sha256)
    text = _entries_csv(entries).encode()
    segment.entries_bytes = atomic_write(os.path.join(folder, segment.entries_name),
                                         lambda h: h.write(text))
    segment.entries_sha256 = hashlib.sha256(text).hexdigest()
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
        manifest.tombstones, manifest.num_tombstones, manifest.tombstones_sha256 = None, 0, None
        return
    name = manifest.file_name("tomb", ".npy")
    _, manifest.tombstones_sha256 = _save_array(os.path.join(folder, name), ids.astype(np.int64))
    manifest.tombstones, manifest.num_tombstones = name, len(ids)


def write_manifest(folder: str, manifest: Manifest) -> None:
    """The commit point of a save: the new manifest replaces the old one in one rename."""
    _add_missing_digests(folder, manifest)
    atomic_write_text(manifest_path(folder), manifest.to_json())
    remove_unlisted_files(folder, manifest)


def _add_missing_digests(folder: str, manifest: Manifest) -> None:
    """Record the SHA-256 of the files a format 1 gallery saved without one."""
    missing = manifest.unverified()
    if missing:
        logger.info("gallery '%s': recording the SHA-256 of %d file(s) saved without one",
                    folder, len(missing))
    digest = {name: file_sha256(os.path.join(folder, name)) for name in missing}
    for segment in manifest.segments:
        segment.sha256 = segment.sha256 or digest[segment.name]
        segment.entries_sha256 = segment.entries_sha256 or digest[segment.entries_name]
    if manifest.tombstones:
        manifest.tombstones_sha256 = manifest.tombstones_sha256 or digest[manifest.tombstones]
    if manifest.ann:
        manifest.ann["sha256"] = manifest.ann.get("sha256") or digest[str(manifest.ann["name"])]


_WARNED_UNVERIFIED: Set[str] = set()


def warn_unverified(folder: str, manifest: Manifest) -> None:
    """Say once per folder that a gallery saved before checksums were recorded is read as is."""
    missing = manifest.unverified()
    key = os.path.realpath(folder)
    if missing and key not in _WARNED_UNVERIFIED:
        _WARNED_UNVERIFIED.add(key)
        logger.warning("gallery '%s' was saved without checksums (before they were recorded): "
                       "its %d file(s) are read unverified; saving it again records them "
                       "(tools/gallery.py add or remove, or Gallery.save())", folder, len(missing))


def clean_folder(folder: str, manifest: Manifest) -> None:
    """Remove what killed saves left: their temporary files and the gallery files that
    `manifest` does not name. Call it only while holding the gallery's lock."""
    remove_stale_temp_files(folder)
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


def highest_generation(folder: str) -> int:
    """The largest number in the names of the gallery files in `folder` (0 when none)."""
    return max((int(name.split("-")[1].split(".")[0]) for name in os.listdir(folder)
                if _OWN_FILE.fullmatch(name)), default=0)


def iter_live_rows(folder: str, manifest: Manifest, chunk_rows: int = 65536
                   ) -> Iterator[Tuple[np.ndarray, List[Entry], np.ndarray]]:
    """(features, entries, global ids) of the rows not removed, segment by segment, a chunk at a
    time (features as float32 copies of the memory-mapped file). Each segment's SHA-256 is
    computed as its chunks are copied and checked after its last one (a GalleryError then):
    read to the end before using what was yielded."""
    removed = read_tombstones(folder, manifest)
    for segment in manifest.segments:
        features, entries = read_segment(folder, manifest, segment)
        path = os.path.join(folder, segment.name)
        digest = _segment_digest(path, features, segment.sha256)
        try:
            for start in range(0, segment.rows, chunk_rows):
                stop = min(start + chunk_rows, segment.rows)
                if digest is not None:
                    digest.update(features[start:stop])
                ids = np.arange(segment.first_row + start, segment.first_row + stop)
                keep = ~np.isin(ids, removed, assume_unique=True)
                rows = np.flatnonzero(keep)
                yield (np.asarray(features[start:stop][keep]), [entries[start + i] for i in rows],
                       ids[keep])
        except BaseException:
            if digest is not None:
                digest.close()
            raise
        if digest is not None:
            _check_digest(path, segment.sha256, digest.hexdigest())


def _segment_digest(path: str, features: np.ndarray, expected: Optional[str]
                    ) -> Optional[BackgroundDigest]:
    """A digest of the .npy file `path` started with its header, to be fed `features`' rows;
    None when there is nothing to check."""
    if not needs_check(path, expected):
        return None
    with open(path, "rb") as handle:
        return BackgroundDigest(handle.read(features.offset))


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
