"""The synthetic person set's second domain (DATASETS.SYNTHETIC.DOMAIN) and its training tracks."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

import datasets.synthetic as synthetic
from config import ConfigError
from config import cfg as default_cfg
from datasets import build_dataset
from datasets.synthetic import SyntheticSettings, person
from datasets.synthetic.camera import Camera, random_colour
from datasets.synthetic.store import MANIFEST

TINY = SyntheticSettings(num_ids=8, images_per_id=6, num_cameras=3, image_size=(32, 16), seed=3)
TINY_B = dataclasses.replace(TINY, domain="B")
MARKET_NAME = re.compile(r"(\d{4})_c(\d)s1_(\d{6})_00\.jpg")


def images(folder):
    """{file name: SHA-1 of its bytes} of every image under `folder`."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if name.endswith(".jpg"):
                with open(os.path.join(dirpath, name), "rb") as f:
                    out[name] = hashlib.sha1(f.read()).hexdigest()
    return out


def mean_pixel(folder):
    train = os.path.join(folder, "bounding_box_train")
    return float(np.mean([np.asarray(Image.open(os.path.join(train, name)), np.float32).mean()
                          for name in os.listdir(train)]))


def camera_before_domains(rng, num_views, typical_views):
    """The camera draw as the generator made it before domains existed (its ranges and order)."""
    weights = np.full(num_views, 0.25 / num_views)
    weights[list(typical_views)] += 0.75 / len(typical_views)
    return Camera(tuple(float(g) for g in rng.uniform(0.72, 1.28, size=3)),
                  float(rng.uniform(0.65, 1.3)), float(rng.uniform(0.7, 1.1)),
                  float(rng.uniform(0.0, 1.1)), float(rng.uniform(2.0, 9.0)),
                  int(rng.integers(40, 90)), random_colour(rng), random_colour(rng, 30, 180),
                  float(rng.uniform(0.45, 0.8)), int(rng.integers(4)),
                  tuple(float(w) for w in weights / weights.sum()))


def test_domain_a_renders_as_before_domains(tmp_path):
    root = synthetic.ensure_synthetic_person(str(tmp_path), TINY)
    # The folder and manifest of A's settings carry no domain: earlier renders stay valid.
    plain = {"num_ids": 8, "images_per_id": 6, "num_cameras": 3, "image_size": [32, 16], "seed": 3}
    digest = hashlib.sha1(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:8]
    assert os.path.basename(root) == f"{synthetic.PERSON_FOLDER}_{digest}"
    with open(os.path.join(root, MANIFEST)) as f:
        assert json.load(f)["settings"] == plain
    # Each training image again from the streams (seed, stream, ...) and the old camera ranges.
    cameras = []
    for cam in range(TINY.num_cameras):
        rng = np.random.default_rng([TINY.seed, 0, cam])
        cameras.append(camera_before_domains(rng, person.NUM_VIEWS,
                                             synthetic._person_views(rng)))
    people = person.make_identities(TINY.num_ids, np.random.default_rng([TINY.seed, 1]))
    rendered = images(os.path.join(root, "bounding_box_train"))
    assert len(rendered) == TINY.num_ids // 2 * TINY.images_per_id
    for name, digest in rendered.items():
        pid, cam, frame = (int(v) for v in MARKET_NAME.fullmatch(name).groups())
        rng = np.random.default_rng([TINY.seed, 3, pid + 1, frame])
        view = int(rng.choice(person.NUM_VIEWS, p=cameras[cam - 1].view_weights))
        data = person.render_person(people[pid - 1], cameras[cam - 1], view, TINY.image_size,
                                    rng)
        assert hashlib.sha1(data).hexdigest() == digest, name


def test_domain_b_other_images_and_identities(tmp_path):
    a_root = synthetic.ensure_synthetic_person(str(tmp_path), TINY)
    a = images(a_root)
    b_root = synthetic.ensure_synthetic_person(str(tmp_path), TINY_B)
    b = images(b_root)
    assert len(b) > 0 and not set(a.values()) & set(b.values())
    with open(os.path.join(b_root, MANIFEST)) as f:
        assert json.load(f)["settings"]["domain"] == "B"
    people_a = synthetic.person.make_identities(20, TINY.rng(synthetic._IDENTITIES))
    people_b = synthetic.person.make_identities(20, TINY_B.rng(synthetic._IDENTITIES))
    assert not set(people_a) & set(people_b)
    # Same task, other scenes: B's evening light is darker than A's.
    assert mean_pixel(b_root) < mean_pixel(a_root) - 20


def camera_colour_spread(root):
    """The standard deviation over cameras of a camera's mean image colour, mean over RGB."""
    per_camera = defaultdict(list)
    train = os.path.join(root, "bounding_box_train")
    for name in os.listdir(train):
        camera = int(MARKET_NAME.fullmatch(name).group(2))
        pixels = np.asarray(Image.open(os.path.join(train, name)), np.float32)
        per_camera[camera].append(pixels.reshape(-1, 3).mean(0))
    means = np.stack([np.mean(colours, 0) for colours in per_camera.values()])
    return float(means.std(0).mean())


def test_domain_b_cameras_look_alike_more_than_a_cameras(tmp_path):
    # B is one site under one light: its cameras differ far less in colour than A's
    a = camera_colour_spread(synthetic.ensure_synthetic_person(str(tmp_path), TINY))
    b = camera_colour_spread(synthetic.ensure_synthetic_person(str(tmp_path), TINY_B))
    assert b < 0.5 * a


def test_domain_b_renders_again_when_its_ranges_change(tmp_path, monkeypatch):
    root = synthetic.ensure_synthetic_person(str(tmp_path), TINY_B)
    before = images(root)
    darker = dataclasses.replace(synthetic.DOMAINS["B"], brightness=(0.3, 0.4))
    monkeypatch.setitem(synthetic.DOMAINS, "B", darker)
    assert synthetic.ensure_synthetic_person(str(tmp_path), TINY_B) == root
    assert images(root).keys() == before.keys() and images(root) != before
    assert mean_pixel(root) < 0.7 * 255 * 0.4


def test_unknown_domain_and_vehicle_domain_b_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="DATASETS.SYNTHETIC.DOMAIN is 'C'"):
        dataclasses.replace(TINY, domain="C").validate(max_cameras=9)
    with pytest.raises(ConfigError, match="vehicle set has domain 'A' only"):
        synthetic.ensure_synthetic_vehicle(str(tmp_path), TINY_B)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("domain", ["A", "B"])
def test_train_tracks_follow_identity_camera_runs(tmp_path, domain):
    cfg = default_cfg.clone()
    cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR = "synthetic", str(tmp_path)
    s = cfg.DATASETS.SYNTHETIC
    s.NUM_IDS, s.IMAGES_PER_ID, s.NUM_CAMERAS = TINY.num_ids, TINY.images_per_id, TINY.num_cameras
    s.IMAGE_SIZE, s.SEED, s.DOMAIN = list(TINY.image_size), TINY.seed, domain
    data = build_dataset(cfg)
    assert len(data.train_tracks) == len(data.train)
    frames_of = defaultdict(list)
    track_of = {}
    for (path, _, _, _), track in zip(data.train, data.train_tracks):
        pid, cam, frame = (int(v) for v in MARKET_NAME.fullmatch(os.path.basename(path)).groups())
        assert track_of.setdefault((pid, cam), track) == track  # one track per identity-camera
        frames_of[track].append(frame)
    assert len(set(track_of.values())) == len(track_of) >= 2 * TINY.num_ids // 2
    for frames in frames_of.values():  # consecutive renders
        assert sorted(frames) == list(range(min(frames), min(frames) + len(frames)))
    assert min(data.train_tracks) == 0

