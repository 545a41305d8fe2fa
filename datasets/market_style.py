"""Datasets stored as Market-1501: three folders of images named `<pid>_c<cam>...jpg`.

Market-1501, DukeMTMC-reID, Occluded-Duke, and users' own folders share this layout and differ
only in folder name and the allowed pid/camera ranges.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

from .bases import (IMAGE_EXTENSIONS, MARKET_PATTERN, BaseImageDataset, NameRule, Sample,
                    parse_folder)

SPLIT_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")


def market_tree(top: str, train_required: bool = True) -> str:
    train_note = "" if train_required else ", needed only to train"
    notes = [train_note, "", ""]
    return "\n".join([f"  {top}/"] + [f"    {folder}/  (<pid>_c<cam>...jpg{note})"
                                       for folder, note in zip(SPLIT_FOLDERS, notes)])


class MarketStyleDataset(BaseImageDataset):
    """train = bounding_box_train, query = query, gallery = bounding_box_test."""

    name_rule = NameRule(MARKET_PATTERN, "0002_c1s1_000451_03.jpg")
    extensions: Sequence[str] = (".jpg",)

    def __init__(self, root: str, verbose: bool = True, name_rule: Optional[NameRule] = None,
                 **overrides):
        self.name_rule = name_rule or type(self).name_rule
        super().__init__(root, verbose, **overrides)

    def expected_tree(self) -> str:
        return market_tree(self.folder or "<DATASETS.ROOT_DIR>", self.require_train)

    def _load_splits(self) -> Tuple[List[Sample], List[Sample], List[Sample]]:
        train_dir, query_dir, gallery_dir = (os.path.join(self.dataset_dir, f)
                                             for f in SPLIT_FOLDERS)
        self.require(self.dataset_dir, *self.training_paths(train_dir), query_dir, gallery_dir)
        self.split_sources = dict(train=train_dir, query=query_dir, gallery=gallery_dir)
        train = self._parse(train_dir) if os.path.isdir(train_dir) else []
        return train, self._parse(query_dir), self._parse(gallery_dir)

    def _parse(self, folder: str) -> List[Sample]:
        return parse_folder(folder, self.name_rule, extensions=self.extensions)


class Market1501(MarketStyleDataset):
    """Zheng et al., Scalable Person Re-identification: A Benchmark. ICCV 2015."""

    dataset_dir = "market1501"
    display_name = "Market1501"
    name_rule = NameRule(MARKET_PATTERN, "0002_c1s1_000451_03.jpg", max_pid=1501, num_cams=6)


class DukeMTMCreID(MarketStyleDataset):
    """Ristani et al. 2016; Zheng et al., ICCV 2017 (re-ID split)."""

    dataset_dir = "DukeMTMC-reID"
    display_name = "DukeMTMC-reID"
    name_rule = NameRule(MARKET_PATTERN, "0005_c2_f0046985.jpg", num_cams=8)


class OccludedDukeMTMCreID(DukeMTMCreID):
    """Miao et al., Pose-Guided Feature Alignment for Occluded Person Re-ID. ICCV 2019."""

    dataset_dir = "Occluded_Duke"
    display_name = "Occluded-DukeMTMC"


class FolderDataset(MarketStyleDataset):
    """A user's own data: the three Market folders directly in DATASETS.ROOT_DIR, any ranges."""

    dataset_dir = ""
    display_name = "folder dataset"
    extensions = IMAGE_EXTENSIONS

