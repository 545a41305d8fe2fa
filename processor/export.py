"""Export a trained model to ONNX or OpenVINO IR, fp32, int8 or bf16, with its metadata, and
check the file against PyTorch before it is written.

* fp32: the TorchScript-based ONNX exporter (it needs neither onnxscript nor a
  torch.export-able model), opset 17, dynamic batch (or a static one, which some runtimes run
  faster).
* int8: calibrated on a few hundred training crops taken through the test transforms. ONNX:
  ONNX Runtime's static quantization (QDQ, per-channel weights, MinMax-calibrated
  activations). OpenVINO: NNCF's post-training quantization (see `openvino_int8` for why
  not the QDQ file).
* bf16: OpenVINO only: the fp32 IR, run with the bf16 inference precision hint (recorded in
  the metadata, applied by `processor.runtimes`).

The graphs are `model.deploy_graph`'s; the metadata is `processor.runtimes.DeployMetadata`.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from config import switches
from datasets.bases import read_image
from datasets.registry import build_dataset
from datasets.transforms import build_test_transforms
from model.backbones.specs import feature_dim
from model.deploy_graph import (AVERAGED, CAMERA_MODES, EXACT_MEAN, IMAGENET_MEAN, IMAGENET_STD,
                                LabelledGraph, PortableGraph, label_pairs, with_averaged_sie)
from model.trained import TrainedModel
from utils.errors import ToolError
from utils.files import atomic_output, check_output

from .runtimes import (INPUT_NAMES, LABELLED, METADATA_KEY, ONNX_SUFFIX, OPENVINO_SUFFIX,
                       OUTPUT_NAME, PORTABLE, DeployMetadata, ExportedModel, require_package)

logger = logging.getLogger("transreid.export")

FORMATS = {"onnx": ONNX_SUFFIX, "openvino": OPENVINO_SUFFIX}
PRECISIONS = ("fp32", "int8", "bf16")
FORMS = (LABELLED, PORTABLE)
TRACE_BATCH = 2


@dataclass(frozen=True)
class ExportPlan:
    """What to write: format, precision, form and (portable form) camera handling."""
    fmt: str = "onnx"
    precision: str = "fp32"
    form: str = LABELLED
    camera_mode: str = EXACT_MEAN
    camera: int = 0
    view: int = 0
    opset: int = 17
    batch: Optional[int] = None  # static batch size; None: dynamic

    def check(self) -> None:
        if self.precision == "bf16" and self.fmt != "openvino":
            raise ToolError("--precision bf16 is OpenVINO's inference precision hint; use "
                            "--format openvino (ONNX Runtime's CPU provider has no bf16 path)")
        if self.camera_mode not in CAMERA_MODES:
            raise ToolError(f"--camera-mode {self.camera_mode}: choose one of {CAMERA_MODES}")


# ----------------------------------------------------------------------------- output paths
def output_files(output: str, fmt: str) -> List[str]:
    """The files an export writes: the .onnx, or OpenVINO's .xml and its .bin."""
    if fmt == "openvino":
        return [output, os.path.splitext(output)[0] + ".bin"]
    return [output]


def check_outputs(output: str, fmt: str, inputs: Sequence[str], overwrite: bool) -> None:
    """The project's output rule (utils.files.check_output) for every file the export writes,
    before any work: `output` must end in the format's suffix."""
    for path, suffix in zip(output_files(output, fmt), (FORMATS[fmt], ".bin")):
        check_output(path, suffix, inputs, overwrite)


# ----------------------------------------------------------------------------- graphs
def build_graph(trained: TrainedModel, plan: ExportPlan) -> Tuple[nn.Module, DeployMetadata]:
    """The graph to export and the metadata describing it."""
    cfg, counts = trained.cfg, trained.counts
    flip = switches(cfg).flip_feats
    provenance = trained.provenance
    common = dict(input_size=list(cfg.INPUT.SIZE_TEST), channel_order="RGB",
                  feature_dim=feature_dim(cfg), sie_cameras=counts.cameras,
                  sie_views=counts.views, normalized_output=False, flip=flip,
                  precision=plan.precision, provenance=provenance)
    if plan.form == LABELLED:
        graph = LabelledGraph(trained.model, flip)
        return graph, DeployMetadata(form=LABELLED, pixel_mean=list(cfg.INPUT.PIXEL_MEAN),
                                     pixel_std=list(cfg.INPUT.PIXEL_STD), camera_mode="inputs",
                                     camera_pairs=[], **common)
    pairs = label_pairs(counts.cameras, counts.views, plan.camera_mode, plan.camera, plan.view)
    model = with_averaged_sie(trained.model) if plan.camera_mode == AVERAGED else trained.model
    if plan.camera_mode == AVERAGED:
        pairs = [(0, 0)]
    graph = PortableGraph(model, flip, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, pairs)
    mode = plan.camera_mode if counts.cameras or counts.views else "no SIE"
    return graph, DeployMetadata(form=PORTABLE, pixel_mean=list(IMAGENET_MEAN),
                                 pixel_std=list(IMAGENET_STD), camera_mode=mode,
                                 camera_pairs=[list(p) for p in pairs], **common)


def graph_inputs(metadata: DeployMetadata, images: torch.Tensor, cams: torch.Tensor,
                 views: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The graph's inputs for images normalised as the model's config says: the portable form
    takes them ImageNet-normalised instead, and no labels."""
    if metadata.form == PORTABLE:
        return {INPUT_NAMES[0]: to_imagenet(images, metadata.provenance)}
    return dict(zip(INPUT_NAMES, (images, cams, views)))


def to_imagenet(images: torch.Tensor, provenance: Dict[str, object]) -> torch.Tensor:
    """Images normalised by INPUT.PIXEL_MEAN / STD, re-normalised by ImageNet's statistics."""
    def column(values) -> torch.Tensor:
        return torch.tensor(values, dtype=images.dtype).view(1, 3, 1, 1)
    pixels = images * column(provenance["INPUT.PIXEL_STD"]) + column(provenance["INPUT.PIXEL_MEAN"])
    return (pixels - column(IMAGENET_MEAN)) / column(IMAGENET_STD)


def export_onnx(graph: nn.Module, inputs: Dict[str, torch.Tensor], path: str, opset: int,
                static_batch: bool) -> None:
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


def set_onnx_metadata(path: str, metadata: DeployMetadata) -> None:
    onnx = require_package("onnx", "exporting to ONNX")
    model = onnx.load(path)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()
    onnx.checker.check_model(model)
    onnx.save(model, path)


# ----------------------------------------------------------------------------- calibration
@dataclass
class CalibrationSet:
    """Training crops through the test transforms (normalised as the model's config)."""
    images: torch.Tensor
    cams: torch.Tensor
    views: torch.Tensor
    description: str


def random_check_set(cfg, counts, size: int, seed: int = 1) -> CalibrationSet:
    """Random normalised images of INPUT.SIZE_TEST and valid SIE labels, where no images are
    at hand for the check."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, *cfg.INPUT.SIZE_TEST, generator=generator)
    cams, views = (torch.randint(max(count, 1), (size,), generator=generator)
                   for count in (counts.cameras, counts.views))
    return CalibrationSet(images, cams, views, f"{size} random images")


def calibration_set(cfg, size: int, seed: int = 0) -> CalibrationSet:
    """`size` training-split crops drawn at random (seeded), through the test transforms."""
    if size < 1:
        raise ToolError(f"--calibration-size {size}: int8 calibration needs at least one image")
    dataset = build_dataset(cfg, require_train=False)
    if not dataset.train:
        raise ToolError(f"the int8 calibration set is empty: {cfg.DATASETS.NAMES} under "
                        f"DATASETS.ROOT_DIR '{cfg.DATASETS.ROOT_DIR}' has no training images; "
                        "point DATASETS.ROOT_DIR at the training data, or export fp32")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(dataset.train), size=min(size, len(dataset.train)),
                               replace=False).tolist())
    samples = [dataset.train[i] for i in chosen]
    transform = build_test_transforms(cfg)
    images = torch.stack([transform(read_image(path)) for path, *_ in samples])
    cams = torch.tensor([cam for _, _, cam, _ in samples])
    views = torch.tensor([view for *_, view in samples])
    ids = len({pid for _, pid, _, _ in samples})
    description = (f"{len(samples)} of the {len(dataset.train)} training crops of "
                   f"{cfg.DATASETS.NAMES} under '{dataset.dataset_dir}' (seed {seed}; {ids} "
                   f"identities, {len(set(cams.tolist()))} cameras), through the test "
                   f"transforms (resize to {list(cfg.INPUT.SIZE_TEST)}, mean "
                   f"{list(cfg.INPUT.PIXEL_MEAN)}, std {list(cfg.INPUT.PIXEL_STD)}), first "
                   f"'{samples[0][0]}'")
    return CalibrationSet(images, cams, views, description)


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


def calibration_feeds(metadata: DeployMetadata, calibration: CalibrationSet, batch: int,
                      input_names: Sequence[str], static: bool) -> List[Dict[str, np.ndarray]]:
    """The calibration set in batches; a graph with a static batch size gets full batches
    (the last one filled up by repeating its rows)."""
    feeds = []
    for start in range(0, len(calibration.images), batch):
        rows = slice(start, start + batch)
        chunk = (calibration.images[rows], calibration.cams[rows], calibration.views[rows])
        if static:
            chunk = tuple(_tiled(tensor, batch) for tensor in chunk)
        inputs = graph_inputs(metadata, *chunk)
        feeds.append({name: inputs[name].numpy() for name in input_names})
    return feeds


# ----------------------------------------------------------------------------- OpenVINO
def openvino_int8(model, feeds: Sequence[Dict[str, np.ndarray]]):
    """NNCF's post-training int8 quantization of an OpenVINO model (transformer preset: the
    attention's softmax and the LayerNorms stay in float; no SmoothQuant), calibrated on
    `feeds`.

    Not OpenVINO reading ONNX Runtime's QDQ file: measured with OpenVINO 2026.4, that ran
    the tiny test model at cosine 0.989 to ONNX Runtime's run of the same file (ov's ONNX
    frontend) and ViT-B at 0.93, or not at all ("constant_fold failed", ov.convert_model);
    NNCF's ViT-B (random init) gave >= 0.994 to fp32 with 16 calibration crops.
    """
    nncf = require_package("nncf", "OpenVINO int8 export")
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                       AdvancedSmoothQuantParameters)
    names = [port.get_node().get_friendly_name() for port in model.inputs]
    dataset = nncf.Dataset(list(feeds), lambda feed: {name: feed[name] for name in names})
    # No SmoothQuant: fitted on few crops it hurts (ViT-B, 8 crops: cosine 0.836 with it,
    # 0.9993 without; 32 crops: 0.998 with it).
    no_smooth_quant = AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
    return nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(feeds), advanced_parameters=no_smooth_quant)


def save_openvino(onnx_path: str, xml_path: str, metadata: DeployMetadata,
                  feeds: Optional[Sequence[Dict[str, np.ndarray]]] = None) -> None:
    """The fp32 ONNX file as OpenVINO IR with the metadata in rt_info; int8 through NNCF on
    `feeds`. Weights stay fp32 (or int8): bf16 is the runtime's precision hint."""
    ov = require_package("openvino", "exporting to OpenVINO")
    model = ov.convert_model(onnx_path)
    if metadata.precision == "int8":
        model = openvino_int8(model, feeds)
    model.set_rt_info(metadata.to_json(), [METADATA_KEY])
    ov.save_model(model, xml_path, compress_to_fp16=False)


# ----------------------------------------------------------------------------- the check
@dataclass
class CheckResult:
    max_difference: float
    scale: float
    min_cosine: float
    mean_cosine: float

    def describe(self, rows: int) -> str:
        return (f"over {rows} images vs PyTorch: max |difference| {self.max_difference:.3g} "
                f"(largest feature value {self.scale:.3g}), cosine min {self.min_cosine:.6f}, "
                f"mean {self.mean_cosine:.6f}")


def compare(got: torch.Tensor, expected: torch.Tensor) -> CheckResult:
    cosine = torch.nn.functional.cosine_similarity(got.double(), expected.double(), dim=1)
    return CheckResult(float((got - expected).abs().max()), float(expected.abs().max()),
                       float(cosine.min()), float(cosine.mean()))


def check_against_pytorch(path: str, graph: nn.Module, metadata: DeployMetadata,
                          images: torch.Tensor, cams: torch.Tensor, views: torch.Tensor,
                          atol: float, rtol: float, min_cosine: float) -> CheckResult:
    """Run the written file on `images` and compare with the graph in PyTorch; a ToolError
    (and nothing written) when fp32 differs by more than atol + rtol x the largest value, or
    a reduced precision falls below `min_cosine`."""
    exported = ExportedModel(path)
    inputs = graph_inputs(metadata, images, cams, views)
    with torch.no_grad():
        expected = graph(*inputs.values()).float()
    got = exported(images if metadata.form == LABELLED else inputs[INPUT_NAMES[0]], cams, views)
    result = compare(got, expected)
    if metadata.precision == "fp32":
        if result.max_difference > atol + rtol * result.scale:
            raise ToolError(f"the exported model differs from PyTorch by {result.max_difference:.3g}, "
                            f"more than --atol {atol} + --rtol {rtol} x {result.scale:.3g}; "
                            "nothing written")
    elif result.min_cosine < min_cosine:
        raise ToolError(f"the {metadata.precision} model's features reach only cosine "
                        f"{result.min_cosine:.4f} to PyTorch's, below --min-cosine {min_cosine}; "
                        "nothing written")
    return result


# ----------------------------------------------------------------------------- the export
def averaged_embedding_cost(trained: TrainedModel, graph: nn.Module, metadata: DeployMetadata,
                            calibration: CalibrationSet) -> str:
    """Cosine of the one-pass averaged-embedding features to the exact camera mean."""
    exact, _ = build_graph(trained, ExportPlan(form=PORTABLE, camera_mode=EXACT_MEAN))
    inputs = graph_inputs(metadata, calibration.images, calibration.cams, calibration.views)
    with torch.no_grad():
        result = compare(graph(*inputs.values()), exact(*inputs.values()))
    return (f"averaged SIE embedding vs the exact camera mean over {calibration.description}: "
            f"cosine min {result.min_cosine:.5f}, mean {result.mean_cosine:.5f}")


def export_model(trained: TrainedModel, plan: ExportPlan, output: str,
                 check: CalibrationSet, calibration: Optional[CalibrationSet] = None,
                 atol: float = 1e-4, rtol: float = 1e-3, min_cosine: float = 0.99) -> List[str]:
    """Write `output` (and OpenVINO's .bin) per `plan`, checked against PyTorch on `check`'s
    images; `calibration` is needed for int8. Returns lines that describe what was done.
    The files are made in a temporary folder next to `output` and moved in at the end."""
    plan.check()
    graph, metadata = build_graph(trained, plan)
    report = [f"form {metadata.form}, camera handling {metadata.camera_mode}"
              + (f" over pairs {metadata.camera_pairs}" if metadata.form == PORTABLE else "")
              + f", flip {metadata.flip}, precision {plan.precision}"]
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export_") as work:
        rows = plan.batch or TRACE_BATCH
        trace = graph_inputs(metadata, *(_tiled(t, rows) for t in (check.images, check.cams,
                                                                    check.views)))
        onnx_path = os.path.join(work, "model.onnx")
        export_onnx(graph, trace, onnx_path, plan.opset, static_batch=plan.batch is not None)
        set_onnx_metadata(onnx_path, metadata)
        feeds = None
        if plan.precision == "int8":
            if calibration is None:
                raise ToolError("int8 export needs a calibration set")
            report.append(f"int8 calibration set: {calibration.description}")
            feeds = calibration_feeds(metadata, calibration, plan.batch or 32,
                                      _onnx_inputs(onnx_path), static=plan.batch is not None)
        made = onnx_path
        if plan.fmt == "openvino":
            made = os.path.join(work, "model.xml")
            save_openvino(onnx_path, made, metadata, feeds)
        elif plan.precision == "int8":
            made = os.path.join(work, "model_int8.onnx")
            quantize_int8(onnx_path, made, feeds, work)
            set_onnx_metadata(made, metadata)
        if plan.form == PORTABLE and plan.camera_mode == AVERAGED:
            report.append(averaged_embedding_cost(trained, graph, metadata, calibration or check))
        result = check_against_pytorch(made, graph, metadata, check.images, check.cams,
                                       check.views, atol, rtol, min_cosine)
        report.append(f"check of the written file {result.describe(len(check.images))}")
        _move_into_place(made, output, plan.fmt)
    return report


def _tiled(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """The first `rows` rows of `tensor`, repeated when it has fewer."""
    repeats = -(-rows // len(tensor))
    return tensor.repeat(repeats, *[1] * (tensor.dim() - 1))[:rows]


def _onnx_inputs(path: str) -> List[str]:
    onnx = require_package("onnx", "exporting to ONNX")
    return [node.name for node in onnx.load(path, load_external_data=False).graph.input]


def _move_into_place(made: str, output: str, fmt: str) -> None:
    """Atomic per file; OpenVINO's .bin goes first, so a reader of the .xml never pairs it with
    an older .bin."""
    sources = [made] if fmt == "onnx" else [os.path.splitext(made)[0] + ".bin", made]
    targets = output_files(output, fmt)[::-1] if fmt == "openvino" else [output]
    for source, target in zip(sources, targets):
        with atomic_output(target) as tmp_path:
            shutil.move(source, tmp_path)
