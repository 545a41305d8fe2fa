"""The data trees of the reference (damo-cv/TransReID: its README and datasets/*.py) load as they
are: each test builds a benchmark's minimal tree with the reference's exact folder and file
names and checks the counts parsed from it."""
from __future__ import annotations

import logging
import os
import shutil

import pytest

from datasets import DatasetNotFoundError, build_dataset
from datasets.bases import split_info
from test_datasets import (make_cfg, market_tree, msmt17_v1_tree, touch_jpg, vehicleid_tree,
                           veri_tree, write_lines)


@pytest.fixture(autouse=True)
def work_dir(tmp_path, monkeypatch):
    """An empty working directory, so that keypoint files in the one pytest runs from (the
    reference keeps them in `datasets/`) cannot leak into a test."""
    path = tmp_path / "work"
    path.mkdir()
    monkeypatch.chdir(path)
    return path


def counts(data):
    """(#train ids, #train images, #query images, #gallery images)."""
    (train_ids, train_imgs, _, _), (_, query_imgs, _, _), (_, gallery_imgs, _, _) = (
        split_info(split) for split in (data.train, data.query, data.gallery))
    return train_ids, train_imgs, query_imgs, gallery_imgs


# ------------------------------------------------------------------------------ person sets
DUKE_TRAIN = ["0005_c2_f0046985.jpg", "0005_c5_f0051781.jpg", "0009_c8_f0000001.jpg"]
DUKE_QUERY = ["0011_c1_f0000002.jpg"]
DUKE_GALLERY = ["0011_c5_f0000003.jpg", "0012_c8_f0000004.jpg"]
DUKE_COUNTS = (2, 3, 1, 2)


def duke_tree(base):
    market_tree(base, DUKE_TRAIN, DUKE_QUERY, DUKE_GALLERY)


def test_market1501_from_market1501(tmp_path):
    market_tree(tmp_path / "market1501", ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg",
                                          "0007_c6s1_000101_01.jpg"],
                ["0003_c1s1_000011_00.jpg"], ["0003_c4s2_000012_00.jpg", "0000_c1s1_000001_00.jpg"])
    assert counts(build_dataset(make_cfg(tmp_path, "market1501"))) == (2, 3, 1, 2)


@pytest.mark.parametrize("folder", ["dukemtmcreid", "DukeMTMC-reID"])
def test_duke_from_either_accepted_folder_and_the_log_says_which(tmp_path, caplog, folder):
    duke_tree(tmp_path / folder)
    with caplog.at_level(logging.INFO, logger="transreid.datasets"):
        data = build_dataset(make_cfg(tmp_path, "dukemtmc"))
    assert counts(data) == DUKE_COUNTS
    assert data.dataset_dir == str(tmp_path / folder)
    assert data.train[0][0] == str(tmp_path / folder / "bounding_box_train" / DUKE_TRAIN[0])
    assert f"reading '{tmp_path / folder}'" in caplog.text
    assert "accepted folders: DukeMTMC-reID/, dukemtmcreid/" in caplog.text


def test_duke_with_both_folders_reads_DukeMTMC_reID_and_says_so(tmp_path, caplog):
    duke_tree(tmp_path / "DukeMTMC-reID")
    # One image fewer in the other copy, to tell which one was read.
    market_tree(tmp_path / "dukemtmcreid", DUKE_TRAIN[:2], DUKE_QUERY, DUKE_GALLERY)
    with caplog.at_level(logging.INFO, logger="transreid.datasets"):
        data = build_dataset(make_cfg(tmp_path, "dukemtmc"))
    assert counts(data) == DUKE_COUNTS
    assert data.dataset_dir == str(tmp_path / "DukeMTMC-reID")
    warning, = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"'{tmp_path / 'DukeMTMC-reID'}', '{tmp_path / 'dukemtmcreid'}' both exist" in warning
    assert f"reading '{tmp_path / 'DukeMTMC-reID'}'" in warning
    assert "the first that exists, in the order DukeMTMC-reID/, dukemtmcreid/" in warning


def test_duke_with_both_folders_passes_over_an_incomplete_DukeMTMC_reID(tmp_path, caplog):
    # The stub that the reference's download attempt leaves next to a README-style tree.
    (tmp_path / "DukeMTMC-reID").mkdir()
    (tmp_path / "DukeMTMC-reID" / "DukeMTMC-reID.zip").write_bytes(b"")
    duke_tree(tmp_path / "dukemtmcreid")
    with caplog.at_level(logging.WARNING, logger="transreid.datasets"):
        data = build_dataset(make_cfg(tmp_path, "dukemtmc"))
    assert counts(data) == DUKE_COUNTS
    assert data.dataset_dir == str(tmp_path / "dukemtmcreid")
    assert (f"reading '{tmp_path / 'dukemtmcreid'}': '{tmp_path / 'DukeMTMC-reID'}' lacks a "
            "split folder needed here") in caplog.text


def test_duke_with_both_folders_incomplete_names_what_DukeMTMC_reID_lacks(tmp_path):
    (tmp_path / "DukeMTMC-reID").mkdir()
    market_tree(tmp_path / "dukemtmcreid", [], DUKE_QUERY, DUKE_GALLERY)
    with pytest.raises(DatasetNotFoundError, match="DukeMTMC-reID/bounding_box_train' does not"):
        build_dataset(make_cfg(tmp_path, "dukemtmc"))


def test_duke_evaluation_counts_a_tree_without_training_split_as_complete(tmp_path):
    (tmp_path / "DukeMTMC-reID").mkdir()
    market_tree(tmp_path / "dukemtmcreid", [], DUKE_QUERY, DUKE_GALLERY)
    data = build_dataset(make_cfg(tmp_path, "dukemtmc"), require_train=False)
    assert counts(data) == (0, 0, 1, 2) and data.dataset_dir == str(tmp_path / "dukemtmcreid")


def test_duke_missing_names_both_accepted_folders(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset(make_cfg(tmp_path, "dukemtmc"))
    text = str(err.value)
    assert f"none of '{tmp_path / 'DukeMTMC-reID'}', '{tmp_path / 'dukemtmcreid'}' exists" in text
    assert "DukeMTMC-reID/  (or dukemtmcreid/)" in text and "DATASETS.ROOT_DIR" in text


def test_occluded_duke_from_Occluded_Duke_only(tmp_path):
    duke_tree(tmp_path / "Occluded_Duke")
    assert counts(build_dataset(make_cfg(tmp_path, "occ_duke"))) == DUKE_COUNTS
    # Duke's other name is Duke's own: Occluded-Duke is not read from it.
    shutil.move(tmp_path / "Occluded_Duke", tmp_path / "dukemtmcreid")
    with pytest.raises(DatasetNotFoundError, match="Occluded_Duke' does not exist"):
        build_dataset(make_cfg(tmp_path, "occ_duke"))


def test_msmt17_from_MSMT17_with_its_list_files(tmp_path):
    msmt17_v1_tree(tmp_path / "MSMT17")
    for listed in ("train/0000/0000_000_01_0303morning_0015_0.jpg",
                   "train/0000/0000_001_03_0303noon_0001_0.jpg",
                   "test/0000/0000_000_02_0303morning_0001_0.jpg",
                   "test/0000/0000_001_05_0303morning_0002_0.jpg"):
        touch_jpg(str(tmp_path / "MSMT17" / listed))
    data = build_dataset(make_cfg(tmp_path, "msmt17"))
    # list_train.txt + list_val.txt are both training images, as in the reference.
    assert counts(data) == (1, 2, 1, 1)
    assert all(os.path.isfile(path) for path, *_ in data.train + data.query + data.gallery)


# ----------------------------------------------------------------------------- vehicle sets
def test_vehicleid_from_VehicleID_V1_0(tmp_path):
    base = tmp_path / "VehicleID_V1.0"
    vehicleid_tree(base)
    for name in ("0000001", "0000002", "0000003"):
        touch_jpg(str(base / "image" / f"{name}.jpg"))
    data = build_dataset(make_cfg(tmp_path, "VehicleID"))
    # 800 test vehicles of 3 images: one each into the gallery, two into the query.
    assert counts(data) == (2, 3, 1600, 800)
    assert all(os.path.isfile(path) for path, *_ in data.train)


def veri_views(data):
    return [view for *_, view in data.train + data.query + data.gallery]


def move_keypoints(src, dst):
    os.makedirs(dst, exist_ok=True)
    for name in ("keypoint_train.txt", "keypoint_test.txt"):
        shutil.move(src / name, dst / name)


def test_veri_from_VeRi_with_keypoints_where_the_reference_reads_them(tmp_path, work_dir,
                                                                     caplog):
    veri_tree(tmp_path / "VeRi")
    move_keypoints(tmp_path / "VeRi", work_dir / "datasets")
    with caplog.at_level(logging.INFO, logger="transreid.datasets"):
        data = build_dataset(make_cfg(tmp_path, "veri", **{"MODEL.SIE_VIEW": True}))
    # 0003 of image_train has no view label and is skipped, as in the reference.
    assert counts(data) == (2, 2, 1, 2) and veri_views(data) == [3, 7, 0, 0, 5]
    for name in ("keypoint_train.txt", "keypoint_test.txt"):
        assert f"view labels read from '{work_dir / 'datasets' / name}'" in caplog.text


def test_veri_keypoints_in_the_dataset_folder_come_first(tmp_path, work_dir, caplog):
    veri_tree(tmp_path / "VeRi")
    move_keypoints(tmp_path / "VeRi", work_dir / "datasets")
    veri_tree(tmp_path / "VeRi")
    # Other views in the working directory's copy, to tell which file was read.
    for name in ("keypoint_train.txt", "keypoint_test.txt"):
        path = work_dir / "datasets" / name
        write_lines(path, [line.rsplit(" ", 1)[0] + " 9" for line in open(path).read().split("\n")
                           if line])
    with caplog.at_level(logging.INFO, logger="transreid.datasets"):
        data = build_dataset(make_cfg(tmp_path, "veri", **{"MODEL.SIE_VIEW": True}))
    assert veri_views(data) == [3, 7, 0, 0, 5]
    dataset_copy = tmp_path / "VeRi" / "keypoint_test.txt"
    assert (f"'{dataset_copy}' and '{work_dir / 'datasets' / 'keypoint_test.txt'}' both exist; "
            f"reading '{dataset_copy}'") in caplog.text
    # With the dataset folder's copies gone, the working directory's are read.
    for name in ("keypoint_train.txt", "keypoint_test.txt"):
        os.remove(tmp_path / "VeRi" / name)
    data = build_dataset(make_cfg(tmp_path, "veri", **{"MODEL.SIE_VIEW": True}))
    assert veri_views(data) == [9, 9, 9, 9, 9]


def test_veri_missing_keypoints_names_both_places(tmp_path, work_dir):
    veri_tree(tmp_path / "VeRi", with_keypoints=False)
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset(make_cfg(tmp_path, "veri", **{"MODEL.SIE_VIEW": True}))
    assert (f"keypoint_train.txt is in none of '{tmp_path / 'VeRi'}' or "
            f"'{work_dir / 'datasets'}'") in str(err.value)


def test_a_synthetic_veri_ignores_the_working_directory_keypoints(tmp_path, work_dir):
    veri_tree(tmp_path / "own_veri", with_keypoints=False)
    veri_tree(tmp_path / "VeRi")
    move_keypoints(tmp_path / "VeRi", work_dir / "datasets")
    from datasets.veri import VeRi
    data = VeRi(str(tmp_path), dataset_dir="own_veri", verbose=False)
    assert data.has_views is False and counts(data) == (3, 3, 1, 2)
