"""Datasets stored as Market-1501: three folders of images named `<pid>_c<cam>...jpg`.

Market-1501, DukeMTMC-reID, Occluded-Duke, and users' own folders share this layout and differ
only in folder name and the allowed pid/camera ranges. A dataset may accept more than one folder
name under DATASETS.ROOT_DIR (`folder_aliases`): DukeMTMC-reID is `DukeMTMC-reID/` in the
reference's code but `dukemtmcreid/` in its README, and users arrive with either.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, List, Optional, Sequence, Tuple

from .bases import (IMAGE_EXTENSIONS, MARKET_PATTERN, BaseImageDataset, NameRule, Sample,
                    parse_folder)

logger = logging.getLogger("transreid.datasets")

SPLIT_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")


def market_tree(top: str, train_required: bool = True, also: Sequence[str] = ()) -> str:
    """The Market layout under `top/`; `also` are other accepted names of `top`."""
    train_note = "" if train_required else ", needed only to train"
    notes = [train_note, "", ""]
    aliases = "".join(f"  (or {name}/)" for name in also)
    return "\n".join([f"  {top}/{aliases}"] + [f"    {folder}/  (<pid>_c<cam>...jpg{note})"
                                                for folder, note in zip(SPLIT_FOLDERS, notes)])


def choose_folder(root: str, names: Sequence[str], complete: Callable[[str], bool],
                  display_name: str) -> Optional[str]:
    """The folder of `names` under `root` to read, by one rule: the first of `names` (in that
    order) that exists and is `complete`, else the first that exists; None if none exists.
    The choice is logged, and when several exist, which were passed over and why."""
    existing = [os.path.join(root, name) for name in names
                if os.path.isdir(os.path.join(root, name))]
    if not existing:
        return None
    chosen = next((path for path in existing if complete(path)), existing[0])
    accepted = ", ".join(f"{name}/" for name in names)
    if len(existing) == 1:
        logger.info("%s: reading '%s' (accepted folders: %s)", display_name, chosen, accepted)
        return chosen
    passed_over = [f"'{path}'" for path in existing[:existing.index(chosen)]]
    why = (f"{' and '.join(passed_over)} {'lacks' if len(passed_over) == 1 else 'lack'} a "
           "split folder needed here" if passed_over
           else f"the first that exists, in the order {accepted}")
    logger.warning("%s: %s %s exist; reading '%s': %s", display_name,
                   ", ".join(f"'{path}'" for path in existing),
                   "both" if len(existing) == 2 else "all", chosen, why)
    return chosen


class MarketStyleDataset(BaseImageDataset):
    """train = bounding_box_train, query = query, gallery = bounding_box_test."""

    name_rule = NameRule(MARKET_PATTERN, "0002_c1s1_000451_03.jpg")
    extensions: Sequence[str] = (".jpg",)
    folder_aliases: Tuple[str, ...] = ()
    """Other accepted names of `dataset_dir`, after it in precedence."""

    def __init__(self, root: str, verbose: bool = True, name_rule: Optional[NameRule] = None,
                 **overrides):
        self.name_rule = name_rule or type(self).name_rule
        super().__init__(root, verbose, **overrides)

    def expected_tree(self) -> str:
        return market_tree(self.folder or "<DATASETS.ROOT_DIR>", self.require_train,
                           also=self._accepted_folders()[1:])

    def _accepted_folders(self) -> Tuple[str, ...]:
        # Aliases belong to the class's own folder name, not to a folder the caller chose.
        if self.folder != type(self).dataset_dir:
            return (self.folder,)
        return (self.folder,) + self.folder_aliases

    def _needed_folders(self, top: str) -> Tuple[str, ...]:
        train_dir, query_dir, gallery_dir = (os.path.join(top, f) for f in SPLIT_FOLDERS)
        return (*self.training_paths(train_dir), query_dir, gallery_dir)

    def locate(self) -> None:
        """Point `folder` / `dataset_dir` at the accepted folder to read (see choose_folder);
        a DatasetNotFoundError naming every accepted folder if none exists."""
        names = self._accepted_folders()
        if len(names) == 1:
            return
        chosen = choose_folder(self.root, names,
                               lambda top: all(map(os.path.isdir, self._needed_folders(top))),
                               self.display_name)
        if chosen is None:
            raise self.not_found("none of " + ", ".join(
                f"'{os.path.join(self.root, name)}'" for name in names) + " exists")
        self.dataset_dir, self.folder = chosen, os.path.basename(chosen)

    def _load_splits(self) -> Tuple[List[Sample], List[Sample], List[Sample]]:
        self.locate()
        train_dir, query_dir, gallery_dir = (os.path.join(self.dataset_dir, f)
                                             for f in SPLIT_FOLDERS)
        self.require(self.dataset_dir, *self._needed_folders(self.dataset_dir))
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

    # `DukeMTMC-reID/` is what the reference's code reads (and the official archive's name);
    # `dukemtmcreid/` is the name in the reference's README. Both are read. When both
    # exist, `DukeMTMC-reID/` is read unless it lacks a needed split folder and `dukemtmcreid/`
    # has them all: setups that read `DukeMTMC-reID/` here before keep reading it, and the
    # reference, run on its README's tree, creates an empty `DukeMTMC-reID/` for a download
    # that no longer works, so users arriving from it can have that stub next to their real
    # `dukemtmcreid/`.
    dataset_dir = "DukeMTMC-reID"
    folder_aliases = ("dukemtmcreid",)
    display_name = "DukeMTMC-reID"
    name_rule = NameRule(MARKET_PATTERN, "0005_c2_f0046985.jpg", num_cams=8)


class OccludedDukeMTMCreID(DukeMTMCreID):
    """Miao et al., Pose-Guided Feature Alignment for Occluded Person Re-ID. ICCV 2019."""

    # The reference's code and README both name it `Occluded_Duke`: no other name to accept.
    dataset_dir = "Occluded_Duke"
    folder_aliases = ()
    display_name = "Occluded-DukeMTMC"


class FolderDataset(MarketStyleDataset):
    """A user's own data: the three Market folders directly in DATASETS.ROOT_DIR, any ranges."""

    dataset_dir = ""
    display_name = "folder dataset"
    extensions = IMAGE_EXTENSIONS

