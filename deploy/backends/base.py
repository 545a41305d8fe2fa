"""The backend protocol `processor.FeatureExtractor` runs, and its exported-file backend.

A backend turns a batch of normalised images and their SIE labels into eval features. It
carries what the extractor needs to know of it: the device its inputs go to, the SIE labels it
takes, its feature width and the provenance of its features. PyTorch models are
`processor.inference.TorchBackend`; exported files are `ExportedModel`, whose runtime session
comes from the format's module in this package.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Protocol, Sequence, TypeVar

import numpy as np
import torch

from model.trained import SideInfoCounts
from utils.errors import ToolError

from ..formats import backend_module, resolve_format
from ..metadata import INPUT_NAMES, read_metadata

logger = logging.getLogger("transreid.runtimes")

Rows = TypeVar("Rows", np.ndarray, torch.Tensor)


class Backend(Protocol):
    device: torch.device
    counts: SideInfoCounts          # SIE cameras and views it takes labels for
    feature_dim: int                # width of one image's feature row
    provenance: Optional[Dict[str, object]]  # what its features depend on; None: unknown

    def features(self, images: torch.Tensor, cam_label: torch.Tensor,
                 view_label: torch.Tensor) -> torch.Tensor:
        """Eval-mode float32 features (N x feature_dim) of N normalised images."""


class ExportedModel:
    """An exported file with its runtime session, on the CPU: the metadata says how to feed it
    (`deploy.metadata`); flip and precision are inside the file."""

    device = torch.device("cpu")

    def __init__(self, path: str, **session_options) -> None:
        self.path = path
        self.metadata = read_metadata(path)
        runtime = backend_module(resolve_format(path))
        self.session = runtime.Session(path, self.metadata, **session_options)
        if list(self.session.input_size) != list(self.metadata.input_size):
            raise ToolError(f"'{path}' takes {list(self.session.input_size)} images but its "
                            f"metadata says input_size {self.metadata.input_size}; export it "
                            "again with tools/export.py")
        self.counts = self.metadata.counts
        self.feature_dim = self.metadata.feature_dim
        self.provenance: Optional[Dict[str, object]] = self.metadata.feature_provenance()
        logger.info("%s: %s %s model, %s form (camera handling: %s), flip %s", path,
                    type(self.session).__name__, self.metadata.precision, self.metadata.form,
                    self.metadata.camera_mode, self.metadata.flip)

    def features(self, images: torch.Tensor, cam_label: torch.Tensor,
                 view_label: torch.Tensor) -> torch.Tensor:
        """N x D float32 features (CPU) of N normalised images and their labels."""
        for name, labels in (("camera", cam_label), ("view", view_label)):
            for label in {int(labels.min()), int(labels.max())} if len(labels) else ():
                self.counts.check(name, label, f"{name} label {label} of '{self.path}'")
        arrays = {INPUT_NAMES[0]: images.detach().float().cpu().numpy(),
                  INPUT_NAMES[1]: cam_label.detach().cpu().long().numpy(),
                  INPUT_NAMES[2]: view_label.detach().cpu().long().numpy()}
        feed = {name: arrays[name] for name in self.session.input_names}
        return torch.from_numpy(run_batches(self.session, feed)).float()

    __call__ = features


def fill_rows(rows: Rows, count: int) -> Rows:
    """The first `count` of `rows`, the last one repeated where there are fewer: a full batch
    for a graph of static batch size."""
    return rows[np.minimum(np.arange(count), len(rows) - 1)]


def run_batches(session, feed: Dict[str, np.ndarray]) -> np.ndarray:
    """The session's output for `feed`; a graph with a static batch size gets the rows in
    chunks of that size, the last filled up (`fill_rows`) and cut back."""
    rows = len(next(iter(feed.values())))
    batch = session.batch
    if batch is None or batch == rows:
        return session.run(feed)
    outputs = []
    for start in range(0, rows, batch):
        chunk = {name: array[start:start + batch] for name, array in feed.items()}
        real = len(next(iter(chunk.values())))
        outputs.append(session.run({name: fill_rows(array, batch)
                                    for name, array in chunk.items()})[:real])
    return np.concatenate(outputs)


def static_batch(shape: Sequence) -> Optional[int]:
    """The static batch size of an input shape, None when it is dynamic."""
    first = shape[0] if len(shape) else None
    return first if isinstance(first, int) and first > 0 else None
