"""Export a trained model's inference graph to ONNX and check it against PyTorch.

python tools/export_onnx.py --config_file CONFIG --weight MODEL.pth --output model.onnx [KEY VALUE ...]

Needs the optional packages `onnx` and `onnxruntime` (pip install onnx onnxruntime).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch
from torch import nn

from model.trained import SideInfoCounts, load_trained
from processor.cli import exits_on_user_error
from tools.common import (ToolError, add_overwrite_argument, add_sie_count_arguments,
                          configure_logging, load_tool_config, tool_parser)
from utils.files import atomic_output, check_output

logger = logging.getLogger("transreid.tools")

INPUT_NAMES = ["images", "cam_label", "view_label"]
OUTPUT_NAME = "features"
EXPORT_BATCH = 2
OPTIONAL_PACKAGES = ("onnx", "onnxruntime")


class InferenceGraph(nn.Module):
    """The eval-mode model with the SIE labels as plain tensor inputs (int64, one per image)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # The exporter restores the wrapper's mode on every submodule afterwards: keep it eval.
        self.eval()

    def forward(self, images: torch.Tensor, cam_label: torch.Tensor,
                view_label: torch.Tensor) -> torch.Tensor:
        return self.model(images, cam_label=cam_label, view_label=view_label)


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser(
        "Export the inference model (with or without JPM) to ONNX with a dynamic batch size. "
        f"Inputs: '{INPUT_NAMES[0]}' (N x 3 x H x W, normalised as INPUT.PIXEL_MEAN/STD, H x W = "
        f"INPUT.SIZE_TEST) and the SIE labels '{INPUT_NAMES[1]}' and '{INPUT_NAMES[2]}' (int64, "
        "N), present only when the model uses them (MODEL.SIE_CAMERA / SIE_VIEW); output "
        f"'{OUTPUT_NAME}' (N x D, as test.py's features). The file is checked with onnxruntime "
        "against PyTorch on the same random inputs (another batch size than the export's) and "
        "written only if they agree. Needs: pip install onnx onnxruntime.",
        "python tools/export_onnx.py --config_file configs/Market/vit_transreid_stride.yml "
        "--weight logs/market/transformer_120.pth --output logs/market/transreid.onnx")
    parser.add_argument("--output", default="",
                        help="ONNX file to write (default: TEST.WEIGHT with .onnx)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    add_overwrite_argument(parser)
    parser.add_argument("--check-batch", type=int, default=3,
                        help=f"batch size of the check (default 3; the export traces {EXPORT_BATCH}, "
                             "so the check also proves the batch size is dynamic)")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="allowed absolute difference to PyTorch (default 1e-4)")
    parser.add_argument("--rtol", type=float, default=1e-3,
                        help="allowed difference relative to the largest PyTorch feature value "
                             "(default 1e-3)")
    add_sie_count_arguments(parser)
    return parser


def require_optional_packages() -> Dict[str, object]:
    """onnx and onnxruntime, or a ToolError saying how to install them."""
    modules, missing = {}, []
    for name in OPTIONAL_PACKAGES:
        try:
            modules[name] = importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ToolError(f"exporting to ONNX needs the optional package(s) {', '.join(missing)}: "
                        f"pip install {' '.join(missing)}")
    return modules


def random_inputs(cfg, counts: SideInfoCounts, batch: int, seed: int) -> List[torch.Tensor]:
    """Images of INPUT.SIZE_TEST and valid SIE labels."""
    generator = torch.Generator().manual_seed(seed)
    height, width = cfg.INPUT.SIZE_TEST
    images = torch.randn(batch, 3, height, width, generator=generator)
    labels = [torch.randint(max(count, 1), (batch,), generator=generator)
              for count in (counts.cameras, counts.views)]
    return [images, *labels]


def export(graph: InferenceGraph, inputs: Sequence[torch.Tensor], path: str, opset: int) -> None:
    """TorchScript-based export: it needs neither onnxscript nor a torch.export-able model."""
    with warnings.catch_warnings():
        # The legacy exporter is chosen on purpose; its deprecation notices are noise.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript")
        # The model's image-size and patch-count checks become constants of the trace, which is
        # right: only the batch size is dynamic (the check below runs another one).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(graph, tuple(inputs), path, dynamo=False, opset_version=opset,
                          input_names=INPUT_NAMES, output_names=[OUTPUT_NAME],
                          dynamic_axes={name: {0: "batch"} for name in INPUT_NAMES + [OUTPUT_NAME]})


def compare_with_pytorch(onnxruntime, path: str, graph: InferenceGraph,
                         inputs: Sequence[torch.Tensor]) -> Tuple[float, float]:
    """(largest |onnxruntime - PyTorch|, largest |PyTorch|) over the features of `inputs`.

    The exporter drops inputs the graph does not use (the SIE labels of a model without SIE),
    so only the inputs the file declares are fed.
    """
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    declared = {node.name for node in session.get_inputs()}
    feed = {name: tensor.numpy() for name, tensor in zip(INPUT_NAMES, inputs) if name in declared}
    logger.info("ONNX inputs: %s", ", ".join(sorted(declared)))
    onnx_feats = session.run([OUTPUT_NAME], feed)[0]
    with torch.no_grad():
        torch_feats = graph(*inputs).numpy()
    if onnx_feats.shape != torch_feats.shape:
        raise ToolError(f"ONNX output {onnx_feats.shape} != PyTorch output {torch_feats.shape}")
    return float(np.abs(onnx_feats - torch_feats).max()), float(np.abs(torch_feats).max())


@exits_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_tool_config(args, ["MODEL.DEVICE", "cpu"])  # exported and checked on the CPU
    modules = require_optional_packages()
    output = check_output(args.output or os.path.splitext(cfg.TEST.WEIGHT)[0] + ".onnx", ".onnx",
                          [cfg.TEST.WEIGHT, args.config_file], args.overwrite)
    trained = load_trained(cfg, num_cameras=args.num_cameras, num_views=args.num_views)
    graph, counts = InferenceGraph(trained.model), trained.counts
    with atomic_output(output) as tmp_path:
        export(graph, random_inputs(cfg, counts, EXPORT_BATCH, seed=0), tmp_path, args.opset)
        modules["onnx"].checker.check_model(tmp_path)
        check_inputs = random_inputs(cfg, counts, args.check_batch, seed=1)
        difference, scale = compare_with_pytorch(modules["onnxruntime"], tmp_path, graph, check_inputs)
        print(f"max |ONNX - PyTorch| = {difference:.3g} over {args.check_batch} images "
              f"(largest feature value {scale:.3g})")
        if difference > args.atol + args.rtol * scale:
            raise ToolError(f"the ONNX model differs from PyTorch by {difference:.3g}, more than "
                            f"--atol {args.atol} + --rtol {args.rtol} x {scale:.3g}; nothing written")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    configure_logging()
    sys.exit(main())
