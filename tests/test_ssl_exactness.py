"""TransReID-SSL backbones load exactly: this repository's features equal what TransReID-SSL's own
model code computes from the same weights and input (tests/fixtures/ssl, made once by its
generate.py), for DINO-wrapped and bare checkpoints; a wrong activation or a missing stem layer
breaks the match."""
import json
import os
from functools import partial

import pytest
import torch
from torch import nn

from model.backbones import TransReID, create_vit
from model.weights import CheckpointMismatchError
from tests.fixtures.ssl.generate import CASES, PRETRAIN_HW_RATIO
from tests.ssl_synthetic import TINY, dino_checkpoint, synthetic_input, synthetic_state

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'ssl')
TOLERANCE = 1e-5


@pytest.fixture(scope='module')
def expected():
    return torch.load(os.path.join(FIXTURES, 'features.pt'), weights_only=True)


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """stem -> form -> path: the synthetic backbone bare (as TransReID-SSL's converter writes it),
    and wrapped as DINO saves it (teacher and student, module.backbone. prefixes, args, head.*)."""
    folder = tmp_path_factory.mktemp('ssl')
    paths = {}
    for stem in (False, True):
        state = synthetic_state(stem)
        paths[stem] = {'bare': folder / f'bare_{stem}.pth', 'dino': folder / f'dino_{stem}.pth'}
        torch.save(state, paths[stem]['bare'])
        torch.save(dino_checkpoint(state), paths[stem]['dino'])
    return paths


def tiny_backbone(stem: bool, stride: int, size, local_feature: bool = False) -> TransReID:
    return TransReID(img_size=size, stride_size=stride, qkv_bias=True, local_feature=local_feature,
                     stem_conv=stem, **TINY)


def features(backbone: TransReID, size) -> torch.Tensor:
    with torch.no_grad():
        return backbone.eval()(synthetic_input(*size))


def loaded(case: str, checkpoints, form: str) -> TransReID:
    stem, stride, size, local = CASES[case]
    backbone = tiny_backbone(stem, stride, size, local)
    backbone.load_param(str(checkpoints[stem][form]), 'tiny', hw_ratio=PRETRAIN_HW_RATIO)
    return backbone


# Every case from the DINO checkpoint; the bare form (the same tensors, unwrapped by their converter)
# on one case with and one without the stem. tests/test_ssl_loading.py shows that every wrapping
# gives the same features as the bare file, bit for bit.
FORMS_AND_CASES = [('dino', case) for case in sorted(CASES)] + [('bare', 'plain_s12_384x128'),
                                                                 ('bare', 'stem_s16_256x128')]


@pytest.mark.parametrize('form, case', FORMS_AND_CASES)
def test_features_equal_transreid_ssl_code(case, form, checkpoints, expected):
    backbone = loaded(case, checkpoints, form)
    ours = features(backbone, CASES[case][2])
    assert ours.shape == expected[case].shape
    torch.testing.assert_close(ours, expected[case], atol=TOLERANCE, rtol=0)


def _gap(case, backbone, expected) -> float:
    return (features(backbone, CASES[case][2]) - expected[case]).abs().max().item()


def test_a_wrong_activation_breaks_the_match(checkpoints, expected):
    case = 'plain_s12_256x128'
    backbone = loaded(case, checkpoints, 'dino')
    assert _gap(case, backbone, expected) < TOLERANCE
    for block in backbone.blocks:  # the tanh approximation of GELU, as some ViT ports use
        block.mlp.act = nn.GELU(approximate='tanh')
    assert _gap(case, backbone, expected) > 1e-4


@pytest.mark.parametrize('layer', [4, 7])  # an IBN, the last batch norm
def test_a_missing_stem_layer_breaks_the_match(layer, checkpoints, expected):
    case = 'stem_s16_256x128'
    backbone = loaded(case, checkpoints, 'dino')
    assert _gap(case, backbone, expected) < TOLERANCE
    backbone.patch_embed.conv[layer] = nn.Identity()
    assert _gap(case, backbone, expected) > 1e-3


def test_a_model_without_the_stem_names_every_stem_key_of_an_ics_checkpoint(checkpoints):
    backbone = tiny_backbone(False, 16, (256, 128))
    with pytest.raises(CheckpointMismatchError) as raised:
        backbone.load_param(str(checkpoints[True]['dino']), 'tiny', hw_ratio=2)
    message = str(raised.value)
    for key in ('patch_embed.conv.0.weight', 'patch_embed.conv.1.IN.weight', 'patch_embed.conv.4.BN.running_var',
                'patch_embed.conv.7.bias'):
        assert f"{key}: not in the model" in message
    assert "without the convolution stem (MODEL.STEM_CONV)" in message


SSL_NETWORKS = {
    'vit_small_256x128': ('vit_small_ssl_patch16_224_TransReID', (256, 128), False),
    'vit_small_ics_256x128': ('vit_small_ssl_patch16_224_TransReID', (256, 128), True),
    'vit_base_ics_384x128': ('vit_base_patch16_224_TransReID', (384, 128), True),
}


@pytest.mark.parametrize('network', sorted(SSL_NETWORKS))
def test_real_size_networks_have_transreid_ssl_keys_and_shapes(network):
    their = json.load(open(os.path.join(FIXTURES, 'shapes.json')))[network]
    name, size, stem = SSL_NETWORKS[network]
    with torch.device('meta'):  # shapes only: no memory, no initialisation time
        ours = create_vit(name, size, (16, 16), stem_conv=stem).state_dict()
    assert {key: list(value.shape) for key, value in ours.items()} == their


def test_their_vit_small_is_not_the_reference_vit_small_of_the_same_name():
    their = json.load(open(os.path.join(FIXTURES, 'shapes.json')))['vit_small_256x128']
    with torch.device('meta'):
        reference = create_vit('vit_small_patch16_224_TransReID', (256, 128), (16, 16)).state_dict()
    assert list(reference['cls_token'].shape) == [1, 1, 768] and their['cls_token'] == [1, 1, 384]
    assert 'blocks.11.norm1.weight' in their and 'blocks.11.norm1.weight' not in reference
