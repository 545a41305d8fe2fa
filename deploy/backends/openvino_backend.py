"""OpenVINO on the CPU: the backend of `.xml` files (with their `.bin` weights)."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import openvino as ov

from ..metadata import METADATA_KEY, DeployMetadata

# The inference precision each exported precision runs at: a bf16 export is fp32 IR run with
# the bf16 hint, and an fp32 one must say f32, since OpenVINO's default on a CPU with bf16 is
# bf16. int8 files take OpenVINO's default.
PRECISION_HINTS = {"bf16": "bf16", "fp32": "f32"}


def metadata_text(path: str) -> Optional[str]:
    model = ov.Core().read_model(path)
    if not model.has_rt_info([METADATA_KEY]):
        return None
    return model.get_rt_info([METADATA_KEY]).astype(str)


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
