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
                f"or the Market-style layout\n{market_tree(self.folder)}")

    def _load_splits(self) -> Tuple[List[Sample], List[Sample], List[Sample]]:
        self.require(self.dataset_dir)
        if os.path.exists(os.path.join(self.dataset_dir, LIST_FILES[0])):
            logger.info("MSMT17: V1 layout (list files) found in %s", self.dataset_dir)
            return self._load_v1()
        if os.path.isdir(os.path.join(self.dataset_dir, SPLIT_FOLDERS[0])):
            logger.info("MSMT17: Market-style folder layout found in %s", self.dataset_dir)
            return super()._load_splits()
        raise self.not_found(f"neither {LIST_FILES[0]} nor {SPLIT_FOLDERS[0]}/ is in "
                             f"'{self.dataset_dir}'")

    def _load_v1(self) -> Tuple[List[Sample], List[Sample], List[Sample]]:
        train_dir, test_dir = (os.path.join(self.dataset_dir, d) for d in ("train", "test"))
        lists = [os.path.join(self.dataset_dir, f) for f in LIST_FILES]
        self.require(train_dir, test_dir, *lists)
        train_list, val_list, query_list, gallery_list = lists
        train = read_v1_list(train_list, train_dir) + read_v1_list(val_list, train_dir)
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
