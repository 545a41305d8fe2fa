"""Images a user points a tool or the inference API at: a folder, a list file or one image."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from utils.errors import ToolError

from .bases import (IMAGE_EXTENSIONS, MARKET_PATTERN, DatasetError, ImageReadError, NameRule,
                    read_image)
from .list_file import list_file_lines, parse_list_labels

logger = logging.getLogger("transreid.datasets")

MARKET_NAME = NameRule(MARKET_PATTERN, "0002_c1s1_000451_03.jpg")


@dataclass(frozen=True)
class ImageRecord:
    """An image and what is known of it; None where unknown."""
    path: str
    pid: Optional[int] = None
    camid: Optional[int] = None
    viewid: Optional[int] = None


def record_from_name(path: str) -> ImageRecord:
    """pid and 0-based camera of a Market-style name (`0002_c1s1_000451_03.jpg`), if it is one."""
    try:
        pid, camid = MARKET_NAME.parse(path)
    except DatasetError:
        return ImageRecord(path)
    return ImageRecord(path, pid, camid)


def is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def images_in_folder(folder: str) -> List[ImageRecord]:
    """Every image under `folder`, recursively, in sorted path order."""
    paths = sorted(os.path.join(parent, name)
                   for parent, _, names in os.walk(folder) for name in names if is_image(name))
    if not paths:
        raise ToolError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under folder '{folder}'")
    return [record_from_name(path) for path in paths]


def images_in_list(list_path: str) -> List[ImageRecord]:
    """Lines `path [pid camid [viewid]]` ('#' starts a comment); paths relative to the list's folder.

    Without pid and camid, a Market-style name still gives them.
    """
    base = os.path.dirname(os.path.abspath(list_path))
    records = []
    for where, fields in list_file_lines(list_path):
        path = os.path.join(base, fields[0])
        if not os.path.isfile(path):
            raise ToolError(f"{where}: image '{path}' does not exist")
        labels = parse_list_labels(fields, where) if len(fields) > 1 else None
        records.append(record_from_name(path) if labels is None else ImageRecord(path, *labels))
    if not records:
        raise ToolError(f"list file '{list_path}' names no images")
    return records


def collect_images(source: str) -> List[ImageRecord]:
    """Images of a folder (recursive), a list file, or a single image file."""
    if os.path.isdir(source):
        return images_in_folder(source)
    if os.path.isfile(source):
        return [record_from_name(source)] if is_image(source) else images_in_list(source)
    raise ToolError(f"'{source}' does not exist; give an image folder, a list file or an image")


def readable_images(records: Sequence[ImageRecord]) -> Tuple[List[ImageRecord], List[str]]:
    """The records whose images open, and the paths of those that do not (each warned about)."""
    readable, skipped = [], []
    for record in records:
        try:
            read_image(record.path, retries=1)
        except ImageReadError as err:
            logger.warning("skipped: %s", err)
            skipped.append(record.path)
        else:
            readable.append(record)
    return readable, skipped
