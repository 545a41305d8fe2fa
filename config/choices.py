"""The values that each choice key of the config accepts.

Kept here, free of torch imports, so that `load_config` checks every choice before any data
or model is built; the modules that act on a choice import its tuple from here.
"""
from typing import Any, Callable, Tuple

from utils.options import DIST_METRICS  # noqa: F401  (the metrics utils/distance.py computes)
from utils.options import yes_no

# 'ViT-B-16' and 'RN50': CLIP-ReID's names for its CLIP image towers (model/clipreid.py);
# 'ViT-T-16' a tiny CLIP of the same shape for the synthetic set (no published weights).
MODEL_NAMES = ('resnet50', 'transformer', 'ViT-B-16', 'RN50', 'ViT-T-16')
CLIP_MODEL_NAMES = ('ViT-B-16', 'RN50', 'ViT-T-16')
# The keys of model/backbones/specs.py VIT_SPECS and SWIN_SPECS (checked equal there).
TRANSFORMER_TYPES = ('vit_base_patch16_224_TransReID', 'deit_base_patch16_224_TransReID',
                     'vit_small_patch16_224_TransReID', 'deit_small_patch16_224_TransReID',
                     'deit_tiny_patch16_224_TransReID', 'vit_small_ssl_patch16_224_TransReID',
                     'vit_tiny5_patch16_224_TransReID', 'swin_tiny_patch4_window7_224',
                     'swin_small_patch4_window7_224', 'swin_base_patch4_window7_224')
PRETRAIN_CHOICES = ('imagenet', 'self', 'finetune', 'none')
NECK_TYPES = ('bnneck', 'no')
NECK_FEATS = ('after', 'before')
ID_LOSS_TYPES = ('softmax', 'arcface', 'cosface', 'amsoftmax', 'circle')
METRIC_LOSS_TYPES = ('triplet', 'center', 'triplet_center')
LABEL_SMOOTH = ('on', 'off')
SAMPLERS = ('softmax', 'softmax_triplet')
OPTIMIZERS = ('SGD', 'Adam', 'AdamW')
# Warm-up of the multi-step schedule (ResNet-50 baseline); 'cosine' selects TransReID-SSL's
# cosine schedule for every model (solver/scheduler_factory.py).
MULTISTEP_WARMUP_METHODS = ('constant', 'linear')
WARMUP_METHODS = MULTISTEP_WARMUP_METHODS + ('cosine',)
AMP_DTYPES = ('fp16', 'bf16', 'fp32')
COMPILE_MODES = ('auto', 'on', 'off')
# MODEL.TRAIN_MODE: with identity labels, or without (cluster-contrast, docs/unsupervised.md): 'usl'
# from any start, 'uda' from a model trained with labels on another dataset.
TRAIN_MODES = ('supervised', 'usl', 'uda')
UNLABELLED_MODES = ('usl', 'uda')
# CLUSTER.TRACKS: where tracks come from (datasets/unlabelled.py reads 'folders' and 'names')
TRACK_SOURCES = ('none', 'folders', 'names', 'dataset')
# The SIE label of an image of unknown camera or view (processor.inference explains them): the
# mean over every label, or the image's own where known; else a label id.
MEAN, AUTO = "mean", "auto"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_from(low: int, high: float = float("inf")) -> Callable[[Any], bool]:
    return lambda value: _number(value) and isinstance(value, int) and low <= value <= high


def _is_yes_no(value: Any) -> bool:
    try:
        return yes_no(value, '') in (True, False)
    except ValueError:
        return False


def cluster_rules(cfg) -> Tuple[Tuple[str, Callable[[Any], bool], str], ...]:
    """(key, test, what it allows) of the CLUSTER keys, and of what MODEL.TRAIN_MODE 'usl' and
    'uda' need (processor and loss/cluster_contrast.py); config.loader applies them."""
    k1 = cfg.CLUSTER.K1
    rules = (
        ('CLUSTER.EPS', lambda value: _number(value) and 0 < value < 1,
         "a number between 0 and 1, exclusive (a Jaccard distance; theirs 0.6, MSMT17 0.7)"),
        ('CLUSTER.MIN_SAMPLES', _int_from(1), "an integer >= 1 (theirs 4)"),
        ('CLUSTER.K1', _int_from(1), "an integer >= 1 (theirs 30)"),
        ('CLUSTER.K2', _int_from(1, k1), f"an integer from 1 to CLUSTER.K1 ({k1}) (theirs 6)"),
        ('CLUSTER.HARD_MEMORY', _is_yes_no, "'yes' or 'no'"),
        ('CLUSTER.ITERS_PER_EPOCH', _int_from(1), "an integer >= 1 (theirs 200)"),
        ('CLUSTER.TEMPERATURE', lambda value: _number(value) and value > 0,
         "a positive number (theirs 0.05)"),
        ('CLUSTER.MEMORY_MOMENTUM', lambda value: _number(value) and 0 <= value <= 1,
         "a number from 0 to 1 (theirs 0.2)"),
        ('CLUSTER.TRACKS', lambda value: value in TRACK_SOURCES,
         f"one of {', '.join(map(repr, TRACK_SOURCES))}"))
    mode = cfg.MODEL.TRAIN_MODE
    if mode not in UNLABELLED_MODES:
        return rules
    rules += (
        ('MODEL.NECK', lambda value: value == 'bnneck',
         f"'bnneck' with MODEL.TRAIN_MODE '{mode}' (the memory trains the BN neck's output)"),
        ('MODEL.ID_LOSS_TYPE', lambda value: value == 'softmax', f"'softmax' with MODEL.TRAIN_MODE "
         f"'{mode}' (the classifier is unused there, and the margin heads need labels)"),
        ('MODEL.DIST_TRAIN', lambda value: not value,
         f"False with MODEL.TRAIN_MODE '{mode}' (clustering runs in one process; no DDP yet)"))
    if mode == 'uda':
        rules += (('MODEL.PRETRAIN_CHOICE', lambda value: value == 'finetune',
                   "'finetune' with MODEL.TRAIN_MODE 'uda', MODEL.PRETRAIN_PATH the model trained "
                   "with labels on the source dataset"),)
    return rules
