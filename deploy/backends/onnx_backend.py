"""ONNX Runtime on the CPU: the backend of `.onnx` files."""
from __future__ import annotations

import hashlib
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from utils.errors import ToolError

from ..metadata import METADATA_KEY, OUTPUT_NAME, DeployMetadata
from .base import static_batch


def load(path: str) -> "onnx.ModelProto":
    """The ONNX model of `path` with its weights; a ToolError for a file that is not one, or
    whose weights live outside it (this project's exports keep them inside)."""
    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, ValueError, OSError) as err:  # truncated, foreign or unreadable
        raise ToolError(f"'{path}' is not a readable ONNX file ({err}); export it again with "
                        "tools/export.py") from err
    external = [t.name for t in model.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ToolError(f"'{path}' keeps weights outside the file ({external[0]!r} and "
                        f"{len(external) - 1} more); this project's exports keep them inside: "
                        "export the .pth again with tools/export.py")
    return model


def inspect(path: str) -> Tuple[Optional[str], Callable[[], str]]:
    """(its metadata text, a function giving the SHA-256 of its initializers)."""
    model = load(path)
    text = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    return text, lambda: weights_sha256(model)


def weights_sha256(model: "onnx.ModelProto") -> str:
    """SHA-256 of every initializer's name, type, shape and values, in name order: what a flipped
    byte in a weight changes, and neither the metadata nor the graph's layout does."""
    digest = hashlib.sha256()
    for tensor in sorted(model.graph.initializer, key=lambda t: t.name):
        values = onnx.numpy_helper.to_array(tensor)
        digest.update(f"{tensor.name}|{tensor.data_type}|{list(tensor.dims)}|".encode())
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


class Session:
    """An ONNX Runtime CPU session; `threads` 0 lets it use every core.

    Graph optimisation is ORT_ENABLE_ALL (attention, GELU and LayerNorm fusion, and for QDQ
    int8 models the quantized MatMuls).
    """

    def __init__(self, path: str, metadata: DeployMetadata, threads: int = 0) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(path, options,
                                                providers=["CPUExecutionProvider"])
        except RUNTIME_ERRORS as err:
            raise ToolError(f"ONNX Runtime cannot open '{path}': {first_line(err)}") from err
        self.path = path
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.batch = static_batch(self.session.get_inputs()[0].shape)
        self.input_size = self.session.get_inputs()[0].shape[2:]

    def run(self, feed: Dict[str, np.ndarray]) -> np.ndarray:
        try:
            return self.session.run([OUTPUT_NAME], feed)[0]
        except RUNTIME_ERRORS as err:
            raise ToolError(f"ONNX Runtime failed on '{self.path}': {first_line(err)}") from err


def first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(err).__name__


# ONNX Runtime's own exception types (none derives from a Python built-in but Exception).
RUNTIME_ERRORS = tuple(
    error for name in ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile",
                       "NotImplemented", "RuntimeException", "ModelLoadCanceled")
    if isinstance(error := getattr(ort.capi.onnxruntime_pybind11_state, name, None), type)) + (
    RuntimeError,)
