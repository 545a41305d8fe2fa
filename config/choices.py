"""The values that each choice key of the config accepts.

Kept here, free of torch imports, so that `load_config` checks every choice before any data
or model is built; the modules that act on a choice import its tuple from here.
"""
from utils.options import DIST_METRICS  # noqa: F401  (the metrics utils/distance.py computes)

# 'ViT-B-16' and 'RN50': CLIP-ReID's names for its CLIP image towers (model/clipreid.py).
MODEL_NAMES = ('resnet50', 'transformer', 'ViT-B-16', 'RN50')
CLIP_MODEL_NAMES = ('ViT-B-16', 'RN50')
# The keys of model/backbones/specs.py VIT_SPECS (checked equal there).
TRANSFORMER_TYPES = ('vit_base_patch16_224_TransReID', 'deit_base_patch16_224_TransReID',
                     'vit_small_patch16_224_TransReID', 'deit_small_patch16_224_TransReID',
                     'deit_tiny_patch16_224_TransReID', 'vit_small_ssl_patch16_224_TransReID',
                     'vit_tiny5_patch16_224_TransReID')
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
