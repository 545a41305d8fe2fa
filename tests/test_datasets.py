"""Parsers of the six benchmarks and users' data on tiny fake trees, errors, image reading and
make_dataloader end to end."""
from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch
from PIL import Image

from config import cfg as default_cfg
from config import load_config
from datasets import DatasetError, DatasetNotFoundError, build_dataset, make_dataloader
from datasets import load_eval_dataset, make_val_loader, read_image


def touch_jpg(path: str, colour=(128, 64, 32)) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 16), colour).save(path)


def make_cfg(root, name: str, **opts):
    cfg = default_cfg.clone()
    cfg.DATASETS.NAMES = name
    cfg.DATASETS.ROOT_DIR = str(root)
    cfg.DATALOADER.NUM_WORKERS = 0
    for key, value in opts.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return cfg


def market_tree(base, train, query, gallery):
    for folder, names in (("bounding_box_train", train), ("query", query),
                          ("bounding_box_test", gallery)):
        for name in names:
            touch_jpg(os.path.join(base, folder, name))


MARKET_TRAIN = ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c6s1_000101_01.jpg",
                "-1_c1s1_000001_00.jpg"]
MARKET_QUERY = ["0003_c1s1_000011_00.jpg", "0003_c4s2_000012_00.jpg"]
MARKET_GALLERY = ["0000_c1s1_000001_00.jpg", "0003_c2s1_000111_01.jpg", "-1_c3s1_000001_00.jpg"]


def ids(samples):
    return sorted((os.path.basename(p), pid, cam, view) for p, pid, cam, view in samples)


def test_market1501_parsed_relabelled_junk_skipped(tmp_path):
    market_tree(tmp_path / "market1501", MARKET_TRAIN, MARKET_QUERY, MARKET_GALLERY)
    data = build_dataset(make_cfg(tmp_path, "market1501"))
    assert ids(data.train) == [("0002_c1s1_000451_03.jpg", 0, 0, 1),
                               ("0002_c2s1_000551_01.jpg", 0, 1, 1),
                               ("0007_c6s1_000101_01.jpg", 1, 5, 1)]
    assert ids(data.query) == [("0003_c1s1_000011_00.jpg", 3, 0, 1),
                               ("0003_c4s2_000012_00.jpg", 3, 3, 1)]
    assert ids(data.gallery) == [("0000_c1s1_000001_00.jpg", 0, 0, 1),
                                 ("0003_c2s1_000111_01.jpg", 3, 1, 1)]
    assert (data.num_train_pids, data.num_cameras, data.num_views) == (2, 6, 1)


def test_statistics_table_logged(tmp_path, caplog):
    market_tree(tmp_path / "market1501", MARKET_TRAIN, MARKET_QUERY, MARKET_GALLERY)
    with caplog.at_level(logging.INFO, logger="transreid.datasets"):
        build_dataset(make_cfg(tmp_path, "market1501"))
    assert "  train    |     2 |        3 |         3" in caplog.text
    assert "  gallery  |     2 |        2 |         2" in caplog.text


@pytest.mark.parametrize("name, message", [("0002_c7s1_000451_03.jpg", "camera 1..6"),
                                           ("1502_c1s1_000451_03.jpg", "pid -1..1501"),
                                           ("img_0002.jpg", "0002_c1s1_000451_03.jpg")])
def test_market_name_outside_rule_names_file_and_rule(tmp_path, name, message):
    market_tree(tmp_path / "market1501", MARKET_TRAIN + [name], MARKET_QUERY, MARKET_GALLERY)
    with pytest.raises(DatasetError) as err:
        build_dataset(make_cfg(tmp_path, "market1501"))
    assert name in str(err.value) and message in str(err.value)


def test_missing_dataset_names_tree_and_config_key(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset(make_cfg(tmp_path, "dukemtmc"))
    text = str(err.value)
    assert str(tmp_path / "DukeMTMC-reID") in text
    assert "bounding_box_train/" in text and "DATASETS.ROOT_DIR" in text


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(DatasetError, match="DATASETS.NAMES is 'market'.*market1501"):
        build_dataset(make_cfg(tmp_path, "market"))


@pytest.mark.parametrize("name, folder", [("dukemtmc", "DukeMTMC-reID"),
                                          ("occ_duke", "Occluded_Duke")])
def test_duke_layouts(tmp_path, name, folder):
    market_tree(tmp_path / folder, ["0005_c2_f0046985.jpg", "0009_c8_f0000001.jpg"],
                ["0011_c1_f0000002.jpg"], ["0011_c5_f0000003.jpg", "0012_c8_f0000004.jpg"])
    data = build_dataset(make_cfg(tmp_path, name))
    assert [(pid, cam) for _, pid, cam, _ in data.train] == [(0, 1), (1, 7)]
    assert [(pid, cam) for _, pid, cam, _ in data.gallery] == [(11, 4), (12, 7)]
    assert data.num_cameras == 8


def test_folder_dataset_reads_root_and_png(tmp_path):
    market_tree(tmp_path, ["0100_c12_a.png", "0200_c1_b.jpg"], ["0300_c1_q.jpg"],
                ["0300_c2_g.jpg"])
    data = build_dataset(make_cfg(tmp_path, "folder"))
    assert [(pid, cam) for _, pid, cam, _ in data.train] == [(0, 11), (1, 0)]
    assert data.num_cameras == 12


def write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def test_msmt17_v1_lists_merged_and_layout_logged(tmp_path, caplog):
    base = tmp_path / "MSMT17"
    write_lines(base / "list_train.txt", ["0000/0000_000_01_0303morning_0015_0.jpg 0",
                                          "0001/0001_000_15_0303morning_0016_0.jpg 1"])
    write_lines(base / "list_val.txt", ["0000/0000_001_03_0303noon_0001_0.jpg 0"])
    write_lines(base / "list_query.txt", ["0000/0000_000_02_0303morning_0001_0.jpg 0"])
    write_lines(base / "list_gallery.txt", ["0000/0000_001_05_0303morning_0002_0.jpg 0",
                                            "0001/0001_001_05_0303morning_0003_0.jpg 1"])
    os.makedirs(base / "train"), os.makedirs(base / "test")
    with caplog.at_level(logging.INFO, logger="transreid.datasets"):
        data = build_dataset(make_cfg(tmp_path, "msmt17"))
    assert "V1 layout" in caplog.text
    assert [(pid, cam) for _, pid, cam, _ in data.train] == [(0, 0), (1, 14), (0, 2)]
    assert data.train[0][0] == str(base / "train" / "0000/0000_000_01_0303morning_0015_0.jpg")
    assert [(pid, cam) for _, pid, cam, _ in data.gallery] == [(0, 4), (1, 4)]
    assert data.query[0][0].startswith(str(base / "test"))


def test_msmt17_market_style_layout(tmp_path, caplog):
    market_tree(tmp_path / "MSMT17", ["0000_c1_0000.jpg", "0001_c15_0001.jpg"],
                ["0002_c3_0000.jpg"], ["0002_c4_0001.jpg"])
    with caplog.at_level(logging.INFO, logger="transreid.datasets"):
        data = build_dataset(make_cfg(tmp_path, "msmt17"))
    assert "Market-style folder layout" in caplog.text
    assert [(pid, cam) for _, pid, cam, _ in data.train] == [(0, 0), (1, 14)]


def test_msmt17_neither_layout(tmp_path):
    os.makedirs(tmp_path / "MSMT17")
    with pytest.raises(DatasetNotFoundError, match="list_train.txt.*bounding_box_train"):
        build_dataset(make_cfg(tmp_path, "msmt17"))


def veri_tree(base, with_keypoints=True):
    names = {"image_train": ["0001_c001_00016450_0.jpg", "0002_c020_00000001_0.jpg",
                             "0003_c002_00000002_0.jpg"],
             "image_query": ["0004_c003_00000003_0.jpg"],
             "image_test": ["0004_c003_00000003_0.jpg", "0004_c005_00000004_0.jpg"]}
    for folder, files in names.items():
        for n in files:
            touch_jpg(os.path.join(base, folder, n))
    if with_keypoints:
        kp = " ".join(["-1"] * 40)
        # 0003 has no view label: skipped as in the reference.
        write_lines(base / "keypoint_train.txt",
                    [f"VeRi/image_train/0001_c001_00016450_0.jpg {kp} 3",
                     f"VeRi/image_train/0002_c020_00000001_0.jpg {kp} 7"])
        write_lines(base / "keypoint_test.txt",
                    [f"VeRi/image_test/0004_c003_00000003_0.jpg {kp} 0",
                     f"VeRi/image_test/0004_c005_00000004_0.jpg {kp} 5"])


def test_veri_views_from_keypoint_files(tmp_path):
    veri_tree(tmp_path / "VeRi")
    data = build_dataset(make_cfg(tmp_path, "veri", **{"MODEL.SIE_VIEW": True}))
    assert [(pid, cam, view) for _, pid, cam, view in data.train] == [(0, 0, 3), (1, 19, 7)]
    assert [(pid, cam, view) for _, pid, cam, view in data.query] == [(4, 2, 0)]
    assert [(pid, cam, view) for _, pid, cam, view in data.gallery] == [(4, 2, 0), (4, 4, 5)]
    assert (data.num_cameras, data.num_views, data.has_views) == (20, 8, True)


def test_veri_missing_keypoints(tmp_path):
    veri_tree(tmp_path / "VeRi", with_keypoints=False)
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset(make_cfg(tmp_path, "veri", **{"MODEL.SIE_VIEW": True}))
    assert "keypoint_train.txt" in str(err.value) and "MODEL.SIE_VIEW" in str(err.value)
    assert "VehicleReIDKeyPointData" in str(err.value)
    data = build_dataset(make_cfg(tmp_path, "veri"))  # no SIE_VIEW: no view labels needed
    assert {view for *_, view in data.train} == {1} and len(data.train) == 3
    assert data.num_views == 1


def vehicleid_tree(base, test_size=800):
    split = base / "train_test_split"
    write_lines(split / "train_list.txt", ["0000001 5", "0000002 5", "0000003 9"])
    # 800 test vehicles of 3 images each (image files are not needed to parse).
    write_lines(split / f"test_list_{test_size}.txt",
                [f"{1000 + 3 * v + i:07d} {100 + v}" for v in range(test_size) for i in range(3)])


def test_vehicleid_trial_draws(tmp_path):
    vehicleid_tree(tmp_path / "VehicleID_V1.0")
    cfg = make_cfg(tmp_path, "VehicleID")
    first, again, second = (build_dataset(cfg, trial) for trial in (0, 0, 1))
    assert [(pid, cam) for _, pid, cam, _ in first.train] == [(0, 0), (0, 0), (1, 0)]
    assert first.train[0][0] == str(tmp_path / "VehicleID_V1.0" / "image" / "0000001.jpg")
    assert len(first.gallery) == 800 and len(first.query) == 1600
    assert sorted(pid for _, pid, _, _ in first.gallery) == list(range(100, 900))
    assert {cam for _, _, cam, _ in first.query} == {0}
    assert {cam for _, _, cam, _ in first.gallery} == {1}
    assert set(first.query).isdisjoint({(p, pid, 0, v) for p, pid, _, v in first.gallery})
    assert first.gallery == again.gallery and first.query == again.query
    assert first.gallery != second.gallery
    # Each vehicle's image is the gallery one about a third of the time.
    picks = [int(os.path.basename(p)[:7]) - 1000 - 3 * (pid - 100)
             for p, pid, _, _ in first.gallery]
    assert all(abs(picks.count(i) - 800 / 3) < 60 for i in range(3))


def test_vehicleid_bad_test_size(tmp_path):
    vehicleid_tree(tmp_path / "VehicleID_V1.0")
    with pytest.raises(DatasetError, match="VEHICLEID_TEST_SIZE is 700"):
        build_dataset(make_cfg(tmp_path, "VehicleID", **{"DATASETS.VEHICLEID_TEST_SIZE": 700}))


def test_list_dataset_with_views_and_junk(tmp_path):
    write_lines(tmp_path / "train.txt", ["# path pid camid viewid", "a/x.jpg 10 0 2",
                                         "a/y.jpg 20 1 0", "a/z.jpg -1 1 0"])
    write_lines(tmp_path / "query.txt", ["q/1.jpg 30 0 1"])
    write_lines(tmp_path / "gallery.txt", ["g/1.jpg 30 2 3"])
    data = build_dataset(make_cfg(tmp_path, "list"))
    assert data.train == [(str(tmp_path / "a/x.jpg"), 0, 0, 2),
                          (str(tmp_path / "a/y.jpg"), 1, 1, 0)]
    assert data.gallery == [(str(tmp_path / "g/1.jpg"), 30, 2, 3)]
    assert (data.has_views, data.num_views, data.num_cameras) == (True, 4, 3)


def test_sie_ids_seen_only_at_test_time_are_warned_about(tmp_path, caplog):
    write_lines(tmp_path / "train.txt", ["a/x.jpg 10 0 2", "a/y.jpg 20 1 0"])
    write_lines(tmp_path / "query.txt", ["q/1.jpg 30 0 1"])
    write_lines(tmp_path / "gallery.txt", ["g/1.jpg 30 2 3", "g/2.jpg 30 1 2"])
    cfg = make_cfg(tmp_path, "list", **{"MODEL.SIE_CAMERA": True, "MODEL.SIE_VIEW": True,
                                        "SOLVER.IMS_PER_BATCH": 2, "DATALOADER.NUM_INSTANCE": 1})
    with caplog.at_level(logging.WARNING, logger="transreid"):
        make_dataloader(cfg)
    assert "MODEL.SIE_CAMERA is on but" in caplog.text and "camera id(s) [2] appear only" in caplog.text
    assert "MODEL.SIE_VIEW is on but" in caplog.text and "view id(s) [1, 3] appear only" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="transreid"):
        make_dataloader(make_cfg(tmp_path, "list", **{"SOLVER.IMS_PER_BATCH": 2,
                                                      "DATALOADER.NUM_INSTANCE": 1}))
    assert "SIE" not in caplog.text


def test_list_dataset_errors(tmp_path):
    write_lines(tmp_path / "train.txt", ["a/x.jpg 10 0", "a/y.jpg 20 1 0"])
    write_lines(tmp_path / "query.txt", ["q/1.jpg 30 0"])
    write_lines(tmp_path / "gallery.txt", ["g/1.jpg thirty 0"])
    with pytest.raises(DatasetError, match=r"train.txt:2: view column"):
        build_dataset(make_cfg(tmp_path, "list"))
    write_lines(tmp_path / "train.txt", ["a/x.jpg 10 0"])
    with pytest.raises(DatasetError, match=r"gallery.txt:1: 'g/1.jpg thirty 0' is not"):
        build_dataset(make_cfg(tmp_path, "list"))


def test_read_image_retries_then_names_file(tmp_path, caplog):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING, logger="transreid.datasets"):
        with pytest.raises(OSError, match=r"cannot read image '.*broken.jpg': it is not a readable image"):
            read_image(str(bad), retries=2, wait_s=0)
    assert "attempt" not in caplog.text  # bytes that are no image are not retried
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        read_image(str(tmp_path / "missing.jpg"))
    touch_jpg(str(tmp_path / "ok.jpg"))
    assert read_image(str(tmp_path / "ok.jpg")).size == (8, 16)


def small_market(tmp_path):
    train = [f"{pid:04d}_c{cam}s1_{i:06d}_00.jpg" for pid in (1, 2, 3, 4) for cam in (1, 2)
             for i in range(2)]
    market_tree(tmp_path / "market1501", train, ["0005_c1s1_000001_00.jpg"],
                ["0005_c2s1_000002_00.jpg", "0006_c3s1_000003_00.jpg"])


@pytest.mark.parametrize("sampler", ["softmax", "softmax_triplet"])
def test_make_dataloader_end_to_end(tmp_path, sampler):
    small_market(tmp_path)
    cfg = make_cfg(tmp_path, "market1501", **{
        "DATALOADER.SAMPLER": sampler, "DATALOADER.NUM_INSTANCE": 2, "SOLVER.IMS_PER_BATCH": 4,
        "INPUT.SIZE_TRAIN": [32, 16], "INPUT.SIZE_TEST": [32, 16], "TEST.IMS_PER_BATCH": 2})
    train, train_normal, val, num_query, num_classes, cams, views = make_dataloader(cfg)
    assert (num_query, num_classes, cams, views) == (1, 4, 3, 1)
    imgs, pids, camids, viewids = next(iter(train))
    assert imgs.shape == (4, 3, 32, 16) and imgs.dtype == torch.float32
    assert all(t.dtype == torch.int64 and t.shape == (4,) for t in (pids, camids, viewids))
    if sampler == "softmax_triplet":
        assert pids[0] == pids[1] and pids[2] == pids[3] and pids[0] != pids[2]
    batches = list(val)
    imgs, pids, camids, camids_batch, viewids, paths = batches[0]
    assert imgs.shape == (2, 3, 32, 16)
    assert pids == (5, 5) and camids == (0, 1)  # query first, then gallery
    assert torch.equal(camids_batch, torch.tensor([0, 1])) and viewids.tolist() == [1, 1]
    assert paths[0].endswith("query/0005_c1s1_000001_00.jpg")
    assert sum(len(b[1]) for b in train_normal) == 16
    val_only, n_query = make_val_loader(cfg)
    assert n_query == 1 and len(val_only.dataset) == 3


def test_softmax_sampler_drops_the_incomplete_last_batch(tmp_path):
    # 16 images in batches of 5 would end with a batch of one, which the BN neck rejects.
    small_market(tmp_path)
    cfg = make_cfg(tmp_path, "market1501", **{
        "DATALOADER.SAMPLER": "softmax", "SOLVER.IMS_PER_BATCH": 5,
        "INPUT.SIZE_TRAIN": [32, 16], "INPUT.SIZE_TEST": [32, 16]})
    train = make_dataloader(cfg)[0]
    assert [len(pids) for _, pids, _, _ in train] == [5, 5, 5]
    assert len(train) == 3


def test_make_dataloader_config_errors(tmp_path):
    small_market(tmp_path)
    # An unknown sampler is refused when the config loads, before any data is read.
    with pytest.raises(ValueError, match="DATALOADER.SAMPLER 'triplet_only' is not allowed"):
        load_config("", ["DATALOADER.SAMPLER", "triplet_only"])
    with pytest.raises(ValueError, match="MODEL.SIE_VIEW is on but Market1501 has no view"):
        make_dataloader(make_cfg(tmp_path, "market1501", **{"MODEL.SIE_VIEW": True}))


# ------------------------------------------------------------------ evaluation without training
def msmt17_v1_tree(base):
    write_lines(base / "list_train.txt", ["0000/0000_000_01_0303morning_0015_0.jpg 0"])
    write_lines(base / "list_val.txt", ["0000/0000_001_03_0303noon_0001_0.jpg 0"])
    write_lines(base / "list_query.txt", ["0000/0000_000_02_0303morning_0001_0.jpg 0"])
    write_lines(base / "list_gallery.txt", ["0000/0000_001_05_0303morning_0002_0.jpg 0"])
    os.makedirs(base / "train"), os.makedirs(base / "test")


def list_tree(base):
    write_lines(base / "train.txt", ["a/x.jpg 10 0 2"])
    write_lines(base / "query.txt", ["q/1.jpg 30 0 1"])
    write_lines(base / "gallery.txt", ["g/1.jpg 30 2 3"])


# (DATASETS.NAMES, extra config, tree builder, the training files that a test-only tree lacks,
#  training's error on that tree)
TEST_ONLY_TREES = [
    ("market1501", {}, lambda root: market_tree(root / "market1501", MARKET_TRAIN, MARKET_QUERY,
                                                MARKET_GALLERY),
     ["market1501/bounding_box_train"], "market1501/bounding_box_train' does not exist"),
    ("folder", {}, lambda root: market_tree(root, MARKET_TRAIN, MARKET_QUERY, MARKET_GALLERY),
     ["bounding_box_train"], "bounding_box_train' does not exist"),
    ("msmt17", {}, lambda root: msmt17_v1_tree(root / "MSMT17"),
     ["MSMT17/train", "MSMT17/list_train.txt", "MSMT17/list_val.txt"],
     "neither list_train.txt nor bounding_box_train/ is in"),
    ("msmt17", {}, lambda root: market_tree(root / "MSMT17", ["0000_c1_0000.jpg"],
                                            ["0002_c3_0000.jpg"], ["0002_c4_0001.jpg"]),
     ["MSMT17/bounding_box_train"], "neither list_train.txt nor bounding_box_train/ is in"),
    ("veri", {"MODEL.SIE_VIEW": True}, lambda root: veri_tree(root / "VeRi"),
     ["VeRi/image_train", "VeRi/keypoint_train.txt"], "VeRi/image_train' does not exist"),
    ("VehicleID", {}, lambda root: vehicleid_tree(root / "VehicleID_V1.0"),
     ["VehicleID_V1.0/train_test_split/train_list.txt"], "train_list.txt' does not exist"),
    ("list", {}, list_tree, ["train.txt"], "train.txt' does not exist"),
]


def remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


@pytest.mark.parametrize("name, opts, make_tree, train_files, training_error", TEST_ONLY_TREES)
def test_a_tree_without_its_training_split_is_enough_to_evaluate(tmp_path, name, opts, make_tree,
                                                                 train_files, training_error):
    make_tree(tmp_path)
    cfg = make_cfg(tmp_path, name, **opts)
    full = build_dataset(cfg)
    for path in train_files:
        remove(tmp_path / path)
    test_only = build_dataset(cfg, require_train=False)
    assert test_only.train == []
    assert test_only.query == full.query and test_only.gallery == full.gallery
    assert test_only.has_views == full.has_views
    # Training still needs the split, and says what is missing, as before.
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset(cfg)
    assert training_error in str(err.value)


def test_evaluation_with_the_training_split_counts_its_cameras_too(tmp_path):
    market_tree(tmp_path / "market1501", MARKET_TRAIN, MARKET_QUERY, MARKET_GALLERY)
    cfg = make_cfg(tmp_path, "market1501")
    # Camera 6 is only in the training split: SIE tables are sized as train.py sized them.
    assert load_eval_dataset(cfg).num_cameras == 6
    remove(tmp_path / "market1501" / "bounding_box_train")
    assert load_eval_dataset(cfg).num_cameras == 4


def test_an_empty_training_folder_is_refused_only_for_training(tmp_path):
    market_tree(tmp_path, [], MARKET_QUERY, MARKET_GALLERY)
    os.makedirs(tmp_path / "bounding_box_train")
    with pytest.raises(DatasetError, match="folder dataset: no training images found under"):
        build_dataset(make_cfg(tmp_path, "folder"))
    assert build_dataset(make_cfg(tmp_path, "folder"), require_train=False).train == []


def test_a_test_only_tree_lacking_query_names_the_query_folder(tmp_path):
    market_tree(tmp_path, [], [], MARKET_GALLERY)
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset(make_cfg(tmp_path, "folder"), require_train=False)
    assert f"'{tmp_path / 'query'}' does not exist" in str(err.value)
    assert "bounding_box_train/  (<pid>_c<cam>...jpg, needed only to train)" in str(err.value)


@pytest.mark.parametrize("require_train", [True, False])
@pytest.mark.parametrize("split, folder", [("query", "query"), ("gallery", "bounding_box_test")])
def test_an_empty_query_or_gallery_is_named_before_any_model_runs(tmp_path, require_train, split,
                                                                   folder):
    splits = {"query": MARKET_QUERY, "gallery": MARKET_GALLERY}
    splits[split] = ["-1_c1s1_000001_00.jpg"]  # junk only: nothing to rank
    market_tree(tmp_path, MARKET_TRAIN, splits["query"], splits["gallery"])
    with pytest.raises(DatasetError) as err:
        build_dataset(make_cfg(tmp_path, "folder"), require_train=require_train)
    assert f"no {split} images in '{tmp_path / folder}'" in str(err.value)


def test_vehicleid_test_list_of_single_images_leaves_no_query_and_says_where(tmp_path):
    split = tmp_path / "VehicleID_V1.0" / "train_test_split"
    write_lines(split / "train_list.txt", ["0000001 5"])
    write_lines(split / "test_list_800.txt", [f"{1000 + v:07d} {100 + v}" for v in range(800)])
    with pytest.raises(DatasetError, match=r"no query images in '.*test_list_800.txt'"):
        build_dataset(make_cfg(tmp_path, "VehicleID"), require_train=False)


def test_the_val_loader_of_a_test_only_tree_ignores_training_batch_rules(tmp_path):
    market_tree(tmp_path, [], MARKET_QUERY, MARKET_GALLERY)
    # A batch of 64 identities could never be drawn from a training set; evaluation needs none.
    cfg = make_cfg(tmp_path, "folder", **{"SOLVER.IMS_PER_BATCH": 256,
                                          "INPUT.SIZE_TEST": [32, 16]})
    dataset = load_eval_dataset(cfg)
    val_loader, num_query = make_val_loader(cfg, dataset=dataset)
    assert num_query == 2 and len(val_loader.dataset) == 4
    assert [os.path.basename(path) for path in next(iter(val_loader))[5]] == [
        *MARKET_QUERY, "0000_c1s1_000001_00.jpg", "0003_c2s1_000111_01.jpg"]
    assert make_val_loader(cfg)[1] == 2


def test_msmt17_test_only_tree_is_told_by_its_query_split(tmp_path):
    os.makedirs(tmp_path / "MSMT17" / "bounding_box_train")
    with pytest.raises(DatasetNotFoundError, match="neither list_query.txt nor query/ is in"):
        build_dataset(make_cfg(tmp_path, "msmt17"), require_train=False)
