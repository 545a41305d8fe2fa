"""A user's own data described by list files: one `path pid camid [viewid]` line per image.

Paths are relative to DATASETS.ROOT_DIR (or absolute); `camid` and `viewid` are 0-based;
pid -1 marks junk images, which are skipped. Lines starting with '#' are comments. Either every
line of all three files has a view id, or none has.
"""
from __future__ import annotations

import os
from typing import Iterator, List, Optional, Tuple

from .bases import JUNK_PID, NO_VIEW, BaseImageDataset, DatasetError, Sample

LINE_FORMAT = "'<image path> <pid> <camid> [<viewid>]'"


class ListDataset(BaseImageDataset):
    dataset_dir = ""
    display_name = "list dataset"

    def __init__(self, root: str, train_list: str, query_list: str, gallery_list: str,
                 verbose: bool = True, require_train: bool = True):
        self.list_paths = [os.path.join(root, p) for p in (train_list, query_list, gallery_list)]
        super().__init__(root, verbose, require_train=require_train)

    def expected_tree(self) -> str:
        names = ", ".join(os.path.relpath(p, self.root) for p in self.list_paths)
        return (f"  {names}  (DATASETS.TRAIN_LIST / QUERY_LIST / GALLERY_LIST), lines "
                f"{LINE_FORMAT}")

    def _load_splits(self) -> Tuple[List[Sample], List[Sample], List[Sample]]:
        train_list, query_list, gallery_list = self.list_paths
        self.require(*self.training_paths(train_list), query_list, gallery_list)
        self.split_sources = dict(train=train_list, query=query_list, gallery=gallery_list)
        train_absent = not self.require_train and not os.path.isfile(train_list)
        parsed = [([], None) if train_absent else self._read(train_list),
                  self._read(query_list), self._read(gallery_list)]
        view_columns = {has_view for _, has_view in parsed if has_view is not None}
        if len(view_columns) > 1:
            raise DatasetError(f"list dataset: some of {self.list_paths} have a view column and "
                               "some do not; give a view id on every line or on none")
        self.has_views = view_columns == {True}
        train, query, gallery = (samples for samples, _ in parsed)
        return train, query, gallery

    def _read(self, list_path: str) -> Tuple[List[Sample], Optional[bool]]:
        """Samples of one list file, and whether its lines carry a view id (None if empty)."""
        samples, has_view = [], None
        for where, fields in list_file_lines(list_path):
            pid, camid, viewid = parse_list_labels(fields, where)
            if pid < JUNK_PID or camid < 0 or (viewid is not None and viewid < 0):
                raise DatasetError(f"{where}: pid must be >= -1, camid and viewid >= 0")
            if has_view is not None and (viewid is not None) != has_view:
                raise DatasetError(f"{where}: view column given on some lines only; give it "
                                   "on every line or on none")
            has_view = viewid is not None
            if pid != JUNK_PID:
                samples.append((os.path.join(self.root, fields[0]), pid, camid,
                                NO_VIEW if viewid is None else viewid))
        return samples, has_view


def list_file_lines(list_path: str) -> Iterator[Tuple[str, List[str]]]:
    """('file:line', fields) of every line that is neither blank nor a '#' comment."""
    try:
        with open(list_path) as handle:
            lines = handle.readlines()
    except UnicodeDecodeError:
        raise DatasetError(f"'{list_path}' is not a text list file") from None
    for line_no, line in enumerate(lines, 1):
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            yield f"{list_path}:{line_no}", fields


def parse_list_labels(fields: List[str], where: str) -> Tuple[int, int, Optional[int]]:
    """pid, camid and viewid (None when the line has no view column) of a list line."""
    try:
        if len(fields) not in (3, 4):
            raise ValueError
        viewid = int(fields[3]) if len(fields) == 4 else None
        return int(fields[1]), int(fields[2]), viewid
    except ValueError:
        raise DatasetError(f"{where}: '{' '.join(fields)}' is not {LINE_FORMAT}") from None
