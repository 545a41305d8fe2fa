"""PASS loads and trains exactly: from the same synthetic PASS checkpoint, BN necks, classifier and
input, the whole model here (built from configs/Market/vit_small_pass.yml through make_model)
gives the eval features (before and after the necks), the training scores and features and the
loss that PASS_transreid's own code computes (tests/fixtures/pass, made once by its generate.py),
for its DINO checkpoint, the bare backbone and .safetensors; checkpoints of another family are
named as such."""
import importlib
import json
import os

import pytest
import torch

from config import load_config
from loss import make_loss
from model import make_model
from model.backbones import create_pass_vit, create_vit
from model.pass_weights import CheckpointFamilyError, adapt_pass_state
from model.weights import CheckpointMismatchError, drop_prefixed, load_state_strict, read_pretrained
from tests.pass_synthetic import (NUM_CLASSES, TOY, TOY_TYPE, head_state, pass_dino_checkpoint, synthetic_batch,
                                  synthetic_pass_state)
from tests.ssl_synthetic import synthetic_state
from utils.errors import ConfigError

# 'pass' is a Python keyword: the fixture folder's generator is imported by name.
GENERATE = importlib.import_module('tests.fixtures.pass.generate')
CASES, PRETRAIN_HW_RATIO = GENERATE.CASES, GENERATE.PRETRAIN_HW_RATIO
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures', 'pass')
RECIPE = os.path.join(ROOT, 'configs', 'Market', 'vit_small_pass.yml')
TOLERANCE = 1e-5


@pytest.fixture(scope='module')
def expected():
    return torch.load(os.path.join(FIXTURES, 'outputs.pt'), weights_only=True)


def write_forms(folder, state) -> dict:
    """form -> path: PASS's DINO checkpoint as main_pass.py saves it, the bare backbone (their
    convert_model_dino.py), and the bare backbone as .safetensors."""
    from safetensors.torch import save_file

    paths = {form: folder / name for form, name in
             (('dino', 'checkpoint.pth'), ('bare', 'pass_vit.pth'), ('safetensors', 'pass_vit.safetensors'))}
    torch.save(pass_dino_checkpoint(state), paths['dino'])
    torch.save(state, paths['bare'])
    save_file(state, str(paths['safetensors']))
    return paths


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp('pass')
    path = folder / 'checkpoint.pth'
    torch.save(pass_dino_checkpoint(synthetic_pass_state()), path)
    return path


def case_cfg(case: str, path, *extra: str):
    size, stride, fusion, multi_neck = CASES[case]
    return load_config(RECIPE, ['MODEL.TRANSFORMER_TYPE', TOY_TYPE, 'MODEL.PRETRAIN_PATH', str(path),
                                'MODEL.DEVICE', 'cpu', 'MODEL.DROP_PATH', '0.0',
                                'MODEL.STRIDE_SIZE', f'[{stride}, {stride}]',
                                'INPUT.SIZE_TRAIN', str(list(size)), 'INPUT.SIZE_TEST', str(list(size)),
                                'MODEL.FEAT_FUSION', fusion, 'MODEL.MULTI_NECK', str(multi_neck), *extra])


def our_outputs(case: str, path) -> dict:
    cfg = case_cfg(case, path)
    assert cfg.MODEL.PRETRAIN_HW_RATIO == PRETRAIN_HW_RATIO
    size, _, fusion, multi_neck = CASES[case]
    model = make_model(cfg, NUM_CLASSES, 0, 0)
    model.load_state_dict(head_state(TOY['embed_dim'], fusion, multi_neck), strict=False)
    images, labels = synthetic_batch(*size)
    score, feat = model.train()(images, labels)
    loss_func, _ = make_loss(cfg, NUM_CLASSES)
    outputs = dict(score=score.detach(), feat=feat.detach(), loss=loss_func(score, feat, labels).detach())
    model.load_state_dict(head_state(TOY['embed_dim'], fusion, multi_neck), strict=False)
    model.eval()
    with torch.no_grad():
        for neck_feat in ('before', 'after'):
            model.neck_feat = neck_feat
            outputs[neck_feat] = model(images)
    return outputs


@pytest.mark.parametrize('case', sorted(CASES))
def test_outputs_equal_pass_code(case, checkpoint, expected):
    ours = our_outputs(case, checkpoint)
    assert set(ours) == set(expected[case]) == {'score', 'feat', 'loss', 'before', 'after'}
    for name, value in expected[case].items():
        assert ours[name].shape == value.shape, name
        torch.testing.assert_close(ours[name], value, atol=TOLERANCE, rtol=0, msg=f"{case} {name}")


def test_every_form_gives_the_teachers_backbone(tmp_path):
    # The loader goes on identically once the file is read: the same tensors mean the same outputs.
    teacher = synthetic_pass_state(embed_dim=32, depth=1)
    for form, path in write_forms(tmp_path, teacher).items():
        state = drop_prefixed(read_pretrained(str(path), 'unused hint'), ['head.'])
        assert set(state) == set(teacher), form
        for key, value in teacher.items():
            torch.testing.assert_close(state[key], value, atol=0, rtol=0, msg=f"{form} {key}")


def test_each_part_token_and_position_moves_the_feature(checkpoint, expected):
    cfg = case_cfg('s16_256x128', checkpoint)
    model = make_model(cfg, NUM_CLASSES, 0, 0).eval()
    model.neck_feat = 'before'
    images, _ = synthetic_batch(*CASES['s16_256x128'][0])
    for key in ('part_token2', 'part3_pos'):
        with torch.no_grad():
            getattr(model.base, key).zero_()
            gap = (model(images) - expected['s16_256x128']['before']).abs().max()
        assert gap > 1e-3, key


def test_a_transreid_ssl_checkpoint_is_named_as_another_family():
    with pytest.raises(CheckpointFamilyError, match=r"'ssl.pth' is a ViT checkpoint of another family "
                                                    r".* lacks part_token1, part_token2"):
        adapt_pass_state(synthetic_state(False), 'ssl.pth', (16, 8), 2)


def test_a_pass_checkpoint_for_a_plain_vit_says_to_set_model_pass(checkpoint):
    cfg = case_cfg('s16_256x128', checkpoint, 'MODEL.PASS', 'False')
    with pytest.raises(CheckpointFamilyError, match=r"is a PASS checkpoint .* set MODEL.PASS True"):
        make_model(cfg, NUM_CLASSES, 0, 0)


def test_a_missing_or_extra_key_is_named():
    state = synthetic_pass_state()
    del state['part3_pos']
    with pytest.raises(CheckpointFamilyError, match=r"'x.pth' is an incomplete PASS checkpoint: it lacks part3_pos;"):
        adapt_pass_state(state, 'x.pth', (16, 8), 2)
    backbone = create_pass_vit(TOY_TYPE, (64, 32), (16, 16))
    state = adapt_pass_state(synthetic_pass_state(), 'x.pth', backbone.patch_embed.grid_size, 2)
    assert state['pos_embed'].shape == (1, 4 * 2, TOY['embed_dim'])  # 16 x 8 resized to 4 x 2
    state['blocks.5.norm1.weight'] = torch.ones(TOY['embed_dim'])
    with pytest.raises(CheckpointMismatchError, match=r"blocks.5.norm1.weight: not in the model"):
        load_state_strict(backbone, state, 'x.pth')


def test_pass_with_jpm_is_refused(checkpoint):
    with pytest.raises(ConfigError, match="no JPM branch"):
        make_model(case_cfg('s16_256x128', checkpoint, 'MODEL.JPM', 'True'), NUM_CLASSES, 0, 0)


PASS_NETWORKS = {
    'vit_small_256x128': ('vit_small_ssl_patch16_224_TransReID', (256, 128)),
    'vit_base_384x128': ('vit_base_patch16_224_TransReID', (384, 128)),
}


@pytest.mark.parametrize('network', sorted(PASS_NETWORKS))
def test_real_size_networks_have_pass_keys_and_shapes(network):
    their = json.load(open(os.path.join(FIXTURES, 'shapes.json')))[network]
    name, size = PASS_NETWORKS[network]
    with torch.device('meta'):  # shapes only: no memory, no initialisation time
        ours = create_pass_vit(name, size, (16, 16)).state_dict()
        plain = create_vit(name, size, (16, 16)).state_dict()
    assert {key: list(value.shape) for key, value in ours.items()} == their
    assert len(their['pos_embed']) == 3 and their['pos_embed'][1] == list(plain['pos_embed'].shape)[1] - 1
