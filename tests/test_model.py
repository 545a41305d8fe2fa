"""Model tests: output shapes for every config, JPM shuffle, SIE, attention and heads, and eval
features equal to an independent plain re-implementation of the reference's forward pass."""
from __future__ import annotations

import glob
import math
import os
from typing import Dict, List

import pytest
import torch
import torch.nn.functional as F

from config import cfg as default_cfg, load_config
from model import make_model
from model.backbones import VIT_SPECS, TransReID, feature_dim
from model.backbones.specs import CLIP_SPECS, is_swin
from model.backbones.vit_pytorch import Attention
from model.heads import AMSoftmax, Arcface, CircleLoss, Cosface, make_classifier
from model.make_model import shuffle_unit

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_VIT = 'tiny_test_TransReID'
# A ViT small enough for exact comparisons in milliseconds; qk_scale exercises vit_small's override.
TINY_SPECS = {
    TINY_VIT: dict(embed_dim=32, depth=3, num_heads=4, mlp_ratio=2.0, qkv_bias=True),
    'tiny_scaled_test_TransReID': dict(embed_dim=24, depth=2, num_heads=3, mlp_ratio=3.0, qkv_bias=False,
                                       qk_scale=0.1),
}
CAMERA_NUM, VIEW_NUM, NUM_CLASSES = 3, 2, 7


@pytest.fixture
def tiny_vits(monkeypatch):
    """Registers the tiny test backbones in VIT_SPECS for the duration of a test."""
    for name, spec in TINY_SPECS.items():
        monkeypatch.setitem(VIT_SPECS, name, spec)


def tiny_cfg(*opts, transformer_type: str = TINY_VIT):
    """Default config for a tiny TransReID on 64x48 images (stride 12: a 5x3 patch grid), no pretraining."""
    cfg = default_cfg.clone()
    cfg.merge_from_list(['MODEL.NAME', 'transformer', 'MODEL.TRANSFORMER_TYPE', transformer_type,
                         'MODEL.PRETRAIN_CHOICE', 'none', 'MODEL.DROP_PATH', 0.0,
                         'INPUT.SIZE_TRAIN', [64, 48], 'INPUT.SIZE_TEST', [64, 48],
                         'MODEL.STRIDE_SIZE', [12, 12], *opts])
    return cfg


def perturb_(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values in every parameter and BN statistic, so that no layer is an identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator) * 0.1
            if name.endswith('running_var'):
                tensor.copy_(0.5 + noise.abs())
            else:
                tensor.add_(noise)


def camera_view_labels(batch: int):
    return torch.arange(batch) % CAMERA_NUM, torch.arange(batch) % VIEW_NUM


# --------------------------------------------------------------------------------------------
# Plain re-implementation of the reference forward pass, reading the reference's key names.
# --------------------------------------------------------------------------------------------
def _layer_norm(x, sd, prefix):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + 'weight'], sd[prefix + 'bias'], eps=1e-6)


def _linear(x, sd, prefix):
    out = x @ sd[prefix + 'weight'].t()
    return out + sd[prefix + 'bias'] if prefix + 'bias' in sd else out


def _reference_block(x, sd, prefix, num_heads, scale):
    batch, tokens, dim = x.shape
    qkv = _linear(_layer_norm(x, sd, prefix + 'norm1.'), sd, prefix + 'attn.qkv.')
    q, k, v = qkv.reshape(batch, tokens, 3, num_heads, dim // num_heads).permute(2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
    x = x + _linear((attn @ v).transpose(1, 2).reshape(batch, tokens, dim), sd, prefix + 'attn.proj.')
    hidden = F.gelu(_linear(_layer_norm(x, sd, prefix + 'norm2.'), sd, prefix + 'mlp.fc1.'))
    return x + _linear(hidden, sd, prefix + 'mlp.fc2.')


def _reference_shuffle(features, shift, group):
    batch, dim = features.size(0), features.size(-1)
    x = torch.cat([features[:, shift:], features[:, 1:shift]], dim=1)
    if x.size(1) % group:
        x = torch.cat([x, x[:, -2:-1, :]], dim=1)
    return torch.transpose(x.view(batch, group, -1, dim), 1, 2).contiguous().view(batch, -1, dim)


def _bn(x, sd, prefix):
    return F.batch_norm(x, sd[prefix + 'running_mean'], sd[prefix + 'running_var'], sd[prefix + 'weight'],
                        sd[prefix + 'bias'], training=False, eps=1e-5)


def _ibn(x, sd, prefix):
    half = x.shape[1] // 2
    normed = F.instance_norm(x[:, :half], weight=sd[prefix + 'IN.weight'], bias=sd[prefix + 'IN.bias'], eps=1e-5)
    return torch.cat([normed, _bn(x[:, half:], sd, prefix + 'BN.')], dim=1)


def _reference_ics_stem(images, sd, prefix='base.patch_embed.conv.'):
    """TransReID-SSL's ICS stem in eval mode: 7x7/2 conv, IBN, ReLU, 3x3 conv, IBN, ReLU, 3x3 conv, BN, ReLU."""
    x = F.relu(_ibn(F.conv2d(images, sd[prefix + '0.weight'], stride=2, padding=3), sd, prefix + '1.'))
    x = F.relu(_ibn(F.conv2d(x, sd[prefix + '3.weight'], padding=1), sd, prefix + '4.'))
    return F.relu(_bn(F.conv2d(x, sd[prefix + '6.weight'], padding=1), sd, prefix + '7.'))


def reference_eval_features(sd: Dict[str, torch.Tensor], cfg, images, cam, view, camera_num, view_num):
    """Eval-mode features as the reference's build_transformer(_local) computes them (4 JPM parts);
    with MODEL.STEM_CONV, after TransReID-SSL's stem, whose projection steps by half the stride."""
    spec = VIT_SPECS[cfg.MODEL.TRANSFORMER_TYPE]
    heads, depth = spec['num_heads'], spec['depth']
    scale = spec.get('qk_scale') or (spec['embed_dim'] // heads) ** -0.5
    stride = tuple(cfg.MODEL.STRIDE_SIZE)
    if cfg.MODEL.STEM_CONV:
        images, stride = _reference_ics_stem(images, sd), tuple(side // 2 for side in stride)
    x = F.conv2d(images, sd['base.patch_embed.proj.weight'], sd['base.patch_embed.proj.bias'],
                 stride=stride).flatten(2).transpose(1, 2)
    x = torch.cat([sd['base.cls_token'].expand(x.shape[0], -1, -1), x], dim=1) + sd['base.pos_embed']
    cam_on, view_on = cfg.MODEL.SIE_CAMERA, cfg.MODEL.SIE_VIEW
    if cam_on and view_on:
        x = x + cfg.MODEL.SIE_COE * sd['base.sie_embed'][cam * view_num + view]
    elif cam_on:
        x = x + cfg.MODEL.SIE_COE * sd['base.sie_embed'][cam]
    elif view_on:
        x = x + cfg.MODEL.SIE_COE * sd['base.sie_embed'][view]
    if not cfg.MODEL.JPM:
        for i in range(depth):
            x = _reference_block(x, sd, f'base.blocks.{i}.', heads, scale)
        global_feat = _layer_norm(x, sd, 'base.norm.')[:, 0]
        return _bn(global_feat, sd, 'bottleneck.') if cfg.TEST.NECK_FEAT == 'after' else global_feat
    for i in range(depth - 1):
        x = _reference_block(x, sd, f'base.blocks.{i}.', heads, scale)
    global_feat = _layer_norm(_reference_block(x, sd, 'b1.0.', heads, scale), sd, 'b1.1.')[:, 0]
    patch_length = (x.size(1) - 1) // 4
    token = x[:, 0:1]
    patches = _reference_shuffle(x, cfg.MODEL.SHIFT_NUM, cfg.MODEL.SHUFFLE_GROUP) if cfg.MODEL.RE_ARRANGE \
        else x[:, 1:]
    local_feats = []
    for part in range(4):
        part_tokens = torch.cat([token, patches[:, patch_length * part:patch_length * (part + 1)]], dim=1)
        local_feats.append(_layer_norm(_reference_block(part_tokens, sd, 'b2.0.', heads, scale), sd, 'b2.1.')[:, 0])
    if cfg.TEST.NECK_FEAT == 'after':
        global_feat = _bn(global_feat, sd, 'bottleneck.')
        local_feats = [_bn(feat, sd, f'bottleneck_{i + 1}.') for i, feat in enumerate(local_feats)]
    return torch.cat([global_feat] + [feat / 4 for feat in local_feats], dim=1)


EQUIVALENCE_SETTINGS = {
    'transreid_stride_after': ['MODEL.JPM', True, 'MODEL.SIE_CAMERA', True, 'MODEL.SIE_VIEW', True],
    'transreid_before_camera': ['MODEL.JPM', True, 'MODEL.SIE_CAMERA', True, 'TEST.NECK_FEAT', 'before',
                                'MODEL.SHIFT_NUM', 8],
    'jpm_no_rearrange_view': ['MODEL.JPM', True, 'MODEL.SIE_VIEW', True, 'MODEL.RE_ARRANGE', False],
    'baseline_no_overlap': ['MODEL.STRIDE_SIZE', [16, 16], 'TEST.NECK_FEAT', 'after'],
    'vit_small_scale': ['MODEL.SIE_CAMERA', True, 'TEST.NECK_FEAT', 'before'],
}


@pytest.mark.parametrize('name', sorted(EQUIVALENCE_SETTINGS))
def test_eval_features_equal_plain_reference(tiny_vits, name):
    transformer_type = 'tiny_scaled_test_TransReID' if name == 'vit_small_scale' else TINY_VIT
    cfg = tiny_cfg(*EQUIVALENCE_SETTINGS[name], transformer_type=transformer_type)
    torch.manual_seed(0)
    model = make_model(cfg, NUM_CLASSES, CAMERA_NUM, VIEW_NUM)
    perturb_(model)
    model.eval()
    images = torch.randn(3, 3, 64, 48)
    cam, view = camera_view_labels(3)
    with torch.no_grad():
        ours = model(images, cam_label=cam, view_label=view)
        expected = reference_eval_features(model.state_dict(), cfg, images, cam, view, CAMERA_NUM, VIEW_NUM)
    parts = 5 if cfg.MODEL.JPM else 1
    assert ours.shape == (3, parts * feature_dim(cfg))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize('qk_scale', [None, 0.05])
def test_attention_equals_explicit_softmax(qk_scale):
    torch.manual_seed(0)
    attention = Attention(dim=12, num_heads=3, qkv_bias=True, qk_scale=qk_scale).eval()
    x = torch.randn(2, 5, 12)
    scale = qk_scale if qk_scale else 4 ** -0.5
    q, k, v = attention.qkv(x).reshape(2, 5, 3, 3, 4).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1)
    expected = attention.proj((weights @ v).transpose(1, 2).reshape(2, 5, 12))
    torch.testing.assert_close(attention(x), expected, atol=1e-6, rtol=1e-6)


def test_shift_and_shuffle_hand_made():
    # Class token 0, patches 1..8. Shift 5 rotates the patches left by 4: 5 6 7 8 1 2 3 4;
    # two groups (5 6 7 8 | 1 2 3 4) interleaved give 5 1 6 2 7 3 8 4.
    tokens = torch.arange(9.).view(1, 9, 1)
    assert shuffle_unit(tokens, shift=5, group=2).flatten().tolist() == [5, 1, 6, 2, 7, 3, 8, 4]
    # Patches 1..7 do not split in two: shift 2 gives 2 3 4 5 6 7 1, padded with the second-to-last
    # token (7) to 2 3 4 5 | 6 7 1 7, interleaved 2 6 3 7 4 1 5 7.
    tokens = torch.arange(8.).view(1, 8, 1)
    assert shuffle_unit(tokens, shift=2, group=2).flatten().tolist() == [2, 6, 3, 7, 4, 1, 5, 7]
    # Feature vectors move as a whole, batch items independently.
    tokens = torch.arange(2 * 9 * 3.).view(2, 9, 3)
    shuffled = shuffle_unit(tokens, shift=5, group=2)
    torch.testing.assert_close(shuffled[1, 1], tokens[1, 1])
    torch.testing.assert_close(shuffled[0, 0], tokens[0, 5])


def test_shuffle_rejects_shift_zero():
    with pytest.raises(ValueError, match='SHIFT_NUM'):
        shuffle_unit(torch.zeros(1, 5, 2), shift=0, group=2)


def test_shuffle_rejects_zero_groups():
    with pytest.raises(ValueError, match=r'SHUFFLE_GROUP \(0\)'):
        shuffle_unit(torch.zeros(1, 5, 2), shift=1, group=0)


def _sie_tokens(camera: int, view: int, cam_label=None, view_label=None) -> torch.Tensor:
    """Embedded tokens of a zero image with zero patch/position embeddings: only SIE remains."""
    vit = TransReID(img_size=(16, 16), embed_dim=4, depth=1, num_heads=1, camera=camera, view=view, sie_coe=3.0)
    with torch.no_grad():
        for tensor in (vit.pos_embed, vit.cls_token, vit.patch_embed.proj.weight, vit.patch_embed.proj.bias):
            tensor.zero_()
        if vit.sie_embed is not None:
            rows = torch.arange(vit.sie_embed.shape[0], dtype=torch.float32)
            vit.sie_embed.copy_(rows.view(-1, 1, 1).expand_as(vit.sie_embed))
    return vit.embed(torch.zeros(len(cam_label if cam_label is not None else view_label), 3, 16, 16),
                     cam_label, view_label)


def test_sie_indexes_camera_times_view_num_plus_view():
    cams, views = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 0, 2, 1])
    tokens = _sie_tokens(camera=4, view=5, cam_label=cams, view_label=views)
    # Row r holds the value r everywhere; every token gets 3.0 x row (camera * 5 + view).
    expected = 3.0 * torch.tensor([4., 5., 12., 16.])
    assert tokens.shape == (4, 2, 4)
    torch.testing.assert_close(tokens, expected.view(4, 1, 1).expand(4, 2, 4))


@pytest.mark.parametrize('camera, view, expected_rows', [(4, 0, [2, 3]), (0, 5, [4, 1]), (4, 1, [2, 3])])
def test_sie_single_side_information(camera, view, expected_rows):
    tokens = _sie_tokens(camera, view, cam_label=torch.tensor([2, 3]), view_label=torch.tensor([4, 1]))
    torch.testing.assert_close(tokens[:, 0, 0], 3.0 * torch.tensor(expected_rows, dtype=torch.float32))


def test_sie_table_only_when_a_count_exceeds_one():
    assert TransReID(img_size=(16, 16), embed_dim=4, depth=1, num_heads=1, camera=1, view=1).sie_embed is None
    assert TransReID(img_size=(16, 16), embed_dim=4, depth=1, num_heads=1, camera=6, view=8).sie_embed.shape \
        == (48, 1, 4)
    assert TransReID(img_size=(16, 16), embed_dim=4, depth=1, num_heads=1, camera=6).sie_embed.shape == (6, 1, 4)


def test_sie_without_labels_is_a_clear_error():
    with pytest.raises(ValueError, match='cam_label'):
        _sie_tokens(camera=3, view=0, view_label=torch.tensor([0]))


@pytest.mark.parametrize('size, stride, grid', [((256, 128), (16, 16), (16, 8)), ((256, 128), (12, 12), (21, 10)),
                                                ((384, 128), (12, 12), (31, 10)), ((256, 256), (14, 14), (18, 18))])
def test_overlapping_patch_grid(size, stride, grid):
    vit = TransReID(img_size=size, stride_size=stride, embed_dim=4, depth=1, num_heads=1)
    assert (vit.patch_embed.num_y, vit.patch_embed.num_x) == grid
    assert vit.pos_embed.shape == (1, grid[0] * grid[1] + 1, 4)


def test_wrong_input_size_is_a_clear_error():
    vit = TransReID(img_size=(32, 16), embed_dim=4, depth=1, num_heads=1)
    with pytest.raises(ValueError, match='32x16'):
        vit(torch.zeros(1, 3, 16, 16))


# --------------------------------------------------------------------------------------------
# Heads, BN neck, JPM module names
# --------------------------------------------------------------------------------------------
def test_jpm_has_the_reference_module_names(tiny_vits):
    model = make_model(tiny_cfg('MODEL.JPM', True), NUM_CLASSES, CAMERA_NUM, VIEW_NUM)
    keys = set(model.state_dict())
    for index in range(1, 5):
        assert {f'classifier_{index}.weight', f'bottleneck_{index}.weight', f'bottleneck_{index}.running_var'} <= keys
    assert {'b1.0.attn.qkv.weight', 'b1.1.weight', 'b2.0.mlp.fc1.weight', 'b2.1.bias', 'base.norm.weight',
            'base.blocks.2.attn.proj.weight', 'base.patch_embed.proj.weight', 'base.cls_token'} <= keys
    assert not any(key.startswith(('classifier_5', 'b3', 'base.fc')) for key in keys)
    # The branches start as copies of the backbone's last block, and are separate parameters.
    torch.testing.assert_close(model.b1[0].attn.qkv.weight, model.base.blocks[-1].attn.qkv.weight)
    assert model.b1[0].attn.qkv.weight.data_ptr() != model.b2[0].attn.qkv.weight.data_ptr()


def test_bn_necks_have_frozen_bias_and_linear_classifiers_small_weights(tiny_vits):
    cfg = tiny_cfg('MODEL.JPM', True)
    cfg.merge_from_list(['MODEL.TRANSFORMER_TYPE', 'deit_tiny_patch16_224_TransReID'])
    model = make_model(cfg, 500, 0, 0)
    necks = [model.bottleneck] + [getattr(model, f'bottleneck_{i}') for i in range(1, 5)]
    assert all(not neck.bias.requires_grad and neck.weight.requires_grad for neck in necks)
    assert all(torch.all(neck.bias == 0) and torch.all(neck.weight == 1) for neck in necks)
    classifier = model.classifier
    assert classifier.bias is None and classifier.weight.shape == (500, 192)
    assert 0.0008 < classifier.weight.std().item() < 0.0012


def test_margin_heads_against_hand_computed_logits():
    torch.manual_seed(0)
    feat, label = torch.randn(4, 6), torch.tensor([0, 2, 1, 2])
    for head_class in (Arcface, Cosface, AMSoftmax, CircleLoss):
        head = head_class(6, 3, scale=10.0, margin=0.2)
        weight = head.W.t() if head_class is AMSoftmax else head.weight
        cosine = F.normalize(feat) @ F.normalize(weight).t()
        target = F.one_hot(label, 3).bool()
        if head_class is Arcface:
            margin_cos = torch.cos(torch.acos(cosine.clamp(-1, 1)) + 0.2)
            expected = 10.0 * torch.where(target, margin_cos, cosine)
        elif head_class is CircleLoss:
            positive = 10.0 * (1.2 - cosine).clamp_min(0) * (cosine - 0.8)
            negative = 10.0 * (cosine + 0.2).clamp_min(0) * (cosine - 0.2)
            expected = torch.where(target, positive, negative)
        else:
            expected = 10.0 * torch.where(target, cosine - 0.2, cosine)
        # The arcface angles here stay below pi - m, where cos(theta + m) is used exactly.
        torch.testing.assert_close(head(feat, label), expected, atol=1e-5, rtol=1e-5)


def test_amsoftmax_keeps_the_reference_weight_layout():
    head = make_classifier('amsoftmax', 8, 5, scale=30.0, margin=0.3)
    assert [name for name, _ in head.named_parameters()] == ['W'] and head.W.shape == (8, 5)


def test_unknown_id_loss_type_is_a_clear_error():
    with pytest.raises(ValueError, match="'triplet_softmax'"):
        make_classifier('triplet_softmax', 8, 5, scale=30.0, margin=0.3)


@pytest.mark.parametrize('loss_type', ['arcface', 'cosface', 'amsoftmax', 'circle', 'softmax'])
def test_jpm_train_outputs_with_every_head(tiny_vits, loss_type):
    cfg = tiny_cfg('MODEL.JPM', True, 'MODEL.ID_LOSS_TYPE', loss_type)
    model = make_model(cfg, NUM_CLASSES, CAMERA_NUM, VIEW_NUM).train()
    scores, feats = model(torch.randn(4, 3, 64, 48), torch.tensor([0, 1, 2, 6]))
    assert [tuple(score.shape) for score in scores] == [(4, NUM_CLASSES)] * 5
    assert [tuple(feat.shape) for feat in feats] == [(4, 32)] * 5
    if loss_type != 'softmax':
        with pytest.raises(ValueError, match='labels'):
            model(torch.randn(2, 3, 64, 48))


def test_neck_no_returns_the_same_feature_before_and_after(tiny_vits):
    images = torch.randn(2, 3, 64, 48)
    features = []
    for neck_feat in ('before', 'after'):
        torch.manual_seed(0)
        model = make_model(tiny_cfg('MODEL.NECK', 'no', 'TEST.NECK_FEAT', neck_feat), NUM_CLASSES, 0, 0).eval()
        perturb_(model)
        features.append(model(images))
    torch.testing.assert_close(features[0], features[1])


def test_resnet50_last_stride_and_bn_neck():
    images = torch.randn(2, 3, 64, 32)
    for last_stride, grid in ((1, (4, 2)), (2, (2, 1))):
        cfg = default_cfg.clone()
        cfg.merge_from_list(['MODEL.PRETRAIN_CHOICE', 'none', 'MODEL.LAST_STRIDE', last_stride])
        model = make_model(cfg, NUM_CLASSES, 0, 0)
        with torch.no_grad():
            # Reference stem: conv stride 2 then a 2x2 max-pool, then 2 x 2 x last_stride.
            assert model.base(images).shape == (2, 2048, *grid)
            score, feat = model(images, torch.tensor([0, 1]))
            assert score.shape == (2, NUM_CLASSES) and feat.shape == (2, 2048)
            model.eval()
            assert model(images).shape == (2, 2048)
        assert not model.bottleneck.bias.requires_grad


# --------------------------------------------------------------------------------------------
# Every config: build and run in train and eval mode
# --------------------------------------------------------------------------------------------
MODEL_KEYS = ('NAME', 'TRANSFORMER_TYPE', 'STRIDE_SIZE', 'JPM', 'SIE_CAMERA', 'SIE_VIEW', 'SIE_COE', 'NECK',
              'ID_LOSS_TYPE', 'LAST_STRIDE', 'SHIFT_NUM', 'SHUFFLE_GROUP', 'DEVIDE_LENGTH', 'RE_ARRANGE', 'STEM_CONV',
              'PASS')


def model_settings(cfg) -> tuple:
    """What decides a model's structure and outputs; configs that agree on it build the same model."""
    return tuple(str(cfg.MODEL[key]) for key in MODEL_KEYS) + (str(cfg.INPUT.SIZE_TRAIN), cfg.TEST.NECK_FEAT)


def unique_model_configs(root: str) -> List[str]:
    """One YAML under `root` for each distinct model setting (the first in sorted order)."""
    chosen: Dict[tuple, str] = {}
    for path in sorted(glob.glob(os.path.join(root, '**', '*.yml'), recursive=True)):
        chosen.setdefault(model_settings(load_config(path)), path)
    return sorted(chosen.values())


def check_config_shapes(config_path: str) -> None:
    cfg = load_config(config_path, ['MODEL.PRETRAIN_CHOICE', 'none'])
    torch.manual_seed(0)
    model = make_model(cfg, NUM_CLASSES, CAMERA_NUM, VIEW_NUM)
    width, parts = feature_dim(cfg), (cfg.MODEL.DEVIDE_LENGTH if cfg.MODEL.JPM else 0)
    assert model.in_planes == width
    images = torch.randn(2, 3, *cfg.INPUT.SIZE_TRAIN)
    cam, view = camera_view_labels(2)
    labels = torch.tensor([0, NUM_CLASSES - 1])
    with torch.no_grad():
        score, feat = model.train()(images, labels, cam_label=cam, view_label=view)
        if parts:
            assert [tuple(s.shape) for s in score] == [(2, NUM_CLASSES)] * (parts + 1)
            assert [tuple(f.shape) for f in feat] == [(2, width)] * (parts + 1)
        else:
            assert score.shape == (2, NUM_CLASSES) and feat.shape == (2, width)
        eval_feat = model.eval()(images, cam_label=cam, view_label=view)
    assert eval_feat.shape == (2, (parts + 1) * width)
    assert torch.isfinite(eval_feat).all()
    if cfg.MODEL.NAME == 'transformer':
        # The bar: the reference's eval features, to 1e-5, at every config's real size.
        with torch.no_grad():
            expected = reference_eval_features(model.state_dict(), cfg, images, cam, view,
                                               CAMERA_NUM, VIEW_NUM)
        torch.testing.assert_close(eval_feat, expected, atol=1e-5, rtol=1e-5)


# PASS, SOLIDER and CLIP-ReID configs: their reference is their authors' code (tests/test_pass_exactness.py,
# tests/test_solider_exactness.py, tests/test_clipreid_exactness.py); tests/test_pass_solider_configs.py
# and tests/test_clipreid_configs.py build them at real size. UDA configs start from a model
# trained with labels (PRETRAIN_CHOICE 'finetune' only), which tests/test_usl_training.py makes;
# their network is the USL configs', checked here.
def _reference_maths(path: str) -> bool:
    cfg = load_config(path)
    return not (cfg.MODEL.PASS or is_swin(cfg) or cfg.MODEL.TRAIN_MODE == 'uda' or cfg.MODEL.NAME in CLIP_SPECS)


REPO_CONFIGS = [path for path in unique_model_configs(os.path.join(REPO_ROOT, 'configs')) if _reference_maths(path)]


def test_repository_has_configs():
    assert REPO_CONFIGS, "no YAML found under configs/"


@pytest.mark.parametrize('config_path', REPO_CONFIGS, ids=lambda path: os.path.relpath(path, REPO_ROOT))
def test_every_config_builds_and_runs(config_path):
    check_config_shapes(config_path)


REFERENCE_STYLE_YAMLS = {
    'Market/vit_transreid_stride.yml': """
MODEL:
  PRETRAIN_CHOICE: 'imagenet'
  PRETRAIN_PATH: '/home/someone/.cache/torch/checkpoints/jx_vit_base_p16_224-80ecf9dd.pth'
  METRIC_LOSS_TYPE: 'triplet'
  IF_LABELSMOOTH: 'off'
  IF_WITH_CENTER: 'no'
  NAME: 'transformer'
  NO_MARGIN: True
  DEVICE_ID: ('5')
  TRANSFORMER_TYPE: 'deit_tiny_patch16_224_TransReID'
  STRIDE_SIZE: [12, 12]
  SIE_CAMERA: True
  SIE_COE: 3.0
  JPM: True
  RE_ARRANGE: True
INPUT:
  SIZE_TRAIN: [128, 64]
  SIZE_TEST: [128, 64]
TEST:
  NECK_FEAT: 'before'
""",
    'VeRi/vit_transreid.yml': """
MODEL:
  NAME: 'transformer'
  TRANSFORMER_TYPE: 'deit_tiny_patch16_224_TransReID'
  STRIDE_SIZE: [16, 16]
  SIE_CAMERA: True
  SIE_VIEW: True
  JPM: True
  SHIFT_NUM: 8
INPUT:
  SIZE_TRAIN: [96, 96]
  SIZE_TEST: [96, 96]
""",
    'Market/vit_base.yml': """
MODEL:
  NAME: 'transformer'
  TRANSFORMER_TYPE: 'deit_tiny_patch16_224_TransReID'
INPUT:
  SIZE_TRAIN: [64, 32]
  SIZE_TEST: [64, 32]
""",
    'Market/vit_base_copy.yml': """
MODEL:
  NAME: 'transformer'
  TRANSFORMER_TYPE: 'deit_tiny_patch16_224_TransReID'
  DEVICE_ID: ('1')
INPUT:
  SIZE_TRAIN: [64, 32]
  SIZE_TEST: [64, 32]
SOLVER:
  BASE_LR: 0.1
""",
    'resnet.yml': """
MODEL:
  NAME: 'resnet50'
  LAST_STRIDE: 1
INPUT:
  SIZE_TRAIN: [64, 32]
""",
}


def test_config_check_on_reference_style_yamls(tmp_path):
    for relative, text in REFERENCE_STYLE_YAMLS.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    configs = unique_model_configs(str(tmp_path))
    # The copy differs only in settings that do not change the model.
    assert [os.path.relpath(path, tmp_path) for path in configs] == [
        'Market/vit_base.yml', 'Market/vit_transreid_stride.yml', 'VeRi/vit_transreid.yml', 'resnet.yml']
    for path in configs:
        check_config_shapes(path)


def test_unknown_names_are_clear_errors():
    for opts, match in ((['MODEL.NAME', 'transformer', 'MODEL.TRANSFORMER_TYPE', 'vit_huge'], 'vit_huge'),
                        (['MODEL.NAME', 'densenet'], 'densenet'),
                        (['MODEL.PRETRAIN_CHOICE', 'scratch'], 'scratch'),
                        (['MODEL.PRETRAIN_CHOICE', 'none', 'TEST.NECK_FEAT', 'middle'], 'middle')):
        cfg = default_cfg.clone()
        cfg.merge_from_list(opts)
        with pytest.raises(ValueError, match=match):
            make_model(cfg, NUM_CLASSES, 0, 0)


def test_sie_coefficient_comes_from_the_config():
    # The reference's backbone functions default to 1.5; the config value must reach the backbone.
    cfg = tiny_cfg('MODEL.SIE_CAMERA', True, 'MODEL.SIE_COE', 2.5, transformer_type='deit_tiny_patch16_224_TransReID')
    model = make_model(cfg, NUM_CLASSES, CAMERA_NUM, VIEW_NUM)
    assert math.isclose(model.base.sie_coe, 2.5)
