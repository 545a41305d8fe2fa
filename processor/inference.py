"""Features of images with a trained model or an exported file: the one inference path.

`FeatureExtractor` is the public Python API (as torchreid's): build it from a config file and
weights, or from a config and a model, and call it on a list of image paths, PIL images (any
mode) or uint8 arrays (H x W gray, H x W x 3 RGB or BGR, H x W x 4 RGBA or BGRA), each made RGB
as an image file is. Training's evaluation, test.py and every tool extract through it.

Side information (SIE) for images of unknown camera or view
-----------------------------------------------------------
A model trained with MODEL.SIE_CAMERA / SIE_VIEW adds a learned embedding of the image's camera
(view) to every token, so it needs a label for each image. Every label is a real, learned camera:
camera 0 is not "no camera". Per image, the choice (`camera=` / `view=`, the tools' `--camera` /
`--view`) is:

* ``mean`` (the neutral choice): the feature is averaged over every camera (view) the model knows,
  so that no single camera is favoured. It costs one forward pass per camera (view) and is
  exact whatever the model does with the embedding.
* ``auto`` (default): the label the image carries (a Market-style name ``<pid>_c<cam>...`` gives
  the camera, a list file's columns give camera and view), ``mean`` for images without one.
* an integer: that label for every image (one forward pass).

Models without SIE ignore the labels, and every choice costs a single pass.
"""
from __future__ import annotations

import logging
import operator
import os
from collections.abc import Iterable
from typing import Collection, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from config import load_config, switches
from config.choices import AUTO, MEAN  # noqa: F401  (MEAN: the tools import it from here)
from datasets.bases import ImageDataset, to_rgb
from datasets.image_list import ImageRecord
from datasets.make_dataloader import val_collate_fn
from datasets.transforms import build_test_transforms
from deploy.backends import Backend, ExportedModel
from deploy.formats import is_exported, resolve_format
from deploy.metadata import fit_config, given_keys
from model.backbones.specs import eval_feature_dim
from model.trained import (SideInfoCounts, TrainedModel, check_sie_label, flip_mean, load_trained,
                           sie_counts_of)
from .compiled import CompiledForward, compile_enabled
from utils.device import loader_workers, select_device
from utils.errors import ToolError
from utils.precision import autocast, inference_dtype
from utils.progress import Progress


logger = logging.getLogger("transreid.inference")

LabelChoice = Union[str, int]
"""'mean', 'auto' or a fixed label id."""
ImageInput = Union[str, "os.PathLike[str]", Image.Image, np.ndarray]
LabelsInput = Union[Sequence[Optional[int]], np.ndarray, torch.Tensor]
"""Per-image camera or view ids, None where unknown."""
# Labels of images whose own label is unknown; never fed to the model (see `label_options`).
UNKNOWN = -1


class TorchBackend:
    """A PyTorch model as `FeatureExtractor` runs it: eval mode on one device, TEST.FLIP_FEATS,
    TEST.AMP_DTYPE autocast and MODEL.COMPILE (`compile`: None reads it). `model` itself stays
    uncompiled."""

    def __init__(self, cfg, model: nn.Module, device: Optional[torch.device] = None,
                 counts: Optional[SideInfoCounts] = None, compile: Optional[bool] = None,
                 provenance: Optional[Dict[str, object]] = None) -> None:
        self.device = device or select_device(cfg.MODEL.DEVICE)
        self.model = model.to(self.device)
        self.forward = CompiledForward(
            self.model, compile_enabled(cfg, self.device) if compile is None else compile,
            "evaluation")
        self.counts = counts or sie_counts_of(model)
        self.cfg = cfg
        self.provenance = provenance
        self.flip = switches(cfg).flip_feats
        self.amp_dtype = inference_dtype(cfg.TEST.AMP_DTYPE, self.device)
        if self.amp_dtype is not None:
            logger.info("Features under %s autocast (TEST.AMP_DTYPE %s)", self.amp_dtype,
                        cfg.TEST.AMP_DTYPE)
        if self.flip:
            logger.info("Features are the mean of each image's and its mirror image's "
                        "(TEST.FLIP_FEATS)")

    @property
    def feature_dim(self) -> int:
        """The width of one image's feature, from the config (asked only for an empty batch)."""
        return eval_feature_dim(self.cfg)

    @torch.no_grad()
    def features(self, images: torch.Tensor, cam_label: torch.Tensor,
                 view_label: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        images = images.to(self.device, non_blocking=True)
        labels = dict(cam_label=cam_label.to(self.device), view_label=view_label.to(self.device))
        with autocast(self.device, self.amp_dtype):
            return self.forward.run(lambda forward: flip_mean(forward, images, self.flip, **labels))


class FeatureExtractor:
    """Re-ID features (N x D float32 tensors) of images, batched, through one backend: a
    PyTorch model (`TorchBackend`) or an exported file (`deploy.backends.ExportedModel`).

    >>> extractor = FeatureExtractor.from_files("configs/Market/vit_transreid_stride.yml",
    ...                                         "logs/market/transformer_120.pth")
    >>> feats = extractor(["a.jpg", pil_image, bgr_frame_crop], bgr=True, normalize=True)

    `counts` are the cameras and views the model has SIE embeddings for (0: none); a model
    built by `from_files` knows them from its checkpoint. `compile` (default: MODEL.COMPILE)
    runs the forward through torch.compile.
    """

    def __init__(self, cfg, model: nn.Module, device: Optional[torch.device] = None,
                 counts: Optional[SideInfoCounts] = None, camera: LabelChoice = AUTO,
                 view: LabelChoice = AUTO, compile: Optional[bool] = None) -> None:
        self._attach(cfg, TorchBackend(cfg, model, device, counts, compile), camera, view)

    def _attach(self, cfg, backend: Backend, camera: LabelChoice, view: LabelChoice) -> None:
        self.cfg, self.backend = cfg, backend
        self.device, self.counts = backend.device, backend.counts
        self.camera, self.view = camera, view
        self.transform = build_test_transforms(cfg)
        self.trained: Optional[TrainedModel] = None

    @classmethod
    def from_backend(cls, cfg, backend: Backend, camera: LabelChoice = AUTO,
                     view: LabelChoice = AUTO) -> "FeatureExtractor":
        """An extractor of `backend`, fed images transformed as `cfg` says."""
        extractor = cls.__new__(cls)
        extractor._attach(cfg, backend, camera, view)
        return extractor

    @classmethod
    def from_files(cls, config_file: str = "", weight: str = "", opts: Sequence[str] = (),
                   device: Optional[torch.device] = None, num_cameras: Optional[int] = None,
                   num_views: Optional[int] = None, **kwargs) -> "FeatureExtractor":
        """From a config file, `KEY VALUE` overrides and a model file: `.pth` weights (the
        model is sized from them; `num_cameras` / `num_views` split a joint SIE table), or an
        exported `.onnx` / `.xml`, which needs no config: its metadata sets the input size,
        normalisation and flip (`from_files(weight="model.onnx")`, or the file first)."""
        if not weight and is_exported(config_file):
            config_file, weight = "", config_file
        cfg = load_config(config_file, [*opts, "TEST.WEIGHT", weight,
                                        "MODEL.PRETRAIN_CHOICE", "none"])
        return cls.from_config(cfg, chosen=given_keys(config_file, opts), device=device,
                               num_cameras=num_cameras, num_views=num_views, **kwargs)

    @classmethod
    def from_config(cls, cfg, dataset=None, chosen: Optional[Collection[str]] = None,
                    device: Optional[torch.device] = None, num_cameras: Optional[int] = None,
                    num_views: Optional[int] = None, **kwargs) -> "FeatureExtractor":
        """The extractor of TEST.WEIGHT, run as its format says (`deploy.formats`): PyTorch
        weights built by `cfg` (checked for `dataset`, when one is evaluated), or an exported
        file under `cfg` fitted to it (`deploy.metadata.fit_config`; `chosen`: the keys the
        user set, None for all). Its `cfg` is then the one to build loaders from."""
        weight = cfg.TEST.WEIGHT
        if not resolve_format(weight).exported:
            trained = load_trained(cfg, dataset, num_cameras=num_cameras, num_views=num_views)
            return cls.from_trained(cfg, trained, device, **kwargs)
        exported = ExportedModel(weight)
        if dataset is not None:
            for name, found in (("camera", dataset.num_cameras), ("view", dataset.num_views)):
                exported.counts.check(name, found - 1, f"{dataset.display_name}'s {name} "
                                      f"{found - 1}", "test it on the dataset it was trained "
                                      "on, or export the portable form")
        kwargs.pop("compile", None)  # nothing of PyTorch's runs
        return cls.from_backend(fit_config(exported.metadata, weight, cfg=cfg, chosen=chosen),
                                exported, **kwargs)

    @classmethod
    def from_trained(cls, cfg, trained: TrainedModel, device: Optional[torch.device] = None,
                     **kwargs) -> "FeatureExtractor":
        extractor = cls(cfg, trained.model, device, trained.counts, **kwargs)
        extractor.backend.provenance = trained.provenance
        extractor.trained = trained
        return extractor

    @property
    def provenance(self) -> Optional[Dict[str, object]]:
        """What the features depend on (`model.trained.feature_provenance`; for an exported
        file the one it records, with its precision); None for a model built by hand."""
        return self.backend.provenance

    # ------------------------------------------------------------------ public calls
    def __call__(self, images: Sequence[ImageInput], cameras: Optional[LabelsInput] = None,
                 views: Optional[LabelsInput] = None, bgr: bool = False,
                 normalize: bool = False) -> torch.Tensor:
        """Features (N x D float32, on the CPU, in input order) of a list of images: paths, PIL
        images of any mode, or uint8 arrays of H x W (gray), H x W x 3 (RGB; `bgr=True` for
        OpenCV frames) or H x W x 4 (RGBA, or BGRA with `bgr`), all made RGB as image files
        are (`datasets.bases.to_rgb`). `cameras` / `views` give known labels, one per image
        (None where unknown), as a list, tuple, numpy array or tensor. L2-normalised rows
        with `normalize`. An empty list gives a 0 x D tensor."""
        images = _image_list(images)
        sources = [_as_source(image, bgr, i) for i, image in enumerate(images)]
        known = zip(_labels(cameras, len(sources), "cameras"), _labels(views, len(sources), "views"))
        records = [ImageRecord(source, None, cam, view) for source, (cam, view) in zip(sources, known)]
        feats = self.extract_records(records, show_progress=False)
        return torch.nn.functional.normalize(feats, dim=1) if normalize else feats

    def extract_records(self, records: Sequence[ImageRecord], desc: str = "features",
                        show_progress: bool = True) -> torch.Tensor:
        """Features (N x D, on the CPU, in `records` order), SIE labels per `camera` / `view`."""
        if not records:  # the backend's width, without running it
            return torch.empty(0, self.backend.feature_dim, dtype=torch.float32)
        cam_options = label_options(records, self.camera, self.counts.cameras, "camera")
        view_options = label_options(records, self.view, self.counts.views, "view")
        samples = [(r.path, UNKNOWN, UNKNOWN, UNKNOWN) for r in records]
        feats, start = [], 0
        for images, *_ in Progress(self._loader(samples), None, desc, logger,
                                   enabled=show_progress):
            rows = slice(start, start + len(images))
            feats.append(self.averaged_features(images, cam_options[rows], view_options[rows]).cpu())
            start = rows.stop
        return torch.cat(feats)

    @torch.no_grad()
    def extract_loader(self, loader, desc: str = "features",
                       show_progress: bool = True) -> Tuple[torch.Tensor, List, List, List[str]]:
        """(features on the device, pids, camids, paths) of every image of a val-style loader
        (`make_val_loader`), each with its own camera and view label."""
        feats, pids, camids, paths = [], [], [], []
        for img, pid, camid, cam_label, view_label, img_paths in Progress(
                loader, None, desc, logger, enabled=show_progress):
            feats.append(self.features(img, cam_label, view_label))
            pids.extend(pid)
            camids.extend(camid)
            paths.extend(img_paths)
        return torch.cat(feats), pids, camids, paths

    # ------------------------------------------------------------------ the forward pass
    def features(self, images: torch.Tensor, cam_label: torch.Tensor,
                 view_label: torch.Tensor) -> torch.Tensor:
        """The one place the model runs: eval-mode float32 features of a batch of transformed
        images with one camera and view label each."""
        return self.backend.features(images, cam_label, view_label)

    def averaged_features(self, images: torch.Tensor, cam_options: Sequence[Sequence[int]],
                          view_options: Sequence[Sequence[int]]) -> torch.Tensor:
        """Feature of each image averaged over its (camera, view) label pairs: pass j runs the
        images that have a j-th pair, so a batch of one pair each costs one plain pass."""
        pairs = [[(c, v) for c in cams for v in views] for cams, views in zip(cam_options, view_options)]
        passes = max(map(len, pairs))
        if passes == 1:
            cams, views = zip(*(p[0] for p in pairs))
            return self.features(images, torch.tensor(cams), torch.tensor(views))
        total, counts = None, torch.zeros(len(images), 1, device=self.device)
        for j in range(passes):
            rows = [i for i, p in enumerate(pairs) if len(p) > j]
            cams, views = zip(*(pairs[i][j] for i in rows))
            feats = self.features(images[rows], torch.tensor(cams), torch.tensor(views))
            index = torch.tensor(rows, device=self.device)
            total = feats.new_zeros(len(images), feats.shape[1]) if total is None else total
            total.index_add_(0, index, feats)
            counts.index_add_(0, index, torch.ones(len(rows), 1, device=self.device))
        return total / counts

    def _loader(self, samples) -> DataLoader:
        in_memory = any(not isinstance(sample[0], str) for sample in samples)
        dataset = ImageDataset(samples, self.transform, self.cfg.DATALOADER.READ_RETRIES)
        # Workers would only copy images that are already in memory.
        workers = 0 if in_memory else loader_workers(self.cfg.DATALOADER.NUM_WORKERS)
        return DataLoader(dataset, batch_size=self.cfg.TEST.IMS_PER_BATCH, shuffle=False,
                          num_workers=workers, collate_fn=val_collate_fn,
                          pin_memory=self.device.type == "cuda")


def _image_list(images: Sequence[ImageInput]) -> List[ImageInput]:
    """`images` as a list; one image where the list belongs (a path string would otherwise
    be read character by character) is refused."""
    if isinstance(images, (str, bytes, os.PathLike, Image.Image, np.ndarray, torch.Tensor)):
        shape = getattr(images, "shape", None)
        batch = (" (list(array) splits an N x H x W x C batch)"
                 if isinstance(images, np.ndarray) and images.ndim == 4 else "")
        raise ToolError(f"images is one {type(images).__name__}"
                        f"{'' if shape is None else f' of shape {tuple(shape)}'}, not a list of "
                        f"images: pass a list, e.g. extractor([image]){batch}")
    try:
        return list(images)
    except TypeError:
        raise ToolError(f"images is of type {type(images).__name__}; pass a list of paths, PIL "
                        "images or uint8 arrays") from None


# Channels of a uint8 array -> its PIL mode (Image.fromarray's); `bgr` reverses BGR(A)'s first three.
_ARRAY_CHANNELS = {1: "L", 3: "RGB", 4: "RGBA"}
_ARRAY_KINDS = ("a path, a PIL image or an H x W (gray), H x W x 3 (RGB, BGR with bgr=True) or "
                "H x W x 4 (RGBA) uint8 array")


def _as_source(image: ImageInput, bgr: bool, index: int) -> Union[str, Image.Image]:
    """A path, or a PIL RGB image made as `read_image` makes a file's."""
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if isinstance(image, str):
        return image
    if isinstance(image, np.ndarray):
        image = _array_image(image, bgr, index)
    if not isinstance(image, Image.Image):
        raise ToolError(f"image {index} is a {type(image).__name__}; give {_ARRAY_KINDS}")
    if 0 in image.size:
        raise ToolError(f"image {index} is empty ({image.width} x {image.height} pixels); a crop "
                        "needs a width and a height of at least 1 pixel")
    if image.mode == "RGB":
        return image  # as to_rgb would make it, without a copy of every image of a long list
    try:
        return to_rgb(image)
    except (ValueError, OSError) as err:  # a mode PIL cannot convert; a damaged lazy file
        raise ToolError(f"image {index} (PIL mode {image.mode}) cannot be made RGB ({err}); "
                        "convert it to RGB first") from None


def _array_image(array: np.ndarray, bgr: bool, index: int) -> Image.Image:
    channels = array.shape[2] if array.ndim == 3 else 1
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or channels not in _ARRAY_CHANNELS:
        raise ToolError(f"image {index} is a ndarray of shape {array.shape} and dtype {array.dtype}; "
                        f"give {_ARRAY_KINDS}")
    if 0 in array.shape[:2]:
        raise ToolError(f"image {index} is empty (an array of shape {array.shape}); a crop needs "
                        "a width and a height of at least 1 pixel")
    if channels == 1:
        array = array.reshape(array.shape[:2])
    elif bgr:
        array = array[..., [2, 1, 0, 3][:channels]]
    return Image.fromarray(np.ascontiguousarray(array))


def _labels(values: Optional[LabelsInput], count: int, name: str) -> List[Optional[int]]:
    """One label id (None: unknown) per image, from a list, tuple, numpy array or tensor."""
    if values is None:
        return [None] * count
    if isinstance(values, (torch.Tensor, np.ndarray)) and values.ndim != 1:
        raise ToolError(f"{name}= has shape {tuple(values.shape)}; give one label per image, "
                        "a 1-D list, array or tensor")
    if isinstance(values, (torch.Tensor, np.ndarray)):
        values = values.tolist()  # Python numbers, which messages show plainly
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ToolError(f"{name}= is one {type(values).__name__}; give a list of one label per "
                        f"image (None where unknown), e.g. [{values!r}] * len(images)")
    labels = [_label(value, name, i) for i, value in enumerate(values)]
    if len(labels) != count:
        raise ToolError(f"{count} images but {len(labels)} {name}: give one label per image, "
                        "None where unknown")
    return labels


def _label(value: object, name: str, index: int) -> Optional[int]:
    if value is None:
        return None
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        return operator.index(value)  # int, numpy integer, one-element integer tensor
    except TypeError:
        raise ToolError(f"{name}[{index}] is {value!r}; a label is an integer id, or None where "
                        "unknown") from None


RECORD_FIELD = {"camera": "camid", "view": "viewid"}


def label_options(records: Sequence[ImageRecord], choice: LabelChoice, count: int,
                  name: str) -> List[List[int]]:
    """For each image, the `name` ('camera' or 'view') labels whose features are averaged
    (see the module doc); `count` is how many the model knows, 0 if it ignores them."""
    if count == 0:
        return [[0]] * len(records)  # the model ignores this label
    if isinstance(choice, int):
        check_sie_label(choice, count, name, f"--{name} {choice}")
        return [[choice]] * len(records)
    everything = list(range(count))
    options = []
    for index, record in enumerate(records):
        known = getattr(record, RECORD_FIELD[name]) if choice == AUTO else None
        if known is None:
            options.append(everything)
        else:
            # An image handed in from memory is named by its place in the call.
            image = f"'{record.path}'" if isinstance(record.path, str) else f"image {index}"
            check_sie_label(known, count, name, f"{name} {known} of {image}")
            options.append([known])
    return options
