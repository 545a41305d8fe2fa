"""A trained model from its weights file alone: sized from the checkpoint, loaded strictly, with
its provenance.

The weights file is read once: the class count comes from the classifier's shape and the SIE
table's size from `sie_embed`, so no dataset is needed (a model trained on one dataset can be
run on any images, or tested on another dataset). The provenance (the file's SHA-256 and the
settings that shape features) lets saved features be matched to the model that made them.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from config import switches
from utils.errors import ToolError

from . import weights
from .backbones.specs import feature_dim
from .make_model import ReIDModel, make_model

logger = logging.getLogger("transreid.model")

# Settings besides the weights that change the features of an image.
FEATURE_SETTINGS = ("MODEL.TRANSFORMER_TYPE", "MODEL.JPM", "TEST.NECK_FEAT", "INPUT.SIZE_TEST",
                    "INPUT.PIXEL_MEAN", "INPUT.PIXEL_STD", "TEST.FLIP_FEATS", "TEST.AMP_DTYPE")
EXTRACT_AGAIN = "extract it again with tools/extract_features.py and this --weight and config"
# Settings a feature record may lack (older records), at the value they then had. "precision" is
# that of an exported model (deploy.metadata); PyTorch weights run as stored.
SETTING_DEFAULTS = {"TEST.FLIP_FEATS": False, "TEST.AMP_DTYPE": "fp32", "precision": "fp32"}


@dataclass(frozen=True)
class SideInfoCounts:
    """Cameras and views the model has SIE embeddings for; 0 when it ignores that label."""
    cameras: int
    views: int

    def check(self, name: str, label: int, source: str, fix: str = "") -> None:
        """`check_sie_label` against this model's `name` ('camera' or 'view') count."""
        check_sie_label(label, self.cameras if name == "camera" else self.views, name, source, fix)


def check_sie_label(label: int, count: int, name: str, source: str, fix: str = "") -> None:
    """The one SIE range check: a ToolError when `label` of `name` ('camera' or 'view'), which
    `source` gave, has no embedding among `count` (0: the model ignores the label)."""
    if count and not 0 <= label < count:
        raise ToolError(f"{source} has no SIE embedding: the model knows {count} {name}s "
                        f"(ids 0..{count - 1}); {fix or f'pass --{name} mean or a known id'}")


def flip_mean(forward: Callable[..., torch.Tensor], images: torch.Tensor, flip: bool,
              **labels: torch.Tensor) -> torch.Tensor:
    """The eval feature with TEST.FLIP_FEATS: float32 features of `images`, averaged with their
    mirror images' when `flip` (before normalisation, as fast-reid's TEST.FLIP.ENABLED)."""
    feats = forward(images, **labels).float()
    if flip:
        feats = (feats + forward(images.flip(3), **labels).float()) / 2
    return feats


@dataclass
class TrainedModel:
    """An eval-mode model, the SIE labels it knows, and the config it was built from."""
    model: ReIDModel
    counts: SideInfoCounts
    cfg: object

    @functools.cached_property
    def provenance(self) -> Dict[str, object]:
        """What its features depend on (`feature_provenance`); hashing the file is left until
        someone asks, since evaluation does not."""
        return feature_provenance(self.cfg)


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


# The SIE table's name: TransReID's (and PASS's), and CLIP-ReID's camera-view embedding.
SIE_TABLES = ("sie_embed", "cv_embed")


def sie_rows_of(state: Dict[str, torch.Tensor]) -> int:
    rows = [value.shape[0] for key, value in state.items() if key.endswith(SIE_TABLES)]
    return rows[0] if rows else 0


def eval_sie_sizes(cfg, dataset, checkpoint_rows: int) -> Tuple[int, int]:
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


def sie_mismatch(cfg, dataset, checkpoint_rows: int, model_rows: int, cameras: int,
                 views: int) -> str:
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


def config_mismatch(cfg) -> str:
    return (f"TEST.WEIGHT '{cfg.TEST.WEIGHT}' was not trained with this config (MODEL.NAME "
            f"{cfg.MODEL.NAME}, TRANSFORMER_TYPE {cfg.MODEL.TRANSFORMER_TYPE}, JPM "
            f"{cfg.MODEL.JPM}, SIE_CAMERA {cfg.MODEL.SIE_CAMERA}, SIE_VIEW {cfg.MODEL.SIE_VIEW}); "
            "pass the --config_file it was trained with.")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def feature_provenance(cfg) -> Dict[str, object]:
    """What features depend on besides the images: the weights file (by content) and settings."""
    settings = {key: functools.reduce(getattr, key.split("."), cfg) for key in FEATURE_SETTINGS}
    settings["TEST.FLIP_FEATS"] = switches(cfg).flip_feats
    # Through JSON and back, so that tuples compare equal to the lists a saved record holds.
    return json.loads(json.dumps({"weight": os.path.abspath(cfg.TEST.WEIGHT),
                                  "weight_sha256": file_sha256(cfg.TEST.WEIGHT), **settings,
                                  "precision": SETTING_DEFAULTS["precision"]}))


def sie_counts_of(model: torch.nn.Module) -> SideInfoCounts:
    """The cameras and views a built model has SIE embeddings for (0: none)."""
    base = getattr(getattr(model, "module", model), "base", None)
    return SideInfoCounts(getattr(base, "cam_num", 0), getattr(base, "view_num", 0))


def load_trained(cfg, dataset=None, num_cameras: Optional[int] = None,
                 num_views: Optional[int] = None) -> TrainedModel:
    """The model of `cfg` with the weights of TEST.WEIGHT, in eval mode on the CPU.

    Without `dataset` (inference on any images), the SIE table is taken from the checkpoint;
    a joint camera-view table needs `num_cameras` and/or `num_views` to be split. With a
    `dataset` to evaluate on, the table must fit its cameras and views (see `eval_sie_sizes`).
    The classifier is sized from the checkpoint, so a model trained on another dataset can be
    tested (cross-dataset evaluation): evaluation never uses it.
    """
    path = cfg.TEST.WEIGHT
    state = weights.read_state_dict(path, weights.TRAINED_MISSING_HINT)
    rows, num_classes = sie_rows_of(state), num_classes_of(state, cfg)
    if dataset is None:
        counts = sie_counts(cfg, rows, num_cameras, num_views)
        cameras, views, cause = max(counts.cameras, 1), max(counts.views, 1), ""
    else:
        cameras, views = eval_sie_sizes(cfg, dataset, rows)
        cause = None
    logger.info("Model of %d classes, as the checkpoint's classifier", num_classes)
    model = make_model(cfg, num_class=num_classes, camera_num=cameras, view_num=views)
    if cause is None:
        cause = sie_mismatch(cfg, dataset, rows, sie_rows_of(model.state_dict()), cameras, views)
    try:
        weights.load_trained_state(model, state, path)
    except weights.CheckpointMismatchError as err:
        # The loader's advice is for training (sizes from the dataset, PRETRAIN_CHOICE
        # finetune); here the model is sized from the checkpoint and loads no other weights.
        listing = str(err).replace(weights.TRAINED_FIX_HINT, "").rstrip()
        raise weights.CheckpointMismatchError(f"{cause or config_mismatch(cfg)}\n{listing}") from None
    return TrainedModel(model.eval(), sie_counts_of(model), cfg)


def check_same_model(saved: Optional[Dict[str, object]], current: Dict[str, object],
                     features_path: str, fix: str = EXTRACT_AGAIN) -> None:
    """Refuse to compare features that another model or other settings produced; `fix` ends
    the message."""
    if saved is None:
        logger.warning("'%s' has no record of the model that extracted it (written by an older "
                       "version): cannot check that it matches --weight", features_path)
        return
    saved = {**SETTING_DEFAULTS, **saved}
    differences = [f"{key} {saved.get(key)!r} there, {value!r} here" for key, value in current.items()
                   if key != "weight" and saved.get(key) != value]
    if differences:
        raise ToolError(f"'{features_path}' was extracted with other weights or settings "
                        f"(weights '{saved.get('weight')}'): {'; '.join(differences)}; {fix}")
