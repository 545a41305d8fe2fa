"""The synthetic datasets: determinism, Market/VeRi protocol, manifest and atomic rendering."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections import defaultdict

import numpy as np
import pytest

import datasets.synthetic as synthetic
from config import cfg as default_cfg
from config import load_config
from datasets import build_dataset, make_dataloader
from datasets.synthetic import SyntheticSettings, person
from datasets.synthetic.store import MANIFEST, remove_abandoned_renders

SYNTHETIC_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "configs", "Synthetic")
TINY = SyntheticSettings(num_ids=8, images_per_id=6, num_cameras=3, image_size=(32, 16), seed=3)


def file_hashes(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                out[os.path.relpath(os.path.join(dirpath, name), folder)] = \
                    hashlib.sha1(f.read()).hexdigest()
    return out


def parse_names(folder):
    """(pid, cam) of every Market-named file, parsed independently of the package."""
    out = []
    for name in sorted(os.listdir(folder)):
        m = re.fullmatch(r"(-1|\d{4})_c(\d)s1_(\d{6})_00\.jpg", name)
        assert m, name
        out.append((int(m[1]), int(m[2]), name))
    return out


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = synthetic.ensure_synthetic_person(str(tmp_path / "a"), TINY)
    b = synthetic.ensure_synthetic_person(str(tmp_path / "b"), TINY)
    assert file_hashes(a) == file_hashes(b)
    c = synthetic.ensure_synthetic_person(str(tmp_path / "c"), dataclasses.replace(TINY, seed=4))
    assert file_hashes(c) != file_hashes(a)


def test_market_protocol(tmp_path):
    root = synthetic.ensure_synthetic_person(str(tmp_path), TINY)
    train = parse_names(os.path.join(root, "bounding_box_train"))
    query = parse_names(os.path.join(root, "query"))
    gallery = parse_names(os.path.join(root, "bounding_box_test"))
    train_ids = {pid for pid, _, _ in train}
    test_ids = {pid for pid, _, _ in query}
    assert train_ids == {1, 2, 3, 4} and test_ids == {5, 6, 7, 8}
    assert len(train) == 4 * TINY.images_per_id
    assert {n for *_, n in query}.isdisjoint({n for *_, n in gallery})
    cams_of = defaultdict(set)
    for pid, cam, _ in query + gallery:
        cams_of[pid].add(cam)
    query_cams = defaultdict(list)
    for pid, cam, _ in query:
        query_cams[pid].append(cam)
    for pid in test_ids:
        assert len(cams_of[pid]) >= 2  # every test id in 2+ cameras
        assert sorted(query_cams[pid]) == sorted(set(query_cams[pid]))  # one query per camera
        # Every query keeps a true match in another camera of the gallery.
        for cam in query_cams[pid]:
            assert any(p == pid and c != cam for p, c, _ in gallery)
        assert sum(p == pid for p, _, _ in query + gallery) == TINY.images_per_id
    gallery_pids = [pid for pid, _, _ in gallery]
    assert 0 in gallery_pids and -1 in gallery_pids  # distractors and junk
    assert {pid for pid, _, _ in train + query}.isdisjoint({0, -1})


def test_market_parser_reads_it_and_skips_junk(tmp_path):
    cfg = default_cfg.clone()
    cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR = "synthetic", str(tmp_path)
    s = cfg.DATASETS.SYNTHETIC
    s.NUM_IDS, s.IMAGES_PER_ID, s.NUM_CAMERAS = TINY.num_ids, TINY.images_per_id, TINY.num_cameras
    s.IMAGE_SIZE, s.SEED = list(TINY.image_size), TINY.seed
    data = build_dataset(cfg)
    assert data.num_train_pids == 4 and data.num_cameras == 3
    assert sorted({pid for _, pid, _, _ in data.train}) == [0, 1, 2, 3]
    assert -1 not in {pid for _, pid, _, _ in data.gallery}
    assert 0 in {pid for _, pid, _, _ in data.gallery}


def test_manifest_keeps_or_regenerates(tmp_path, monkeypatch):
    root = synthetic.ensure_synthetic_person(str(tmp_path), TINY)
    with open(os.path.join(root, MANIFEST)) as f:
        manifest = json.load(f)
    assert manifest["version"] == synthetic.GENERATOR_VERSION
    assert manifest["settings"]["num_ids"] == 8 and manifest["settings"]["image_size"] == [32, 16]
    before = file_hashes(root)

    def fail(*args):
        raise AssertionError("must not render again")
    monkeypatch.setattr(synthetic, "render_person_dataset", fail)
    synthetic.ensure_synthetic_person(str(tmp_path), TINY)  # unchanged: kept as is
    monkeypatch.undo()
    # A set rendered by another generator version is rendered again, in its place.
    with open(os.path.join(root, MANIFEST), "w") as f:
        json.dump(dict(manifest, version=synthetic.GENERATOR_VERSION - 1), f)
    assert synthetic.ensure_synthetic_person(str(tmp_path), TINY) == root
    assert file_hashes(root) == before


def test_other_settings_render_into_their_own_folder(tmp_path, caplog):
    first = synthetic.ensure_synthetic_person(str(tmp_path), TINY)
    before = file_hashes(first)
    changed = dataclasses.replace(TINY, num_cameras=4)
    caplog.clear()  # the first render's lines, where another test left the logger at INFO
    with caplog.at_level(logging.INFO, logger="transreid.datasets"):
        second = synthetic.ensure_synthetic_person(str(tmp_path), changed)
    assert second != first and os.path.dirname(second) == str(tmp_path)
    assert os.path.basename(second).startswith(synthetic.PERSON_FOLDER + "_")
    assert file_hashes(first) == before  # the first set is neither replaced nor touched
    with open(os.path.join(second, MANIFEST)) as f:
        assert json.load(f)["settings"]["num_cameras"] == 4
    # One line says what is rendered, how many images and where, and progress follows.
    images = sum(len(files) for _, _, files in os.walk(second)) - 1  # less the manifest
    starts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rendering ")
              and " into " in r.getMessage()]
    assert starts == [f"rendering {images} synthetic person images (8 ids, 6 per id, 4 cameras, "
                      f"32x16, seed 3) into {second} (not there yet)"]
    assert f"rendering synthetic persons: {images}/{images}" in caplog.text


def test_cleaning_up_after_a_killed_render_spares_other_settings_renders(tmp_path):
    # A live render of other settings writes into a hidden sibling whose name starts with the
    # plain folder's name too; only the plain folder's own leftovers may go.
    plain = tmp_path / synthetic.PERSON_FOLDER
    other = TINY.folder_name(synthetic.PERSON_FOLDER)
    own_leftover, others_render = tmp_path / f".{plain.name}.k1ll3d", tmp_path / f".{other}.l1ve"
    own_leftover.mkdir()
    others_render.mkdir()
    assert remove_abandoned_renders(str(plain)) == [str(own_leftover)]
    assert sorted(os.listdir(tmp_path)) == [others_render.name]


def test_configs_of_other_settings_never_share_a_folder():
    quickstart = load_config(os.path.join(SYNTHETIC_CONFIGS, "vit_transreid_tiny.yml"))
    stride = load_config(os.path.join(SYNTHETIC_CONFIGS, "vit_transreid_stride.yml"))
    folder = {name: SyntheticSettings.from_cfg(cfg).folder_name(synthetic.PERSON_FOLDER)
              for name, cfg in (("quickstart", quickstart), ("stride", stride))}
    # The quickstart's set stays where the docs name it (data/synthetic_market1501).
    assert folder["quickstart"] == "synthetic_market1501"
    assert re.fullmatch(r"synthetic_market1501_[0-9a-f]{8}", folder["stride"])
    names = {dataclasses.replace(TINY, **{field: value}).folder_name("x")
             for field, value in (("num_ids", 10), ("images_per_id", 7), ("num_cameras", 4),
                                  ("image_size", (48, 16)), ("seed", 5))}
    assert len(names | {TINY.folder_name("x")}) == 6  # every setting is part of the key


def test_interrupted_render_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def crash_after_some(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)
    original = person.render_person
    monkeypatch.setattr(person, "render_person", crash_after_some)
    with pytest.raises(KeyboardInterrupt):
        synthetic.ensure_synthetic_person(str(tmp_path), TINY)
    assert os.listdir(tmp_path) == []


def test_identities_have_hard_negatives():
    people = person.make_identities(60, np.random.default_rng(0))
    fields = [f.name for f in dataclasses.fields(person.Person)]
    assert len(fields) >= 6
    differing = [sum(getattr(a, f) != getattr(b, f) for f in fields)
                 for i, a in enumerate(people) for b in people[i + 1:]]
    assert min(differing) >= 1  # no two identities are identical
    assert sum(d <= 2 for d in differing) >= 5  # but several differ in only one or two


def test_settings_validation():
    with pytest.raises(ValueError, match="DATASETS.SYNTHETIC.IMAGES_PER_ID is 3"):
        dataclasses.replace(TINY, images_per_id=3).validate(max_cameras=9)
    with pytest.raises(ValueError, match="NUM_CAMERAS is 12; it must be in 2..9"):
        synthetic.ensure_synthetic_person("/nonexistent", dataclasses.replace(TINY, num_cameras=12))


def test_synthetic_vehicle_veri_layout_and_views(tmp_path):
    cfg = default_cfg.clone()
    cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR = "synthetic_vehicle", str(tmp_path)
    s = cfg.DATASETS.SYNTHETIC
    s.NUM_IDS, s.IMAGES_PER_ID, s.NUM_CAMERAS, s.IMAGE_SIZE = 6, 6, 4, [24, 24]
    cfg.MODEL.SIE_CAMERA = cfg.MODEL.SIE_VIEW = True
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.SIZE_TRAIN = cfg.INPUT.SIZE_TEST = [24, 24]
    _, _, _, num_query, num_classes, cams, num_views = make_dataloader(cfg)
    root = tmp_path / SyntheticSettings.from_cfg(cfg).folder_name(synthetic.VEHICLE_FOLDER)
    assert os.listdir(tmp_path) == [root.name]
    names = {d: sorted(os.listdir(root / d)) for d in ("image_train", "image_query", "image_test")}
    assert all(re.fullmatch(r"\d{4}_c\d{3}_\d{8}_0\.jpg", n) for v in names.values() for n in v)
    assert set(names["image_query"]) <= set(names["image_test"])  # as VeRi
    views = {}
    for split in ("train", "test"):
        for line in open(root / f"keypoint_{split}.txt"):
            fields = line.split()
            assert len(fields) == 42
            views[os.path.basename(fields[0])] = int(fields[-1])
    assert set(views) == set(names["image_train"]) | set(names["image_test"])
    assert set(views.values()) <= set(range(8))
    assert (num_query, num_classes, cams) == (len(names["image_query"]), 3, 4)
    assert num_views == max(views.values()) + 1
    data = build_dataset(cfg)
    assert all(views[os.path.basename(p)] == v for p, _, _, v in data.train + data.gallery)
