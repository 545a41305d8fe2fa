"""OpenVINO IR (.xml + .bin): the fp32 ONNX graph converted, or NNCF's int8 of it; bf16 is the
runtime's precision hint on fp32 weights (recorded in the metadata). NNCF rather than OpenVINO
reading ONNX Runtime's QDQ file: that lost accuracy on ViT-B (docs/deploy.md)."""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Dict, Optional, Sequence

import numpy as np

from utils.errors import require_package
from utils.files import file_sha256

from ..backends.openvino_backend import weights_path
from ..metadata import METADATA_KEY, DeployMetadata


def write(onnx_path: str, work: str, metadata: DeployMetadata,
          feeds: Optional[Sequence[Dict[str, np.ndarray]]]) -> str:
    ov = require_package("openvino", "exporting to OpenVINO")
    model = ov.convert_model(onnx_path)
    if metadata.precision == "int8":
        model = int8(model, feeds)
    made = os.path.join(work, "model.xml")
    # The .bin's checksum goes into the .xml: saved once for it, then again with it.
    ov.save_model(model, made, compress_to_fp16=False)
    digest = file_sha256(weights_path(made))
    model.set_rt_info(dataclasses.replace(metadata, weights_sha256=digest).to_json(),
                      [METADATA_KEY])
    ov.save_model(model, made, compress_to_fp16=False)
    return made


def int8(model, feeds: Sequence[Dict[str, np.ndarray]]):
    """NNCF's post-training int8 quantization (transformer preset: the attention's softmax and
    the LayerNorms stay in float), calibrated on `feeds`, without SmoothQuant: fitted on a few
    crops it hurts more than it helps (docs/deploy.md)."""
    # NNCF imports torch's C++ extension builder, which warns at import that no CUDA runtime
    # is found where a CUDA toolkit is installed without a GPU; nothing is compiled here.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    nncf = require_package("nncf", "OpenVINO int8 export")
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                       AdvancedSmoothQuantParameters)
    names = [port.get_node().get_friendly_name() for port in model.inputs]
    dataset = nncf.Dataset(list(feeds), lambda feed: {name: feed[name] for name in names})
    no_smooth_quant = AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
    return nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(feeds), advanced_parameters=no_smooth_quant)
