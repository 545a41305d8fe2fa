"""Crops of MOTChallenge-style sequences (MOT17, MOT20) as a re-ID set: identity = track,
camera = sequence, as BoT-SORT's fast_reid/datasets/generate_mot_patches.py makes them.

python tools/mot_to_reid.py --mot-root MOT17/train --output data/mot17-reid \\
    [--sequences MOT17-02-FRCNN ...] [--tracks gt/gt.txt | --tracks results/{seq}.txt] \\
    [--min-visibility 0.4] [--classes 1] [--min-height 32] [--stride 5]

A sequence is a folder with `img1/000001.jpg ...` (folder and extension from its seqinfo.ini when
it has one) and a track file of `frame,id,x,y,w,h,...` lines (1-based frames; boxes whose
top-left pixel is (1, 1), as the MOTChallenge devkit counts). Ground truth (`gt.txt`) has
`consider,class,visibility` after the box: rows with consider 0, a class outside --classes or a
visibility below --min-visibility are dropped. A tracker's output has a confidence there
(--min-confidence). Boxes are clipped to the frame.

Writes `<output>/bounding_box_train/<pid>_c<cam>s1_<frame>_00.jpg`: cameras number the chosen
sequences from 1 in name order, pids number the kept tracks from 1, sequence after sequence
(no track id is shared between sequences), and `<output>/cameras.txt` maps each camera to its
sequence. The tree is read by DATASETS.NAMES 'unlabelled' with CLUSTER.TRACKS 'names', and, as a
training split, by the Market-style datasets.
"""
from __future__ import annotations

import argparse
import configparser
import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from PIL import Image

from tools.common import (ToolError, bounded_float, configure_logging,
                          non_negative_int, positive_int)
from utils.errors import exits_on_user_error
from utils.files import atomic_output, atomic_write_text, check_writable_location
from utils.progress import Progress

logger = logging.getLogger("transreid.tools")

TRAIN_FOLDER = "bounding_box_train"
CAMERAS_FILE = "cameras.txt"
GT_NAME = "gt.txt"
# MOTChallenge ground-truth columns after the box (the devkit's order).
CONSIDER, CLASS, VISIBILITY, CONFIDENCE = 6, 7, 8, 6


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Crop MOTChallenge-style sequences into a re-ID set (identity = track, "
                    "camera = sequence): <output>/bounding_box_train/<pid>_c<cam>s1_<frame>_00"
                    ".jpg and <output>/cameras.txt.",
        epilog="example:\n  python tools/mot_to_reid.py --mot-root MOT17/train --output "
               "data/mot17-reid --min-visibility 0.4 --stride 5",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mot-root", required=True,
                        help="folder of sequences (e.g. MOT17/train), or one sequence folder")
    parser.add_argument("--output", required=True, help="folder of the re-ID set to write")
    parser.add_argument("--sequences", nargs="+", default=None, metavar="NAME",
                        help="sequences to convert (default: every folder with frames)")
    parser.add_argument("--tracks", default=f"gt/{GT_NAME}", metavar="PATH",
                        help="track file of each sequence, relative to its folder unless "
                             "absolute; {seq} stands for the sequence's name (a tracker's "
                             "output: results/{seq}.txt). Default gt/gt.txt")
    parser.add_argument("--format", choices=("auto", "gt", "tracker"), default="auto",
                        help="columns after the box: 'gt' (consider, class, visibility) or "
                             "'tracker' (confidence); auto: 'gt' for files named gt.txt")
    parser.add_argument("--min-visibility", type=bounded_float(0, 1, what="a visibility"),
                        default=0.0, help="gt: drop boxes less visible (BoT-SORT keeps > 0.4)")
    parser.add_argument("--classes", type=int, nargs="+", default=[1], metavar="ID",
                        help="gt: classes to keep (default 1, pedestrian)")
    parser.add_argument("--keep-ignored", action="store_true",
                        help="gt: keep rows whose consider flag is 0")
    parser.add_argument("--min-confidence", type=float, default=float("-inf"),
                        help="tracker output: drop boxes of lower confidence")
    parser.add_argument("--min-height", type=positive_int, default=1,
                        help="drop crops fewer pixels high, after clipping (default 1)")
    parser.add_argument("--min-width", type=positive_int, default=1,
                        help="drop crops fewer pixels wide, after clipping (default 1)")
    parser.add_argument("--stride", type=positive_int, default=1,
                        help="crop frames 1, 1 + N, 1 + 2N, ... only (neighbouring frames are "
                             "near copies)")
    parser.add_argument("--quality", type=non_negative_int, default=95,
                        help="JPEG quality of the crops (default 95)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an --output that holds files, removing the crops "
                             "(<pid>_c<cam>s1_<frame>_00.jpg) of an earlier run first")
    return parser


@dataclass(frozen=True)
class Box:
    frame: int
    track: int
    left: int
    top: int
    right: int
    bottom: int


@dataclass(frozen=True)
class MotSequence:
    name: str
    frames: str  # folder of the frames
    extension: str
    tracks: str  # track file
    info: Dict[str, str]  # seqinfo.ini's [Sequence], keys in lower case


def find_sequences(mot_root: str, names: Optional[Sequence[str]], tracks: str) -> List[MotSequence]:
    """The chosen sequences of `mot_root` (or `mot_root` itself when it is one), by name."""
    if not os.path.isdir(mot_root):
        raise ToolError(f"--mot-root '{mot_root}' is not a folder")
    if _frames_folder(mot_root) is not None:
        folders = {os.path.basename(os.path.abspath(mot_root)): mot_root}
    else:
        folders = {name: os.path.join(mot_root, name) for name in sorted(os.listdir(mot_root))
                   if _frames_folder(os.path.join(mot_root, name)) is not None}
    if not folders:
        raise ToolError(f"no sequence under --mot-root '{mot_root}': a sequence is a folder with "
                        f"img1/ (or its seqinfo.ini's imDir)")
    missing = sorted(set(names or ()) - set(folders))
    if missing:
        raise ToolError(f"--sequences {', '.join(missing)} not under '{mot_root}'; there are "
                        f"{', '.join(folders)}")
    chosen = sorted(names) if names else list(folders)
    return [_sequence(name, folders[name], tracks) for name in chosen]


def _seqinfo(folder: str) -> Dict[str, str]:
    info = configparser.ConfigParser()
    info.read(os.path.join(folder, "seqinfo.ini"))
    return dict(info["Sequence"]) if info.has_section("Sequence") else {}


def _frames_folder(folder: str) -> Optional[str]:
    frames = os.path.join(folder, _seqinfo(folder).get("imdir", "img1"))
    return frames if os.path.isdir(frames) else None


def _sequence(name: str, folder: str, tracks: str) -> MotSequence:
    track_file = os.path.join(folder, tracks.replace("{seq}", name))
    if not os.path.isfile(track_file):
        raise ToolError(f"sequence '{name}': track file '{track_file}' does not exist; give "
                        f"--tracks (relative to the sequence, or absolute with {{seq}})")
    info = _seqinfo(folder)
    return MotSequence(name, _frames_folder(folder), info.get("imext", ".jpg"), track_file, info)


def read_boxes(path: str, kind: str, args: argparse.Namespace) -> List[Box]:
    """The rows of a MOT track file that pass the filters, as 0-based, unclipped boxes."""
    try:
        rows = np.loadtxt(path, delimiter=",", ndmin=2)
    except (ValueError, UnicodeDecodeError) as err:
        raise ToolError(f"'{path}' is not a MOT track file of 'frame,id,x,y,w,h,...' lines "
                        f"({err})") from None
    if rows.size == 0:
        return []
    width = 9 if kind == "gt" else 7
    if rows.shape[1] < width:
        raise ToolError(f"'{path}' has {rows.shape[1]} columns; {kind} files have at least "
                        f"{width} (--format chooses)")
    keep = (rows[:, 0] - 1) % args.stride == 0
    if kind == "gt":
        keep &= np.isin(rows[:, CLASS], args.classes) & (rows[:, VISIBILITY] >= args.min_visibility)
        keep &= (rows[:, CONSIDER] != 0) | args.keep_ignored
    else:
        keep &= rows[:, CONFIDENCE] >= args.min_confidence
    rows = rows[keep]
    # Pixel (1, 1) of the devkit is (0, 0) here; a box covers the pixels its edges enclose.
    left, top = np.floor(rows[:, 2] - 1), np.floor(rows[:, 3] - 1)
    right, bottom = np.ceil(rows[:, 2] - 1 + rows[:, 4]), np.ceil(rows[:, 3] - 1 + rows[:, 5])
    return [Box(*map(int, values)) for values in
            zip(rows[:, 0], rows[:, 1], left, top, right, bottom)]


def file_kind(path: str, chosen: str) -> str:
    if chosen != "auto":
        return chosen
    return "gt" if os.path.basename(path) == GT_NAME else "tracker"


def crop_name(pid: int, camera: int, frame: int) -> str:
    return f"{pid:04d}_c{camera}s1_{frame:06d}_00.jpg"


CROP_NAME = re.compile(r"\d{4,}_c\d+s1_\d{6,}_00\.jpg")


def frame_size(sequence: MotSequence, frame: int) -> tuple:
    """(width, height) of the sequence's frames: seqinfo.ini's, else the frame's own."""
    if "imwidth" in sequence.info and "imheight" in sequence.info:
        try:
            return int(sequence.info["imwidth"]), int(sequence.info["imheight"])
        except ValueError:
            raise ToolError(f"sequence '{sequence.name}': seqinfo.ini's imWidth / imHeight "
                            f"({sequence.info['imwidth']!r}, {sequence.info['imheight']!r}) are "
                            "not whole numbers") from None
    with open_frame(frame_path(sequence, frame)) as image:
        return image.size


def clipped(box: Box, width: int, height: int) -> tuple:
    return max(box.left, 0), max(box.top, 0), min(box.right, width), min(box.bottom, height)


def plan_sequence(sequence: MotSequence, camera: int, first_pid: int,
                  args: argparse.Namespace) -> Dict[int, List[tuple]]:
    """frame -> [(clipped box, crop name)] of one sequence, boxes too small dropped; pids number
    the tracks left from `first_pid`, in track-id order."""
    boxes = read_boxes(sequence.tracks, file_kind(sequence.tracks, args.format), args)
    if not boxes:
        return {}
    width, height = frame_size(sequence, boxes[0].frame)
    kept = [(box, clipped(box, width, height)) for box in boxes]
    kept = [(box, area) for box, area in kept
            if area[2] - area[0] >= args.min_width and area[3] - area[1] >= args.min_height]
    pid_of = {track: first_pid + k
              for k, track in enumerate(sorted({box.track for box, _ in kept}))}
    frames: Dict[int, List[tuple]] = {}
    for box, area in kept:
        frames.setdefault(box.frame, []).append(
            (area, crop_name(pid_of[box.track], camera, box.frame)))
    return frames


def frame_path(sequence: MotSequence, frame: int) -> str:
    path = os.path.join(sequence.frames, f"{frame:06d}{sequence.extension}")
    if not os.path.isfile(path):
        raise ToolError(f"sequence '{sequence.name}': frame {frame} of '{sequence.tracks}' has no "
                        f"image '{path}'")
    return path


def open_frame(path: str) -> Image.Image:
    """The frame image at `path`; one line naming it when it is damaged or not an image."""
    try:
        image = Image.open(path)
        image.load()
    except OSError as err:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise ToolError(f"frame '{path}' cannot be read as an image ({err}); replace it or leave "
                        "its sequence out (--sequences)") from None
    return image


def write_crops(sequence: MotSequence, frames: Dict[int, List[tuple]], folder: str,
                quality: int) -> int:
    """Crop each planned box from its frame; returns how many crops were written."""
    written, size = 0, None
    for frame in Progress(sorted(frames), None, sequence.name, logger):
        size = size or frame_size(sequence, frame)
        with open_frame(frame_path(sequence, frame)) as image:
            image = image.convert("RGB")
            if image.size != size:  # the boxes were clipped to `size`
                raise ToolError(f"'{frame_path(sequence, frame)}' is {image.width}x{image.height}"
                                f" pixels, not {size[0]}x{size[1]} as the sequence's frames")
            for area, name in frames[frame]:
                with atomic_output(os.path.join(folder, name)) as tmp_path:
                    image.crop(area).save(tmp_path, "JPEG", quality=quality)
                written += 1
    return written


def check_output(args: argparse.Namespace) -> str:
    """The training folder to write, refused where crops exist unless --overwrite, which
    removes the crops of the earlier run (camera and pid numbers depend on the sequences
    chosen, so old and new crops would not agree)."""
    folder = os.path.join(args.output, TRAIN_FOLDER)
    if os.path.isfile(args.output):
        raise ToolError(f"--output '{args.output}' is a file; give a folder")
    existing = os.listdir(folder) if os.path.isdir(folder) else []
    if existing and not args.overwrite:
        raise ToolError(f"'{folder}' already holds files; pass --overwrite to replace the crops "
                        f"there, or choose another --output")
    check_writable_location(os.path.join(folder, CAMERAS_FILE), "--output")
    old_crops = [name for name in existing if CROP_NAME.fullmatch(name)]
    for name in old_crops:
        os.remove(os.path.join(folder, name))
    if old_crops:
        logger.info("--overwrite: removed the %d crops of '%s'", len(old_crops), folder)
    return folder


def convert(args: argparse.Namespace) -> int:
    sequences = find_sequences(args.mot_root, args.sequences, args.tracks)
    folder = check_output(args)
    os.makedirs(folder, exist_ok=True)
    first_pid, total, cameras = 1, 0, []
    for camera, sequence in enumerate(sequences, start=1):
        frames = plan_sequence(sequence, camera, first_pid, args)
        written = write_crops(sequence, frames, folder, args.quality)
        pids = {name.split("_")[0] for planned in frames.values() for _, name in planned}
        logger.info("%s (camera %d): %d crops of %d tracks", sequence.name, camera, written,
                    len(pids))
        first_pid += len(pids)
        total += written
        cameras.append(f"c{camera} {sequence.name}\n")
    atomic_write_text(os.path.join(args.output, CAMERAS_FILE), "".join(cameras))
    logger.info("Wrote %d crops of %d tracks from %d sequences to %s", total, first_pid - 1,
                len(sequences), folder)
    return 0


@exits_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    return convert(build_parser().parse_args(argv))


if __name__ == "__main__":
    configure_logging()
    sys.exit(main())
