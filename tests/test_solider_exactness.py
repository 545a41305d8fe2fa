"""SOLIDER's Swin loads exactly: from the same synthetic SOLIDER checkpoint and input, the backbone
here gives the feature (the average of the last stage's normalised map) that SOLIDER-REID's own
Swin code computes (tests/fixtures/solider, made once by its generate.py), with the semantic
weight of their re-ID runs (0.2) and others, at 256x128 and 384x128, from the training checkpoint,
the teacher that their convert_model.py writes, and .safetensors; the whole model built from
configs/Market/swin_tiny_solider.yml (at toy widths) gives their re-ID model's training scores,
feature and loss and its eval features; checkpoints of other families are named as such."""
import importlib
import json
import os

import pytest
import torch

from config import load_config
from loss import make_loss
from model import make_model
from model.backbones.specs import SWIN_SPECS
from model.backbones.swin_solider import SOLIDERSwin, create_solider_swin
from model.solider_weights import SwinFamilyError, adapt_solider_state
from model.weights import CheckpointMismatchError, read_pretrained
from tests.pass_synthetic import NUM_CLASSES, head_state, synthetic_batch
from tests.solider_synthetic import TINY, solider_checkpoint, synthetic_input, synthetic_state, teacher_state

# Named by string, as the PASS fixtures: the folder's generator is a script.
GENERATE = importlib.import_module('tests.fixtures.solider.generate')
CASES, REID_CASES = GENERATE.CASES, GENERATE.REID_CASES
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures', 'solider')
RECIPE = os.path.join(ROOT, 'configs', 'Market', 'swin_tiny_solider.yml')
TOLERANCE = 1e-5


@pytest.fixture(scope='module')
def expected():
    return torch.load(os.path.join(FIXTURES, 'features.pt'), weights_only=True)


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """form -> path: main_solider.py's checkpoint, convert_model.py's teacher, bare .safetensors."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp('solider')
    state = synthetic_state()
    paths = {'checkpoint': folder / 'checkpoint.pth', 'teacher': folder / 'checkpoint_tea.pth',
             'safetensors': folder / 'swin.safetensors'}
    torch.save(solider_checkpoint(state), paths['checkpoint'])
    torch.save(teacher_state(state), paths['teacher'])
    save_file(state, str(paths['safetensors']))
    return paths


def features(case: str, path) -> torch.Tensor:
    size, semantic_weight = CASES[case]
    backbone = SOLIDERSwin(drop_path_rate=0.0, semantic_weight=semantic_weight, **TINY)
    backbone.load_param(str(path), 'tiny')
    with torch.no_grad():
        return backbone.eval()(synthetic_input(*size))


@pytest.mark.parametrize('case', sorted(CASES))
def test_features_equal_solider_code(case, checkpoints, expected):
    ours = features(case, checkpoints['checkpoint'])
    assert ours.shape == expected[case].shape == (2, 8 * TINY['embed_dims'])
    torch.testing.assert_close(ours, expected[case], atol=TOLERANCE, rtol=0)


def test_every_form_gives_the_teachers_backbone(checkpoints):
    # Loading goes on identically once the state is adapted: the same tensors mean the same outputs.
    teacher = synthetic_state()
    for form, path in checkpoints.items():
        state = adapt_solider_state(read_pretrained(str(path), 'unused hint'), str(path), semantic=True)
        assert set(state) == set(teacher), form
        for key, value in teacher.items():
            torch.testing.assert_close(state[key], value, atol=0, rtol=0, msg=f"{form} {key}")


def our_reid_outputs(case: str, path) -> dict:
    size, semantic_weight = REID_CASES[case]
    cfg = load_config(RECIPE, ['MODEL.PRETRAIN_PATH', str(path), 'MODEL.DEVICE', 'cpu', 'MODEL.DROP_PATH', '0.0',
                               'MODEL.SEMANTIC_WEIGHT', str(semantic_weight),
                               'INPUT.SIZE_TRAIN', str(list(size)), 'INPUT.SIZE_TEST', str(list(size))])
    model = make_model(cfg, NUM_CLASSES, 0, 0)
    width = GENERATE.FEATURE_WIDTH
    model.load_state_dict(head_state(width, 'mean', False), strict=False)
    images, labels = synthetic_batch(*size)
    score, feat = model.train()(images, labels)
    loss_func, _ = make_loss(cfg, NUM_CLASSES)
    outputs = dict(score=score.detach(), feat=feat.detach(), loss=loss_func(score, feat, labels).detach())
    model.load_state_dict(head_state(width, 'mean', False), strict=False)
    model.eval()
    with torch.no_grad():
        for neck_feat in ('before', 'after'):
            model.neck_feat = neck_feat
            outputs[neck_feat] = model(images)
    return outputs


@pytest.mark.parametrize('case', sorted(REID_CASES))
def test_reid_model_outputs_equal_solider_reid_code(case, checkpoints, monkeypatch):
    monkeypatch.setitem(SWIN_SPECS, 'swin_tiny_patch4_window7_224', dict(TINY))  # the toy widths, by name
    expected = torch.load(os.path.join(FIXTURES, 'reid.pt'), weights_only=True)[case]
    ours = our_reid_outputs(case, checkpoints['teacher'])
    assert set(ours) == set(expected) == {'score', 'feat', 'loss', 'before', 'after'}
    for name, value in expected.items():
        assert ours[name].shape == value.shape, name
        torch.testing.assert_close(ours[name], value, atol=TOLERANCE, rtol=0, msg=f"{case} {name}")


def test_the_semantic_weight_and_the_shifted_windows_move_the_feature(checkpoints, expected):
    backbone = SOLIDERSwin(drop_path_rate=0.0, semantic_weight=0.2, **TINY)
    backbone.load_param(str(checkpoints['checkpoint']), 'tiny')
    images = synthetic_input(*CASES['sw0.2_256x128'][0])
    with torch.no_grad():
        backbone.eval()
        torch.testing.assert_close(backbone(images), expected['sw0.2_256x128'], atol=TOLERANCE, rtol=0)
        backbone.semantic_weight = 0.5
        assert (backbone(images) - expected['sw0.2_256x128']).abs().max() > 1e-3
        backbone.semantic_weight = 0.2
        backbone.stages[1].blocks[1].attn.shift_size = 0  # the second block's shifted windows
        assert (backbone(images) - expected['sw0.2_256x128']).abs().max() > 1e-3


def test_other_families_are_named():
    state = synthetic_state()
    original = {key.replace('stages.', 'layers.').replace('attn.w_msa.', 'attn.'): value
                for key, value in state.items()}
    with pytest.raises(SwinFamilyError, match="Microsoft's layout"):
        adapt_solider_state(original, 'swin_tiny_patch4_window7_224.pth', semantic=True)
    with pytest.raises(SwinFamilyError, match="not a SOLIDER Swin checkpoint"):
        adapt_solider_state({'cls_token': torch.zeros(1, 1, 8), 'pos_embed': torch.zeros(1, 5, 8)}, 'vit.pth', True)
    without = {key: value for key, value in state.items() if not key.startswith('semantic_embed')}
    with pytest.raises(SwinFamilyError, match="SEMANTIC_WEIGHT -1"):
        adapt_solider_state(without, 'x.pth', semantic=True)
    assert set(adapt_solider_state(teacher_state(state), 'tea.pth', True)) == set(state)


def test_a_missing_block_is_named(tmp_path):
    state = {key: value for key, value in synthetic_state().items() if not key.startswith('stages.2.blocks.1.')}
    torch.save(state, tmp_path / 'short.pth')
    backbone = SOLIDERSwin(drop_path_rate=0.0, semantic_weight=0.2, **TINY)
    with pytest.raises(CheckpointMismatchError, match=r"stages.2.blocks.1.attn.w_msa.qkv.weight: missing"):
        backbone.load_param(str(tmp_path / 'short.pth'), 'tiny')


@pytest.mark.parametrize('network', ['swin_tiny', 'swin_small', 'swin_base'])
def test_real_size_networks_have_solider_keys_and_shapes(network):
    their = json.load(open(os.path.join(FIXTURES, 'shapes.json')))[network]
    with torch.device('meta'):
        ours = create_solider_swin(f'{network}_patch4_window7_224').state_dict()
    assert {key: list(value.shape) for key, value in ours.items()} == their
