"""Export a trained model to ONNX or OpenVINO IR, fp32, int8 or bf16, with its metadata, and
check the file against PyTorch before it is written.

The graph (`deploy.graphs`) is traced once to fp32 ONNX, opset 17 by default, with a dynamic
batch (or a static one, which some runtimes run faster); the format's exporter
(`deploy.exporters`) turns it into the file at the plan's precision. int8 is calibrated on
training crops through the test transforms (`deploy.calibration`); bf16 is OpenVINO's precision
hint on fp32 weights, recorded in the metadata and applied by its backend.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from config import switches
from model.backbones.specs import eval_feature_dim
from model.trained import TrainedModel
from utils.errors import ToolError
from utils.files import DiskFullError, check_output, fsync_path, is_disk_full

from .backends import ExportedModel, fill_rows
from .calibration import CalibrationSet, calibration_feeds
from .formats import (AVERAGED, CAMERA_MODES, EXACT_MEAN, EXPORT_FORMATS, FIXED, FORMS, LABELLED,
                      OPSETS, PORTABLE, PRECISIONS, ModelFormat, exporter_module)
from .graphs import (IMAGENET_MEAN, IMAGENET_STD, LabelledGraph, PortableGraph, graph_inputs,
                     label_pairs, with_averaged_sie)
from .metadata import INPUT_NAMES, DeployMetadata

logger = logging.getLogger("transreid.export")

# How far the portable features may move from the camera-exact ones, relative to the distance
# between two crops' features, before the export warns (`relative_shift`).
LARGE_PORTABLE_SHIFT = 0.2
TRACE_BATCH = 2
CALIBRATION_BATCH = 32


@dataclass(frozen=True)
class ExportPlan:
    """What to write: format, precision, form and (portable form) camera handling; checked
    when made, before any work."""
    fmt: str = "onnx"
    precision: str = "fp32"
    form: str = LABELLED
    camera_mode: str = EXACT_MEAN
    camera: Optional[int] = None
    view: Optional[int] = None
    opset: int = 17
    batch: Optional[int] = None  # static batch size; None: dynamic

    def __post_init__(self) -> None:
        for option, value, choices in (("--format", self.fmt, EXPORT_FORMATS),
                                       ("--precision", self.precision, PRECISIONS),
                                       ("--form", self.form, FORMS),
                                       ("--camera-mode", self.camera_mode, CAMERA_MODES)):
            if value not in choices:
                raise ToolError(f"{option} {value}: choose one of {', '.join(choices)}")
        if self.precision == "bf16" and self.fmt != "openvino":
            raise ToolError("--precision bf16 is OpenVINO's inference precision hint; use "
                            "--format openvino (ONNX Runtime's CPU provider has no bf16 path)")
        if self.opset not in OPSETS:
            raise ToolError(f"--opset {self.opset}: this exporter writes opsets "
                            f"{OPSETS.start} to {OPSETS.stop - 1}; leave it out for 17")
        fixed = self.form == PORTABLE and self.camera_mode == FIXED
        if fixed != (self.camera is not None or self.view is not None):
            raise ToolError("--camera / --view go with --form portable --camera-mode fixed, "
                            "which needs at least one of them" if fixed else
                            "--camera / --view are for --form portable --camera-mode fixed; "
                            "leave them out")

    @property
    def format(self) -> ModelFormat:
        return EXPORT_FORMATS[self.fmt]


def check_outputs(output: str, fmt: str, inputs: Sequence[str], overwrite: bool) -> None:
    """The project's output rule (utils.files.check_output) for every file the export writes,
    before any work: `output` must end in the format's suffix."""
    model_format = EXPORT_FORMATS[fmt]
    for path, suffix in zip(model_format.files(output),
                            (model_format.suffix, *model_format.companions)):
        check_output(path, suffix, inputs, overwrite)


# ----------------------------------------------------------------------------- graphs
def build_graph(trained: TrainedModel, plan: ExportPlan) -> Tuple[nn.Module, DeployMetadata]:
    """The graph to export and the metadata describing it."""
    cfg, counts = trained.cfg, trained.counts
    flip = switches(cfg).flip_feats
    common = dict(input_size=list(cfg.INPUT.SIZE_TEST), channel_order="RGB",
                  feature_dim=eval_feature_dim(cfg), sie_cameras=counts.cameras,
                  sie_views=counts.views, normalized_output=False, flip=flip,
                  precision=plan.precision, provenance=trained.provenance)
    if plan.form == LABELLED:
        graph = LabelledGraph(trained.model, flip)
        return graph, DeployMetadata(form=LABELLED, pixel_mean=list(cfg.INPUT.PIXEL_MEAN),
                                     pixel_std=list(cfg.INPUT.PIXEL_STD), camera_mode="inputs",
                                     camera_pairs=[], **common)
    pairs = label_pairs(counts.cameras, counts.views, plan.camera_mode, plan.camera or 0,
                        plan.view or 0)
    model = trained.model
    if plan.camera_mode == AVERAGED:
        model, pairs = with_averaged_sie(trained.model), [(0, 0)]
    graph = PortableGraph(model, flip, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, pairs)
    mode = plan.camera_mode if counts.cameras or counts.views else "no SIE"
    return graph, DeployMetadata(form=PORTABLE, pixel_mean=list(IMAGENET_MEAN),
                                 pixel_std=list(IMAGENET_STD), camera_mode=mode,
                                 camera_pairs=[list(p) for p in pairs], **common)


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


@dataclass(frozen=True)
class Tolerance:
    atol: float = 1e-4        # fp32: allowed absolute difference to PyTorch
    rtol: float = 1e-3        # fp32: allowed difference relative to the largest feature value
    min_cosine: float = 0.99  # reduced precision: lowest allowed cosine to PyTorch


def check_against_pytorch(path: str, graph: nn.Module, metadata: DeployMetadata,
                          check: CalibrationSet, tolerance: Tolerance) -> CheckResult:
    """Run the written file on `check`'s images and compare with the graph in PyTorch; a
    ToolError (and nothing written) when fp32 differs by more than atol + rtol x the largest
    value, or a reduced precision falls below min_cosine."""
    exported = ExportedModel(path)
    inputs = graph_inputs(metadata, check.images, check.cams, check.views)
    with torch.no_grad():
        expected = graph(*inputs.values()).float()
    images = check.images if metadata.form == LABELLED else inputs[INPUT_NAMES[0]]
    got = exported.features(images, check.cams, check.views)
    if got.shape[1] != metadata.feature_dim:
        raise ToolError(f"the exported model gives {got.shape[1]} values per image, its "
                        f"metadata says {metadata.feature_dim}; nothing written")
    result = compare(got, expected)
    if metadata.precision == "fp32":
        if result.max_difference > tolerance.atol + tolerance.rtol * result.scale:
            raise ToolError(f"the exported model differs from PyTorch by {result.max_difference:.3g}, "
                            f"more than --atol {tolerance.atol} + --rtol {tolerance.rtol} x "
                            f"{result.scale:.3g}; nothing written")
    elif result.min_cosine < tolerance.min_cosine:
        raise ToolError(f"the {metadata.precision} model's features reach only cosine "
                        f"{result.min_cosine:.4f} to PyTorch's, below --min-cosine "
                        f"{tolerance.min_cosine}; nothing written")
    return result


def portable_costs(trained: TrainedModel, graph: nn.Module, metadata: DeployMetadata,
                   plan: ExportPlan, crops: CalibrationSet) -> List[str]:
    """What the portable form costs a model with SIE, on `crops`: how far its features move from
    the camera-exact ones (each image under its own camera and view label, which a tracker
    cannot give), against how far apart two crops' features are; and for 'averaged' the cosine
    to the exact mean over cameras."""
    if plan.form != PORTABLE or not (trained.counts.cameras or trained.counts.views):
        return []
    inputs = graph_inputs(metadata, crops.images, crops.cams, crops.views)
    exact = LabelledGraph(trained.model, metadata.flip)
    with torch.no_grad():
        got = graph(*inputs.values())
        own = exact(crops.images, crops.cams, crops.views)
    shift = relative_shift(got, own)
    lines = [f"portable features ({metadata.camera_mode}) vs each image's own camera over "
             f"{crops.description}: cosine mean {compare(got, own).mean_cosine:.5f}; they move "
             f"{shift:.2f}x the mean distance between two crops' features"]
    if shift > LARGE_PORTABLE_SHIFT:
        logger.warning("without camera labels the features move %.2fx the distance between two "
                       "crops: expect a lower mAP than the labelled export; docs/deploy.md, "
                       "'Models for trackers'", shift)
    if plan.camera_mode == AVERAGED:
        mean_graph, _ = build_graph(trained, ExportPlan(form=PORTABLE, camera_mode=EXACT_MEAN))
        with torch.no_grad():
            result = compare(got, mean_graph(*inputs.values()))
        lines.append(f"averaged SIE embedding vs the exact camera mean over {crops.description}: "
                     f"cosine min {result.min_cosine:.5f}, mean {result.mean_cosine:.5f}")
    return lines


def relative_shift(moved: torch.Tensor, own: torch.Tensor) -> float:
    """Mean distance of each unit feature to its camera-exact one, over the mean distance
    between the camera-exact unit features of two different crops: what decides whether a
    ranking survives (features of one model can all lie at cosine 0.999 to each other)."""
    moved = torch.nn.functional.normalize(moved.double(), dim=1)
    own = torch.nn.functional.normalize(own.double(), dim=1)
    pairs = torch.cdist(own, own)
    spread = pairs.sum() / max(len(own) * (len(own) - 1), 1)
    return float((moved - own).norm(dim=1).mean() / spread.clamp_min(1e-12))


# ----------------------------------------------------------------------------- the export
def export_model(trained: TrainedModel, plan: ExportPlan, output: str,
                 check: CalibrationSet, calibration: Optional[CalibrationSet] = None,
                 tolerance: Tolerance = Tolerance()) -> List[str]:
    """Write `output` (and the format's companion files) per `plan`, checked against PyTorch
    on `check`'s images; `calibration` is needed for int8. Returns lines that describe what
    was done. The files are made in a temporary folder next to `output` and moved in at the
    end."""
    if plan.precision == "int8" and calibration is None:
        raise ToolError("int8 export needs a calibration set")
    graph, metadata = build_graph(trained, plan)
    report = [f"form {metadata.form}, camera handling {metadata.camera_mode}"
              + (f" over pairs {metadata.camera_pairs}" if metadata.form == PORTABLE else "")
              + f", flip {metadata.flip}, precision {plan.precision}, "
              f"{metadata.feature_dim} values per image"]
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    remove_stale_work_folders(folder)
    check_free_space(folder, trained.model, output)
    with tempfile.TemporaryDirectory(dir=folder, prefix=f"{WORK_PREFIX}{os.getpid()}_") as work:
        try:
            made = _write(graph, metadata, plan, work, check, calibration)
        except (OSError, RuntimeError) as err:
            if is_disk_full(err) or _no_room_left(folder):
                raise DiskFullError(output, "nothing was written: free space there or export "
                                    "to another folder") from err
            raise
        if calibration is not None:
            report.append(f"int8 calibration set: {calibration.description}")
        report += portable_costs(trained, graph, metadata, plan, calibration or check)
        result = check_against_pytorch(made, graph, metadata, check, tolerance)
        report.append(f"check of the written file {result.describe(len(check.images))}")
        _move_into_place(made, output, plan.format)
    return report


def _write(graph: nn.Module, metadata: DeployMetadata, plan: ExportPlan, work: str,
           check: CalibrationSet, calibration: Optional[CalibrationSet]) -> str:
    """The traced fp32 ONNX file, made into the plan's format and precision in `work`."""
    rows = plan.batch or TRACE_BATCH
    trace = graph_inputs(metadata, *(fill_rows(t, rows) for t in (check.images, check.cams,
                                                                   check.views)))
    onnx_exporter = exporter_module(EXPORT_FORMATS["onnx"])
    onnx_path = os.path.join(work, "model.onnx")
    onnx_exporter.trace(graph, trace, onnx_path, plan.opset, static_batch=plan.batch is not None)
    onnx_exporter.set_metadata(onnx_path, metadata)
    feeds = None
    if plan.precision == "int8":
        feeds = calibration_feeds(metadata, calibration, plan.batch or CALIBRATION_BATCH,
                                  onnx_exporter.input_names(onnx_path),
                                  static=plan.batch is not None)
    return exporter_module(plan.format).write(onnx_path, work, metadata, feeds)


def _move_into_place(made: str, output: str, fmt: ModelFormat) -> None:
    """Each file renamed from the work folder (beside `output`, so one rename each, atomic),
    synced first; companions (OpenVINO's .bin) go first, so a reader of the model file never
    pairs it with an older companion."""
    for source, target in reversed(list(zip(fmt.files(made), fmt.files(output)))):
        fsync_path(source)
        os.replace(source, target)


# Work folders of exports: .export_<pid>_<random>. A folder whose process is gone was left by
# an export that was killed (SIGTERM, SIGKILL) and is removed by the next export there.
WORK_PREFIX = ".export_"
_WORK_FOLDER = re.compile(re.escape(WORK_PREFIX) + r"(\d+)_[a-z0-9_]{8}")


def remove_stale_work_folders(folder: str) -> List[str]:
    removed = []
    for name in sorted(os.listdir(folder)):
        match = _WORK_FOLDER.fullmatch(name)
        path = os.path.join(folder, name)
        if match and os.path.isdir(path) and not os.path.islink(path) \
                and not _process_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            logger.info("removed '%s', left by an export that was stopped", path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


# Bytes an export needs beside the output per byte of fp32 weights: the traced ONNX file, the
# final file, and int8's pre-processed copy.
SPACE_PER_WEIGHT_BYTE = 3


def check_free_space(folder: str, model: nn.Module, output: str) -> None:
    """Refuse before any work when the folder cannot hold the export's files."""
    needed = SPACE_PER_WEIGHT_BYTE * sum(p.numel() * 4 for p in model.parameters())
    if shutil.disk_usage(folder).free < needed:
        raise DiskFullError(output, f"an export of this model needs about {needed / 2**20:.0f} "
                            "MiB there; free space or export to another folder")


def _no_room_left(folder: str) -> bool:
    """Whether the folder's disk is (nearly) full: what an OpenVINO write error that carries no
    errno ('basic_ios::clear') means after a failed save."""
    return shutil.disk_usage(folder).free < 1 << 20
