"""Images an export is calibrated (int8) and checked on: training crops through the test
transforms, or random images where no crops are at hand."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
import torch

from datasets.bases import read_image
from datasets.registry import build_dataset
from datasets.transforms import build_test_transforms
from model.trained import SideInfoCounts
from utils.errors import ToolError, UserError

from .backends.base import fill_rows
from .formats import PORTABLE
from .graphs import graph_inputs
from .metadata import DeployMetadata

logger = logging.getLogger("transreid.export")


@dataclass
class CalibrationSet:
    """Images normalised as the model's config says, with their SIE labels."""
    images: torch.Tensor
    cams: torch.Tensor
    views: torch.Tensor
    description: str


def random_check_set(cfg, counts: SideInfoCounts, size: int, seed: int = 1) -> CalibrationSet:
    """Random normalised images of INPUT.SIZE_TEST and valid SIE labels, where no images are
    at hand for the check."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, *cfg.INPUT.SIZE_TEST, generator=generator)
    cams, views = (torch.randint(max(count, 1), (size,), generator=generator)
                   for count in (counts.cameras, counts.views))
    return CalibrationSet(images, cams, views, f"{size} random images")


def calibration_set(cfg, size: int, seed: int = 0) -> CalibrationSet:
    """`size` training-split crops drawn at random (seeded), through the test transforms."""
    if size < 1:
        raise ToolError(f"--calibration-size {size}: int8 calibration needs at least one image")
    dataset = build_dataset(cfg, require_train=False)
    if not dataset.train:
        raise ToolError(f"the int8 calibration set is empty: {cfg.DATASETS.NAMES} under "
                        f"DATASETS.ROOT_DIR '{cfg.DATASETS.ROOT_DIR}' has no training images; "
                        "point DATASETS.ROOT_DIR at the training data, or export fp32")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(dataset.train), size=min(size, len(dataset.train)),
                               replace=False).tolist())
    samples = [dataset.train[i] for i in chosen]
    transform = build_test_transforms(cfg)
    images = torch.stack([transform(read_image(path)) for path, *_ in samples])
    cams = torch.tensor([cam for _, _, cam, _ in samples])
    views = torch.tensor([view for *_, view in samples])
    ids = len({pid for _, pid, _, _ in samples})
    description = (f"{len(samples)} of the {len(dataset.train)} training crops of "
                   f"{cfg.DATASETS.NAMES} under '{dataset.dataset_dir}' (seed {seed}; {ids} "
                   f"identities, {len(set(cams.tolist()))} cameras), through the test "
                   f"transforms (resize to {list(cfg.INPUT.SIZE_TEST)}, mean "
                   f"{list(cfg.INPUT.PIXEL_MEAN)}, std {list(cfg.INPUT.PIXEL_STD)}), first "
                   f"'{samples[0][0]}'")
    return CalibrationSet(images, cams, views, description)


def check_set(cfg, counts: SideInfoCounts, precision: str, form: str, size: int,
              seed: int) -> CalibrationSet:
    """The images an export is checked on. Reduced precision and the portable form's camera
    handling are judged on real crops (seed `seed`, another draw than the calibration's), not on
    noise; the portable form falls back to noise where no training crops are at hand."""
    if precision == "int8":
        return calibration_set(cfg, size, seed)
    if form == PORTABLE and (counts.cameras or counts.views):
        try:
            return calibration_set(cfg, size, seed)
        except UserError as err:
            logger.warning("the portable form's cost is measured on random images, not on "
                           "real crops: %s", err)
    return random_check_set(cfg, counts, size)


def calibration_feeds(metadata: DeployMetadata, calibration: CalibrationSet, batch: int,
                      input_names: Sequence[str], static: bool) -> List[Dict[str, np.ndarray]]:
    """The calibration set as the graph's inputs, in batches; a graph with a static batch
    size gets full batches (`fill_rows`)."""
    feeds = []
    for start in range(0, len(calibration.images), batch):
        rows = slice(start, start + batch)
        inputs = graph_inputs(metadata, calibration.images[rows], calibration.cams[rows],
                              calibration.views[rows])
        feeds.append({name: fill_rows(inputs[name].numpy(), batch) if static
                      else inputs[name].numpy() for name in input_names})
    return feeds
