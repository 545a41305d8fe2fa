"""The values that each choice key of the config accepts.

Kept here, free of torch imports, so that `load_config` checks every choice before any data
or model is built; the modules that act on a choice import its tuple from here.
"""
from utils.options import DIST_METRICS  # noqa: F401  (the metrics utils/distance.py computes)

MODEL_NAMES = ('resnet50', 'transformer')
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
# MODEL.TRAIN_MODE: what train.py runs today. Training without labels ('usl', 'uda'; the
# cluster-contrast pieces in utils/jaccard.py, utils/clustering.py, loss/cluster_memory.py) is
# not wired into do_train yet, so it is refused rather than silently trained with labels.
TRAIN_MODES = ('supervised',)
# The SIE label of an image of unknown camera or view (processor.inference explains them): the
# mean over every label, or the image's own where known; else a label id.
MEAN, AUTO = "mean", "auto"
