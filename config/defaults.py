"""Default configuration: every key of the TransReID reference, same names and values.

Keys that the reference does not have carry a one-line comment starting with "New:".
"""
from yacs.config import CfgNode as CN

_C = CN()

# -----------------------------------------------------------------------------
# MODEL
# -----------------------------------------------------------------------------
_C.MODEL = CN()
# 'cuda' or 'cpu'; 'cuda' falls back to the CPU with a warning when no GPU is present
_C.MODEL.DEVICE = "cuda"
# Visible GPU ids, applied as CUDA_VISIBLE_DEVICES before CUDA starts
_C.MODEL.DEVICE_ID = '0'
# Backbone: 'resnet50' or 'transformer'; CLIP-ReID's 'ViT-B-16' or 'RN50' (docs/clipreid.md)
_C.MODEL.NAME = 'resnet50'
# Last stride of the ResNet-50 backbone
_C.MODEL.LAST_STRIDE = 1
# ImageNet weights (jx ViT / DeiT file, or 'timm:<model name>'), or a trained TransReID model
_C.MODEL.PRETRAIN_PATH = ''
# 'imagenet' (backbone only), 'self' (whole model), 'finetune' (whole model, new classifiers
# when the class count differs) or 'none' (New: train from scratch)
_C.MODEL.PRETRAIN_CHOICE = 'imagenet'
# 'bnneck' or 'no'
_C.MODEL.NECK = 'bnneck'
# No effect here (the center loss follows METRIC_LOSS_TYPE); kept so that reference YAMLs load
_C.MODEL.IF_WITH_CENTER = 'no'
# 'softmax', 'arcface', 'cosface', 'amsoftmax' or 'circle'
_C.MODEL.ID_LOSS_TYPE = 'softmax'
_C.MODEL.ID_LOSS_WEIGHT = 1.0
_C.MODEL.TRIPLET_LOSS_WEIGHT = 1.0
# CLIP-ReID's key and default: weight of stage 2's image-to-text cross-entropy (MODEL.NAME 'ViT-B-16' / 'RN50')
_C.MODEL.I2T_LOSS_WEIGHT = 1.0
# 'triplet', 'center' or 'triplet_center'
_C.MODEL.METRIC_LOSS_TYPE = 'triplet'
# Train with torch.distributed (set by dist_train.sh)
_C.MODEL.DIST_TRAIN = False
# New: seconds after which a rank that stopped responding ends the distributed job (a long
# evaluation on rank 0 does not count: its heartbeat goes on)
_C.MODEL.DIST_HANG_TIMEOUT = 600
# Soft-margin triplet loss
_C.MODEL.NO_MARGIN = False
# Label smoothing for the ID loss: 'on' or 'off'
_C.MODEL.IF_LABELSMOOTH = 'on'
# No effect here (margin heads follow ID_LOSS_TYPE); kept so that reference YAMLs load
_C.MODEL.COS_LAYER = False

# Transformer settings
_C.MODEL.DROP_PATH = 0.1
_C.MODEL.DROP_OUT = 0.0
_C.MODEL.ATT_DROP_RATE = 0.0
_C.MODEL.TRANSFORMER_TYPE = 'None'
_C.MODEL.STRIDE_SIZE = [16, 16]
# New (TransReID-SSL's keys and defaults): height : width of the pre-trained position grid, 1 for
# ImageNet ViTs (square), 2 for TransReID-SSL's LUPerson ViTs (16 x 8, pre-trained at 256x128)
_C.MODEL.PRETRAIN_HW_RATIO = 1
# New: TransReID-SSL's ICS convolution stem (7x7/2 convolution, IBN, two 3x3 convolutions)
# before the patch projection; needs even strides and image sides
_C.MODEL.STEM_CONV = False
# New: PASS's part-token ViT (Zhu et al., ECCV 2022): three learnable part tokens after the class
# token, each with its own position embedding; the feature joins the class token and the parts' mean
_C.MODEL.PASS = False
# New (PASS's key and default): with PASS, one BN neck for the class token and one for each part
# token (True), or one BN neck for the fused feature (False)
_C.MODEL.MULTI_NECK = True
# New (PASS's key and default): with PASS, how the class token and the parts' mean are fused:
# 'cat' (side by side, twice the width) or 'mean' (their average)
_C.MODEL.FEAT_FUSION = 'cat'
# New (SOLIDER's key and default): with SOLIDER's Swin (a swin_* TRANSFORMER_TYPE), how much the
# semantic controller weighs semantics against appearance, 0 to 1 (their re-ID runs: 0.2); -1
# builds the Swin without the controller
_C.MODEL.SEMANTIC_WEIGHT = 1.0

# JPM (jigsaw patch module)
_C.MODEL.JPM = False
_C.MODEL.SHIFT_NUM = 5
_C.MODEL.SHUFFLE_GROUP = 2
_C.MODEL.DEVIDE_LENGTH = 4
_C.MODEL.RE_ARRANGE = True

# SIE (side information embedding)
_C.MODEL.SIE_COE = 3.0
_C.MODEL.SIE_CAMERA = False
_C.MODEL.SIE_VIEW = False

# New: torch.compile of the training and evaluation forward: 'auto' (on CUDA, not on the CPU,
# where compiling takes longer than it saves), 'on' or 'off'; a model that fails to compile
# runs eagerly after one warning
_C.MODEL.COMPILE = 'auto'

# New: training checkpoint (written by do_train) to resume from, '' to start afresh
_C.MODEL.RESUME = ''
# New: 'supervised' (identity labels), 'usl' (no labels: cluster-contrast pseudo-identities, the
# CLUSTER keys) or 'uda' (usl from a model trained with labels on another dataset, loaded with
# PRETRAIN_CHOICE 'finetune', BN necks afresh); docs/unsupervised.md
_C.MODEL.TRAIN_MODE = 'supervised'

# -----------------------------------------------------------------------------
# INPUT
# -----------------------------------------------------------------------------
_C.INPUT = CN()
_C.INPUT.SIZE_TRAIN = [384, 128]
_C.INPUT.SIZE_TEST = [384, 128]
# Probability of a horizontal flip
_C.INPUT.PROB = 0.5
# Probability of random erasing
_C.INPUT.RE_PROB = 0.5
_C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
_C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
_C.INPUT.PADDING = 10
# Per-pixel training augmentation (flip, pad + crop, normalise, erasing) on the training
# device instead of in the loader workers, which then only decode, resize and draw each
# image's random parameters (the same draws as the reference path; see
# datasets/device_augment.py). The trainer must apply DeviceAugment to each batch.
_C.INPUT.DEVICE_AUGMENT = False

# -----------------------------------------------------------------------------
# DATASETS
# -----------------------------------------------------------------------------
_C.DATASETS = CN()
# Dataset name: market1501, dukemtmc, msmt17, occ_duke, veri, VehicleID, synthetic,
# synthetic_vehicle, folder (Market-style names) or list (list files)
_C.DATASETS.NAMES = ('market1501')
# Folder that holds the datasets
_C.DATASETS.ROOT_DIR = ('../data')
# New: VehicleID test-set size, 800, 1600 or 2400
_C.DATASETS.VEHICLEID_TEST_SIZE = 800
# New: list files of the 'list' dataset ('path pid camid [viewid]' per line), relative to ROOT_DIR
_C.DATASETS.TRAIN_LIST = 'train.txt'
_C.DATASETS.QUERY_LIST = 'query.txt'
_C.DATASETS.GALLERY_LIST = 'gallery.txt'

# New: the synthetic re-ID datasets, rendered from these settings on first use
_C.DATASETS.SYNTHETIC = CN()
# New: number of identities, split in half between training and test (as Market does)
_C.DATASETS.SYNTHETIC.NUM_IDS = 200
# New: images rendered per identity
_C.DATASETS.SYNTHETIC.IMAGES_PER_ID = 12
# New: number of cameras
_C.DATASETS.SYNTHETIC.NUM_CAMERAS = 6
# New: rendered image size [height, width]
_C.DATASETS.SYNTHETIC.IMAGE_SIZE = [128, 64]
# New: seed of the generator; the same seed gives the same bytes
_C.DATASETS.SYNTHETIC.SEED = 0
# New: 'A' (the default set) or 'B' (other cameras, lighting, backgrounds, framing and
# identities: a second domain for MODEL.TRAIN_MODE 'uda'); person set only
_C.DATASETS.SYNTHETIC.DOMAIN = 'A'

# -----------------------------------------------------------------------------
# DATALOADER
# -----------------------------------------------------------------------------
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 8
# 'softmax' (plain shuffle) or 'softmax_triplet' (P identities x NUM_INSTANCE images)
_C.DATALOADER.SAMPLER = 'softmax'
_C.DATALOADER.NUM_INSTANCE = 16
# New: attempts to read an image before the error names it (the reference retries forever)
_C.DATALOADER.READ_RETRIES = 3

# -----------------------------------------------------------------------------
# SOLVER
# -----------------------------------------------------------------------------
_C.SOLVER = CN()
# 'SGD', 'Adam' or 'AdamW'
_C.SOLVER.OPTIMIZER_NAME = "Adam"
_C.SOLVER.MAX_EPOCHS = 100
_C.SOLVER.BASE_LR = 3e-4
# Learning rate x2 for the classifiers
_C.SOLVER.LARGE_FC_LR = False
_C.SOLVER.BIAS_LR_FACTOR = 1
_C.SOLVER.SEED = 1234
_C.SOLVER.MOMENTUM = 0.9
# Triplet loss margin
_C.SOLVER.MARGIN = 0.3
# Learning rate of the SGD optimizer of the center-loss centers
_C.SOLVER.CENTER_LR = 0.5
_C.SOLVER.CENTER_LOSS_WEIGHT = 0.0005

_C.SOLVER.WEIGHT_DECAY = 0.0005
_C.SOLVER.WEIGHT_DECAY_BIAS = 0.0005

# WarmupMultiStepLR (ResNet baseline)
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = (40, 70)
_C.SOLVER.WARMUP_FACTOR = 0.01
_C.SOLVER.WARMUP_EPOCHS = 5
# 'constant' or 'linear'
_C.SOLVER.WARMUP_METHOD = "linear"

_C.SOLVER.COSINE_MARGIN = 0.5
_C.SOLVER.COSINE_SCALE = 30

# Save a checkpoint every N epochs
_C.SOLVER.CHECKPOINT_PERIOD = 10
# Log every N iterations
_C.SOLVER.LOG_PERIOD = 100
# Evaluate every N epochs
_C.SOLVER.EVAL_PERIOD = 10
# Global batch size: with 8 GPUs and 128, each GPU holds 16 images
_C.SOLVER.IMS_PER_BATCH = 64
# New: mixed precision on CUDA: 'fp16' (with a GradScaler, as the reference), 'bf16' or 'fp32'
_C.SOLVER.AMP_DTYPE = 'fp16'

# CLIP-ReID's two stages (MODEL.NAME 'ViT-B-16' / 'RN50'), their keys and defaults. Stage 1 learns
# the text prompts against cached image features (Adam, cosine schedule with linear warm-up from
# WARMUP_LR_INIT over WARMUP_EPOCHS to BASE_LR, down to LR_MIN); stage 2 fine-tunes the image
# encoder (WarmupMultiStepLR over STEPS, GAMMA, WARMUP_FACTOR, WARMUP_ITERS, WARMUP_METHOD).
# Keys their code reads from neither stage (MOMENTUM for Adam, COSINE_*, WARMUP_ITERS / WARMUP_FACTOR
# of stage 1, STAGE1.EVAL_PERIOD, WARMUP_EPOCHS / LR_MIN / WARMUP_LR_INIT of stage 2) are kept so
# that their YAMLs load.
_C.SOLVER.STAGE1 = CN()
_C.SOLVER.STAGE1.IMS_PER_BATCH = 64
_C.SOLVER.STAGE1.OPTIMIZER_NAME = "Adam"
_C.SOLVER.STAGE1.MAX_EPOCHS = 100
_C.SOLVER.STAGE1.BASE_LR = 3e-4
_C.SOLVER.STAGE1.MOMENTUM = 0.9
_C.SOLVER.STAGE1.WEIGHT_DECAY = 0.0005
_C.SOLVER.STAGE1.WEIGHT_DECAY_BIAS = 0.0005
_C.SOLVER.STAGE1.WARMUP_FACTOR = 0.01
_C.SOLVER.STAGE1.WARMUP_EPOCHS = 5
_C.SOLVER.STAGE1.WARMUP_LR_INIT = 0.01
_C.SOLVER.STAGE1.LR_MIN = 0.000016
_C.SOLVER.STAGE1.WARMUP_ITERS = 500
_C.SOLVER.STAGE1.WARMUP_METHOD = "linear"
_C.SOLVER.STAGE1.COSINE_MARGIN = 0.5
_C.SOLVER.STAGE1.COSINE_SCALE = 30
_C.SOLVER.STAGE1.CHECKPOINT_PERIOD = 10
_C.SOLVER.STAGE1.LOG_PERIOD = 100
_C.SOLVER.STAGE1.EVAL_PERIOD = 10

_C.SOLVER.STAGE2 = CN()
_C.SOLVER.STAGE2.IMS_PER_BATCH = 64
_C.SOLVER.STAGE2.OPTIMIZER_NAME = "Adam"
_C.SOLVER.STAGE2.MAX_EPOCHS = 100
_C.SOLVER.STAGE2.BASE_LR = 3e-4
_C.SOLVER.STAGE2.LARGE_FC_LR = False
_C.SOLVER.STAGE2.BIAS_LR_FACTOR = 1
_C.SOLVER.STAGE2.MOMENTUM = 0.9
_C.SOLVER.STAGE2.CENTER_LR = 0.5
_C.SOLVER.STAGE2.CENTER_LOSS_WEIGHT = 0.0005
_C.SOLVER.STAGE2.WEIGHT_DECAY = 0.0005
_C.SOLVER.STAGE2.WEIGHT_DECAY_BIAS = 0.0005
_C.SOLVER.STAGE2.GAMMA = 0.1
_C.SOLVER.STAGE2.STEPS = (40, 70)
_C.SOLVER.STAGE2.WARMUP_FACTOR = 0.01
_C.SOLVER.STAGE2.WARMUP_EPOCHS = 5
_C.SOLVER.STAGE2.WARMUP_LR_INIT = 0.01
_C.SOLVER.STAGE2.LR_MIN = 0.000016
_C.SOLVER.STAGE2.WARMUP_ITERS = 500
_C.SOLVER.STAGE2.WARMUP_METHOD = "linear"
_C.SOLVER.STAGE2.COSINE_MARGIN = 0.5
_C.SOLVER.STAGE2.COSINE_SCALE = 30
_C.SOLVER.STAGE2.CHECKPOINT_PERIOD = 10
_C.SOLVER.STAGE2.LOG_PERIOD = 100
_C.SOLVER.STAGE2.EVAL_PERIOD = 10

# -----------------------------------------------------------------------------
# CLUSTER (New: training without labels, MODEL.TRAIN_MODE 'usl' or 'uda'; TransReID-SSL's
# cluster-contrast defaults for ViTs)
# -----------------------------------------------------------------------------
_C.CLUSTER = CN()
# DBSCAN radius on the Jaccard distance: 0.6 in their Market-1501 scripts, 0.7 for MSMT17
_C.CLUSTER.EPS = 0.6
# DBSCAN: images within EPS (itself included) that make an image a core point
_C.CLUSTER.MIN_SAMPLES = 4
# k-reciprocal neighbours (k1) and query expansion (k2) of the Jaccard distance
_C.CLUSTER.K1 = 30
_C.CLUSTER.K2 = 6
# Momentum of the cluster memory's update, and the temperature of its loss
_C.CLUSTER.MEMORY_MOMENTUM = 0.2
_C.CLUSTER.TEMPERATURE = 0.05
# 'yes': each cluster moves towards its hardest crop of the batch (their scripts' --use-hard);
# 'no': towards each crop in turn
_C.CLUSTER.HARD_MEMORY = 'yes'
# Iterations per epoch (each epoch clusters again first); their scripts use 200
_C.CLUSTER.ITERS_PER_EPOCH = 200
# Tracks, crops known to show one person, kept in one pseudo-identity by 'usl' / 'uda'
# (docs/unsupervised.md; ignored with labels):
# 'none'; with DATASETS.NAMES 'unlabelled' 'folders' (a folder per track) or 'names'
# (<track>_c<cam>... names, as tools/mot_to_reid.py writes); 'dataset': the tracks another
# dataset gives (its train_tracks)
_C.CLUSTER.TRACKS = 'none'

# -----------------------------------------------------------------------------
# TEST
# -----------------------------------------------------------------------------
_C.TEST = CN()
_C.TEST.IMS_PER_BATCH = 128
# k-reciprocal re-ranking
_C.TEST.RE_RANKING = False
# New: re-ranking parameters k1, k2 and lambda (Zhong et al., 2017)
_C.TEST.RE_RANKING_K1 = 50
_C.TEST.RE_RANKING_K2 = 15
_C.TEST.RE_RANKING_LAMBDA = 0.3
# Trained model to test
_C.TEST.WEIGHT = ""
# Feature before or after the BN neck: 'before' or 'after'
_C.TEST.NECK_FEAT = 'after'
# L2-normalise features before matching: 'yes' or 'no'
_C.TEST.FEAT_NORM = 'yes'
# New: the feature of an image is the mean of its and its mirror image's (before normalising)
_C.TEST.FLIP_FEATS = False
# New: precision of feature extraction: 'fp32' (the reference's), 'bf16' (autocast; CUDA and
# CPUs with bf16 units), or 'fp16' (autocast on CUDA)
_C.TEST.AMP_DTYPE = 'fp32'
# New: distance between features: 'euclidean' (the reference) or 'cosine'
_C.TEST.DIST_METRIC = 'euclidean'
# New: number of random query/gallery trials averaged on VehicleID (the reference uses 10)
_C.TEST.VEHICLEID_TRIALS = 10
# No effect here (test.py saves no distance matrix); kept so that reference YAMLs load
_C.TEST.DIST_MAT = "dist_mat.npy"
# No effect here (test.py always computes mAP and CMC); kept so that reference YAMLs load
_C.TEST.EVAL = False

# -----------------------------------------------------------------------------
# Misc
# -----------------------------------------------------------------------------
# Folder of logs and checkpoints
_C.OUTPUT_DIR = ""
_C.DEBUG = False
