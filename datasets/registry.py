"""Dataset names (`DATASETS.NAMES`) -> a parsed dataset built from the config.

A factory takes `(cfg, trial, require_train)`; `trial` only matters for VehicleID, whose
query/gallery split is drawn per trial, and `require_train=False` lets a tree without its training
split through (evaluation). Add a dataset with `@register_dataset("name")`.
"""
from __future__ import annotations

import os
from typing import Callable, Dict

from .bases import MARKET_PATTERN, BaseImageDataset, DatasetError, NameRule
from .list_file import ListDataset
from .market_style import (DukeMTMCreID, FolderDataset, Market1501, MarketStyleDataset,
                           OccludedDukeMTMCreID)
from .msmt17 import MSMT17
from .synthetic import (SyntheticSettings, ensure_synthetic_person, ensure_synthetic_vehicle,
                        person_train_tracks)
from .unlabelled import UnlabelledDataset
from .vehicleid import VehicleID
from .veri import VeRi

DatasetFactory = Callable[..., BaseImageDataset]
FACTORY: Dict[str, DatasetFactory] = {}


def register_dataset(name: str) -> Callable[[DatasetFactory], DatasetFactory]:
    def add(factory: DatasetFactory) -> DatasetFactory:
        FACTORY[name] = factory
        return factory
    return add


def build_dataset(cfg, trial: int = 0, require_train: bool = True) -> BaseImageDataset:
    """The parsed dataset of `cfg`; `require_train=False` for evaluation, which needs only query
    and gallery."""
    name = cfg.DATASETS.NAMES
    if name not in FACTORY:
        raise DatasetError(f"DATASETS.NAMES is '{name}'; choose one of {sorted(FACTORY)}")
    return FACTORY[name](cfg, trial, require_train=require_train)


def _root(cfg) -> str:
    return cfg.DATASETS.ROOT_DIR


for _name, _cls in (("market1501", Market1501), ("dukemtmc", DukeMTMCreID),
                    ("msmt17", MSMT17), ("occ_duke", OccludedDukeMTMCreID),
                    ("folder", FolderDataset)):
    register_dataset(_name)(lambda cfg, trial, require_train, cls=_cls:
                            cls(_root(cfg), require_train=require_train))


@register_dataset("veri")
def _veri(cfg, trial: int, require_train: bool) -> BaseImageDataset:
    return VeRi(_root(cfg), require_views=cfg.MODEL.SIE_VIEW, require_train=require_train)


@register_dataset("VehicleID")
def _vehicleid(cfg, trial: int, require_train: bool) -> BaseImageDataset:
    return VehicleID(_root(cfg), test_size=cfg.DATASETS.VEHICLEID_TEST_SIZE,
                     seed=cfg.SOLVER.SEED, trial=trial, require_train=require_train,
                     num_trials=cfg.TEST.VEHICLEID_TRIALS)


@register_dataset("list")
def _list(cfg, trial: int, require_train: bool) -> BaseImageDataset:
    d = cfg.DATASETS
    return ListDataset(_root(cfg), d.TRAIN_LIST, d.QUERY_LIST, d.GALLERY_LIST,
                       require_train=require_train)


@register_dataset("unlabelled")
def _unlabelled(cfg, trial: int, require_train: bool) -> BaseImageDataset:
    return UnlabelledDataset(_root(cfg), tracks=cfg.CLUSTER.TRACKS, require_train=require_train)


def _synthetic_rule(settings: SyntheticSettings, example: str) -> NameRule:
    return NameRule(MARKET_PATTERN, example, max_pid=settings.num_ids,
                    num_cams=settings.num_cameras)


# The synthetic sets are rendered whole, so their training split is always there.
@register_dataset("synthetic")
def _synthetic(cfg, trial: int, require_train: bool) -> BaseImageDataset:
    settings = SyntheticSettings.from_cfg(cfg)
    folder = ensure_synthetic_person(_root(cfg), settings)
    dataset = MarketStyleDataset(_root(cfg), dataset_dir=os.path.basename(folder),
                                 display_name="synthetic persons (Market-1501 layout)",
                                 name_rule=_synthetic_rule(settings, "0001_c1s1_000000_00.jpg"))
    tracks = person_train_tracks(settings)
    dataset.train_tracks = [tracks.get(os.path.basename(path), -1)
                            for path, _, _, _ in dataset.train]
    return dataset


@register_dataset("synthetic_vehicle")
def _synthetic_vehicle(cfg, trial: int, require_train: bool) -> BaseImageDataset:
    settings = SyntheticSettings.from_cfg(cfg)
    folder = ensure_synthetic_vehicle(_root(cfg), settings)
    return VeRi(_root(cfg), require_views=True, dataset_dir=os.path.basename(folder),
                display_name="synthetic vehicles (VeRi-776 layout)",
                name_rule=_synthetic_rule(settings, "0001_c001_00000000_0.jpg"))
