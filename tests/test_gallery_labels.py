"""A gallery's labels follow the dataset's conventions: Market-style junk (pid -1) and
distractors (pid 0000) are no identities, and a numeric label is its value (the file name's
0112 and 112 are one identity)."""
import logging

import numpy as np
import pytest

pytest.importorskip("faiss")

from datasets.image_list import ImageRecord  # noqa: E402
from deploy.enrolment import add_images  # noqa: E402
from deploy.gallery import Gallery  # noqa: E402
from deploy.gallery_store import entry_label  # noqa: E402

PROVENANCE = {"weight": "/models/a.pth", "weight_sha256": "aaaa"}


class RowsOfTheirIndex:
    """An extractor stand-in: a distinct unit row per image, and a model record."""
    provenance = PROVENANCE

    def extract_records(self, records, desc=""):
        return np.eye(8, dtype=np.float32)[[hash(r.path) % 8 for r in records]]


def records(*pids):
    return [ImageRecord(f"/img/{i}_{pid}.jpg", pid, i % 3) for i, pid in enumerate(pids)]


@pytest.mark.parametrize("given,kept", [("0112", "112"), ("112", "112"), ("-1", "-1"),
                                        ("007", "7"), ("alice", "alice"), (" 0042 ", "42"),
                                        ("12b", "12b")])
def test_a_numeric_label_is_its_value(given, kept):
    assert entry_label(given) == kept


def test_junk_and_distractors_are_skipped_unless_asked(tmp_path, caplog):
    with Gallery.create(str(tmp_path / "g"), PROVENANCE) as gallery, \
            caplog.at_level(logging.INFO, logger="transreid.gallery"):
        assert add_images(gallery, RowsOfTheirIndex(), records(112, -1, 0, 0, 113)) == 2
        assert sorted(gallery.labels()) == ["112", "113"]
        assert "skipped 1 junk image(s) (pid -1)" in caplog.text
        assert "skipped 2 distractor image(s) (pid 0)" in caplog.text
    with Gallery.create(str(tmp_path / "h"), PROVENANCE) as gallery:
        assert add_images(gallery, RowsOfTheirIndex(), records(-1, 0, 5), include_junk=True) == 3
        assert sorted(gallery.labels()) == ["-1", "0", "5"]


def test_an_explicit_label_enrols_every_image_and_numbers_are_their_value(tmp_path):
    with Gallery.create(str(tmp_path / "g"), PROVENANCE) as gallery:
        add_images(gallery, RowsOfTheirIndex(), records(-1, 0), label="0112")
        assert gallery.labels() == {"112": 2}
        assert gallery.remove(label="0112") == 2 and len(gallery) == 0


def test_the_tool_counts_the_images_it_enrolled_not_those_it_was_given(tmp_path, monkeypatch, capsys):
    import argparse

    import tools.gallery as tool
    monkeypatch.setattr(tool, "images_of", lambda sources: records(112, -1, 0, 0, 113))
    args = argparse.Namespace(images=["crops/"], label=None, allow_duplicates=False, include_junk=False,
                              threshold=None, threshold_far=None, calibrate_far=None, gallery=str(tmp_path / "g"))
    with Gallery.create(args.gallery, PROVENANCE) as gallery:
        tool.enrol(gallery, args, RowsOfTheirIndex())
    assert capsys.readouterr().out.startswith("2 image(s) enrolled (3 skipped, see above); ")
