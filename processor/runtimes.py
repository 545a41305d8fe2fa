"""Exported models run by ONNX Runtime (.onnx) or OpenVINO (.xml): the file, its metadata, and
batches of features.

Every file `processor.export` writes carries one metadata entry, `METADATA_KEY`, a JSON object
(ONNX `metadata_props`; OpenVINO `rt_info`) that says how to feed it and what its features are:
input size, mean / std and channel order of the input, feature dimension, SIE counts and camera
handling, flip, precision, and the provenance of the PyTorch features it reproduces
(`model.trained.feature_provenance`). A file is therefore usable without a config.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from config import ConfigError, load_config, switches
from model.trained import SideInfoCounts
from utils.errors import ToolError

logger = logging.getLogger("transreid.runtimes")

METADATA_KEY = "transreid_deploy"
METADATA_VERSION = 1
ONNX_SUFFIX, OPENVINO_SUFFIX = ".onnx", ".xml"
PYTORCH_SUFFIXES = (".pth", ".pt")
# pip package of each runtime (the import name is the same).
RUNTIME_PACKAGES = {ONNX_SUFFIX: "onnxruntime", OPENVINO_SUFFIX: "openvino"}
INPUT_NAMES = ("images", "cam_label", "view_label")
OUTPUT_NAME = "features"
LABELLED, PORTABLE = "labelled", "portable"


def require_package(name: str, purpose: str):
    """`import name`, or a ToolError with the pip command (an optional dependency)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ToolError(f"{purpose} needs the optional package {name}: pip install {name}") from None


def is_exported(path: str) -> bool:
    """Whether `path` names an exported model (by suffix) rather than PyTorch weights."""
    return os.path.splitext(path)[1].lower() in RUNTIME_PACKAGES


def check_model_suffix(path: str) -> str:
    """The suffix of a model file this project runs, or a ToolError naming the known ones."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (*PYTORCH_SUFFIXES, ONNX_SUFFIX, OPENVINO_SUFFIX):
        raise ToolError(f"'{path}' is neither PyTorch weights (.pth) nor an exported model "
                        "(.onnx for ONNX Runtime, .xml for OpenVINO); give one of those")
    return suffix


@dataclass(frozen=True)
class DeployMetadata:
    """What an exported file says about itself (the JSON of `METADATA_KEY`)."""
    form: str                     # LABELLED (SIE labels as inputs) or PORTABLE (one input)
    input_size: List[int]         # H, W: the graph's static image size
    pixel_mean: List[float]       # of the graph's input, RGB order, for pixels in [0, 1]
    pixel_std: List[float]
    channel_order: str            # 'RGB'
    feature_dim: int
    sie_cameras: int              # SIE embeddings of the model (0: none)
    sie_views: int
    camera_mode: str              # 'inputs' (labelled), or the portable CAMERA_MODES choice
    camera_pairs: List[List[int]]  # (camera, view) pairs a portable graph averages over
    normalized_output: bool
    flip: bool
    precision: str                # 'fp32', 'int8' (static QDQ) or 'bf16' (runtime hint)
    provenance: Dict[str, object]
    version: int = METADATA_VERSION

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, path: str) -> "DeployMetadata":
        try:
            fields = json.loads(text)
            return cls(**fields)
        except (ValueError, TypeError) as err:
            raise ToolError(f"'{path}' has unreadable {METADATA_KEY} metadata ({err}); export "
                            "it again with tools/export.py") from None

    @property
    def counts(self) -> SideInfoCounts:
        """The SIE labels the file takes as inputs: none for the portable form."""
        if self.form == PORTABLE:
            return SideInfoCounts(0, 0)
        return SideInfoCounts(self.sie_cameras, self.sie_views)

    def config_opts(self, path: str) -> List[str]:
        """KEY VALUE pairs that make a config feed this file as it expects."""
        return ["TEST.WEIGHT", path, "MODEL.PRETRAIN_CHOICE", "none",
                "INPUT.SIZE_TEST", str(list(self.input_size)),
                "INPUT.PIXEL_MEAN", str(list(self.pixel_mean)),
                "INPUT.PIXEL_STD", str(list(self.pixel_std)),
                "TEST.FLIP_FEATS", str(bool(self.flip)),
                # The file's precision is its own; PyTorch autocast does not apply.
                "TEST.AMP_DTYPE", "fp32"]

    def feature_provenance(self) -> Dict[str, object]:
        """The provenance of the PyTorch features, plus the precision (which changes them)."""
        return {**self.provenance, "precision": self.precision}


def _onnx_metadata(path: str) -> Optional[str]:
    onnx = require_package("onnx", "reading an ONNX file's metadata")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as err:  # a truncated or foreign file: the parser's own exception types
        raise ToolError(f"'{path}' is not a readable ONNX file ({err})") from None
    return next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)


def _openvino_metadata(model) -> Optional[str]:
    if not model.has_rt_info([METADATA_KEY]):
        return None
    return model.get_rt_info([METADATA_KEY]).astype(str)


def _missing_metadata(path: str) -> ToolError:
    return ToolError(f"'{path}' has no {METADATA_KEY} metadata: it was not exported by this "
                     "project's tools/export.py, so its input size, normalisation and camera "
                     "handling are unknown; export the .pth again with tools/export.py")


def read_metadata(path: str) -> DeployMetadata:
    """The metadata of an exported .onnx or .xml file."""
    _require_file(path)
    if check_model_suffix(path) == ONNX_SUFFIX:
        text = _onnx_metadata(path)
    else:
        ov = require_package("openvino", "running an OpenVINO model")
        text = _openvino_metadata(ov.Core().read_model(path))
    if text is None:
        raise _missing_metadata(path)
    return DeployMetadata.from_json(text, path)


def _require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise ToolError(f"model file '{path}' does not exist; check the path")


# ----------------------------------------------------------------------------- sessions
def _fixed_batch(shape: Sequence) -> Optional[int]:
    """The static batch size of an input shape, None when it is dynamic."""
    first = shape[0] if len(shape) else None
    return first if isinstance(first, int) and first > 0 else None


class OnnxRuntimeSession:
    """An ONNX Runtime CPU session; `threads` 0 lets it use every core.

    Graph optimisation is ORT_ENABLE_ALL (attention, GELU and LayerNorm fusion, and for QDQ
    int8 models the quantized MatMuls).
    """

    def __init__(self, path: str, threads: int = 0) -> None:
        ort = require_package("onnxruntime", "running an ONNX model")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.batch = _fixed_batch(self.session.get_inputs()[0].shape)

    def run(self, feed: Dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], feed)[0]


class OpenVinoSession:
    """An OpenVINO CPU model compiled with a precision hint ('bf16' where the CPU has it,
    'f32' to force fp32; None: OpenVINO's default) and a performance hint (LATENCY: one
    request uses every core, which suits one batch at a time)."""

    def __init__(self, path: str, precision_hint: Optional[str] = None,
                 performance_hint: str = "LATENCY", threads: int = 0) -> None:
        ov = require_package("openvino", "running an OpenVINO model")
        core = ov.Core()
        config = {"PERFORMANCE_HINT": performance_hint}
        if precision_hint:
            config["INFERENCE_PRECISION_HINT"] = precision_hint
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        model = core.read_model(path)
        # A tensor can carry several names (ONNX's `cam_label` and the Cast that reads it):
        # the parameter's own name is the one to feed.
        self.input_names = [port.get_node().get_friendly_name() for port in model.inputs]
        shape = model.inputs[0].get_partial_shape()
        self.batch = shape[0].get_length() if shape[0].is_static else None
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def run(self, feed: Dict[str, np.ndarray]) -> np.ndarray:
        result = self.request.infer({i: feed[name] for i, name in enumerate(self.input_names)})
        return np.asarray(result[self.compiled.output(0)])


def open_session(path: str, metadata: DeployMetadata, **options):
    """The runtime session of `path` by its suffix; OpenVINO takes the file's precision hint
    (bf16 exports are fp32 IR run with INFERENCE_PRECISION_HINT bf16)."""
    if check_model_suffix(path) == ONNX_SUFFIX:
        return OnnxRuntimeSession(path, **options)
    if metadata.precision == "bf16":
        options.setdefault("precision_hint", "bf16")
    elif metadata.precision == "fp32":
        # OpenVINO's default on a CPU with bf16 is bf16: an fp32 file stays fp32.
        options.setdefault("precision_hint", "f32")
    return OpenVinoSession(path, **options)


class ExportedModel:
    """An exported file with its session: features of normalised image batches, like the
    PyTorch model in `FeatureExtractor.features`, on the CPU."""

    def __init__(self, path: str, **session_options) -> None:
        self.path = path
        self.metadata = read_metadata(path)
        self.session = open_session(path, self.metadata, **session_options)
        self.counts = self.metadata.counts
        self.provenance = self.metadata.feature_provenance()
        logger.info("%s: %s %s model, %s form (camera handling: %s), flip %s", path,
                    type(self.session).__name__, self.metadata.precision, self.metadata.form,
                    self.metadata.camera_mode, self.metadata.flip)

    def config(self, config_file: str = "", opts: Sequence[str] = ()):
        """The config that feeds this file: `config_file` and `opts` (defaults without), with
        the file's own input settings on top."""
        return load_config(config_file, [*opts, *self.metadata.config_opts(self.path)])

    def adapt(self, cfg):
        """`cfg` with the file's input settings on top (a tool's config, for this file)."""
        adapted = cfg.clone()
        adapted.defrost()
        adapted.merge_from_list(self.metadata.config_opts(self.path))
        adapted.freeze()
        return adapted

    def check_config(self, cfg) -> None:
        """Refuse a config whose test transforms or flip would feed the file wrongly (test.py
        builds its loader from the config)."""
        meta = self.metadata
        pairs = {"INPUT.SIZE_TEST": (list(cfg.INPUT.SIZE_TEST), list(meta.input_size)),
                 "INPUT.PIXEL_MEAN": (list(cfg.INPUT.PIXEL_MEAN), list(meta.pixel_mean)),
                 "INPUT.PIXEL_STD": (list(cfg.INPUT.PIXEL_STD), list(meta.pixel_std)),
                 "TEST.FLIP_FEATS": (switches(cfg).flip_feats, meta.flip)}
        for key, (have, want) in pairs.items():
            if not np.allclose(np.asarray(have, float), np.asarray(want, float)):
                raise ConfigError(f"TEST.WEIGHT '{self.path}' was exported for {key} {want}, "
                                  f"but the config has {have}; pass {key} \"{want}\"")

    def _check_labels(self, labels: torch.Tensor, count: int, name: str) -> None:
        if count and len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < count):
            raise ToolError(f"{name} label {int(labels.max())} has no SIE embedding in "
                            f"'{self.path}': it knows {count} {name}s (ids 0..{count - 1})")

    def __call__(self, images: torch.Tensor, cam_label: torch.Tensor,
                 view_label: torch.Tensor) -> torch.Tensor:
        """N x D float32 features (CPU) of N normalised images and their labels."""
        self._check_labels(cam_label, self.counts.cameras, "camera")
        self._check_labels(view_label, self.counts.views, "view")
        arrays = {INPUT_NAMES[0]: images.detach().float().cpu().numpy(),
                  INPUT_NAMES[1]: cam_label.detach().cpu().long().numpy(),
                  INPUT_NAMES[2]: view_label.detach().cpu().long().numpy()}
        feed = {name: arrays[name] for name in self.session.input_names}
        return torch.from_numpy(run_batches(self.session, feed)).float()


def run_batches(session, feed: Dict[str, np.ndarray]) -> np.ndarray:
    """The session's output for `feed`; a graph with a static batch size gets the rows in
    chunks of that size, the last padded (by repeating its final row) and cut back."""
    rows = len(next(iter(feed.values())))
    batch = session.batch
    if batch is None or batch == rows:
        return session.run(feed)
    outputs = []
    for start in range(0, rows, batch):
        chunk = {name: array[start:start + batch] for name, array in feed.items()}
        real = len(next(iter(chunk.values())))
        padded = {name: np.concatenate([array, np.repeat(array[-1:], batch - real, 0)])
                  for name, array in chunk.items()}
        outputs.append(session.run(padded)[:real])
    return np.concatenate(outputs)
