"""What the tools share: the command line, the trained model, image lists, features, outputs.

Side information (SIE) for images of unknown camera or view
-----------------------------------------------------------
A model trained with MODEL.SIE_CAMERA / SIE_VIEW adds a learned embedding of the image's camera
(view) to every token, so it needs a label for each image. Every label is a real, learned camera:
camera 0 is not "no camera". The tools therefore offer, per image (`--camera`, `--view`):

* ``mean`` (the neutral choice): the feature is averaged over every camera (view) the model knows,
  so that no single camera is favoured. It costs one forward pass per camera (view) and is
  exact whatever the model does with the embedding; the model's API does not expose the mean
  embedding itself, and feeding it would also be a different input than any seen in training.
* ``auto`` (default): the label the image carries (a Market-style name ``<pid>_c<cam>...`` gives
  the camera, a list file's columns give camera and view), ``mean`` for images without one.
* an integer: that label for every image (fast; one forward pass).

Models without SIE ignore the labels, and every choice costs a single pass.
"""
from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import json
import logging
import os
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from config import ConfigError, yes_no
from datasets.bases import (IMAGE_EXTENSIONS, MARKET_PATTERN, BaseImageDataset, DatasetError,
                            NameRule, read_image)
from datasets.list_file import list_file_lines, parse_list_labels
from datasets.transforms import build_test_transforms
from model import CheckpointMismatchError, make_model
from model.backbones.specs import feature_dim
from model.weights import TRAINED_FIX_HINT, TRAINED_MISSING_HINT, read_state_dict
from utils.checkpoint import atomic_output
from utils.cli import base_parser, load_config_or_exit
from utils.device import apply_visible_devices
from utils.metrics import distance_chunks
from utils.progress import Progress

logger = logging.getLogger("transreid.tools")

MEAN, AUTO = "mean", "auto"
LabelChoice = Union[str, int]
"""'mean', 'auto' or a fixed label id."""

HELP_WIDTH = 88
CSV_COLUMNS = ("index", "path", "pid", "camid", "viewid")
# Settings besides the weights that change the features of an image.
FEATURE_SETTINGS = ("MODEL.TRANSFORMER_TYPE", "MODEL.JPM", "TEST.NECK_FEAT", "INPUT.SIZE_TEST",
                    "INPUT.PIXEL_MEAN", "INPUT.PIXEL_STD")
MARKET_NAME = NameRule(MARKET_PATTERN, "0002_c1s1_000451_03.jpg")


class ToolError(RuntimeError):
    """Input a tool cannot use; the message names it and says how to fix it."""


# ------------------------------------------------------------------------------ command line
def label_choice(text: str) -> LabelChoice:
    """argparse type of --camera / --view."""
    if text in (MEAN, AUTO):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not 'mean', 'auto' or a label id") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"label ids start at 0, got {value}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def tool_parser(description: str, example: str) -> argparse.ArgumentParser:
    """test.py's parser (--config_file, KEY VALUE overrides) plus the trained weights."""
    parser = base_parser(textwrap.fill(description, HELP_WIDTH))
    # Raw, so that the example stays one line to copy; the prose is wrapped here instead.
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = f"{textwrap.fill(parser.epilog, HELP_WIDTH)}\n\nexample:\n  {example}"
    parser.add_argument("--weight", default="",
                        help="trained model (.pth written by train.py); sets TEST.WEIGHT")
    return parser


# (label, its plural, where an image's label can come from)
SIDE_INFO = (("camera", "cameras", "a Market-style name or the list file"),
             ("view", "views", "the list file"))


def add_label_arguments(parser: argparse.ArgumentParser) -> None:
    """--camera / --view: the SIE labels of images (see this module's doc)."""
    for name, plural, source in SIDE_INFO:
        parser.add_argument(
            f"--{name}", type=label_choice, default=AUTO, metavar="auto|mean|ID",
            help=f"SIE {name} label of each image: 'auto' (default: the {name} {source} gives, "
                 f"else 'mean'), 'mean' (average the feature over every {name} the model knows: "
                 f"the neutral choice for unknown {plural}), or a fixed id. Ignored by models "
                 f"without SIE {name} embeddings.")


def add_sie_count_arguments(parser: argparse.ArgumentParser) -> None:
    """--num-cameras / --num-views, needed only to split a joint camera-view SIE table."""
    for _, plural, _ in SIDE_INFO:
        parser.add_argument(
            f"--num-{plural}", type=positive_int, default=None, metavar="N",
            help=f"{plural} the model was trained with; read from the checkpoint unless it holds "
                 "a joint camera-and-view table (SIE_CAMERA and SIE_VIEW both on)")


def load_tool_config(args: argparse.Namespace, extra_opts: Sequence[str] = ()):
    """Frozen config from --config_file, the KEY VALUE overrides and the flags that set keys."""
    opts = list(args.opts or []) + list(extra_opts)
    if args.weight:
        opts += ["TEST.WEIGHT", args.weight]
    # TEST.WEIGHT replaces every weight: ImageNet initialisation would only cost time (or fail
    # where the ImageNet file is absent).
    opts += ["MODEL.PRETRAIN_CHOICE", "none"]
    cfg = load_config_or_exit(args.config_file, opts)
    if not cfg.TEST.WEIGHT:
        sys.exit("error: no trained model given; pass --weight PATH (or TEST.WEIGHT PATH)")
    apply_visible_devices(cfg.MODEL.DEVICE_ID)
    return cfg


# Errors a user can cause. ValueError and OSError are among them because the config and weight
# checks and file reads raise them; a library bug of those types is then reported in one line
# too, and other exceptions keep their traceback.
USER_ERRORS = (ToolError, DatasetError, ConfigError, OSError, ValueError)


def exit_on_user_error(main: Callable[..., int]) -> Callable[..., int]:
    """Turn a user error into `error: <message>` and exit status 1 instead of a traceback."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as err:
            sys.exit(f"error: {err}")
    return wrapper


def configure_logging() -> None:
    """Log lines to stderr when the tool runs as a script (library code only uses loggers)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")


# ---------------------------------------------------------------------------- trained model
@dataclass(frozen=True)
class SideInfoCounts:
    """Cameras and views the model has SIE embeddings for; 0 when it ignores that label."""
    cameras: int
    views: int


def sie_counts(cfg, sie_rows: int, num_cameras: Optional[int],
               num_views: Optional[int]) -> SideInfoCounts:
    """Camera and view counts of a model whose checkpoint holds `sie_rows` SIE embeddings.

    The SIE table has one row per camera, per view, or per camera-view pair; only the last
    needs the split from the user (or from one of the two counts).
    """
    use_cam, use_view = bool(cfg.MODEL.SIE_CAMERA), bool(cfg.MODEL.SIE_VIEW)
    if sie_rows == 0 or not (use_cam or use_view):
        # No table: the model ignores the labels (a config with SIE on is caught by loading).
        return SideInfoCounts(0, 0)
    if use_cam and not use_view:
        return SideInfoCounts(sie_rows, 0)
    if use_view and not use_cam:
        return SideInfoCounts(0, sie_rows)
    if num_cameras is None and num_views is None:
        raise ToolError(f"the checkpoint has {sie_rows} SIE camera-view embeddings; pass "
                        "--num-cameras and/or --num-views (as the training dataset had) to split them")
    cameras = num_cameras if num_cameras is not None else sie_rows // num_views
    views = num_views if num_views is not None else sie_rows // num_cameras
    if cameras * views != sie_rows:
        raise ToolError(f"--num-cameras {cameras} x --num-views {views} != the {sie_rows} SIE "
                        "embeddings of the checkpoint")
    return SideInfoCounts(cameras, views)


def num_classes_of(state: Dict[str, torch.Tensor], cfg) -> int:
    """Identities of the checkpoint's classifier: its dimension that is not the feature width.

    Inference never uses the classifier, but strict loading needs its shape.
    """
    width = feature_dim(cfg)
    for key, value in state.items():
        if key.startswith("classifier.") and value.ndim == 2:
            return value.shape[1] if value.shape[0] == width else value.shape[0]
    return 1  # no classifier: loading names the missing keys


def sie_rows_of(state: Dict[str, torch.Tensor]) -> int:
    rows = [value.shape[0] for key, value in state.items() if key.endswith("sie_embed")]
    return rows[0] if rows else 0


def build_trained_model(cfg, num_cameras: Optional[int] = None,
                        num_views: Optional[int] = None) -> Tuple[torch.nn.Module, SideInfoCounts]:
    """The model of `cfg` with the weights of TEST.WEIGHT, for inference on any images.

    The class and SIE counts come from the checkpoint, so no dataset needs to be present.
    """
    # Read here only to size the model; load_param then loads it strictly.
    state = read_state_dict(cfg.TEST.WEIGHT, TRAINED_MISSING_HINT)
    counts = sie_counts(cfg, sie_rows_of(state), num_cameras, num_views)
    model = make_model(cfg, num_class=num_classes_of(state, cfg), camera_num=max(counts.cameras, 1),
                       view_num=max(counts.views, 1))
    load_weights(model, cfg)
    return model.eval(), counts


def load_weights(model: torch.nn.Module, cfg, cause: str = "") -> None:
    """model.load_param(TEST.WEIGHT), its mismatch error turned into one naming the config, or
    `cause` where the caller knows what does not fit."""
    try:
        model.load_param(cfg.TEST.WEIGHT)
    except CheckpointMismatchError as err:
        cause = cause or (
            f"TEST.WEIGHT '{cfg.TEST.WEIGHT}' was not trained with this config (MODEL.NAME "
            f"{cfg.MODEL.NAME}, TRANSFORMER_TYPE {cfg.MODEL.TRANSFORMER_TYPE}, JPM "
            f"{cfg.MODEL.JPM}, SIE_CAMERA {cfg.MODEL.SIE_CAMERA}, SIE_VIEW {cfg.MODEL.SIE_VIEW}); "
            "pass the --config_file it was trained with.")
        # The loader's own advice is for training (sizes from the dataset, PRETRAIN_CHOICE
        # finetune); these scripts size the model from the checkpoint and load no other weights.
        listing = str(err).replace(TRAINED_FIX_HINT, "").rstrip()
        raise ToolError(f"{cause}\n{listing}") from None


# ------------------------------------------------------------------------ evaluation model
def build_eval_model(cfg, dataset: BaseImageDataset) -> torch.nn.Module:
    """The model of `cfg` with the weights of TEST.WEIGHT, to evaluate on `dataset`.

    Its class count is the checkpoint's: evaluation never uses the classifiers, so a model
    trained on another dataset (with another number of identities) can be tested here, as
    cross-dataset evaluation does. The SIE embeddings are used: see `eval_sie_sizes`.
    """
    # Read here only to size the model; load_param then loads it strictly.
    state = read_state_dict(cfg.TEST.WEIGHT, TRAINED_MISSING_HINT)
    num_classes, checkpoint_rows = num_classes_of(state, cfg), sie_rows_of(state)
    cameras, views = eval_sie_sizes(cfg, dataset, checkpoint_rows)
    logger.info("Model of %d classes, as the checkpoint's classifier", num_classes)
    model = make_model(cfg, num_class=num_classes, camera_num=cameras, view_num=views)
    load_weights(model, cfg, sie_mismatch(cfg, dataset, checkpoint_rows,
                                          sie_rows_of(model.state_dict()), cameras, views))
    return model.eval()


def eval_sie_sizes(cfg, dataset: BaseImageDataset, checkpoint_rows: int) -> Tuple[int, int]:
    """Camera and view counts of a model that evaluates on `dataset`; `checkpoint_rows` is the
    size of the checkpoint's SIE table.

    With the training split present they are the dataset's, as train.py sized the table: a
    checkpoint with another table was trained on other cameras (views), which its embeddings
    cannot describe, and loading stops. Without it, query and gallery may lack the highest ids of
    training, so a table of one row per camera (or per view) is taken at its size when it has a
    row for every query/gallery id. A joint camera-view table cannot be split without the
    training counts: query and gallery's are used.
    """
    cameras, views = dataset.num_cameras, dataset.num_views
    if dataset.train or (cfg.MODEL.SIE_CAMERA and cfg.MODEL.SIE_VIEW):
        return cameras, views
    table = sie_counts(cfg, checkpoint_rows, None, None)
    return max(cameras, table.cameras), max(views, table.views)


def sie_mismatch(cfg, dataset: BaseImageDataset, checkpoint_rows: int, model_rows: int,
                 cameras: int, views: int) -> str:
    """Why a checkpoint's SIE table does not fit `dataset`, or '' when it does (or when only one
    side has SIE, which is a config mismatch)."""
    if checkpoint_rows == model_rows or not checkpoint_rows or not model_rows:
        return ""
    unit, labels, needed, switch = {
        (True, False): ("camera", "cameras", f"{cameras} cameras", "MODEL.SIE_CAMERA False"),
        (False, True): ("view", "views", f"{views} views", "MODEL.SIE_VIEW False"),
        (True, True): ("camera-view pair", "cameras and views",
                       f"{cameras} cameras x {views} views = {model_rows}",
                       "MODEL.SIE_CAMERA and SIE_VIEW False"),
    }[(bool(cfg.MODEL.SIE_CAMERA), bool(cfg.MODEL.SIE_VIEW))]
    splits = "train, query and gallery" if dataset.train else "query and gallery"
    return (f"TEST.WEIGHT '{cfg.TEST.WEIGHT}' was trained with SIE for other {labels} than those "
            f"of {dataset.display_name}: its SIE table has {checkpoint_rows} rows, one per {unit} "
            f"of its training data, but {dataset.display_name} has {needed} (largest id + 1 over "
            f"its {splits} splits). SIE embeddings belong to the {labels} they were learned for: "
            "test this model on the dataset it was trained on, or test a model trained without "
            f"SIE ({switch}) here.")


# ------------------------------------------------------------------------------ image lists
@dataclass(frozen=True)
class ImageRecord:
    """An image and what is known of it; None where unknown."""
    path: str
    pid: Optional[int] = None
    camid: Optional[int] = None
    viewid: Optional[int] = None


def record_from_name(path: str) -> ImageRecord:
    """pid and 0-based camera of a Market-style name (`0002_c1s1_000451_03.jpg`), if it is one."""
    try:
        pid, camid = MARKET_NAME.parse(path)
    except DatasetError:
        return ImageRecord(path)
    return ImageRecord(path, pid, camid)


def is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def images_in_folder(folder: str) -> List[ImageRecord]:
    """Every image under `folder`, recursively, in sorted path order."""
    paths = sorted(os.path.join(parent, name)
                   for parent, _, names in os.walk(folder) for name in names if is_image(name))
    if not paths:
        raise ToolError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under folder '{folder}'")
    return [record_from_name(path) for path in paths]


def images_in_list(list_path: str) -> List[ImageRecord]:
    """Lines `path [pid camid [viewid]]` ('#' starts a comment); paths relative to the list's folder.

    Without pid and camid, a Market-style name still gives them.
    """
    base = os.path.dirname(os.path.abspath(list_path))
    records = []
    for where, fields in list_file_lines(list_path):
        path = os.path.join(base, fields[0])
        if not os.path.isfile(path):
            raise ToolError(f"{where}: image '{path}' does not exist")
        labels = parse_list_labels(fields, where) if len(fields) > 1 else None
        records.append(record_from_name(path) if labels is None else ImageRecord(path, *labels))
    if not records:
        raise ToolError(f"list file '{list_path}' names no images")
    return records


def collect_images(source: str) -> List[ImageRecord]:
    """Images of a folder (recursive), a list file, or a single image file."""
    if os.path.isdir(source):
        return images_in_folder(source)
    if os.path.isfile(source):
        return [record_from_name(source)] if is_image(source) else images_in_list(source)
    raise ToolError(f"'{source}' does not exist; give an image folder, a list file or an image")


# ------------------------------------------------------------------------------- features
class ImageFiles(Dataset):
    """(transformed image, index) of each record; unreadable files raise an error naming them."""

    def __init__(self, records: Sequence[ImageRecord], transform, read_retries: int) -> None:
        self.records = list(records)
        self.transform = transform
        self.read_retries = read_retries

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        return self.transform(read_image(self.records[index].path, self.read_retries)), index


RECORD_FIELD = {"camera": "camid", "view": "viewid"}


def label_options(records: Sequence[ImageRecord], choice: LabelChoice, count: int,
                  name: str) -> List[List[int]]:
    """For each image, the `name` ('camera' or 'view') labels whose features are averaged
    (see the module doc); `count` is how many the model knows, 0 if it ignores them."""
    if count == 0:
        return [[0]] * len(records)  # the model ignores this label
    if isinstance(choice, int):
        _check_label(choice, count, name, f"--{name} {choice}")
        return [[choice]] * len(records)
    everything = list(range(count))
    options = []
    for record in records:
        known = getattr(record, RECORD_FIELD[name]) if choice == AUTO else None
        if known is None:
            options.append(everything)
        else:
            _check_label(known, count, name, f"{name} {known} of '{record.path}'")
            options.append([known])
    return options


def _check_label(label: int, count: int, name: str, source: str) -> None:
    if not 0 <= label < count:
        raise ToolError(f"{source} has no SIE embedding: the model knows {count} {name}s "
                        f"(ids 0..{count - 1}); pass --{name} mean or a known id")


@torch.no_grad()
def sie_averaged_features(model: torch.nn.Module, images: torch.Tensor,
                          cam_options: Sequence[Sequence[int]],
                          view_options: Sequence[Sequence[int]]) -> torch.Tensor:
    """Feature of each image averaged over its (camera, view) label pairs.

    One forward pass per distinct pair, over the images that use it.
    """
    pairs = sorted({(c, v) for cams, views in zip(cam_options, view_options)
                    for c in cams for v in views})
    total: Optional[torch.Tensor] = None
    counts = torch.zeros(len(images), 1, device=images.device)
    for cam, view in pairs:
        rows = torch.tensor([i for i, (cams, views) in enumerate(zip(cam_options, view_options))
                             if cam in cams and view in views], device=images.device)
        labels = dict(cam_label=torch.full((len(rows),), cam, device=images.device),
                      view_label=torch.full((len(rows),), view, device=images.device))
        feats = model(images[rows], **labels).float()
        if total is None:
            total = feats.new_zeros(len(images), feats.shape[1])
        total.index_add_(0, rows, feats)
        counts.index_add_(0, rows, torch.ones(len(rows), 1, device=images.device))
    return total / counts


def extract_image_features(cfg, model: torch.nn.Module, records: Sequence[ImageRecord],
                           counts: SideInfoCounts, camera: LabelChoice, view: LabelChoice,
                           device: torch.device, desc: str = "features") -> torch.Tensor:
    """Features (N x D, on the CPU, in `records` order) of the images, batched on `device`."""
    cam_options = label_options(records, camera, counts.cameras, "camera")
    view_options = label_options(records, view, counts.views, "view")
    loader = DataLoader(ImageFiles(records, build_test_transforms(cfg), cfg.DATALOADER.READ_RETRIES),
                        batch_size=cfg.TEST.IMS_PER_BATCH, shuffle=False,
                        num_workers=cfg.DATALOADER.NUM_WORKERS, pin_memory=device.type == "cuda")
    model.to(device).eval()
    feats = []
    for images, index in Progress(loader, len(loader), desc, logger):
        rows = index.tolist()
        feats.append(sie_averaged_features(model, images.to(device, non_blocking=True),
                                           [cam_options[i] for i in rows],
                                           [view_options[i] for i in rows]).cpu())
    return torch.cat(feats)


def query_gallery_distance(cfg, query_feats: torch.Tensor, gallery_feats: torch.Tensor) -> np.ndarray:
    """Query x gallery distances as test.py computes them: TEST.FEAT_NORM, then re-ranking
    (TEST.RE_RANKING) or TEST.DIST_METRIC."""
    query_feats, gallery_feats = query_feats.float(), gallery_feats.float()
    if yes_no(cfg.TEST.FEAT_NORM, "TEST.FEAT_NORM"):
        query_feats, gallery_feats = F.normalize(query_feats, dim=1), F.normalize(gallery_feats, dim=1)
    chunks = distance_chunks(query_feats, gallery_feats, cfg.TEST.DIST_METRIC,
                             yes_no(cfg.TEST.RE_RANKING, "TEST.RE_RANKING"),
                             cfg.TEST.RE_RANKING_K1, cfg.TEST.RE_RANKING_K2,
                             cfg.TEST.RE_RANKING_LAMBDA)
    return torch.cat([dist.cpu() for _, dist in chunks]).numpy()


# ---------------------------------------------------------------------------------- outputs
def index_csv_path(features_path: str) -> str:
    """The CSV index that goes with a feature matrix: same name, `.csv`."""
    return os.path.splitext(features_path)[0] + ".csv"


def provenance_path(features_path: str) -> str:
    """The record of the model behind a feature matrix: same name, `.json`."""
    return os.path.splitext(features_path)[0] + ".json"


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def feature_provenance(cfg) -> Dict[str, object]:
    """What features depend on besides the images: the weights file (by content) and settings."""
    settings = {key: functools.reduce(getattr, key.split("."), cfg) for key in FEATURE_SETTINGS}
    # Through JSON and back, so that tuples compare equal to the lists a saved record holds.
    return json.loads(json.dumps({"weight": os.path.abspath(cfg.TEST.WEIGHT),
                                  "weight_sha256": file_sha256(cfg.TEST.WEIGHT), **settings}))


def check_same_model(saved: Optional[Dict[str, object]], current: Dict[str, object],
                     features_path: str) -> None:
    """Refuse to compare features that another model or other settings produced."""
    if saved is None:
        logger.warning("'%s' has no record of the model that extracted it (written by an older "
                       "version): cannot check that it matches --weight", features_path)
        return
    differences = [f"{key} {saved.get(key)!r} there, {value!r} here" for key, value in current.items()
                   if key != "weight" and saved.get(key) != value]
    if differences:
        raise ToolError(f"'{features_path}' was extracted with other weights or settings "
                        f"(weights '{saved.get('weight')}'): {'; '.join(differences)}. Extract "
                        "it again with tools/extract_features.py and this --weight and config")


def check_writable_folder(path: str) -> None:
    """Fail before a long extraction, not after it, when the output cannot be written; creates
    nothing (the folder is made only when the output is saved)."""
    existing = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ToolError(f"cannot write '{path}': '{existing}' is a file, not a folder; choose "
                        "another --output")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ToolError(f"cannot write '{path}': creating a file in '{existing}' failed "
                        f"({err.strerror}); choose another --output") from None


def _cell(value: Optional[int]) -> str:
    return "" if value is None else str(value)


def save_feature_index(features: np.ndarray, records: Sequence[ImageRecord], path: str,
                       provenance: Dict[str, object]) -> str:
    """Write `path` (.npy, float32 N x D), its CSV index and the JSON record of the model that
    made it (`feature_provenance`); returns the CSV path.

    The files are written to temporary names first, so an error leaves none half written.
    """
    if not path.endswith(".npy"):
        raise ToolError(f"features file '{path}' must end in .npy")
    csv_path = index_csv_path(path)
    with atomic_output(path) as tmp_npy, atomic_output(csv_path) as tmp_csv, \
            atomic_output(provenance_path(path)) as tmp_json:
        np.save(tmp_npy, features.astype(np.float32))
        with open(tmp_json, "w") as handle:
            json.dump(provenance, handle, indent=2)
        with open(tmp_csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            for i, r in enumerate(records):
                writer.writerow([i, r.path, _cell(r.pid), _cell(r.camid), _cell(r.viewid)])
    return csv_path


def load_feature_index(path: str) -> Tuple[np.ndarray, List[ImageRecord], Optional[Dict[str, object]]]:
    """A feature matrix written by extract_features.py, the records of its CSV index and the
    record of the model that made it (None for files written before there was one)."""
    csv_path = index_csv_path(path)
    for needed in (path, csv_path):
        if not os.path.isfile(needed):
            raise ToolError(f"'{needed}' does not exist; write both with tools/extract_features.py")
    features = np.load(path, allow_pickle=False)
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and set(CSV_COLUMNS) - set(rows[0]):
        raise ToolError(f"'{csv_path}' lacks the columns {CSV_COLUMNS}")
    if features.ndim != 2 or len(rows) != len(features):
        raise ToolError(f"'{path}' holds {features.shape} features but '{csv_path}' lists "
                        f"{len(rows)} images; re-run tools/extract_features.py")
    records = [_record_of_row(row, csv_path, line) for line, row in enumerate(rows, start=2)]
    provenance = None
    if os.path.isfile(provenance_path(path)):
        with open(provenance_path(path)) as handle:
            provenance = json.load(handle)
    return features, records, provenance


def _record_of_row(row: Dict[str, str], csv_path: str, line: int) -> ImageRecord:
    try:
        labels = [int(row[k]) if row[k] else None for k in ("pid", "camid", "viewid")]
    except ValueError:
        raise ToolError(f"'{csv_path}' line {line}: pid, camid and viewid must be integers or "
                        f"empty, got {[row[k] for k in ('pid', 'camid', 'viewid')]}") from None
    return ImageRecord(row["path"], *labels)
