"""A user's own crops without identities (DATASETS.NAMES 'unlabelled'), for training without
labels (MODEL.TRAIN_MODE 'usl'): every image under DATASETS.ROOT_DIR, searched recursively.

Camera of a crop, 1-based where written and 0-based here, from the first rule that gives one:

* a Market-style name, `0002_c3s1_000451_00.jpg` (camera 3);
* a first-level sub-folder `c<k>/` or `cam<k>/` (any case): `<root>/cam3/...` is camera 3.

When no crop has a camera all are camera 1; a set where some crops have one and others none is
refused (the sampler's cross-camera draws and SIE would treat the unknown ones as camera 1).

Tracks (CLUSTER.TRACKS), crops known to show one person:

* 'folders': the folder holding the crop is its track (`<root>/<track>/*.jpg`, or
  `<root>/<camera>/<track>/*.jpg`); crops directly in ROOT_DIR or in a camera folder have none;
* 'names': a Market-style name's number is the track within its camera (what
  `tools/mot_to_reid.py` writes); 0 and -1 (Market's distractors and junk) mean none.

There is no query or gallery: training saves checkpoints without evaluating.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Dict, Hashable, List, Optional, Sequence, Tuple

from .bases import (IMAGE_EXTENSIONS, MARKET_PATTERN, NO_VIEW, BaseImageDataset, DatasetError,
                    Sample)

logger = logging.getLogger("transreid.datasets")

TRACK_SOURCES = ('folders', 'names')
NO_TRACK = -1
_MARKET_NAME = re.compile(MARKET_PATTERN)
_CAMERA_FOLDER = re.compile(r"(?:c|cam)(\d+)", re.IGNORECASE)


def crops_under(root: str) -> List[str]:
    """Every image under `root`, recursively, as paths relative to it, sorted."""
    return sorted(os.path.relpath(os.path.join(parent, name), root)
                  for parent, _, names in os.walk(root) for name in names
                  if name.lower().endswith(IMAGE_EXTENSIONS))


def camera_folder(part: str, where: str) -> Optional[int]:
    """1-based camera of a folder named c<k> / cam<k>, or None for any other name."""
    match = _CAMERA_FOLDER.fullmatch(part)
    if match is None:
        return None
    if int(match[1]) < 1:
        raise DatasetError(f"'{where}': camera folder '{part}' numbers cameras from 1 as "
                           f"Market-style names do; rename it c1/, c2/, ...")
    return int(match[1])


def camera_and_number(relpath: str, root: str) -> Tuple[Optional[int], Optional[int]]:
    """(1-based camera, the name's number) of a crop: both from a Market-style name, else the
    camera of its first-level folder and no number; None where unknown."""
    match = _MARKET_NAME.match(os.path.basename(relpath))
    if match is not None and int(match["cam"]) >= 1:
        return int(match["cam"]), int(match["pid"])
    parts = relpath.split(os.sep)
    camera = camera_folder(parts[0], os.path.join(root, parts[0])) if len(parts) > 1 else None
    return camera, None


def track_key(relpath: str, camera: Optional[int], number: Optional[int],
              source: str) -> Optional[Hashable]:
    """What identifies the crop's track under `source` ('folders' or 'names'); None if none."""
    if source == 'names':
        return None if number is None or number <= 0 else (camera, number)
    parts = relpath.split(os.sep)[:-1]
    if parts and camera_folder(parts[0], parts[0]) is not None:
        return os.sep.join(parts) if len(parts) > 1 else None
    return os.sep.join(parts) or None


def number_tracks(keys: Sequence[Optional[Hashable]]) -> List[int]:
    """Track ids 0..T-1 in order of first appearance; -1 where the key is None."""
    ids: Dict[Hashable, int] = {}
    for key in keys:
        if key is not None:
            ids.setdefault(key, len(ids))
    return [NO_TRACK if key is None else ids[key] for key in keys]


class UnlabelledDataset(BaseImageDataset):
    """Training images only, pid -1, cameras and (with `tracks`) track ids as the module says."""

    dataset_dir = ""
    display_name = "unlabelled crops"
    labelled = False

    def __init__(self, root: str, tracks: str = 'none', verbose: bool = True,
                 require_train: bool = True):
        if tracks not in ('none',) + TRACK_SOURCES:
            raise DatasetError(
                f"CLUSTER.TRACKS '{tracks}' with DATASETS.NAMES 'unlabelled': give 'folders' "
                f"(a folder per track), 'names' (Market-style names, as tools/mot_to_reid.py "
                f"writes) or 'none'")
        self.track_source = tracks
        self.train_tracks: Optional[List[int]] = None
        super().__init__(root, verbose, require_train=require_train)

    def expected_tree(self) -> str:
        return ("  <DATASETS.ROOT_DIR>/  images (.jpg, .jpeg, .png, .bmp) at any depth; cameras "
                "from Market-style names (0002_c3s1_000451_00.jpg) or first-level folders "
                "c<k>/ or cam<k>/")

    def _load_splits(self) -> Tuple[List[Sample], List[Sample], List[Sample]]:
        if not os.path.isdir(self.root):
            raise self.not_found(f"folder '{self.root}' does not exist")
        relpaths = crops_under(self.root)
        if not relpaths:
            raise DatasetError(f"unlabelled crops: no images ({', '.join(IMAGE_EXTENSIONS)}) "
                               f"under '{self.root}'; set DATASETS.ROOT_DIR to your crops' folder")
        found = [camera_and_number(relpath, self.root) for relpath in relpaths]
        cameras = self._cameras(relpaths, [camera for camera, _ in found])
        train = [(os.path.join(self.root, relpath), -1, camid, NO_VIEW)
                 for relpath, camid in zip(relpaths, cameras)]
        if self.track_source != 'none':
            self.train_tracks = self._tracks(relpaths, found)
        return train, [], []

    def _cameras(self, relpaths: List[str], cameras: List[Optional[int]]) -> List[int]:
        """0-based cameras: every crop's, or 0 for all when none has one."""
        if all(camera is None for camera in cameras):
            logger.info("%s: no crop names a camera: all are camera 1", self.display_name)
            return [0] * len(relpaths)
        unknown = [path for path, camera in zip(relpaths, cameras) if camera is None]
        if unknown:
            raise DatasetError(
                f"unlabelled crops: '{os.path.join(self.root, unknown[0])}' (and "
                f"{len(unknown) - 1} more) has no camera while other crops have one; name it "
                f"like 0002_c3s1_000451_00.jpg or put it under a c<k>/ folder")
        return [camera - 1 for camera in cameras]

    def _tracks(self, relpaths: List[str],
                found: List[Tuple[Optional[int], Optional[int]]]) -> List[int]:
        tracks = number_tracks([track_key(relpath, camera, number, self.track_source)
                                for relpath, (camera, number) in zip(relpaths, found)])
        if all(track == NO_TRACK for track in tracks):
            how = ("sub-folders, one per track (<root>/<track>/*.jpg)"
                   if self.track_source == 'folders'
                   else "Market-style names whose number is the track (<track>_c<cam>...jpg)")
            raise DatasetError(f"CLUSTER.TRACKS '{self.track_source}': no crop under "
                               f"'{self.root}' has a track; tracks come from {how}, or set "
                               f"CLUSTER.TRACKS 'none'")
        return tracks

    def _check_test_splits(self) -> None:
        """None to check: there is no query or gallery (`load_eval_dataset` refuses to evaluate
        here; int8 export calibrates on the crops)."""

    def statistics_table(self) -> str:
        cameras = len({camid for _, _, camid, _ in self.train})
        tracks = ("" if self.train_tracks is None else
                  f", {len(set(self.train_tracks) - {NO_TRACK})} tracks "
                  f"({self.train_tracks.count(NO_TRACK)} crops in none)")
        return (f"  {len(self.train)} unlabelled training images, {cameras} cameras{tracks}; "
                f"no query or gallery")
