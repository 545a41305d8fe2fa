"""tools/mot_to_reid.py on two tiny MOT sequences drawn here: filters, clipping, names, and the
tree read back as unlabelled crops with tracks."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from datasets.bases import MARKET_PATTERN, NameRule, parse_folder
from datasets.unlabelled import UnlabelledDataset
from tools.mot_to_reid import build_parser, main

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WIDTH, HEIGHT = 100, 60


def write_sequence(folder, rows, frames=3, seqinfo=True):
    """Black frames with a white block at pixels x 10..29, y 5..44 (0-based), and gt.txt."""
    os.makedirs(os.path.join(folder, "img1"))
    for frame in range(1, frames + 1):
        pixels = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
        pixels[5:45, 10:30] = 255
        Image.fromarray(pixels).save(os.path.join(folder, "img1", f"{frame:06d}.jpg"), quality=98)
    os.makedirs(os.path.join(folder, "gt"))
    with open(os.path.join(folder, "gt", "gt.txt"), "w") as handle:
        handle.write("".join(",".join(map(str, row)) + "\n" for row in rows))
    if seqinfo:
        with open(os.path.join(folder, "seqinfo.ini"), "w") as handle:
            handle.write(f"[Sequence]\nname={os.path.basename(folder)}\nimDir=img1\n"
                         f"frameRate=30\nseqLength={frames}\nimWidth={WIDTH}\n"
                         f"imHeight={HEIGHT}\nimExt=.jpg\n")


# frame, id, x, y, w, h (top-left pixel is (1, 1)), consider, class, visibility
ROWS_A = [
    (1, 1, 11, 6, 20, 40, 1, 1, 1.0),    # the white block exactly: 20 x 40
    (1, 2, 91, 31, 20, 40, 1, 1, 0.9),   # over the frame's corner: clipped to 10 x 30
    (1, 5, 41, 41, 3, 3, 1, 1, 1.0),     # 3 x 3: below --min-height
    (2, 1, 12, 6, 20, 40, 1, 1, 1.0),    # frame 2: skipped by --stride 2
    (3, 1, 11, 6, 20, 40, 1, 1, 1.0),
    (3, 3, 51, 11, 20, 40, 0, 1, 1.0),   # consider 0
    (3, 4, 51, 11, 20, 40, 1, 7, 1.0),   # class 7 (static person)
    (3, 6, 51, 11, 20, 40, 1, 1, 0.1),   # hardly visible
]
ROWS_B = [(1, 7, 1, 1, 30, 50, 1, 1, 1.0), (3, 7, 1, 1, 30, 50, 1, 1, 1.0)]


def test_mot_sequences_become_market_style_crops_of_tracks(tmp_path):
    write_sequence(str(tmp_path / "mot" / "SEQ-A"), ROWS_A)
    write_sequence(str(tmp_path / "mot" / "SEQ-B"), ROWS_B, seqinfo=False)
    out = tmp_path / "reid"
    args = ["--mot-root", str(tmp_path / "mot"), "--output", str(out), "--stride", "2",
            "--min-visibility", "0.4", "--min-height", "8"]
    assert main(args) == 0
    train = out / "bounding_box_train"
    # SEQ-A is camera 1 (tracks 1, 2 -> pids 1, 2), SEQ-B camera 2 (track 7 -> pid 3).
    assert sorted(os.listdir(train)) == [
        "0001_c1s1_000001_00.jpg", "0001_c1s1_000003_00.jpg", "0002_c1s1_000001_00.jpg",
        "0003_c2s1_000001_00.jpg", "0003_c2s1_000003_00.jpg"]
    sizes = {name: Image.open(train / name).size for name in os.listdir(train)}
    assert sizes["0001_c1s1_000001_00.jpg"] == (20, 40)
    assert sizes["0002_c1s1_000001_00.jpg"] == (10, 30)
    assert sizes["0003_c2s1_000003_00.jpg"] == (30, 50)
    # The box's corner (11, 6), 1-based, is the block's first pixel: no black row or column.
    block = np.asarray(Image.open(train / "0001_c1s1_000003_00.jpg"))
    assert block.min() > 200
    assert (out / "cameras.txt").read_text() == "c1 SEQ-A\nc2 SEQ-B\n"

    # Read back: as a Market-style training split, and as unlabelled crops with tracks.
    samples = parse_folder(str(train), NameRule(MARKET_PATTERN, "0001_c1s1_000001_00.jpg"))
    assert [(pid, cam) for _, pid, cam, _ in samples] == [(1, 0), (1, 0), (2, 0), (3, 1), (3, 1)]
    crops = UnlabelledDataset(str(out), tracks='names')
    assert crops.train_tracks == [0, 0, 1, 2, 2]

    with pytest.raises(SystemExit, match="already holds files; pass --overwrite"):
        main(args)
    with pytest.raises(SystemExit, match="--sequences SEQ-C not under"):
        main(args + ["--sequences", "SEQ-C", "--overwrite"])
    # Again with SEQ-B alone, now camera 1: the earlier crops go, all three frames are read.
    (train / "notes.txt").write_text("kept")
    assert main(args + ["--overwrite", "--sequences", "SEQ-B", "--stride", "1"]) == 0
    assert sorted(os.listdir(train)) == ["0001_c1s1_000001_00.jpg", "0001_c1s1_000003_00.jpg",
                                         "notes.txt"]


def test_a_tracker_output_is_filtered_by_confidence(tmp_path):
    write_sequence(str(tmp_path / "SEQ"), [])
    with open(tmp_path / "tracks.txt", "w") as handle:  # frame,id,x,y,w,h,conf,-1,-1,-1
        handle.write("1,3,11,6,20,40,0.9,-1,-1,-1\n2,3,11,6,20,40,0.2,-1,-1,-1\n"
                     "2,4,11,6,20,40,0.8,-1,-1,-1\n")
    assert main(["--mot-root", str(tmp_path / "SEQ"), "--output", str(tmp_path / "out"),
                 "--tracks", str(tmp_path / "tracks.txt"), "--min-confidence", "0.5"]) == 0
    assert sorted(os.listdir(tmp_path / "out" / "bounding_box_train")) == [
        "0001_c1s1_000001_00.jpg", "0002_c1s1_000002_00.jpg"]


def test_help_explains_every_argument_without_importing_torch():
    undocumented = [action.dest for action in build_parser()._actions if not action.help]
    assert not undocumented
    probe = ("import sys, runpy; sys.argv = ['mot_to_reid.py', '--help']\n"
             "try:\n    runpy.run_path('tools/mot_to_reid.py', run_name='__main__')\n"
             "except SystemExit:\n    pass\nprint('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--min-visibility" in result.stdout and result.stdout.rstrip().endswith("False")


def test_damaged_inputs_are_named_in_one_line(tmp_path):
    seq = tmp_path / "mot" / "SEQ-A"
    write_sequence(str(seq), ROWS_A[:1], frames=1, seqinfo=False)
    (seq / "img1" / "000001.jpg").write_bytes(b"<html>not a frame</html>")
    args = ["--mot-root", str(tmp_path / "mot"), "--output", str(tmp_path / "reid")]
    with pytest.raises(SystemExit, match="frame '.*000001.jpg' cannot be read as an image"):
        main(args)
    (seq / "gt" / "gt.txt").write_bytes(bytes(range(256)))  # binary junk, not text
    with pytest.raises(SystemExit, match="is not a MOT track file"):
        main(args)
