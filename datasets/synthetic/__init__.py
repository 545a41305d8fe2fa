"""Synthetic re-ID datasets rendered deterministically from a seed: the embedded default.

`ensure_synthetic_person` writes a person dataset in Market-1501's layout and naming,
`ensure_synthetic_vehicle` a vehicle dataset in VeRi-776's layout with view-label files, so the
benchmark parsers read them unchanged. Each set of settings has its own folder (the default
settings the plain name, others the name and a hash of the settings), so configs of other
settings never render over each other's set. A manifest (generator version and settings) sits in
each dataset folder; a dataset whose manifest differs is rendered again. Every image draws from
its own generator seeded by (seed, stream, pid, frame): the same seed gives the same bytes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from config import ConfigError
from utils.progress import Progress

from . import person, vehicle
from .camera import Camera, make_camera
from .domains import DOMAINS, Domain
from .protocol import DISTRACTOR_PID, GALLERY, JUNK_PID, QUERY, TRAIN, Shot, plan_shots
from .store import ensure_rendered

PERSON_FOLDER = "synthetic_market1501"
VEHICLE_FOLDER = "synthetic_veri"
GENERATOR_VERSION = 1

SETTINGS_KEY_LENGTH = 8  # hex digits of the settings' hash in a folder name

logger = logging.getLogger("transreid.datasets")

# Streams keep the draws of cameras, identities, the plan and each image independent.
_CAMERAS, _IDENTITIES, _PLAN, _IMAGES = range(4)


@dataclass(frozen=True)
class SyntheticSettings:
    num_ids: int = 200
    images_per_id: int = 12
    num_cameras: int = 6
    image_size: Tuple[int, int] = (128, 64)  # (height, width)
    seed: int = 0
    domain: str = "A"  # a key of DOMAINS

    @classmethod
    def from_cfg(cls, cfg) -> "SyntheticSettings":
        s = cfg.DATASETS.SYNTHETIC
        return cls(int(s.NUM_IDS), int(s.IMAGES_PER_ID), int(s.NUM_CAMERAS),
                   (int(s.IMAGE_SIZE[0]), int(s.IMAGE_SIZE[1])), int(s.SEED), str(s.DOMAIN))

    def validate(self, max_cameras: int) -> None:
        checks = [
            (self.num_ids >= 4, "NUM_IDS", self.num_ids, ">= 4 (half train, half test)"),
            (self.images_per_id >= 4, "IMAGES_PER_ID", self.images_per_id,
             ">= 4 (2 cameras x 2 images, so every query keeps a match)"),
            (2 <= self.num_cameras <= max_cameras, "NUM_CAMERAS", self.num_cameras,
             f"in 2..{max_cameras}"),
            (min(self.image_size) >= 16, "IMAGE_SIZE", list(self.image_size), "both >= 16"),
            (self.domain in DOMAINS, "DOMAIN", repr(self.domain),
             " or ".join(repr(name) for name in DOMAINS)),
        ]
        for ok, key, value, rule in checks:
            if not ok:
                raise ConfigError(f"DATASETS.SYNTHETIC.{key} is {value}; it must be {rule}")

    def as_dict(self) -> Dict[str, object]:
        settings = asdict(self)
        settings["image_size"] = list(self.image_size)
        if self.domain == "A":  # as before domains existed: A keeps its folders and manifests
            del settings["domain"]
        return settings

    def manifest(self, generator: str) -> Dict[str, object]:
        manifest = {"generator": generator, "version": GENERATOR_VERSION,
                    "settings": self.as_dict()}
        if self.domain != "A":  # a set rendered with other ranges for its domain is stale
            manifest["domain"] = json.loads(json.dumps(asdict(self.scene)))
        return manifest

    def folder_name(self, base: str) -> str:
        """`base` for the default settings (the folder every earlier version rendered them
        into), else `base_<hash of the settings>`: one folder per set of settings."""
        if self == SyntheticSettings():
            return base
        text = json.dumps(self.as_dict(), sort_keys=True)
        return f"{base}_{hashlib.sha1(text.encode()).hexdigest()[:SETTINGS_KEY_LENGTH]}"

    def describe(self, images: int, kind: str) -> str:
        height, width = self.image_size
        domain = "" if self.domain == "A" else f", domain {self.domain}"
        return (f"{images} synthetic {kind} images ({self.num_ids} ids, {self.images_per_id} "
                f"per id, {self.num_cameras} cameras, {height}x{width}, seed {self.seed}{domain})")

    @property
    def scene(self) -> Domain:
        return DOMAINS[self.domain]

    def rng(self, *stream: int) -> np.random.Generator:
        """Every draw of a domain comes from its own streams: B shares no draw with A."""
        return np.random.default_rng([self.seed, *self.scene.stream, *stream])


def _cameras(settings: SyntheticSettings, num_views: int,
             typical_views: Callable[[np.random.Generator], Sequence[int]]) -> List[Camera]:
    cameras = []
    for cam in range(settings.num_cameras):
        rng = settings.rng(_CAMERAS, cam)
        cameras.append(make_camera(rng, num_views, typical_views(rng), settings.scene))
    return cameras


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


# --------------------------------------------------------------------------------- persons
def market_name(shot: Shot) -> str:
    pid = "-1" if shot.pid == JUNK_PID else f"{shot.pid:04d}"
    return f"{pid}_c{shot.cam + 1}s1_{shot.frame:06d}_00.jpg"


MARKET_FOLDERS = {TRAIN: "bounding_box_train", QUERY: "query", GALLERY: "bounding_box_test"}


def _person_views(rng: np.random.Generator) -> Sequence[int]:
    """A camera along a walkway sees fronts and backs; one across it sees one side."""
    choices = [(person.FRONT,), (person.BACK,), (person.LEFT_SIDE,), (person.RIGHT_SIDE,),
               (person.FRONT, person.BACK)]
    return choices[int(rng.integers(len(choices)))]


def _rendering(shots: List[Shot], kind: str) -> Progress:
    return Progress(shots, len(shots), f"rendering synthetic {kind}", logger=logger)


def person_shots(settings: SyntheticSettings) -> List[Shot]:
    return plan_shots(settings.num_ids, settings.images_per_id, settings.num_cameras,
                      settings.rng(_PLAN), distractor_rate=0.08, junk_rate=0.04)


def person_train_tracks(settings: SyntheticSettings) -> Dict[str, int]:
    """The track (0, 1, …) of each training image, by file name: the plan renders an identity's
    images in one camera as consecutive frames, which a tracker would link into one track."""
    tracks: Dict[str, int] = {}
    track, last = -1, None
    for shot in person_shots(settings):
        if shot.split != TRAIN:
            continue
        if (shot.pid, shot.cam) != last:
            track, last = track + 1, (shot.pid, shot.cam)
        tracks[market_name(shot)] = track
    return tracks


def render_person_dataset(settings: SyntheticSettings, out_dir: str) -> None:
    cameras = _cameras(settings, person.NUM_VIEWS, _person_views)
    people = person.make_identities(settings.num_ids, settings.rng(_IDENTITIES))
    shots = person_shots(settings)
    for folder in MARKET_FOLDERS.values():
        os.makedirs(os.path.join(out_dir, folder))
    for shot in _rendering(shots, "persons"):
        rng = settings.rng(_IMAGES, shot.pid + 1, shot.frame)
        camera = cameras[shot.cam]
        view = int(rng.choice(person.NUM_VIEWS, p=camera.view_weights))
        if shot.pid in (DISTRACTOR_PID, JUNK_PID):
            # Distractors: unrelated passers-by, half badly cropped; junk: bad detections.
            subject = person.random_person(rng)
            partial = shot.pid == JUNK_PID or bool(rng.integers(2))
        else:
            subject, partial = people[shot.pid - 1], False
        data = person.render_person(subject, camera, view, settings.image_size, rng,
                                    partial=partial, domain=settings.scene)
        _write(os.path.join(out_dir, MARKET_FOLDERS[shot.split], market_name(shot)), data)


def ensure_synthetic_person(root: str, settings: SyntheticSettings) -> str:
    """Path of the synthetic person dataset of `settings` under `root`, rendered first if
    needed."""
    settings.validate(max_cameras=9)  # Market names hold one camera digit
    return ensure_rendered(os.path.join(root, settings.folder_name(PERSON_FOLDER)),
                           settings.manifest("synthetic"),
                           lambda out: render_person_dataset(settings, out),
                           settings.describe(len(person_shots(settings)), "person"))


# -------------------------------------------------------------------------------- vehicles
def veri_name(shot: Shot) -> str:
    return f"{shot.pid:04d}_c{shot.cam + 1:03d}_{shot.frame:08d}_0.jpg"


def _vehicle_views(rng: np.random.Generator) -> Sequence[int]:
    """A road camera sees vehicles come (front, front diagonals) or go (rear, rear diagonals)."""
    coming = rng.integers(2) == 0
    side = int(rng.integers(2))
    if coming:
        return (vehicle.FRONT, (vehicle.LEFT_FRONT, vehicle.RIGHT_FRONT)[side])
    return (vehicle.REAR, (vehicle.LEFT_REAR, vehicle.RIGHT_REAR)[side])


def _keypoint_line(folder: str, name: str, view: int) -> str:
    # VehicleReIDKeyPointData format: path, 20 keypoints (x y; -1 = not annotated), view.
    return " ".join([f"{folder}/{name}"] + ["-1"] * 40 + [str(view)])


def vehicle_shots(settings: SyntheticSettings) -> List[Shot]:
    return plan_shots(settings.num_ids, settings.images_per_id, settings.num_cameras,
                      settings.rng(_PLAN))


def render_vehicle_dataset(settings: SyntheticSettings, out_dir: str) -> None:
    cameras = _cameras(settings, vehicle.NUM_VIEWS, _vehicle_views)
    vehicles = vehicle.make_identities(settings.num_ids, settings.rng(_IDENTITIES))
    shots = vehicle_shots(settings)
    for folder in ("image_train", "image_query", "image_test"):
        os.makedirs(os.path.join(out_dir, folder))
    keypoints: Dict[str, List[str]] = {"train": [], "test": []}
    for shot in _rendering(shots, "vehicles"):
        rng = settings.rng(_IMAGES, shot.pid + 1, shot.frame)
        camera = cameras[shot.cam]
        view = int(rng.choice(vehicle.NUM_VIEWS, p=camera.view_weights))
        data = vehicle.render_vehicle(vehicles[shot.pid - 1], camera, view,
                                      settings.image_size, rng)
        name = veri_name(shot)
        # As VeRi: image_test holds every test image, the queries included.
        folders = {TRAIN: ["image_train"], QUERY: ["image_query", "image_test"],
                   GALLERY: ["image_test"]}[shot.split]
        for folder in folders:
            _write(os.path.join(out_dir, folder, name), data)
            keypoints["train" if shot.split == TRAIN else "test"].append(
                _keypoint_line(folder, name, view))
    for split, lines in keypoints.items():
        with open(os.path.join(out_dir, f"keypoint_{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")


def ensure_synthetic_vehicle(root: str, settings: SyntheticSettings) -> str:
    """Path of the synthetic vehicle dataset of `settings` under `root`, rendered first if
    needed."""
    settings.validate(max_cameras=999)
    if settings.domain != "A":
        raise ConfigError(f"DATASETS.SYNTHETIC.DOMAIN is '{settings.domain}'; the vehicle set "
                          f"has domain 'A' only (domains are for DATASETS.NAMES 'synthetic')")
    return ensure_rendered(os.path.join(root, settings.folder_name(VEHICLE_FOLDER)),
                           settings.manifest("synthetic_vehicle"),
                           lambda out: render_vehicle_dataset(settings, out),
                           settings.describe(len(vehicle_shots(settings)), "vehicle"))


__all__ = ["SyntheticSettings", "ensure_synthetic_person", "ensure_synthetic_vehicle",
           "person_train_tracks", "DOMAINS",
           "PERSON_FOLDER", "VEHICLE_FOLDER", "GENERATOR_VERSION"]
