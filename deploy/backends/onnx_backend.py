"""ONNX Runtime on the CPU: the backend of `.onnx` files."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import onnx
import onnxruntime as ort

from utils.errors import ToolError

from ..metadata import METADATA_KEY, OUTPUT_NAME, DeployMetadata
from .base import static_batch


def metadata_text(path: str) -> Optional[str]:
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as err:  # a truncated or foreign file: the parser's own exception types
        raise ToolError(f"'{path}' is not a readable ONNX file ({err})") from err
    return next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)


class Session:
    """An ONNX Runtime CPU session; `threads` 0 lets it use every core.

    Graph optimisation is ORT_ENABLE_ALL (attention, GELU and LayerNorm fusion, and for QDQ
    int8 models the quantized MatMuls).
    """

    def __init__(self, path: str, metadata: DeployMetadata, threads: int = 0) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.batch = static_batch(self.session.get_inputs()[0].shape)

    def run(self, feed: Dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], feed)[0]
