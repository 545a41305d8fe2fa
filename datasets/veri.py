"""VeRi-776 (Liu et al., ICME 2016), with view labels from VehicleReIDKeyPointData.

`keypoint_train.txt` / `keypoint_test.txt` (Wang et al., ICCV 2017) hold one line per image:
`<path> <20 keypoints as x y> <view>`; only the file's base name and the last column are used.
Each file is read from the dataset folder or, failing that, from `datasets/` under the working
directory, where the reference reads them; the log names the file read.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Tuple

from .bases import (MARKET_PATTERN, NO_VIEW, BaseImageDataset, DatasetError,
                    DatasetNotFoundError, NameRule, Sample, parse_folder)

logger = logging.getLogger("transreid.datasets")

VERI_FOLDERS = ("image_train", "image_query", "image_test")
KEYPOINT_FILES = ("keypoint_train.txt", "keypoint_test.txt")
KEYPOINT_SOURCE = "https://github.com/Zhongdao/VehicleReIDKeyPointData"
REFERENCE_KEYPOINT_DIR = "datasets"
"""Where the reference's veri.py reads the keypoint files, relative to the working directory."""


class VeRi(BaseImageDataset):
    """train = image_train, query = image_query, gallery = image_test (which holds the queries
    too; same-camera matches are discarded by the evaluation, as in VeRi's protocol)."""

    dataset_dir = "VeRi"
    display_name = "VeRi-776"
    name_rule = NameRule(MARKET_PATTERN, "0001_c001_00016450_0.jpg", max_pid=776, num_cams=20)

    def __init__(self, root: str, require_views: bool = False, verbose: bool = True,
                 name_rule: Optional[NameRule] = None, **overrides):
        self.require_views = require_views
        self.name_rule = name_rule or type(self).name_rule
        super().__init__(root, verbose, **overrides)

    def expected_tree(self) -> str:
        lines = [f"  {self.folder}/"]
        lines += [f"    {f}/  (<pid>_c<cam>_<frame>_0.jpg)" for f in VERI_FOLDERS]
        lines += [f"    {f}  (view labels, from {KEYPOINT_SOURCE}; or in "
                  f"{REFERENCE_KEYPOINT_DIR}/ under the working directory)"
                  for f in KEYPOINT_FILES]
        return "\n".join(lines)

    def keypoint_dirs(self) -> List[str]:
        """Folders searched for the keypoint files, in precedence order: the dataset folder
        first, as it comes with DATASETS.ROOT_DIR whichever folder a run starts in; then the
        reference's `datasets/` under the working directory. A folder chosen by the caller
        (e.g. a synthetic set) has its own labels, so only the real VeRi looks there."""
        if self.folder != type(self).dataset_dir:
            return [self.dataset_dir]
        return [self.dataset_dir, os.path.abspath(REFERENCE_KEYPOINT_DIR)]

    def _load_splits(self) -> Tuple[List[Sample], List[Sample], List[Sample]]:
        train_dir, query_dir, gallery_dir = folders = [os.path.join(self.dataset_dir, f)
                                                       for f in VERI_FOLDERS]
        self.require(self.dataset_dir, *self.training_paths(train_dir), query_dir, gallery_dir)
        self.split_sources = dict(train=train_dir, query=query_dir, gallery=gallery_dir)
        view_of_name = self._read_views()
        self.has_views = view_of_name is not None
        unlabelled: List[str] = []

        def view_of(path: str) -> Optional[int]:
            if view_of_name is None:
                return NO_VIEW
            view = view_of_name.get(os.path.basename(path))
            if view is None:
                unlabelled.append(path)
            return view

        train, query, gallery = (parse_folder(f, self.name_rule, view_of) if os.path.isdir(f)
                                 else [] for f in folders)
        if unlabelled:
            # As the reference: images without a view label are left out.
            logger.warning("%s: %d images have no view label and are skipped, e.g. %s",
                           self.display_name, len(unlabelled), unlabelled[0])
        return train, query, gallery

    def _read_views(self) -> Optional[Dict[str, int]]:
        # keypoint_test.txt labels the query and gallery images; the training file is needed
        # only with the training split.
        needed = KEYPOINT_FILES if self.require_train else KEYPOINT_FILES[1:]
        found = {name: self._find_keypoint_file(name) for name in KEYPOINT_FILES}
        missing = [name for name in needed if found[name] is None]
        places = " or ".join(f"'{folder}'" for folder in self.keypoint_dirs())
        if missing and self.require_views:
            raise DatasetNotFoundError(
                f"MODEL.SIE_VIEW needs VeRi view labels but {missing[0]} is in none of "
                f"{places}: put {' and '.join(KEYPOINT_FILES)} from {KEYPOINT_SOURCE} in "
                f"'{self.dataset_dir}', or set MODEL.SIE_VIEW False")
        if missing:
            logger.warning("%s: %s is in none of %s, images get view id %d (needed only with "
                           "MODEL.SIE_VIEW)", self.display_name, missing[0], places, NO_VIEW)
            return None
        views: Dict[str, int] = {}
        # Test labels first, so that the training file's label wins for a name in both files,
        # as in the reference (which looks a name up in the training file first).
        for name in reversed(KEYPOINT_FILES):
            if found[name] is not None:
                views.update(read_view_file(found[name]))
        return views

    def _find_keypoint_file(self, name: str) -> Optional[str]:
        """The first of keypoint_dirs() holding `name`, logged; None if none does."""
        paths = [os.path.join(folder, name) for folder in self.keypoint_dirs()]
        existing = [path for path in paths if os.path.isfile(path)]
        if len(existing) > 1:
            logger.warning("%s: %s both exist; reading '%s' (the dataset folder's comes first)",
                           self.display_name, " and ".join(f"'{p}'" for p in existing),
                           existing[0])
        elif existing:
            logger.info("%s: view labels read from '%s'", self.display_name, existing[0])
        return existing[0] if existing else None


def read_view_file(path: str) -> Dict[str, int]:
    """{image base name: view id} from a VehicleReIDKeyPointData file (last column = view)."""
    views = {}
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                views[os.path.basename(fields[0])] = int(fields[-1])
            except ValueError:
                raise DatasetError(f"{path}:{line_no}: the last column must be the integer view "
                                   f"id, got '{fields[-1]}'") from None
    return views
