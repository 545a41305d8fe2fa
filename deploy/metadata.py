"""What an exported file says about itself, and the one way a config is fitted to it.

Every file `deploy.export` writes carries one metadata entry, `METADATA_KEY`, a JSON object
(ONNX `metadata_props`; OpenVINO `rt_info`) that says how to feed it and what its features are:
input size, mean / std and channel order of the input, feature width, SIE counts and camera
handling, flip, precision, and the provenance of the PyTorch features it reproduces
(`model.trained.feature_provenance`). A file is therefore usable without a config.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Collection, Dict, List, Optional, Sequence

import numpy as np

from config import ConfigError, load_config, switches
from model.trained import SideInfoCounts
from utils.errors import ToolError
from utils.files import file_identity

from .formats import LABELLED, PORTABLE, PRECISIONS, backend_module, resolve_format

logger = logging.getLogger("transreid.runtimes")

METADATA_KEY = "transreid_deploy"
METADATA_VERSION = 1
INPUT_NAMES = ("images", "cam_label", "view_label")
OUTPUT_NAME = "features"


@dataclass(frozen=True)
class DeployMetadata:
    """What an exported file says about itself (the JSON of `METADATA_KEY`)."""
    form: str                     # LABELLED (SIE labels as inputs) or PORTABLE (one input)
    input_size: List[int]         # H, W: the graph's static image size
    pixel_mean: List[float]       # of the graph's input, RGB order, for pixels in [0, 1]
    pixel_std: List[float]
    channel_order: str            # 'RGB'
    feature_dim: int              # width of the output row of one image
    sie_cameras: int              # SIE embeddings of the model (0: none)
    sie_views: int
    camera_mode: str              # 'inputs' (labelled), or the portable CAMERA_MODES choice
    camera_pairs: List[List[int]]  # (camera, view) pairs a portable graph averages over
    normalized_output: bool
    flip: bool
    precision: str                # 'fp32', 'int8' (static QDQ) or 'bf16' (runtime hint)
    provenance: Dict[str, object]
    version: int = METADATA_VERSION
    # SHA-256 of the weights (ONNX: its initializers; OpenVINO: the .bin), checked at open.
    # None in files exported before it was recorded.
    weights_sha256: Optional[str] = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, path: str) -> "DeployMetadata":
        try:
            metadata = cls(**json.loads(text))
            metadata.check()
            return metadata
        except (ValueError, TypeError) as err:
            raise ToolError(f"'{path}' has unreadable {METADATA_KEY} metadata ({err}); export "
                            "it again with tools/export.py") from None

    def check(self) -> None:
        """A ValueError naming the first field of a type or range no export writes."""
        problems = (
            ("form", self.form in (LABELLED, PORTABLE)),
            ("input_size", _numbers(self.input_size, 2, int) and min(self.input_size) > 0),
            ("pixel_mean", _numbers(self.pixel_mean, 3)),
            ("pixel_std", _numbers(self.pixel_std, 3) and min(self.pixel_std) > 0),
            ("feature_dim", _numbers([self.feature_dim], 1, int) and self.feature_dim > 0),
            ("sie_cameras", _numbers([self.sie_cameras], 1, int) and self.sie_cameras >= 0),
            ("sie_views", _numbers([self.sie_views], 1, int) and self.sie_views >= 0),
            ("flip", isinstance(self.flip, bool)),
            ("precision", self.precision in PRECISIONS),
            ("provenance", isinstance(self.provenance, dict)),
            ("version", self.version == METADATA_VERSION),
            ("weights_sha256", self.weights_sha256 is None
             or re.fullmatch(r"[0-9a-f]{64}", str(self.weights_sha256)) is not None))
        for field, valid in problems:
            if not valid:
                raise ValueError(f"{field} is {getattr(self, field)!r}")

    @property
    def counts(self) -> SideInfoCounts:
        """The SIE labels the file takes as inputs: none for the portable form."""
        if self.form == PORTABLE:
            return SideInfoCounts(0, 0)
        return SideInfoCounts(self.sie_cameras, self.sie_views)

    def settings(self) -> Dict[str, object]:
        """The config keys whose values the file was exported for."""
        return {"INPUT.SIZE_TEST": list(self.input_size),
                "INPUT.PIXEL_MEAN": list(self.pixel_mean),
                "INPUT.PIXEL_STD": list(self.pixel_std),
                "TEST.FLIP_FEATS": bool(self.flip)}

    def feature_provenance(self) -> Dict[str, object]:
        """The provenance of the PyTorch features, plus the precision (which changes them)."""
        return {**self.provenance, "precision": self.precision}


def _numbers(values: object, count: int, kind: type = float) -> bool:
    """Whether `values` is a list of `count` finite numbers (integers for `kind` int)."""
    allowed = (int,) if kind is int else (int, float)
    return (isinstance(values, list) and len(values) == count
            and all(isinstance(v, allowed) and not isinstance(v, bool) and np.isfinite(v)
                    for v in values))


def read_metadata(path: str) -> DeployMetadata:
    """The metadata of an exported file, read by its format's backend, with its weights
    checked against the SHA-256 the metadata records."""
    if not os.path.isfile(path):
        raise ToolError(f"model file '{path}' does not exist; check the path")
    fmt = resolve_format(path)
    if not fmt.exported:
        raise ToolError(f"'{path}' is PyTorch weights, not an exported model")
    text, digest = _inspected(path, fmt)
    if text is None:
        raise ToolError(f"'{path}' has no {METADATA_KEY} metadata: it was not exported by this "
                        "project's tools/export.py, so its input size, normalisation and camera "
                        "handling are unknown; export the .pth again with tools/export.py")
    metadata = DeployMetadata.from_json(text, path)
    if metadata.weights_sha256 is None:
        logger.warning("'%s' records no checksum of its weights (exported before it was "
                       "recorded): they cannot be verified; export it again to have them", path)
    elif digest() != metadata.weights_sha256:
        raise ToolError(f"the weights of '{path}' do not match the SHA-256 its metadata records: "
                        "the file (or its .bin) was damaged or replaced after export; export "
                        "the .pth again with tools/export.py, or restore the file")
    return metadata


# What _inspected found, by the files' (path, size, mtime, inode): a file opened again in the
# same process (test.py's check, then its run) is read and hashed once.
_INSPECTED: Dict[tuple, tuple] = {}


def _identity_or_none(path: str) -> tuple:
    try:
        return file_identity(path)
    except OSError:
        return (None,)


def _inspected(path: str, fmt) -> tuple:
    """(metadata text, a function giving the weights' SHA-256) of an exported file."""
    key = tuple((name, *_identity_or_none(name)) for name in fmt.files(path))
    if key not in _INSPECTED:
        text, digest = backend_module(fmt).inspect(path)
        _INSPECTED[key] = (text, functools.lru_cache(maxsize=1)(digest))
    return _INSPECTED[key]


# Settings a portable file takes whatever the model was trained with: its input is
# ImageNet-normalised, and the training config's INPUT.PIXEL_MEAN / STD are inside the graph.
PORTABLE_OWN = ("INPUT.PIXEL_MEAN", "INPUT.PIXEL_STD")


def given_keys(config_file: str, opts: Sequence[str]) -> Optional[Collection[str]]:
    """The keys a user chose: every key when a config file was given (None), else those that
    the KEY VALUE overrides name."""
    return None if config_file else set(list(opts)[::2])


def fit_config(metadata: DeployMetadata, path: str, config_file: str = "",
               opts: Sequence[str] = (), cfg=None, chosen: Optional[Collection[str]] = None):
    """The config that feeds the exported file `path`: the user's (`cfg`, or `config_file` and
    `opts`) with the settings the file was exported for on top. A setting the user chose
    (`chosen` keys; None: every key) that differs from the file's is refused, naming the key:
    the file would be fed other images than it expects and give wrong features silently."""
    if cfg is None:
        cfg = load_config(config_file, opts)
    have = {"INPUT.SIZE_TEST": list(cfg.INPUT.SIZE_TEST),
            "INPUT.PIXEL_MEAN": list(cfg.INPUT.PIXEL_MEAN),
            "INPUT.PIXEL_STD": list(cfg.INPUT.PIXEL_STD),
            "TEST.FLIP_FEATS": switches(cfg).flip_feats}
    for key, want in metadata.settings().items():
        if metadata.form == PORTABLE and key in PORTABLE_OWN:
            continue  # the model's own normalisation is folded into the graph
        if (chosen is None or key in chosen) and not np.allclose(
                np.asarray(have[key], float), np.asarray(want, float)):
            raise ConfigError(f"'{path}' was exported for {key} {want}, but the config has "
                              f"{have[key]}; pass {key} \"{want}\" or leave it out")
    fitted = cfg.clone()
    fitted.defrost()
    fitted.merge_from_list(_file_opts(metadata, path))
    fitted.freeze()
    return fitted


def _file_opts(metadata: DeployMetadata, path: str) -> List[str]:
    pairs = [("TEST.WEIGHT", path), ("MODEL.PRETRAIN_CHOICE", "none"),
             *((key, str(value)) for key, value in metadata.settings().items()),
             # The file's precision is its own; PyTorch autocast does not apply, and nothing of
             # PyTorch's runs on a GPU.
             ("TEST.AMP_DTYPE", "fp32"), ("MODEL.DEVICE", "cpu")]
    return [item for pair in pairs for item in pair]
