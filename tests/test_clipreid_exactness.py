"""CLIP-ReID loads and runs exactly: this repository's outputs equal what CLIP-ReID's own code computes
from the same synthetic OpenAI-layout CLIP weights, heads and images (tests/fixtures/clipreid, made
once by its generate.py): eval features before and after the necks, stage 1's image and text
features, the train-mode scores and features, at strides 16 and 12, with and without SIE, and the
ResNet tower. Their trained checkpoint layout (keys and shapes) is ours, and such a file loads back."""
import json
import os

import pytest
import torch
from torch import nn

from model.backbones.specs import ClipSpec
from model.clip_weights import load_clip_pretrained
from model.clipreid import CLIPReID, prompt_text
from model.weights import CheckpointMismatchError
from tests import clip_synthetic as synthetic
from tests.fixtures.clipreid.generate import CASES, HALF_PRECISION_CASES, SIZE
from tests.test_cuda import accelerator, exact_fp32  # noqa: F401  (fixtures: the device under test, TF32 off)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'clipreid')
TOLERANCE = 1e-5
TRAIN_OUTPUTS = ('score', 'score_proj', 'feat_last', 'feat', 'feat_proj', 'i2t_input')


@pytest.fixture(scope='module')
def expected():
    return torch.load(os.path.join(FIXTURES, 'outputs.pt'), weights_only=True)


@pytest.fixture(scope='module')
def clip_files(tmp_path_factory):
    """MODEL.NAME -> a torch.save file of the synthetic CLIP state in OpenAI's layout."""
    folder = tmp_path_factory.mktemp('clip')
    paths = {}
    for name, spec in (('ViT-B-16', synthetic.TINY_VIT), ('RN50', synthetic.TINY_RESNET)):
        paths[name] = str(folder / f'{name}.pt')
        torch.save(synthetic.synthetic_clip_state(spec), paths[name])
    return paths


def tiny_spec(name: str) -> dict:
    return synthetic.TINY_VIT if name == 'ViT-B-16' else synthetic.TINY_RESNET


def sie_rows(camera: bool, view: bool) -> int:
    return (synthetic.CAMERAS if camera else 1) * (synthetic.VIEWS if view else 1) if camera or view else 0


def fresh_model(case: str) -> CLIPReID:
    name, stride, camera, view, coe, dataset = CASES[case]
    return CLIPReID(ClipSpec(**tiny_spec(name)), synthetic.NUM_CLASSES, SIZE, (stride, stride),
                    prompt=prompt_text(dataset), sie_coe=coe,
                    sie_tables=(synthetic.CAMERAS if camera else 0, synthetic.VIEWS if view else 0))


def built(case: str, clip_files) -> CLIPReID:
    """Our model, CLIP weights loaded by our loader, then the same heads as their run."""
    name, _, camera, view, _, _ = CASES[case]
    model = fresh_model(case)
    load_clip_pretrained(model, clip_files[name])
    heads = synthetic.synthetic_heads(tiny_spec(name), sie_rows(camera, view))
    missing, unexpected = model.load_state_dict(heads, strict=False)
    assert not unexpected
    return model


def batch_and_sie(case: str, device: torch.device = torch.device('cpu')):
    _, _, camera, view, _, _ = CASES[case]
    images, labels, cameras, views = (tensor.to(device) for tensor in synthetic.synthetic_batch(*SIZE))
    return images, labels, dict(cam_label=cameras if camera else None, view_label=views if view else None)


def eval_outputs(model: CLIPReID, case: str, device: torch.device = torch.device('cpu')) -> dict:
    images, labels, sie = batch_and_sie(case, device)
    outputs = {}
    with torch.no_grad():
        model.eval()
        for neck_feat in ('before', 'after'):
            model.neck_feat = neck_feat
            outputs[f'eval_{neck_feat}'] = model(images, **sie)
        outputs['image'] = model(images, labels, get_image=True)
        outputs['text'] = model(label=torch.arange(synthetic.NUM_CLASSES, device=device), get_text=True)
    return {key: value.cpu() for key, value in outputs.items()}


def assert_matches(ours: dict, theirs: dict) -> None:
    for key, value in ours.items():
        assert value.shape == theirs[key].shape, key
        torch.testing.assert_close(value, theirs[key], atol=TOLERANCE, rtol=0, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize('case', sorted(CASES))
def test_outputs_equal_clipreid_code(case, clip_files, expected):
    model = built(case, clip_files)
    assert_matches(eval_outputs(model, case), expected[case])
    images, labels, sie = batch_and_sie(case)
    model.train()
    with torch.no_grad():
        scores, feats, projected = model(images, labels, **sie)
    assert_matches(dict(zip(TRAIN_OUTPUTS, scores + feats + [projected])), expected[case])


@pytest.mark.parametrize('case', sorted(CASES))
def test_state_dict_is_their_trained_checkpoint_layout(case):
    theirs = json.load(open(os.path.join(FIXTURES, 'keys.json')))[case]
    ours = {key: list(value.shape) for key, value in fresh_model(case).state_dict().items()}
    assert ours == theirs


def test_a_checkpoint_saved_as_their_training_saves_it_loads_back(clip_files, expected, tmp_path):
    case = 'vit_s12_sie_camera_view'
    trained = built(case, clip_files)
    path = tmp_path / 'ViT-B-16_60.pth'
    # train_clipreid.py saves model.state_dict(); under DataParallel every key starts with 'module.'
    torch.save({f'module.{key}': value for key, value in trained.state_dict().items()}, path)
    model = fresh_model(case)
    model.load_param(str(path))
    assert_matches(eval_outputs(model, case), expected[case])


@pytest.mark.parametrize('case', HALF_PRECISION_CASES)
def test_half_precision_file_as_openai_ships_it_matches_their_code(case, expected, tmp_path):
    """Their code resizes the position grid in the file's half precision and then loads it into a
    float32 model; the features differ from the float32 file's by about 1e-3, so the match shows the
    same rounding here."""
    name = CASES[case][0]
    path = tmp_path / f'{name}.pt'
    torch.save(synthetic.as_shipped_by_openai(synthetic.synthetic_clip_state(tiny_spec(name))), path)
    model = built(case, {name: str(path)})
    theirs = expected[f'{case}_half']
    assert_matches(eval_outputs(model, case), theirs)
    assert (theirs['eval_before'] - expected[case]['eval_before']).abs().max() > 1e-4


def test_quick_gelu_matters(clip_files, expected):
    case = 'vit_s16'
    model = built(case, clip_files)
    for block in model.image_encoder.transformer.resblocks:
        block.mlp.gelu = nn.GELU()  # the exact GELU instead of CLIP's sigmoid approximation
    gap = (eval_outputs(model, case)['eval_before'] - expected[case]['eval_before']).abs().max()
    assert gap > 1e-3


@pytest.mark.parametrize('case', ['vit_s12_sie_camera_view', 'rn50'])
def test_outputs_on_the_accelerator_equal_their_code(case, clip_files, expected, accelerator, exact_fp32):
    model = built(case, clip_files).to(accelerator)
    assert_matches(eval_outputs(model, case, accelerator), expected[case])
    images, labels, sie = batch_and_sie(case, accelerator)
    model.train()
    with torch.no_grad():
        scores, feats, projected = model(images, labels, **sie)
    assert_matches({key: value.cpu() for key, value in zip(TRAIN_OUTPUTS, scores + feats + [projected])},
                   expected[case])


def test_finetuning_on_another_class_count_starts_the_per_class_parts_afresh(clip_files, tmp_path):
    trained = built('vit_s16', clip_files)
    path = tmp_path / 'ViT-B-16_60.pth'
    torch.save(trained.state_dict(), path)
    more_classes = CLIPReID(ClipSpec(**synthetic.TINY_VIT), synthetic.NUM_CLASSES + 2, SIZE, (16, 16))
    fresh = {key: value.clone() for key, value in more_classes.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r"prompt_learner.cls_ctx: checkpoint \(5, 4, 128\) vs model \(7"):
        more_classes.load_param(str(path))
    more_classes.load_param_finetune(str(path))
    for key, value in more_classes.state_dict().items():
        per_class = key in ('classifier.weight', 'classifier_proj.weight', 'prompt_learner.cls_ctx')
        assert torch.equal(value, fresh[key] if per_class else trained.state_dict()[key]), key
