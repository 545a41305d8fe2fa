"""OpenVINO on the CPU: the backend of `.xml` files (with their `.bin` weights)."""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import openvino as ov

from utils.errors import ToolError
from utils.files import file_sha256

from ..metadata import METADATA_KEY, DeployMetadata

# The inference precision each exported precision runs at: a bf16 export is fp32 IR run with
# the bf16 hint, and an fp32 one must say f32, since OpenVINO's default on a CPU with bf16 is
# bf16. int8 files take OpenVINO's default.
PRECISION_HINTS = {"bf16": "bf16", "fp32": "f32"}


def weights_path(path: str) -> str:
    return os.path.splitext(path)[0] + ".bin"


def read_model(core: "ov.Core", path: str):
    """The IR model of `path` and its .bin; a ToolError naming the file for anything else.
    Only the IR reader is tried: OpenVINO would otherwise hand a text or HTML file to its
    TensorFlow and other readers."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if b"<net" not in head:
        raise ToolError(f"'{path}' is not an OpenVINO IR model (no <net> element in its first "
                        "4 KiB): a text or HTML file in its place is often a failed download; "
                        "export it again with tools/export.py")
    weights = weights_path(path)
    if not os.path.isfile(weights):
        raise ToolError(f"'{path}' has no weights file '{weights}' beside it; copy the .xml and "
                        "its .bin together")
    try:
        return core.read_model(model=path, weights=weights)
    except RuntimeError as err:
        raise ToolError(f"OpenVINO cannot read '{path}' with '{weights}': {_last_line(err)}; "
                        "export it again with tools/export.py") from err


def inspect(path: str) -> Tuple[Optional[str], Callable[[], str]]:
    """(its metadata text, a function giving the SHA-256 of its .bin)."""
    model = read_model(ov.Core(), path)
    text = model.get_rt_info([METADATA_KEY]).astype(str) if model.has_rt_info([METADATA_KEY]) \
        else None
    return text, lambda: file_sha256(weights_path(path))


class Session:
    """An OpenVINO CPU model compiled with the file's precision hint and a performance hint
    (LATENCY: one request uses every core, which suits one batch at a time)."""

    def __init__(self, path: str, metadata: DeployMetadata, precision_hint: Optional[str] = None,
                 performance_hint: str = "LATENCY", threads: int = 0) -> None:
        core = ov.Core()
        config = {"PERFORMANCE_HINT": performance_hint}
        hint = precision_hint or PRECISION_HINTS.get(metadata.precision)
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        model = read_model(core, path)
        # A tensor can carry several names (ONNX's `cam_label` and the Cast that reads it):
        # the parameter's own name is the one to feed.
        self.input_names = [port.get_node().get_friendly_name() for port in model.inputs]
        shape = model.inputs[0].get_partial_shape()
        self.batch = shape[0].get_length() if shape[0].is_static else None
        self.input_size = [d.get_length() if d.is_static else None for d in shape][2:]
        self.path = path
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as err:
            raise ToolError(f"OpenVINO cannot compile '{path}': {_last_line(err)}") from err
        self.request = self.compiled.create_infer_request()

    def run(self, feed: Dict[str, np.ndarray]) -> np.ndarray:
        try:
            result = self.request.infer({i: feed[name] for i, name in enumerate(self.input_names)})
        except RuntimeError as err:
            raise ToolError(f"OpenVINO failed on '{self.path}': {_last_line(err)}") from err
        return np.asarray(result[self.compiled.output(0)])


def _last_line(err: BaseException) -> str:
    """OpenVINO's message without the C++ source locations it stacks before it."""
    lines = [line.strip() for line in str(err).splitlines()
             if line.strip() and not line.startswith("Exception from src/")]
    return lines[-1] if lines else type(err).__name__
