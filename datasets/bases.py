"""What every re-ID dataset shares: the sample tuple, the parser base class and the image dataset.

A parser turns a folder tree into three lists of samples `(img_path, pid, camid, viewid)`:
`train` (pids relabelled to 0..N-1), `query` and `gallery` (original pids, so that query and
gallery ids match). Camera ids are 0-based; `viewid` is 1 where a dataset has no view labels.

Training needs all three splits. Evaluation needs only query and gallery
(`require_train=False`): a tree without the training split is then read with `train` empty.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import stat
import time
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset

from utils.errors import UserError

logger = logging.getLogger("transreid.datasets")

# Some benchmark images are truncated JPEGs that PIL refuses by default (as the reference allows).
ImageFile.LOAD_TRUNCATED_IMAGES = True

Sample = Tuple[str, int, int, int]
"""(img_path, pid, camid, viewid)"""

NO_VIEW = 1
"""View id given to every image of a dataset without view labels (as the reference)."""

JUNK_PID = -1
DISTRACTOR_PID = 0
"""Market-1501's `0000` gallery images: people of no query identity, scored as wrong matches."""

SPLITS = ("train", "query", "gallery")


class DatasetError(UserError, RuntimeError):
    """A dataset that cannot be read as configured; the message names the file and the fix."""


class DatasetNotFoundError(DatasetError):
    """An expected folder or file of a dataset is missing."""


class BaseImageDataset:
    """Parses one re-ID dataset under `root`; subclasses implement `_load_splits`.

    Class attributes:
        dataset_dir: folder of the dataset under `DATASETS.ROOT_DIR` ('' = ROOT_DIR itself).
        display_name: name used in logs.
        has_views: whether the dataset carries real view labels (needed by MODEL.SIE_VIEW).
        num_trials: how many query/gallery draws its protocol averages (VehicleID's random
            draws); trial t of them is built with `trial=t`.
        labelled: whether the training pids are identities (relabelled to 0..N-1); a set
            without labels keeps pid -1 on every training image.
        train_tracks: the track id of each training image (aligned with `train`, -1 where
            unknown), or None when the data has no tracks; training without labels keeps a
            track's crops in one pseudo-identity (`utils.clustering.join_tracks`).
    """

    dataset_dir: str = ""
    display_name: str = "dataset"
    has_views: bool = False
    num_trials: int = 1
    labelled: bool = True
    train_tracks: Optional[List[int]] = None

    def __init__(self, root: str, verbose: bool = True, dataset_dir: Optional[str] = None,
                 display_name: Optional[str] = None, require_train: bool = True):
        """`dataset_dir` and `display_name` override the class's (to reuse a parser);
        `require_train=False` reads a tree without its training split (for evaluation)."""
        self.root = root
        self.folder = type(self).dataset_dir if dataset_dir is None else dataset_dir
        self.display_name = display_name or type(self).display_name
        self.dataset_dir = os.path.join(root, self.folder)
        self.require_train = require_train
        # Where each split comes from, to name it in errors; parsers set their own.
        self.split_sources: Dict[str, str] = dict.fromkeys(SPLITS, self.dataset_dir)
        train, self.query, self.gallery = self._load_splits()
        self.train = relabel(train) if self.labelled else train
        if not self.train and require_train:
            raise DatasetError(f"{self.display_name}: no training images found under "
                               f"{self.dataset_dir}")
        if not self.train:
            logger.info("%s: no training split in '%s'; query and gallery suffice to evaluate",
                        self.display_name, self.split_sources["train"])
        self._check_test_splits()
        if verbose:
            logger.info("=> %s loaded", self.display_name)
            logger.info("Dataset statistics:\n%s", self.statistics_table())

    def _load_splits(self) -> Tuple[List[Sample], List[Sample], List[Sample]]:
        raise NotImplementedError

    def expected_tree(self) -> str:
        """The required layout under ROOT_DIR, shown when something is missing."""
        raise NotImplementedError

    # ------------------------------------------------------------------ checks
    def training_paths(self, *paths: str) -> Tuple[str, ...]:
        """`paths` (of the training split) when they must exist, i.e. unless only evaluating."""
        return paths if self.require_train else ()

    def _check_test_splits(self) -> None:
        """Evaluation ranks every query against the gallery: stop now, before any model runs,
        if either is empty."""
        for split in ("query", "gallery"):
            if not getattr(self, split):
                raise DatasetError(
                    f"{self.display_name}: no {split} images in '{self.split_sources[split]}' "
                    f"(junk images, pid {JUNK_PID}, are skipped); evaluation needs at least one "
                    "query and one gallery image. Add them there, or set DATASETS.ROOT_DIR to the "
                    "dataset that has them.")

    def require(self, *paths: str) -> None:
        """Raise a DatasetNotFoundError naming the first missing path and the expected tree."""
        for path in paths:
            if not os.path.exists(path):
                raise self.not_found(f"'{path}' does not exist")

    def not_found(self, what: str) -> DatasetNotFoundError:
        return DatasetNotFoundError(
            f"{self.display_name}: {what}. Expected this tree under "
            f"DATASETS.ROOT_DIR='{self.root}':\n{self.expected_tree()}\n"
            "Set DATASETS.ROOT_DIR to the folder that holds it.")

    # -------------------------------------------------------------- statistics
    @property
    def num_train_pids(self) -> int:
        return len({pid for _, pid, _, _ in self.train})

    @property
    def num_cameras(self) -> int:
        """Camera embeddings needed: largest camera id over all splits + 1."""
        return 1 + max(camid for _, _, camid, _ in self.train + self.query + self.gallery)

    @property
    def num_views(self) -> int:
        """View embeddings needed: largest view id + 1, or 1 for a dataset without views."""
        if not self.has_views:
            return 1
        return 1 + max(viewid for _, _, _, viewid in self.train + self.query + self.gallery)

    def statistics_table(self) -> str:
        rule = "  " + "-" * 40
        rows = [rule, "  subset   | # ids | # images | # cameras", rule]
        for name, samples in (("train", self.train), ("query", self.query),
                              ("gallery", self.gallery)):
            num_pids, num_imgs, num_cams, _ = split_info(samples)
            rows.append(f"  {name:<8} | {num_pids:5d} | {num_imgs:8d} | {num_cams:9d}")
        rows.append(rule)
        return "\n".join(rows)


def split_info(samples: Sequence[Sample]) -> Tuple[int, int, int, int]:
    """(#ids, #images, #cameras, #views) of one split, as the reference's get_imagedata_info."""
    pids = {s[1] for s in samples}
    cams = {s[2] for s in samples}
    views = {s[3] for s in samples}
    return len(pids), len(samples), len(cams), len(views)


def relabel(samples: Iterable[Sample]) -> List[Sample]:
    """Map the pids of a training split to 0..N-1 in increasing pid order."""
    samples = list(samples)
    label_of = {pid: label for label, pid in enumerate(sorted({s[1] for s in samples}))}
    return [(path, label_of[pid], camid, viewid) for path, pid, camid, viewid in samples]


# ---------------------------------------------------------------------------- file-name rules
class NameRule:
    """A file-name pattern with `pid` and `cam` groups, and the allowed ranges.

    `cam` is 1-based in the file name and returned 0-based, as every benchmark does.
    """

    def __init__(self, pattern: str, example: str, max_pid: Optional[int] = None,
                 num_cams: Optional[int] = None):
        self.regex = re.compile(pattern)
        self.example = example
        self.max_pid = max_pid
        self.num_cams = num_cams

    def describe(self) -> str:
        pid_range = f"-1..{self.max_pid}" if self.max_pid is not None else ">= -1"
        cam_range = f"1..{self.num_cams}" if self.num_cams is not None else ">= 1"
        return (f"names like '{self.example}' (pattern {self.regex.pattern}), "
                f"pid {pid_range}, camera {cam_range}")

    def parse(self, path: str) -> Tuple[int, int]:
        """(pid, 0-based camid) of `path`; DatasetError naming the file and the rule if off."""
        match = self.regex.match(os.path.basename(path))
        if match is None:
            raise DatasetError(f"'{path}' does not follow the file-name rule: {self.describe()}")
        pid, cam = int(match.group("pid")), int(match.group("cam"))
        pid_ok = pid >= JUNK_PID and (self.max_pid is None or pid <= self.max_pid)
        cam_ok = cam >= 1 and (self.num_cams is None or cam <= self.num_cams)
        if not (pid_ok and cam_ok):
            raise DatasetError(f"'{path}': pid {pid} / camera {cam} out of range; "
                               f"rule: {self.describe()}")
        return pid, cam - 1


MARKET_PATTERN = r"(?P<pid>-?\d+)_c(?P<cam>\d+)"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def list_images(folder: str, extensions: Sequence[str] = (".jpg",)) -> List[str]:
    """Sorted image paths directly in `folder` (sorted so that every run sees the same order)."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(tuple(extensions)))
    return [os.path.join(folder, n) for n in names]


def parse_folder(folder: str, rule: NameRule,
                 view_of: Callable[[str], Optional[int]] = lambda _: NO_VIEW,
                 extensions: Sequence[str] = (".jpg",)) -> List[Sample]:
    """Samples of every image in `folder`; junk (pid -1) and images whose view is None skipped."""
    samples = []
    for path in list_images(folder, extensions):
        pid, camid = rule.parse(path)
        viewid = view_of(path)
        if pid == JUNK_PID or viewid is None:
            continue
        samples.append((path, pid, camid, viewid))
    return samples


# ------------------------------------------------------------------------------ image reading
class ImageReadError(UserError, OSError):
    """An image file that cannot be read; the one-line message names the file and the fault.

    Raised in a DataLoader worker, torch re-raises it in the main process as
    `ImageReadError("Caught ImageReadError in DataLoader worker process N.\nOriginal
    Traceback...")`; the constructor keeps only the original line, so that a user sees one.
    """

    def __init__(self, message: str):
        super().__init__(_original_message(message, type(self).__name__))


class ImageNotFoundError(ImageReadError, FileNotFoundError):
    """An image path that does not exist."""


def _original_message(message: str, name: str) -> str:
    """The original message inside torch's re-raise of a worker's exception, else `message`.
    The worker's traceback ends with the line 'package.module.Name: <message>'."""
    if not message.startswith(f"Caught {name} ") or "\nOriginal Traceback" not in message:
        return message
    last = message.rstrip("\n").rsplit("\n", 1)[-1]
    original = re.fullmatch(rf"(?:[\w.]+\.)?{name}: (.*)", last)
    return original[1] if original else message


# File-system errors that waiting cannot fix; other errno-carrying OSErrors (EIO, ESTALE,
# ETIMEDOUT... of network file systems) are retried. OSErrors without errno come from PIL's
# decoders: the bytes themselves are wrong, and reading them again gives the same bytes.
_PERMANENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def read_image(img_path: str, retries: int = 3, wait_s: float = 0.1) -> Image.Image:
    """Open an image as RGB. Transient file-system errors (network file systems) are retried
    `retries` times; a file that cannot be an image raises ImageReadError at once.

    The reference retries forever; this names the file and what is wrong with it.
    """
    _check_image_file(img_path)
    attempts = max(1, retries)
    for attempt in range(1, attempts + 1):
        try:
            with Image.open(img_path) as img:
                return to_rgb(img)
        except Image.DecompressionBombError as err:  # not an OSError in Pillow >= 10
            raise ImageReadError(
                f"cannot read image '{img_path}': it is implausibly large ({err}); if it is "
                "genuine, raise PIL.Image.MAX_IMAGE_PIXELS, else replace or remove the file"
            ) from None
        except OSError as err:
            if isinstance(err, _PERMANENT) or err.errno is None:
                raise ImageReadError(f"cannot read image '{img_path}': "
                                     f"{_describe_bad_image(img_path, err)}") from None
            logger.warning("reading '%s' failed (attempt %d/%d): %s", img_path, attempt,
                           attempts, err)
            last_error = err
            time.sleep(wait_s)
    raise ImageReadError(f"cannot read image '{img_path}' after {attempts} attempts "
                         f"(DATALOADER.READ_RETRIES): {last_error}; check the file system, "
                         "or replace or remove the file")


def to_rgb(img: Image.Image) -> Image.Image:
    """`img` as RGB, the one conversion of every image, read from a file or handed in (the
    inference API): PIL's, which drops alpha and clips 16-bit and float values to 0..255."""
    return img.convert("RGB")


def _check_image_file(img_path: str) -> None:
    """Faults visible without opening the file, each with its own message."""
    try:
        info = os.stat(img_path)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(img_path):
            raise ImageReadError(f"cannot read image '{img_path}': it is a symbolic link to "
                                 f"'{os.readlink(img_path)}', which does not exist; fix or "
                                 "remove the link") from None
        raise ImageNotFoundError(f"cannot read image '{img_path}': it does not exist") from None
    except OSError:
        return  # maybe transient (a network file system): reading retries it
    if stat.S_ISDIR(info.st_mode):
        raise ImageReadError(f"cannot read image '{img_path}': it is a folder, not an image "
                             "file; move it out of the image folder")
    if info.st_size == 0:
        raise ImageReadError(f"cannot read image '{img_path}': it is empty (0 bytes); "
                             "replace or remove the file")


def _describe_bad_image(img_path: str, err: OSError) -> str:
    """What is wrong, and the fix, for an error that rereading cannot fix."""
    if isinstance(err, PermissionError):
        return "this user may not read it (permission denied); fix its permissions"
    if isinstance(err, FileNotFoundError):
        return "it disappeared while being read; check what removes files there"
    try:
        with open(img_path, "rb") as f:
            start = f.read(64)
    except OSError:
        start = b""
    if start.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml", b"<head")):
        return ("it is an HTML/XML page saved under an image name, not an image; replace or "
                "remove the file")
    return (f"it is not a readable image ({err}; it starts with {start[:16]!r}); replace or "
            "remove the file")


class ImageDataset(Dataset):
    """Samples -> `(image, pid, camid, viewid, img_path)`, the image passed through `transform`."""

    def __init__(self, samples: Sequence[Sample], transform: Optional[Callable] = None,
                 read_retries: int = 3):
        self.samples = list(samples)
        self.transform = transform
        self.read_retries = read_retries

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        img_path, pid, camid, viewid = self.samples[index]
        # The inference API also hands in images already in memory.
        img = img_path if isinstance(img_path, Image.Image) else read_image(img_path, self.read_retries)
        if self.transform is not None:
            img = self.transform(img)
        return img, pid, camid, viewid, img_path


class SeededImageDataset(ImageDataset):
    """Training images indexed by `(index, seed)` (from `SeededIndices`): the random transform
    of each runs under its own seed, leaving the process's random state as it was."""

    def __getitem__(self, index_and_seed: Tuple[int, int]):
        index, seed = index_and_seed
        with seeded_random_state(seed):
            return super().__getitem__(index)


@contextlib.contextmanager
def seeded_random_state(seed: int) -> Iterator[None]:
    """torch's CPU generator (torchvision's transforms) and Python's `random` (timm's
    RandomErasing) seeded with `seed` for the block, then restored."""
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    torch.random.default_generator.manual_seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)
