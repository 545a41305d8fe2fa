"""MSMT17 (Wei et al., Person Transfer GAN, CVPR 2018), in either of its two common layouts.

V1 (the official archive, read by the reference): `train/`, `test/` and list files whose lines
are `<pid folder>/<pid>_<index>_<cam>_<...>.jpg <pid>`; train and val lists are merged.
Market-style (MSMT17_V2 converted to Market folders, e.g. `0000_c1_0000.jpg`): three folders.
"""
from __future__ import annotations

import logging
import os
from typing import List, Tuple

from .bases import MARKET_PATTERN, NO_VIEW, DatasetError, NameRule, Sample
from .market_style import SPLIT_FOLDERS, MarketStyleDataset, market_tree

logger = logging.getLogger("transreid.datasets")

NUM_CAMS = 15
LIST_FILES = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")


class MSMT17(MarketStyleDataset):
    dataset_dir = "MSMT17"
    display_name = "MSMT17"
    name_rule = NameRule(MARKET_PATTERN, "0000_c1_0000.jpg", num_cams=NUM_CAMS)

    def expected_tree(self) -> str:
        v1 = "\n".join([f"  {self.folder}/", "    train/  test/"]
                       + [f"    {f}" for f in LIST_FILES])
        return (f"either the V1 layout\n{v1}\n"
                f"or the Market-style layout\n{market_tree(self.folder, self.require_train)}")

    def _load_splits(self) -> Tuple[List[Sample], List[Sample], List[Sample]]:
        self.require(self.dataset_dir)
        # The layout is told by its training split, or by its query split when only evaluating
        # (a tree without the training split).
        v1_marker, folder_marker = ((LIST_FILES[0], SPLIT_FOLDERS[0]) if self.require_train
                                    else (LIST_FILES[2], SPLIT_FOLDERS[1]))
        if os.path.exists(os.path.join(self.dataset_dir, v1_marker)):
            logger.info("MSMT17: V1 layout (list files) found in %s", self.dataset_dir)
            return self._load_v1()
        if os.path.isdir(os.path.join(self.dataset_dir, folder_marker)):
            logger.info("MSMT17: Market-style folder layout found in %s", self.dataset_dir)
            return super()._load_splits()
        raise self.not_found(f"neither {v1_marker} nor {folder_marker}/ is in "
                             f"'{self.dataset_dir}'")

    def _load_v1(self) -> Tuple[List[Sample], List[Sample], List[Sample]]:
        train_dir, test_dir = (os.path.join(self.dataset_dir, d) for d in ("train", "test"))
        train_list, val_list, query_list, gallery_list = (os.path.join(self.dataset_dir, f)
                                                          for f in LIST_FILES)
        self.require(*self.training_paths(train_dir), test_dir,
                     *self.training_paths(train_list, val_list), query_list, gallery_list)
        self.split_sources = dict(train=f"{train_list} + {val_list}", query=query_list,
                                  gallery=gallery_list)
        train = [sample for path in (train_list, val_list) if os.path.isfile(path)
                 for sample in read_v1_list(path, train_dir)]
        return train, read_v1_list(query_list, test_dir), read_v1_list(gallery_list, test_dir)


def read_v1_list(list_path: str, image_dir: str) -> List[Sample]:
    """Samples of an MSMT17 V1 list file; the camera is the 3rd '_' field of the file name."""
    samples = []
    with open(list_path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rel_path, pid = line.split()
                cam = int(os.path.basename(rel_path).split("_")[2])
                pid = int(pid)
            except (ValueError, IndexError):
                raise DatasetError(
                    f"{list_path}:{line_no}: '{line.strip()}' is not '<dir>/<pid>_<idx>_<cam>_"
                    "<...>.jpg <pid>' (MSMT17 V1 list format)") from None
            if not 1 <= cam <= NUM_CAMS:
                raise DatasetError(f"{list_path}:{line_no}: camera {cam} outside 1..{NUM_CAMS}")
            samples.append((os.path.join(image_dir, rel_path), pid, cam - 1, NO_VIEW))
    return samples
