"""A gallery of known identities that lasts across runs: enrol images, remove them, and ask of a
new crop "who is this, or is it nobody we know?".

>>> extractor = FeatureExtractor.from_files("configs/Market/vit_transreid_stride.yml", "model.pth")
>>> with Gallery.create("my_gallery") as gallery:             # or Gallery.open(folder, writable=True)
...     add_images(gallery, extractor, collect_images("crops/alice"), label="alice")
...     gallery.calibrate(target_far=1e-3)                      # or set_threshold(0.35, 1e-3)
...     gallery.save()
>>> hits, skipped = search_images(Gallery.open("my_gallery"), extractor, collect_images("new/"))

Features are unit rows; the distance is the cosine distance 1 - cos (0 = same direction, 2 =
opposite), and a hit is a match when its distance is <= the gallery's threshold. The folder
format, and why a save killed midway loses nothing, are in `deploy.gallery_store`; the search
itself (exact by default; PQ, HNSW or IVF as options) in `deploy.vector_index`.
"""
from __future__ import annotations

import copy
import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from model.trained import check_same_model
from utils.errors import ToolError
from utils.verification import VerificationResult, self_verification

from . import gallery_store as store
from . import saved_index
from .gallery_manifest import MAX_DISTANCE, check_threshold
from .gallery_store import Entry, GalleryError, Manifest, entry_label
from .vector_index import EXACT, FeatureMatrix, GallerySearch

logger = logging.getLogger("transreid.gallery")

CALIBRATION_ENTRIES = 4000  # entries compared with each other by `calibrate` (16M pairs)


@dataclass(frozen=True)
class Hit:
    """One gallery entry found for a query: its cosine distance, and whether that is a match at
    the gallery's threshold (None when the gallery has none)."""
    entry: Entry
    distance: float
    match: Optional[bool]


class Gallery:
    """Features and entries (label, path, camera) of enrolled images, searchable top-k.

    Build one with `create` or `open`; a writable gallery holds its folder's lock until `close`
    (or the end of a `with` block), so a second writer is refused instead of losing changes.
    """

    def __init__(self, folder: str, manifest: Manifest, index: Optional[str] = None) -> None:
        self.folder = folder
        self.manifest = manifest
        try:
            self.searcher = GallerySearch(index or manifest.index)
        except ToolError as err:
            raise GalleryError(f"gallery '{folder}': {err}") from None
        self.matrix = FeatureMatrix(manifest.dim)
        self.entries: List[Entry] = []
        self.row_ids = np.zeros(0, np.int64)  # global id of each row; unsaved rows: ids >= next_row
        self.removed = np.zeros(0, np.int64)  # saved rows removed since (the tombstones)
        self._next_id = manifest.next_row
        self._paths: Optional[Set[str]] = None  # the entries' image paths, built when first needed
        self._lock: Optional[store.FileLock] = None
        self._dirty = False

    # --------------------------------------------------------------------- opening and closing
    @classmethod
    def create(cls, folder: str, provenance: Optional[Dict[str, object]] = None,
               index: str = EXACT, overwrite: bool = False) -> "Gallery":
        """An empty writable gallery in `folder` (made if needed). An existing gallery there is
        refused unless `overwrite`; then it is replaced when this one is first saved."""
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            problem = ("it is a file, not a folder" if os.path.isfile(folder)
                       else f"{err.strerror}: '{err.filename}'")
            raise GalleryError(f"cannot create gallery '{folder}' ({problem}); choose another "
                               "--gallery") from None
        gallery = cls(folder, Manifest(dim=0, provenance=provenance, index=index))
        used_before = os.path.exists(os.path.join(folder, store.LOCK_FILE))
        gallery._lock_folder()
        if used_before or store.is_gallery(folder):  # a gallery's writer worked here
            store.remove_stale_temp_files(folder)
        if store.is_gallery(folder) and not overwrite:
            gallery.close()
            raise GalleryError(f"'{folder}' is already a gallery; add to it with "
                               "tools/gallery.py add, or pass --overwrite to replace it")
        # Later file names must not collide with the files there (the old gallery's stay until
        # saved); its manifest, which may be damaged, is not read.
        gallery.manifest.generation = store.highest_generation(folder)
        gallery._dirty = True
        return gallery

    @classmethod
    def open(cls, folder: str, writable: bool = False, index: Optional[str] = None) -> "Gallery":
        """The gallery saved in `folder`; `writable` takes its lock (refused while another
        process writes it); `index` overrides the saved index kind for this session."""
        manifest = store.read_manifest(folder)  # names a folder that is no gallery first
        lock = store.lock_gallery(folder) if writable else None
        try:
            # Read again under the lock: a writer may have saved since, and unlisted files are
            # removed below.
            gallery = cls(folder, store.read_manifest(folder) if writable else manifest, index)
            gallery._lock = lock
            if writable:
                store.clean_folder(folder, gallery.manifest)
            gallery._load()
        except BaseException as err:
            if lock is not None:
                lock.release()
            if isinstance(err, OSError):  # unreadable (permissions, I/O): name the file
                raise GalleryError(f"gallery '{folder}': cannot use '{err.filename or folder}' "
                                   f"({err.strerror or err}); check it, or {store.REBUILD_HINT}"
                                   ) from None
            raise
        return gallery

    def _lock_folder(self) -> None:
        self._lock = store.lock_gallery(self.folder)

    def _load(self) -> None:
        store.warn_unverified(self.folder, self.manifest)
        live = sum(s.rows for s in self.manifest.segments) - self.manifest.num_tombstones
        # Allocated once: loading never copies the features.
        self.matrix = FeatureMatrix(self.manifest.dim)
        self.matrix.reserve(live)
        ids = []
        for features, entries, row_ids in store.iter_live_rows(self.folder, self.manifest):
            self.matrix.add(features)
            self.entries.extend(entries)
            ids.append(row_ids)
        self.row_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        self.removed = store.read_tombstones(self.folder, self.manifest)
        if self.index_kind != EXACT:  # the saved index, extended with the rows added since
            self.searcher.approximate = saved_index.read(self.folder, self.manifest,
                                                         self.index_kind, self.matrix)
        logger.info("Gallery '%s': %d entries of %d-d features (%s search)", self.folder,
                    len(self), self.manifest.dim, self.index_kind)

    def close(self) -> None:
        """Release the write lock (unsaved changes are dropped: call `save` first)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -------------------------------------------------------------------------------- contents
    def __len__(self) -> int:
        return len(self.entries)

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def threshold(self) -> Optional[float]:
        return self.manifest.threshold

    def labels(self) -> Dict[str, int]:
        """Entries per label."""
        return dict(Counter(entry.label for entry in self.entries))

    def check_model(self, provenance: Optional[Dict[str, object]]) -> None:
        """Refuse a model other than the one the gallery's features came from, in one line."""
        saved = self.manifest.provenance
        if saved is None or provenance is None:
            logger.warning("gallery '%s' or the model has no provenance record: cannot check "
                           "that they match", self.folder)
            return
        try:
            check_same_model(saved, provenance, f"gallery {self.folder}",
                             f"the model here is '{provenance.get('weight')}': use the weights and "
                             "config the gallery was built with, or rebuild it (gallery.py build)")
        except ToolError as err:
            raise GalleryError(str(err)) from None

    def check_dim(self, dim: int, source: str) -> None:
        if self.dim and dim != self.dim:
            raise GalleryError(f"gallery '{self.folder}' holds {self.dim}-d features, {source} "
                               f"{dim}-d ones; use the model the gallery was built with")

    # --------------------------------------------------------------------------------- changes
    def _require_writable(self, what: str) -> None:
        if self._lock is None:
            raise GalleryError(f"gallery '{self.folder}' was opened read-only; open it with "
                               f"writable=True to {what}")

    def add(self, features, entries: Sequence[Entry], allow_duplicates: bool = False) -> None:
        """Enrol rows of features (N x D, normalised here) with one entry each. An image path
        the gallery holds, or one given twice, is refused unless `allow_duplicates`."""
        self._require_writable("add entries")
        features = store.unit_rows(features)
        if len(features) != len(entries):
            raise GalleryError(f"{len(features)} feature rows but {len(entries)} entries")
        self.check_dim(features.shape[1], "the features to add are")
        self.check_new_paths([e.path for e in entries], allow_duplicates)
        if not self.dim:
            self.manifest.dim = features.shape[1]
            self.matrix = FeatureMatrix(self.dim)
        self.matrix.add(features)
        self.entries.extend(entries)
        if self._paths is not None:
            self._paths.update(e.path for e in entries if e.path)
        self.row_ids = np.concatenate([self.row_ids, self._next_id + np.arange(len(features))])
        self._next_id += len(features)
        self.searcher.added(features)
        self._dirty = True

    def check_new_paths(self, paths: Sequence[str], allow_duplicates: bool = False) -> None:
        """Refuse images the gallery holds already, or given twice (an image enrolled twice
        fills its own top 2), unless `allow_duplicates`. Paths compare as written (enrolment
        writes absolute ones); an empty path is no image and never a duplicate."""
        if allow_duplicates:
            return
        if self._paths is None:
            self._paths = {e.path for e in self.entries if e.path}
        given: Set[str] = set()
        for path in paths:
            if path and (path in self._paths or path in given):
                where = "is already in" if path in self._paths else "is given twice for"
                raise GalleryError(
                    f"'{path}' {where} gallery '{self.folder}'; remove it first (tools/gallery.py "
                    "remove --path), or pass --allow-duplicates (allow_duplicates=True)")
            given.add(path)

    def remove(self, label: Optional[str] = None, path: Optional[str] = None) -> int:
        """Remove every entry of `label` (as `entry_label` writes it: 0112 is 112), or the
        entries of image `path`; returns how many. A label or path the gallery does not hold is
        an error (nothing is removed)."""
        self._require_writable("remove entries")
        if (label is None) == (path is None):
            raise GalleryError("remove by a label or by a path (one of the two)")
        if label is not None:
            label = entry_label(label)
            gone = np.array([e.label == label for e in self.entries], dtype=bool)
            what = f"no entry labelled '{label}'"
        else:
            wanted = os.path.abspath(path)
            gone = np.array([os.path.abspath(e.path) == wanted for e in self.entries], dtype=bool)
            what = f"no entry of the image '{path}'"
        if not gone.any():
            raise GalleryError(f"gallery '{self.folder}' has {what}; tools/gallery.py info "
                               "lists its labels")
        saved_gone = self.row_ids[gone][self.row_ids[gone] < self.manifest.next_row]
        self.removed = np.union1d(self.removed, saved_gone)
        self.matrix.keep(~gone)
        self.entries = [e for e, g in zip(self.entries, gone) if not g]
        self.row_ids = self.row_ids[~gone]
        self._paths = None  # rebuilt when next needed (a removed path may be enrolled again)
        self.searcher.approximate = None  # rebuilt when next searched: positions have moved
        self._dirty = True
        return int(gone.sum())

    def set_threshold(self, threshold: float, far: Optional[float]) -> None:
        """The cosine distance at and below which a hit is a match, and the FAR it stands for."""
        self._require_writable("set its threshold")
        try:
            check_threshold(threshold, far, names=("the threshold (a cosine distance, 1 - cos)",
                                                   "the false-accept rate it stands for"))
        except GalleryError as err:
            raise GalleryError(f"gallery '{self.folder}': {err}") from None
        self.manifest.threshold = float(threshold)
        self.manifest.threshold_far = None if far is None else float(far)
        self._dirty = True

    def calibrate(self, target_far: float = 1e-3, max_entries: int = CALIBRATION_ENTRIES,
                  seed: int = 0) -> VerificationResult:
        """Set the threshold for `target_far` from the gallery's own entries: up to
        `max_entries` of them, each compared with the others under the re-ID protocol (pairs of
        one label and one camera do not count; entries of unknown camera share one)."""
        self._require_writable("calibrate its threshold")
        picked = np.sort(np.random.default_rng(seed).permutation(len(self))[:max_entries])
        try:
            result = self_verification(self.matrix.rows[picked],
                                       [self.entries[i].label for i in picked],
                                       [self.entries[i].camera for i in picked], target_far)
        except ValueError as err:
            raise GalleryError(f"cannot calibrate gallery '{self.folder}': {err}; enrol "
                               "identities seen by two cameras, or set the threshold") from None
        # Clipped: a distance of unit rows computed in float32 can stray just outside [0, 2].
        self.set_threshold(min(max(float(result.threshold), 0.0), MAX_DISTANCE), target_far)
        logger.info("Threshold %.4f for FAR %g from %d genuine and %d impostor pairs (TAR %.1f%%)",
                    result.threshold, target_far, result.num_genuine, result.num_impostor,
                    100 * result.tar_at_far[target_far])
        return result

    # ---------------------------------------------------------------------------------- saving
    def save(self) -> None:
        """Write what changed (new rows as one segment, the tombstones if changed), then the
        manifest; a save killed before the manifest's rename leaves the previous gallery."""
        self._require_writable("save it")
        if not self.dim:
            raise GalleryError(f"gallery '{self.folder}' is empty; add entries before saving")
        manifest = copy.deepcopy(self.manifest)
        manifest.index = self.index_kind
        unsaved = np.flatnonzero(self.row_ids >= manifest.next_row)  # a tail: rows are appended
        first_unsaved = manifest.next_row
        if len(unsaved):
            store.write_segment(self.folder, manifest, self.matrix.rows[unsaved[0]:],
                                self.entries[unsaved[0]:])
        if len(self.removed) != manifest.num_tombstones:
            store.write_tombstones(self.folder, manifest, self.removed)
            manifest.ann = None  # its positions are those of rows since removed
        store.write_manifest(self.folder, manifest)
        # Committed: the unsaved rows got the ids of their new segment.
        self.row_ids[unsaved] = first_unsaved + np.arange(len(unsaved))
        self.manifest, self._next_id, self._dirty = manifest, manifest.next_row, False
        logger.info("Saved gallery '%s': %d entries in %d segment(s), %d removed rows", self.folder,
                    len(self), len(manifest.segments), manifest.num_tombstones)

    def compact(self) -> None:
        """Rewrite the gallery as one segment without removed rows (this rewrites everything)."""
        self._require_writable("compact it")
        manifest = copy.deepcopy(self.manifest)
        manifest.index, manifest.segments, manifest.next_row = self.index_kind, [], 0
        manifest.ann = None
        store.write_segment(self.folder, manifest, self.matrix.rows, self.entries)
        store.write_tombstones(self.folder, manifest, np.zeros(0, np.int64))
        store.write_manifest(self.folder, manifest)
        self.row_ids = np.arange(len(self))
        self.removed = np.zeros(0, np.int64)
        self.manifest, self._next_id, self._dirty = manifest, manifest.next_row, False

    def index_file_stale(self, fraction: float = 0.1) -> bool:
        """Whether the saved approximate index is missing, of another kind or out of date, or
        leaves more than `fraction` of the rows to be added at each load."""
        return self.index_kind != EXACT and saved_index.stale(
            self.folder, self.manifest, self.index_kind, len(self), fraction)

    def save_index(self) -> None:
        """Save the approximate index (building it if needed), so that loading the gallery reads
        it instead of building it again (HNSW takes minutes at a million rows). Call it after
        `save`; it stays usable, extended at each load, until a row is removed."""
        self._require_writable("save its index")
        if self.index_kind == EXACT:
            raise GalleryError(f"gallery '{self.folder}' searches exactly: there is no "
                               "approximate index to save")
        if self._dirty:
            raise GalleryError(f"gallery '{self.folder}' has unsaved changes; save() first")
        index = self.searcher.index(self.matrix)
        manifest = copy.deepcopy(self.manifest)
        saved_index.write_file(self.folder, manifest, self.index_kind, len(index),
                               index.built_from, index.write)
        store.write_manifest(self.folder, manifest)
        self.manifest = manifest

    # -------------------------------------------------------------------------------- searching
    @property
    def index_kind(self) -> str:
        return self.searcher.kind

    def use_index(self, kind: str, effort: Optional[int] = None) -> None:
        """Search `kind` (flat, pq, hnsw, ivf) from now on; an approximate index is built when
        first searched. `effort`: see `ApproximateIndex.effort` (default: the module's).
        Saved as the gallery's choice by the next `save`."""
        self.searcher.use(kind, effort)

    def search(self, features, k: int = 10) -> Tuple[np.ndarray, np.ndarray]:
        """(cosine distances, row positions) of the k nearest entries of each query row, nearest
        first; rows of -1 positions (approximate search only) found nothing more."""
        queries = store.unit_rows(features)
        self.check_dim(queries.shape[1], "the query features are")
        k = min(k, len(self))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        similarity, positions = self.searcher.search(self.matrix, queries, k)
        return 1.0 - similarity, positions

    def hits(self, features, k: int = 10) -> List[List[Hit]]:
        """Per query row, its k nearest entries with their distances and match decisions."""
        distances, positions = self.search(features, k)
        threshold = self.threshold
        return [[Hit(self.entries[p], float(d), None if threshold is None else bool(d <= threshold))
                 for d, p in zip(row_d, row_p) if p >= 0]
                for row_d, row_p in zip(distances, positions)]
