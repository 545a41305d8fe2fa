"""A gallery's saved approximate index (`ann-NNNNNN.faiss`): written beside the segments and
named in the manifest with its size and SHA-256, read back instead of built again (HNSW takes
minutes at a million rows) and extended with the rows added since. One that is missing, damaged
or out of date is named in one warning and built again; it is never trusted for a search.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Optional

from utils.files import atomic_output, file_sha256, fsync_path

from .digests import needs_check, remember_good
from .gallery_manifest import MANIFEST, Manifest
from .vector_index import ApproximateIndex, FeatureMatrix

logger = logging.getLogger("transreid.gallery")


def write_file(folder: str, manifest: Manifest, kind: str, rows: int, built_from: int,
               write: Callable[[str], None]) -> None:
    """A new approximate-index file, `write(path)` of an index of the first `rows` live rows
    (built, or trained, from the first `built_from`), named in `manifest` (not yet saved)."""
    name = manifest.file_name("ann", ".faiss")
    with atomic_output(os.path.join(folder, name)) as tmp_path:
        write(tmp_path)
        fsync_path(tmp_path)
        size, sha256 = os.path.getsize(tmp_path), file_sha256(tmp_path)
    manifest.ann = {"name": name, "kind": kind, "rows": rows, "built_from": built_from,
                    "num_tombstones": manifest.num_tombstones, "bytes": size, "sha256": sha256}


def usable_file(folder: str, manifest: Manifest, kind: str, live_rows: int) -> Optional[str]:
    """The path of the saved approximate index when it still describes the gallery's first rows
    (no row removed since it was written) and is whole, else None (a damaged one is named in
    a warning: the caller builds the index again)."""
    ann = manifest.ann
    if not ann or ann["kind"] != kind or ann["num_tombstones"] != manifest.num_tombstones \
            or int(ann["rows"]) > live_rows:
        return None
    path = os.path.join(folder, str(ann["name"]))
    expected = ann.get("sha256")
    if not os.path.isfile(path) or os.path.getsize(path) != ann["bytes"] or (
            needs_check(path, expected) and file_sha256(path) != expected):
        logger.warning("gallery '%s': the saved %s index '%s' is missing or damaged (its size "
                       "or SHA-256 is not the one %s recorded); building it again", folder, kind,
                       ann["name"], MANIFEST)
        return None
    if expected is not None:
        remember_good(path, expected)
    return path




def read(folder: str, manifest: Manifest, kind: str, matrix: FeatureMatrix
         ) -> Optional[ApproximateIndex]:
    """The saved index of `kind` over `matrix`'s rows, extended with the rows added since it was
    written; None when there is none to use (the caller builds it when first searched)."""
    path = usable_file(folder, manifest, kind, len(matrix))
    if path is None:
        return None
    covered = int(manifest.ann["rows"])
    index = ApproximateIndex.read(kind, path, matrix, int(manifest.ann.get("built_from", covered)))
    if index is None:
        return None
    if len(index) != covered:
        logger.warning("gallery '%s': the saved index holds %d rows, the manifest says %d; "
                       "building it again", folder, len(index), covered)
        return None
    index.add(matrix.rows[covered:])
    return index


def stale(folder: str, manifest: Manifest, kind: str, live_rows: int, fraction: float) -> bool:
    """Whether the saved index of `kind` is unusable, or leaves more than `fraction` of the
    rows to be added at each load."""
    if usable_file(folder, manifest, kind, live_rows) is None:
        return True
    covered = int(manifest.ann["rows"])
    return live_rows - covered > fraction * covered
