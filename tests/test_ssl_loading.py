"""TransReID-SSL checkpoints and configs: DINO unwrapping, strictness, safetensors, TorchScript and
CLIP files, the non-square position grid, the name clash of their YAMLs, and their cosine schedule."""
import argparse
import math
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch

from config import ConfigError, load_config
from config import cfg as default_cfg
from model import weights
from model.backbones import TransReID
from model.checkpoint_formats import CheckpointFormatError, SafetensorsMissingError
from model.pos_embed import PosEmbedGridError, resize_pos_embed, source_grid
from model.weights import CheckpointMismatchError, UnreadableWeightsError
from solver import create_scheduler
from tests.ssl_synthetic import TINY, dino_checkpoint, synthetic_input, synthetic_state

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
SSL_CONFIGS = [f"{dataset}/{name}.yml" for dataset in ("Market", "MSMT17")
               for name in ("vit_small_ssl", "vit_small_ics_ssl", "vit_base_ics_ssl_384")]


def tiny_backbone(stem: bool = False, stride: int = 16, size=(256, 128)) -> TransReID:
    return TransReID(img_size=size, stride_size=stride, qkv_bias=True, stem_conv=stem, **TINY).eval()


def load(backbone: TransReID, path, hw_ratio: int = 2) -> TransReID:
    backbone.load_param(str(path), 'tiny', hw_ratio=hw_ratio)
    return backbone


def feature(backbone: TransReID) -> torch.Tensor:
    with torch.no_grad():
        return backbone(synthetic_input(*backbone.patch_embed.img_size))


@pytest.fixture(scope='module')
def state():
    return synthetic_state(stem=False)


@pytest.fixture(scope='module')
def bare_feature(state, tmp_path_factory):
    path = tmp_path_factory.mktemp('bare') / 'bare.pth'
    torch.save(state, path)
    return feature(load(tiny_backbone(), path))


# --------------------------------------------------------------------------------------------
# Unwrapping: the teacher, prefixes, the DINO head, every key consumed
# --------------------------------------------------------------------------------------------
def test_the_teacher_is_loaded_not_the_student(state, bare_feature, tmp_path):
    path = tmp_path / 'dino.pth'
    torch.save(dino_checkpoint(state), path)  # its student is the teacher + 1
    torch.testing.assert_close(feature(load(tiny_backbone(), path)), bare_feature, atol=0, rtol=0)


@pytest.mark.parametrize('encoder, prefix', [('student', 'module.backbone.'), ('target_encoder', 'backbone.'),
                                             ('teacher', 'backbone.')])
def test_a_file_with_one_encoder_loads_it_with_either_prefix(encoder, prefix, state, bare_feature, tmp_path):
    path = tmp_path / 'one.pth'
    torch.save({encoder: {f'{prefix}{key}': value for key, value in state.items()}, 'epoch': 3}, path)
    torch.testing.assert_close(feature(load(tiny_backbone(), path)), bare_feature, atol=0, rtol=0)


def test_the_dino_head_is_left_out_by_prefix_but_every_other_key_must_fit(state, tmp_path):
    checkpoint = dino_checkpoint(state)
    checkpoint['teacher']['module.backbone.fc_norm.weight'] = torch.ones(TINY['embed_dim'])
    checkpoint['teacher']['module.headless.weight'] = torch.ones(3)  # contains 'head', not the head.
    del checkpoint['teacher']['module.backbone.blocks.1.mlp.fc2.bias']
    path = tmp_path / 'extra.pth'
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointMismatchError) as raised:
        load(tiny_backbone(), path)
    message = str(raised.value)
    assert 'fc_norm.weight: not in the model (checkpoint (32,))' in message
    assert '\n  headless.weight: not in the model' in message
    assert 'blocks.1.mlp.fc2.bias: missing from the checkpoint' in message
    assert 'head.mlp' not in message and '(3 problem(s))' in message


def test_a_namespace_is_read_but_other_python_objects_are_still_refused(state, tmp_path):
    path = tmp_path / 'objects.pth'
    checkpoint = dino_checkpoint(state)
    checkpoint['args'].output_dir = Path('/runs/dino')  # a pathlib object beside the Namespace
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointMismatchError, match=r"holds Python objects besides tensors \(.*PosixPath"):
        load(tiny_backbone(), path)
    del checkpoint['args'].output_dir
    torch.save(checkpoint, path)
    assert isinstance(weights.load_file(str(path), '')['args'], argparse.Namespace)


def test_a_wrong_shape_is_an_error_not_a_skipped_key(state, tmp_path):
    path = tmp_path / 'wide.pth'
    torch.save({**state, 'norm.weight': torch.ones(48)}, path)
    with pytest.raises(CheckpointMismatchError, match=r'norm.weight: checkpoint \(48,\) vs model \(32,\)'):
        load(tiny_backbone(), path)


# --------------------------------------------------------------------------------------------
# Other formats
# --------------------------------------------------------------------------------------------
def test_safetensors_files_are_read(state, bare_feature, tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / 'vit.safetensors'
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    torch.testing.assert_close(feature(load(tiny_backbone(), path)), bare_feature, atol=0, rtol=0)
    # Recognised by its header too, whatever its name.
    renamed = tmp_path / 'vit.bin'
    renamed.write_bytes(path.read_bytes())
    torch.testing.assert_close(feature(load(tiny_backbone(), renamed)), bare_feature, atol=0, rtol=0)


def test_a_truncated_safetensors_file_is_named(state, tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / 'cut.safetensors'
    save_file({'norm.weight': torch.ones(1000)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UnreadableWeightsError, match=f"'{path}' could not be read .*truncated or damaged"):
        load(tiny_backbone(), path)


def test_without_safetensors_the_error_names_the_pip_command(tmp_path, monkeypatch):
    path = tmp_path / 'vit.safetensors'
    path.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": 1}        ')
    monkeypatch.setitem(sys.modules, 'safetensors.torch', None)
    with pytest.raises(SafetensorsMissingError, match='pip install safetensors$'):
        weights.read_state_dict(str(path), '')


def test_a_torchscript_archive_says_what_it_is_and_what_to_do(tmp_path):
    path = tmp_path / 'ViT-B-16.pt'
    with warnings.catch_warnings():  # torch.jit is deprecated, not gone: OpenAI's CLIP files are such archives
        warnings.simplefilter('ignore')
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(CheckpointFormatError) as raised:
        weights.read_state_dict(str(path), '')
    message = str(raised.value)
    assert message.startswith(f"'{path}' is a TorchScript archive")
    assert 'torch.jit.load(path' in message and 'CLIP' in message and 'truncated' not in message


def test_a_clip_state_dict_is_refused_with_why(tmp_path):
    path = tmp_path / 'clip.pth'
    torch.save({'visual.class_embedding': torch.zeros(768), 'visual.conv1.weight': torch.zeros(768, 3, 16, 16),
                'text_projection': torch.zeros(512, 512)}, path)
    with pytest.raises(CheckpointFormatError, match='holds a CLIP model .*QuickGELU'):
        load(tiny_backbone(), path)


# --------------------------------------------------------------------------------------------
# The non-square pre-training grid
# --------------------------------------------------------------------------------------------
def test_source_grid_follows_the_height_width_ratio():
    assert source_grid(196) == (14, 14)
    assert source_grid(128, 2) == (16, 8)
    assert source_grid(24 * 8, 3) == (24, 8)
    with pytest.raises(PosEmbedGridError, match='MODEL.PRETRAIN_HW_RATIO 1.*set MODEL.PRETRAIN_HW_RATIO'):
        source_grid(128, 1)


def test_a_non_square_grid_is_resized_as_torch_interpolates_it_without_antialiasing():
    posemb = torch.randn(1, 1 + 16 * 8, 5)
    resized = resize_pos_embed(posemb, (4, 2), hw_ratio=2)  # shrinking: antialiasing would differ
    grid = posemb[:, 1:].reshape(1, 16, 8, 5).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(4, 2), mode='bilinear', align_corners=False)
    torch.testing.assert_close(resized[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 8, 5))
    torch.testing.assert_close(resized[:, :1], posemb[:, :1])
    # By hand: shrinking 16 x 8 to 4 x 2 samples the first position at row 1.5, column 1.5 (half-pixel
    # centres): the mean of rows 1-2 and columns 1-2, with no wider antialiasing filter.
    at = lambda row, column: posemb[0, 1 + row * 8 + column]  # noqa: E731
    torch.testing.assert_close(resized[0, 1], (at(1, 1) + at(1, 2) + at(2, 1) + at(2, 2)) / 4)


def test_an_ssl_checkpoint_at_another_stride_needs_the_ratio(state, tmp_path):
    path = tmp_path / 'bare.pth'
    torch.save(state, path)
    with pytest.raises(PosEmbedGridError, match='128 patch positions'):
        load(tiny_backbone(stride=12), path, hw_ratio=1)


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------
THEIR_VIT_SMALL_YAML = """\
MODEL:
  PRETRAIN_PATH: '../../model/vit_small_cfs_lup.pth'
  PRETRAIN_HW_RATIO: 2
  NAME: 'transformer'
  NO_MARGIN: True
  TRANSFORMER_TYPE: 'vit_small_patch16_224_TransReID'
  STRIDE_SIZE: [16, 16]
  STEM_CONV: {stem}
INPUT:
  SIZE_TRAIN: [256, 128]
  SIZE_TEST: [256, 128]
SOLVER:
  BASE_LR: 0.0004
  WARMUP_EPOCHS: 20
  WARMUP_METHOD: 'cosine'
"""


@pytest.mark.parametrize('stem', [False, True])
def test_their_yamls_as_they_are_are_refused_with_the_name_clash(stem, tmp_path):
    path = tmp_path / 'vit_small.yml'
    path.write_text(THEIR_VIT_SMALL_YAML.format(stem=stem))
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    message = str(raised.value)
    assert '\n' not in message and str(path) in message
    assert "set TRANSFORMER_TYPE 'vit_small_ssl_patch16_224_TransReID'" in message and '768-wide' in message
    opts = ['MODEL.TRANSFORMER_TYPE', 'vit_small_ssl_patch16_224_TransReID']
    assert load_config(str(path), opts).MODEL.STEM_CONV is stem


@pytest.mark.parametrize('name', SSL_CONFIGS)
def test_ssl_configs_load_with_their_recipe(name):
    cfg = load_config(str(CONFIG_DIR / name))
    assert (cfg.MODEL.PRETRAIN_HW_RATIO, cfg.SOLVER.WARMUP_METHOD, cfg.SOLVER.BASE_LR) == (2, 'cosine', 0.0004)
    assert cfg.MODEL.STEM_CONV == ('ics' in name) and cfg.MODEL.TRANSFORMER_TYPE != 'vit_small_patch16_224_TransReID'


def test_defaults_are_transreid_ssls():
    assert default_cfg.MODEL.PRETRAIN_HW_RATIO == 1 and default_cfg.MODEL.STEM_CONV is False


@pytest.mark.parametrize('opts, message', [
    (['MODEL.STEM_CONV', 'True', 'MODEL.STRIDE_SIZE', '[13, 13]'], 'MODEL.STRIDE_SIZE [13, 13] has an odd side'),
    (['MODEL.STEM_CONV', 'True', 'INPUT.SIZE_TRAIN', '[255, 128]', 'INPUT.SIZE_TEST', '[255, 128]'],
     'INPUT.SIZE_TRAIN [255, 128] has an odd side'),
    (['MODEL.STEM_CONV', 'True', 'MODEL.NAME', 'resnet50'], "MODEL.STEM_CONV is the convolution stem of a ViT"),
    (['MODEL.PRETRAIN_HW_RATIO', '0'], 'MODEL.PRETRAIN_HW_RATIO 0 is not allowed'),
])
def test_impossible_ssl_settings_are_refused_at_load(opts, message):
    base = ['MODEL.NAME', 'transformer', 'MODEL.TRANSFORMER_TYPE', 'vit_small_ssl_patch16_224_TransReID',
            'INPUT.SIZE_TRAIN', '[256, 128]', 'INPUT.SIZE_TEST', '[256, 128]']
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config('', base + opts)


# --------------------------------------------------------------------------------------------
# WARMUP_METHOD 'cosine': TransReID-SSL's scheduler, stepped at the end of each epoch
# --------------------------------------------------------------------------------------------
def their_lr(t: int, base: float, warmup: int, epochs: int) -> float:
    """TransReID-SSL's CosineLRScheduler._get_lr(t), written out: lr_min 0.002, warm-up from 0.01
    of the base rate, one cycle (cycle_limit 1)."""
    lr_min, lr_init = 0.002 * base, 0.01 * base
    if t < warmup:
        return lr_init + t * (base - lr_init) / warmup
    if t < epochs:
        return lr_min + 0.5 * (base - lr_min) * (1 + math.cos(math.pi * t / epochs))
    return lr_min


@pytest.mark.parametrize('model_name', ['transformer', 'resnet50'])
def test_cosine_method_gives_each_epoch_the_rate_transreid_ssl_trains_it_with(model_name):
    cfg = default_cfg.clone()
    cfg.MODEL.NAME, cfg.SOLVER.WARMUP_METHOD = model_name, 'cosine'
    cfg.SOLVER.BASE_LR, cfg.SOLVER.WARMUP_EPOCHS, cfg.SOLVER.MAX_EPOCHS = 0.0004, 20, 120
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0004)
    scheduler = create_scheduler(cfg, optimizer)
    # TransReID-SSL: epoch 1 runs at the rate set at construction, then step(e) after epoch e.
    for epoch in range(1, 123):
        scheduler.step(epoch)  # here: at the start of the epoch
        assert optimizer.param_groups[0]['lr'] == pytest.approx(their_lr(epoch - 1, 0.0004, 20, 120), rel=1e-12)
        assert scheduler._get_lr(epoch)[0] == optimizer.param_groups[0]['lr']
    # The reference's schedule ('linear' for a transformer) runs one epoch ahead.
    cfg.MODEL.NAME, cfg.SOLVER.WARMUP_METHOD = 'transformer', 'linear'
    reference = create_scheduler(cfg, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0004))
    assert reference._get_lr(21)[0] == pytest.approx(their_lr(21, 0.0004, 20, 120), rel=1e-12)
