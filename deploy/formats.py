"""The model files this project runs, by suffix: the one place a file's format is decided.

Each exported format has one backend (a module of `deploy.backends` that runs it) and one
exporter (a module of `deploy.exporters` that writes it); PyTorch weights are run by
`processor.FeatureExtractor` itself. Modules are imported only when a file of their format is
used, so that a `.pth` user never loads ONNX Runtime or OpenVINO.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Optional, Tuple

from utils.errors import ToolError, require_package


@dataclass(frozen=True)
class ModelFormat:
    name: str                   # tools/export.py's --format, and what messages call it
    suffixes: Tuple[str, ...]   # the file's suffix; the first is the one written
    backend: Optional[str]      # module of deploy.backends; None: PyTorch runs it
    exporter: Optional[str]     # module of deploy.exporters; None: nothing exports to it
    companions: Tuple[str, ...] = ()  # files written beside it (OpenVINO's weights)
    packages: Tuple[str, ...] = ()    # pip packages its backend needs

    @property
    def exported(self) -> bool:
        return self.backend is not None

    @property
    def suffix(self) -> str:
        return self.suffixes[0]

    def files(self, path: str) -> Tuple[str, ...]:
        """`path` and the companion files a model of this format keeps beside it."""
        stem = os.path.splitext(path)[0]
        return (path, *(stem + suffix for suffix in self.companions))


PYTORCH = ModelFormat("pytorch", (".pth", ".pt"), backend=None, exporter=None)
ONNX = ModelFormat("onnx", (".onnx",), backend="onnx_backend", exporter="onnx_exporter",
                   packages=("onnx", "onnxruntime"))
OPENVINO = ModelFormat("openvino", (".xml",), backend="openvino_backend",
                       exporter="openvino_exporter", companions=(".bin",),
                       packages=("openvino",))
MODEL_FORMATS = (PYTORCH, ONNX, OPENVINO)
EXPORT_FORMATS = {fmt.name: fmt for fmt in MODEL_FORMATS if fmt.exporter}

# What an export is (deploy.export): its precision; its form, the labelled graph of
# FeatureExtractor or the portable one for trackers; how the portable form replaces the
# per-image SIE labels (deploy.graphs); the ONNX opsets torch's TorchScript exporter writes that
# the graphs (scaled dot product attention's decomposition: 14) and ONNX Runtime's quantizer run.
PRECISIONS = ("fp32", "int8", "bf16")
LABELLED, PORTABLE = "labelled", "portable"
FORMS = (LABELLED, PORTABLE)
EXACT_MEAN, FIXED, AVERAGED = "mean", "fixed", "averaged"
CAMERA_MODES = (EXACT_MEAN, FIXED, AVERAGED)
OPSETS = range(14, 21)


def resolve_format(path: str) -> ModelFormat:
    """The format of the model file `path`, by its suffix; a ToolError naming the known ones."""
    suffix = os.path.splitext(str(path))[1].lower()
    for fmt in MODEL_FORMATS:
        if suffix in fmt.suffixes:
            return fmt
    raise ToolError(f"'{path}' is neither PyTorch weights (.pth) nor an exported model "
                    "(.onnx for ONNX Runtime, .xml for OpenVINO); give one of those")


def is_exported(path: str) -> bool:
    """Whether `path` names an exported model rather than PyTorch weights (or anything else)."""
    suffix = os.path.splitext(str(path))[1].lower()
    return any(suffix in fmt.suffixes for fmt in MODEL_FORMATS if fmt.exported)


def export_packages(fmt: str, precision: str) -> Tuple[str, ...]:
    """The optional packages an export to `fmt` at `precision` needs: the ONNX exporter's
    (every format is made from its file), the format's runtime (the file is checked by it), and
    OpenVINO's int8 quantizer."""
    needed = [*ONNX.packages, *EXPORT_FORMATS[fmt].packages]
    if fmt == OPENVINO.name and precision == "int8":
        needed.append("nncf")
    return tuple(dict.fromkeys(needed))


def backend_module(fmt: ModelFormat) -> ModuleType:
    """The module of `deploy.backends` that runs files of `fmt`."""
    for package in fmt.packages:
        require_package(package, f"running an {fmt.name} model")
    return importlib.import_module(f"deploy.backends.{fmt.backend}")


def exporter_module(fmt: ModelFormat) -> ModuleType:
    """The module of `deploy.exporters` that writes files of `fmt`."""
    return importlib.import_module(f"deploy.exporters.{fmt.exporter}")
