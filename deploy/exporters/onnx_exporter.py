"""ONNX: the traced graph itself (fp32), or ONNX Runtime's static QDQ int8 of it."""
from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from utils.errors import require_package

from ..backends.onnx_backend import weights_sha256
from ..metadata import METADATA_KEY, OUTPUT_NAME, DeployMetadata


def trace(graph: nn.Module, inputs: Dict[str, torch.Tensor], path: str, opset: int,
          static_batch: bool) -> None:
    """The graph as fp32 ONNX, by the TorchScript-based exporter (it needs neither onnxscript
    nor a torch.export-able model); every format is made from this file."""
    names = list(inputs)
    with warnings.catch_warnings():
        # The legacy exporter is chosen on purpose; its deprecation notices are noise.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript")
        # The model's image-size and patch-count checks become constants of the trace, which is
        # right: only the batch size is dynamic.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        dynamic = None if static_batch else {name: {0: "batch"} for name in names + [OUTPUT_NAME]}
        torch.onnx.export(graph, tuple(inputs.values()), path, dynamo=False,
                          opset_version=opset, input_names=names, output_names=[OUTPUT_NAME],
                          dynamic_axes=dynamic)


def set_metadata(path: str, metadata: DeployMetadata) -> None:
    """The metadata as the file's one `metadata_props` entry, with its weights' SHA-256."""
    onnx = require_package("onnx", "exporting to ONNX")
    model = onnx.load(path)
    metadata = dataclasses.replace(metadata, weights_sha256=weights_sha256(model))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()
    onnx.checker.check_model(model)
    onnx.save(model, path)


def input_names(path: str) -> List[str]:
    onnx = require_package("onnx", "exporting to ONNX")
    return [node.name for node in onnx.load(path, load_external_data=False).graph.input]


def write(onnx_path: str, work: str, metadata: DeployMetadata,
          feeds: Optional[Sequence[Dict[str, np.ndarray]]]) -> str:
    if metadata.precision != "int8":
        return onnx_path
    made = os.path.join(work, "model_int8.onnx")
    quantize_int8(onnx_path, made, feeds, work)
    set_metadata(made, metadata)
    return made


def quantize_int8(fp32_path: str, int8_path: str, feeds: Sequence[Dict[str, np.ndarray]],
                  work_dir: str) -> None:
    """Static QDQ int8: per-channel symmetric weights, asymmetric uint8 activations calibrated
    (MinMax) on `feeds`. The model is pre-processed first (shape inference and ONNX Runtime's
    graph optimisation), as ONNX Runtime's quantization guide asks."""
    require_package("onnxruntime", "int8 quantization")
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    prepared = os.path.join(work_dir, "prepared.onnx")
    quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
    quantize_static(prepared, int8_path, Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    op_types_to_quantize=["MatMul", "Gemm", "Conv"],
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
