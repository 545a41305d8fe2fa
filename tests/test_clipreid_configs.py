"""CLIP-ReID's configs: their published YAML loads once its DATASETS block is filled in (as their
README says to) and is refused with the reason as published; their SIE + OLP command builds its
model; make_model builds their real-size networks, whose keys and shapes are those of their code
(tests/fixtures/clipreid/keys.json), and OpenAI's real-size keys map onto them with only the heads
and learnt prompts left fresh; settings their code would misuse are refused with the fix."""
import json
import re
from pathlib import Path

import pytest
import torch

from config import ConfigError, load_config
from model import make_model
from model.backbones.specs import ClipSpec, eval_feature_dim, feature_dim
from model.clipreid import CLIPReID
from tests.clip_synthetic import TINY_VIT
from tests.fixtures.clipreid.generate import REAL_CAMERAS, REAL_CLASSES

REPO = Path(__file__).resolve().parent.parent
KEYS = REPO / 'tests' / 'fixtures' / 'clipreid' / 'keys.json'
# Syliz517/CLIP-ReID eb1898b configs/person/vit_clipreid.yml, verbatim.
PUBLISHED_VIT_CLIPREID = '''\
MODEL:
  PRETRAIN_CHOICE: 'imagenet'
  METRIC_LOSS_TYPE: 'triplet'
  IF_LABELSMOOTH: 'on'
  IF_WITH_CENTER: 'no'
  NAME: 'ViT-B-16'
  STRIDE_SIZE: [16, 16]
  ID_LOSS_WEIGHT : 0.25
  TRIPLET_LOSS_WEIGHT : 1.0
  I2T_LOSS_WEIGHT : 1.0
  # SIE_CAMERA: True
  # SIE_COE : 1.0

INPUT:
  SIZE_TRAIN: [256, 128]
  SIZE_TEST: [256, 128]
  PROB: 0.5 # random horizontal flip
  RE_PROB: 0.5 # random erasing
  PADDING: 10
  PIXEL_MEAN: [0.5, 0.5, 0.5]
  PIXEL_STD: [0.5, 0.5, 0.5]

DATALOADER:
  SAMPLER: 'softmax_triplet'
  NUM_INSTANCE: 4
  NUM_WORKERS: 8

SOLVER:
  STAGE1:
    IMS_PER_BATCH: 64
    OPTIMIZER_NAME: "Adam"
    BASE_LR: 0.00035
    WARMUP_LR_INIT: 0.00001
    LR_MIN: 1e-6
    WARMUP_METHOD: 'linear'
    WEIGHT_DECAY:  1e-4
    WEIGHT_DECAY_BIAS: 1e-4
    MAX_EPOCHS: 120
    CHECKPOINT_PERIOD: 120
    LOG_PERIOD: 50
    WARMUP_EPOCHS: 5

  STAGE2:
    IMS_PER_BATCH: 64
    OPTIMIZER_NAME: "Adam"
    BASE_LR: 0.000005
    WARMUP_METHOD: 'linear'
    WARMUP_ITERS: 10
    WARMUP_FACTOR: 0.1
    WEIGHT_DECAY:  0.0001
    WEIGHT_DECAY_BIAS: 0.0001
    LARGE_FC_LR: False
    MAX_EPOCHS: 60
    CHECKPOINT_PERIOD: 60
    LOG_PERIOD: 50
    EVAL_PERIOD: 60
    BIAS_LR_FACTOR: 2

    STEPS: [30, 50]
    GAMMA: 0.1

TEST:
  EVAL: True
  IMS_PER_BATCH: 64
  RE_RANKING: False
  WEIGHT: ''
  NECK_FEAT: 'before'
  FEAT_NORM: 'yes'

DATASETS:
#   NAMES: ('market1501')
#   ROOT_DIR: ('')
# OUTPUT_DIR: ''

#   NAMES: ('dukemtmc')
#   ROOT_DIR: ('')
# OUTPUT_DIR: ''

#   NAMES: ('occ_duke')
#   ROOT_DIR: ('')
# OUTPUT_DIR: ''

#   NAMES: ('msmt17')
#   ROOT_DIR: ('')
# OUTPUT_DIR: ''

# CUDA_VISIBLE_DEVICES=3 python train_clipreid.py --config_file configs/person/vit_clipreid.yml
'''
# As their README says to fill it in.
FILLED_IN = ("DATASETS:\n#   NAMES: ('market1501')\n#   ROOT_DIR: ('')",
             "DATASETS:\n   NAMES: ('market1501')\n   ROOT_DIR: ('your_dataset_dir')")


def test_published_file_is_refused_naming_the_empty_datasets_block(tmp_path):
    path = tmp_path / 'vit_clipreid.yml'
    path.write_text(PUBLISHED_VIT_CLIPREID)
    with pytest.raises(ConfigError, match="DATASETS is a section, not a value"):
        load_config(str(path))


def their_file_filled_in(tmp_path) -> str:
    path = tmp_path / 'vit_clipreid.yml'
    path.write_text(PUBLISHED_VIT_CLIPREID.replace(*FILLED_IN))
    return str(path)


def test_published_file_loads_filled_in_with_their_values(tmp_path):
    theirs = load_config(their_file_filled_in(tmp_path))
    assert (theirs.MODEL.NAME, theirs.MODEL.ID_LOSS_WEIGHT, theirs.MODEL.I2T_LOSS_WEIGHT) == ('ViT-B-16', 0.25, 1.0)
    assert (theirs.SOLVER.STAGE1.MAX_EPOCHS, theirs.SOLVER.STAGE1.BASE_LR, theirs.SOLVER.STAGE1.WARMUP_LR_INIT,
            theirs.SOLVER.STAGE1.LR_MIN) == (120, 0.00035, 0.00001, 1e-6)
    assert (theirs.SOLVER.STAGE2.MAX_EPOCHS, theirs.SOLVER.STAGE2.BASE_LR, tuple(theirs.SOLVER.STAGE2.STEPS),
            theirs.SOLVER.STAGE2.WARMUP_ITERS, theirs.SOLVER.STAGE2.BIAS_LR_FACTOR) == (60, 0.000005, (30, 50), 10, 2)
    assert (theirs.TEST.NECK_FEAT, theirs.INPUT.PIXEL_MEAN, theirs.DATASETS.ROOT_DIR) == (
        'before', [0.5, 0.5, 0.5], 'your_dataset_dir')


def test_their_sie_olp_command_builds_camera_sie_at_stride_12(tmp_path):
    # Their README: train_clipreid.py --config_file configs/person/vit_clipreid.yml
    #   MODEL.SIE_CAMERA True MODEL.SIE_COE 1.0 MODEL.STRIDE_SIZE '[12, 12]'
    cfg = load_config(their_file_filled_in(tmp_path), ['MODEL.SIE_CAMERA', 'True', 'MODEL.SIE_COE', '1.0',
                                                       'MODEL.STRIDE_SIZE', '[12, 12]', 'MODEL.PRETRAIN_CHOICE', 'none'])
    with torch.device('meta'):
        model = make_model(cfg, num_class=REAL_CLASSES, camera_num=REAL_CAMERAS, view_num=1)
    assert model.grid == (21, 10) and model.image_encoder.conv1.stride == (12, 12)
    assert tuple(model.cv_embed.shape) == (REAL_CAMERAS, 768) and model.sie_coe == 1.0


@pytest.mark.parametrize('name, width', [('ViT-B-16', 768 + 512), ('RN50', 2048 + 1024)])
def test_real_size_networks_have_their_keys_and_shapes(name, width):
    cfg = load_config(opts=['MODEL.NAME', name, 'MODEL.PRETRAIN_CHOICE', 'none', 'MODEL.SIE_CAMERA',
                            str(name == 'ViT-B-16'), 'INPUT.SIZE_TRAIN', '[256, 128]', 'INPUT.SIZE_TEST', '[256, 128]'])
    with torch.device('meta'):  # shapes only: no memory, no initialisation time
        model = make_model(cfg, num_class=REAL_CLASSES, camera_num=REAL_CAMERAS, view_num=1)
    theirs = json.load(open(KEYS))[f'{name}_real']
    assert {key: list(value.shape) for key, value in model.state_dict().items()} == theirs
    assert eval_feature_dim(cfg) == width and feature_dim(cfg) == width - model.in_planes_proj


@pytest.mark.parametrize('name', ['ViT-B-16', 'RN50'])
def test_openai_real_size_keys_map_onto_the_model_with_nothing_left_over(name):
    from model.clip_weights import adapt_openai_clip_state
    from model.weights import state_mismatches
    from tests.clip_synthetic import openai_clip_shapes
    from tests.fixtures.clipreid.generate import REAL_SPECS

    cfg = load_config(opts=['MODEL.NAME', name, 'MODEL.PRETRAIN_CHOICE', 'none', 'INPUT.SIZE_TRAIN', '[256, 128]',
                            'INPUT.SIZE_TEST', '[256, 128]', 'MODEL.STRIDE_SIZE', '[16, 16]'])
    with torch.device('meta'):
        model = make_model(cfg, num_class=REAL_CLASSES, camera_num=REAL_CAMERAS, view_num=1)
        openai = {key: torch.empty(shape) for key, shape in openai_clip_shapes(**REAL_SPECS[name]).items()}
        adapted = adapt_openai_clip_state(openai, model.grid, model.prompt_learner.tokenized_prompts, name)
    fresh = {'classifier.weight', 'classifier_proj.weight', 'prompt_learner.cls_ctx'} | {
        f'{neck}.{part}' for neck in ('bottleneck', 'bottleneck_proj')
        for part in ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')}
    assert state_mismatches(model.state_dict(), adapted, allowed_missing=fresh) == []
    assert set(model.state_dict()) - set(adapted) == fresh


@pytest.mark.parametrize('opts, named', [
    (['MODEL.NAME', 'ViT-B-16', 'MODEL.STRIDE_SIZE', '[12, 16]'], "steps its patches by one stride"),
    (['MODEL.NAME', 'RN50', 'MODEL.STRIDE_SIZE', '[12, 12]'], re.escape("set STRIDE_SIZE [16, 16]")),
    (['MODEL.NAME', 'RN50', 'MODEL.SIE_CAMERA', 'True'], "set SIE_CAMERA and SIE_VIEW False"),
])
def test_settings_their_code_would_misuse_are_refused_with_the_fix(opts, named):
    cfg = load_config(opts=opts + ['MODEL.PRETRAIN_CHOICE', 'none'])
    with torch.device('meta'), pytest.raises(ConfigError, match=named):
        make_model(cfg, num_class=REAL_CLASSES, camera_num=REAL_CAMERAS, view_num=1)


def test_images_of_another_size_than_the_model_was_built_for_are_named():
    model = CLIPReID(ClipSpec(**TINY_VIT), 2, (384, 128), (16, 16)).eval()  # INPUT.SIZE_TRAIN's default
    with pytest.raises(ValueError, match=r"input images of 16x8 patches, but the model was built for 24x8"):
        model(torch.zeros(1, 3, 256, 128))


def flat(cfg, prefix=''):
    out = {}
    for key, value in cfg.items():
        out.update(flat(value, f'{prefix}{key}.') if isinstance(value, dict) else {f'{prefix}{key}': value})
    return out


# What this repository's copies add to their files filled in: the data folder, the CLIP weights, the run folder.
FILLED_KEYS = {'DATASETS.ROOT_DIR', 'MODEL.PRETRAIN_PATH', 'OUTPUT_DIR'}


def test_repository_config_is_their_published_file(tmp_path):
    theirs = flat(load_config(their_file_filled_in(tmp_path)))
    ours = flat(load_config(str(REPO / 'configs' / 'Market' / 'vit_clipreid.yml')))
    assert {key for key in ours if ours[key] != theirs[key]} == FILLED_KEYS
    sie_olp = flat(load_config(str(REPO / 'configs' / 'Market' / 'vit_clipreid_sie_olp.yml')))
    command = flat(load_config(their_file_filled_in(tmp_path), ['MODEL.SIE_CAMERA', 'True', 'MODEL.SIE_COE', '1.0',
                                                                'MODEL.STRIDE_SIZE', '[12, 12]']))
    assert {key for key in sie_olp if sie_olp[key] != command[key]} == FILLED_KEYS


REPOSITORY_CLIP_CONFIGS = sorted(path for path in REPO.glob('configs/*/*_clipreid*.yml') if 'Synthetic' not in str(path))


def test_every_dataset_has_its_clipreid_configs():
    assert {(path.parent.name, path.name) for path in REPOSITORY_CLIP_CONFIGS} >= {
        (folder, name) for folder in ('Market', 'MSMT17', 'DukeMTMC', 'OCC_Duke', 'VeRi', 'VehicleID')
        for name in ('vit_clipreid.yml', 'cnn_clipreid.yml')}


@pytest.mark.parametrize('path', REPOSITORY_CLIP_CONFIGS, ids=lambda path: f'{path.parent.name}/{path.name}')
def test_repository_clipreid_configs_build_at_real_size(path):
    cfg = load_config(str(path), ['MODEL.PRETRAIN_CHOICE', 'none'])
    with torch.device('meta'):
        model = make_model(cfg, num_class=REAL_CLASSES, camera_num=REAL_CAMERAS, view_num=1)
    assert model.in_planes + model.in_planes_proj == eval_feature_dim(cfg)
    assert model.prompt_learner.cls_ctx.shape[0] == REAL_CLASSES
    assert cfg.SOLVER.MAX_EPOCHS == cfg.SOLVER.STAGE2.MAX_EPOCHS


def test_stage2_reads_their_stage2_keys_as_the_solver(tmp_path):
    cfg = load_config(their_file_filled_in(tmp_path))
    solver = cfg.SOLVER
    assert (solver.MAX_EPOCHS, solver.BASE_LR, tuple(solver.STEPS), solver.GAMMA, solver.WARMUP_FACTOR,
            solver.WARMUP_EPOCHS, solver.IMS_PER_BATCH, solver.BIAS_LR_FACTOR, solver.WEIGHT_DECAY,
            solver.OPTIMIZER_NAME, solver.EVAL_PERIOD) == (60, 0.000005, (30, 50), 0.1, 0.1, 10, 64, 2, 0.0001,
                                                          'Adam', 60)
    # A SOLVER key that stage 2 would not read is refused, naming the one it reads.
    with pytest.raises(ConfigError, match=r"SOLVER.MAX_EPOCHS 7 .* SOLVER.STAGE2.MAX_EPOCHS \(60\)"):
        load_config(their_file_filled_in(tmp_path), ['SOLVER.MAX_EPOCHS', '7'])
    with pytest.raises(ConfigError, match=r"SOLVER.WARMUP_EPOCHS 2 .* SOLVER.STAGE2.WARMUP_ITERS"):
        load_config(their_file_filled_in(tmp_path), ['SOLVER.WARMUP_EPOCHS', '2'])


def test_a_test_size_other_than_the_training_size_is_refused_when_the_config_loads(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("set INPUT.SIZE_TEST [256, 128]")):
        load_config(their_file_filled_in(tmp_path), ['INPUT.SIZE_TEST', '[384, 128]'])
