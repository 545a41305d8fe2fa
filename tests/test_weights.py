"""Weights tests: reference checkpoints load with nothing left over, mismatches and missing files
give clear errors, and jx ViT / distilled DeiT / torchvision ImageNet weights initialise the backbones."""
from __future__ import annotations

import fractions
import io
import os
import pickle
import tarfile

import pytest
import torch
import torch.nn.functional as F
import torchvision

from config import cfg as default_cfg
from model import CheckpointMismatchError, WeightsNotFoundError, make_model
from model import weights
from model.pretrained_sources import download_hint
from model.weights import adapt_imagenet_vit_state, resize_pos_embed
from test_model import CAMERA_NUM, NUM_CLASSES, TINY_SPECS, TINY_VIT, VIEW_NUM, perturb_, tiny_cfg
from test_model import tiny_vits  # noqa: F401  (fixture)

TINY_DIM = TINY_SPECS[TINY_VIT]['embed_dim']
JPM_SIE = ('MODEL.JPM', True, 'MODEL.SIE_CAMERA', True, 'MODEL.SIE_VIEW', True)


def trained_tiny_model(*opts, num_classes: int = NUM_CLASSES, seed: int = 0):
    torch.manual_seed(seed)
    model = make_model(tiny_cfg(*opts), num_classes, CAMERA_NUM, VIEW_NUM)
    perturb_(model, seed)
    return model


def reference_checkpoint(model) -> dict:
    """The state dict as the reference saves it from DataParallel: `module.` prefixes and the
    backbone's unused 1000-way ImageNet head `base.fc`."""
    state = {f'module.{key}': value.clone() for key, value in model.state_dict().items()}
    state['module.base.fc.weight'] = torch.randn(1000, TINY_DIM)
    state['module.base.fc.bias'] = torch.randn(1000)
    return state


def assert_same_state(model, expected) -> None:
    state = model.state_dict()
    assert state.keys() == expected.state_dict().keys()
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(state[key], value, msg=key)


# --------------------------------------------------------------------------------------------
# Trained checkpoints
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize('wrap', ['bare', 'training_checkpoint'])
def test_reference_checkpoint_loads_with_nothing_left_over(tiny_vits, tmp_path, wrap):
    trained = trained_tiny_model(*JPM_SIE)
    checkpoint = reference_checkpoint(trained)
    if wrap == 'training_checkpoint':
        checkpoint = {'model': checkpoint, 'optimizer': {'state': {}, 'param_groups': []}, 'epoch': 120}
    path = tmp_path / 'transformer_120.pth'
    torch.save(checkpoint, path)
    fresh = trained_tiny_model(*JPM_SIE, seed=1)
    fresh.load_param(str(path))
    assert_same_state(fresh, trained)
    images = torch.randn(2, 3, 64, 48)
    cams, views = torch.tensor([0, 2]), torch.tensor([1, 0])
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(images, cam_label=cams, view_label=views),
                                   trained.eval()(images, cam_label=cams, view_label=views))


def test_pretrain_choice_self_loads_the_whole_model(tiny_vits, tmp_path):
    trained = trained_tiny_model()
    path = tmp_path / 'trained.pth'
    torch.save(trained.state_dict(), path)
    cfg = tiny_cfg('MODEL.PRETRAIN_CHOICE', 'self', 'MODEL.PRETRAIN_PATH', str(path))
    assert_same_state(make_model(cfg, NUM_CLASSES, CAMERA_NUM, VIEW_NUM), trained)


def test_mismatched_checkpoint_lists_every_key_with_both_shapes(tiny_vits, tmp_path):
    trained = trained_tiny_model(*JPM_SIE, num_classes=NUM_CLASSES + 3)
    state = reference_checkpoint(trained)
    del state['module.bottleneck_2.running_mean']
    state['module.b3.0.norm1.weight'] = torch.ones(TINY_DIM)
    path = tmp_path / 'other.pth'
    torch.save(state, path)
    model = trained_tiny_model(*JPM_SIE, seed=1)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as error:
        model.load_param(str(path))
    message = str(error.value)
    assert str(path) in message
    for index in ('', '_1', '_2', '_3', '_4'):
        assert f"classifier{index}.weight: checkpoint (10, 32) vs model (7, 32)" in message
    assert "bottleneck_2.running_mean: missing from the checkpoint (model (32,))" in message
    assert "b3.0.norm1.weight: not in the model (checkpoint (32,))" in message
    assert 'base.fc' not in message
    # Nothing was loaded half-way.
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_checkpoint_of_another_architecture_is_refused(tiny_vits, tmp_path):
    path = tmp_path / 'no_jpm.pth'
    torch.save(trained_tiny_model().state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match=r"b1\.0\.attn\.qkv\.weight: missing from the checkpoint"):
        trained_tiny_model('MODEL.JPM', True).load_param(str(path))


def test_finetune_replaces_classifiers_only_when_the_class_count_differs(tiny_vits, tmp_path):
    trained = trained_tiny_model('MODEL.JPM', True, num_classes=NUM_CLASSES + 3)
    path = tmp_path / 'other_dataset.pth'
    torch.save(trained.state_dict(), path)
    model = trained_tiny_model('MODEL.JPM', True, seed=1)
    fresh_classifier = model.classifier_3.weight.clone()
    model.load_param_finetune(str(path))
    for key, value in model.state_dict().items():
        if key.startswith('classifier'):
            assert value.shape == (NUM_CLASSES, TINY_DIM)
        else:
            torch.testing.assert_close(value, trained.state_dict()[key], msg=key)
    torch.testing.assert_close(model.classifier_3.weight, fresh_classifier)

    same_classes = trained_tiny_model('MODEL.JPM', True, num_classes=NUM_CLASSES + 3, seed=2)
    same_classes.load_param_finetune(str(path))
    assert_same_state(same_classes, trained)


def test_missing_trained_file_says_which_key_to_set(tiny_vits, tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"nowhere\.pth' does not exist.*TEST\.WEIGHT"):
        trained_tiny_model().load_param(str(tmp_path / 'nowhere.pth'))


def test_files_with_python_objects_are_not_unpickled(tiny_vits, tmp_path):
    path = tmp_path / 'pickled.pth'
    # (An argparse.Namespace, which DINO checkpoints hold, is allowed: tests/test_ssl_loading.py.)
    torch.save({'model': trained_tiny_model().state_dict(), 'lr': fractions.Fraction(1, 10)}, path)
    with pytest.raises(CheckpointMismatchError, match='re-save only its state dict'):
        trained_tiny_model().load_param(str(path))


# --------------------------------------------------------------------------------------------
# Paths that are no usable weights file: each error names the file and says what it is
# --------------------------------------------------------------------------------------------
def read_error(path) -> str:
    """The message read_state_dict (what TEST.WEIGHT and MODEL.PRETRAIN_PATH go through) raises."""
    with pytest.raises((weights.WeightsNotFoundError, CheckpointMismatchError)) as error:
        weights.read_state_dict(str(path), weights.TRAINED_MISSING_HINT)
    return str(error.value)


def small_checkpoint(path, **save_options):
    torch.save({'weight': torch.randn(64, 64)}, path, **save_options)
    return path


def test_directory_given_as_weights_lists_its_newest_checkpoints(tiny_vits, tmp_path):
    for name in ('transformer_8.pth', 'transformer_120.pth', 'transformer_60.pth', 'transformer_best.pth',
                 'last_checkpoint.pth', 'train_log.txt'):
        (tmp_path / name).write_bytes(b'')
    with pytest.raises(weights.UnreadableWeightsError) as error:
        trained_tiny_model().load_param(str(tmp_path))
    assert isinstance(error.value, WeightsNotFoundError)  # reported in one line like a missing file
    message = str(error.value)
    assert 'does not exist' not in message
    assert message == (f"'{tmp_path}' is a directory, not a weights file; give one of the .pth files in it, "
                       f"e.g. {tmp_path / 'transformer_120.pth'}, {tmp_path / 'transformer_60.pth'}, "
                       f"{tmp_path / 'transformer_8.pth'} (5 .pth files in all)")


def test_directory_without_weights_says_so_and_which_key_to_set(tmp_path):
    message = read_error(tmp_path)
    assert f"'{tmp_path}' is a directory, not a weights file, and holds no .pth file" in message
    assert 'TEST.WEIGHT' in message


@pytest.mark.parametrize('kept', [0.5, 0.02], ids=['half', 'head only'])
def test_truncated_file_is_named_and_called_truncated(tmp_path, kept):
    whole = small_checkpoint(tmp_path / 'whole.pth').read_bytes()
    path = tmp_path / 'transformer_120.pth'
    path.write_bytes(whole[:int(len(whole) * kept)])
    message = read_error(path)
    assert message.startswith(f"weights file '{path}' is truncated")
    assert 'interrupted copy or download' in message


def test_flipped_bytes_inside_a_tensor_are_caught_by_the_zip_crc(tmp_path):
    path = small_checkpoint(tmp_path / 'transformer_120.pth')
    original = torch.load(path, weights_only=True)['weight']
    data = bytearray(path.read_bytes())
    at = data.index(original.numpy().tobytes()) + 1000  # inside the tensor's 16 KB
    data[at:at + 4] = bytes(255 - b for b in data[at:at + 4])
    path.write_bytes(bytes(data))
    # torch.load alone reads the changed numbers without a word ...
    changed = torch.load(path, weights_only=True)['weight']
    assert changed.shape == original.shape and (changed != original).sum() == 1
    # ... the weights readers name the file and the damaged member.
    message = read_error(path)
    assert message.startswith(f"weights file '{path}' is damaged: its member 'transformer_120/data/0' "
                              "does not match the CRC-32 stored with it;")
    assert 'interrupted copy or download' in message and '\n' not in message


def test_a_file_checked_once_is_checked_again_once_replaced(tmp_path):
    # verify_zip remembers files it found whole; a resume's checkpoint, rewritten atomically
    # each epoch, is a new file and is checked again.
    path = small_checkpoint(tmp_path / 'last_checkpoint.pth')
    weights.read_state_dict(str(path), weights.TRAINED_MISSING_HINT)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / 'tmp.pth').write_bytes(bytes(data))
    os.replace(tmp_path / 'tmp.pth', path)
    assert read_error(path).startswith(f"weights file '{path}' is damaged: ")


def test_a_damaged_zip_directory_is_named(tmp_path):
    path = small_checkpoint(tmp_path / 'w.pth')
    data = path.read_bytes()
    at = data.rindex(b'PK\x01\x02')  # the last entry of the central directory
    path.write_bytes(data[:at] + b'XX' + data[at + 2:])
    assert read_error(path).startswith(f"weights file '{path}' is damaged: its ZIP archive is damaged (")


def test_truncated_old_format_file_is_named_and_called_truncated(tmp_path):
    whole = small_checkpoint(tmp_path / 'whole.pth', _use_new_zipfile_serialization=False).read_bytes()
    path = tmp_path / 'old.pth'
    path.write_bytes(whole[:len(whole) // 2])
    message = read_error(path)
    assert message.startswith(f"weights file '{path}' could not be read")
    assert 'truncated or damaged' in message and 'interrupted copy or download' in message


@pytest.mark.parametrize('content', [b'this is not a checkpoint\n', b'<html><body>404 Not Found</body></html>',
                                     b'version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n'])
def test_text_file_is_not_taken_for_a_pickle_with_objects(tmp_path, content):
    path = tmp_path / 'transformer_120.pth'
    path.write_bytes(content)
    message = read_error(path)
    assert message.startswith(f"'{path}' is not a PyTorch weights file (one written by torch.save): "
                              f"it starts with {content[:40]!r}")
    assert 'Python objects' not in message and 'weights_only=False' not in message


def test_empty_file_and_plain_pickle_are_told_apart(tmp_path):
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    assert read_error(empty).startswith(f"weights file '{empty}' is empty (0 bytes)")
    plain = tmp_path / 'plain.pkl'
    plain.write_bytes(pickle.dumps({'weight': [1.0, 2.0]}, protocol=4))
    assert read_error(plain).startswith(f"'{plain}' is a plain Python pickle, not a file written by torch.save")


@pytest.mark.skipif(not hasattr(torch.serialization, 'get_unsafe_globals_in_checkpoint'),
                    reason='PyTorch < 2.5 cannot list the classes a checkpoint pickles')
def test_python_objects_are_named(tmp_path):
    path = tmp_path / 'pickled.pth'
    torch.save({'model': {'weight': torch.ones(2)}, 'lr': fractions.Fraction(1, 10)}, path)
    message = read_error(path)
    assert message.startswith(f"'{path}' holds Python objects besides tensors (fractions.Fraction)")
    assert 're-save only its state dict' in message


def test_tar_archive_is_left_to_torch_load(tmp_path):
    # PyTorch's first releases saved tar archives, which torch.load still reads: not refused as
    # "not a PyTorch weights file" (this one holds junk, so torch.load then fails on it).
    path = tmp_path / 'tar_format.pth'
    with tarfile.open(path, 'w', format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo('sys_info')
        info.size = 4
        archive.addfile(info, io.BytesIO(b'junk'))
    message = read_error(path)
    assert message.startswith(f"weights file '{path}' could not be read")


def test_old_format_checkpoint_still_loads(tmp_path):
    path = small_checkpoint(tmp_path / 'old.pth', _use_new_zipfile_serialization=False)
    state = weights.read_state_dict(str(path), weights.TRAINED_MISSING_HINT)
    assert list(state) == ['weight'] and state['weight'].shape == (64, 64)


# --------------------------------------------------------------------------------------------
# ImageNet initialisation
# --------------------------------------------------------------------------------------------
def jx_vit_state(grid: int = 4, seed: int = 0) -> dict:
    """A jx-format ImageNet ViT state dict for the tiny spec (timm's layout, which the jx files use):
    square 224-style position grid, 1000-way head."""
    import timm

    spec = TINY_SPECS[TINY_VIT]
    torch.manual_seed(seed)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=16 * grid, patch_size=16, num_classes=1000, embed_dim=spec['embed_dim'], depth=spec['depth'],
        num_heads=spec['num_heads'], mlp_ratio=spec['mlp_ratio'], qkv_bias=spec['qkv_bias'])
    return {key: value.clone() for key, value in vit.state_dict().items()}


def bilinear_grid_resize(posemb: torch.Tensor, old: int, new_hw) -> torch.Tensor:
    grid = posemb[0, 1:].reshape(old, old, -1).permute(2, 0, 1).unsqueeze(0)
    resized = F.interpolate(grid, size=new_hw, mode='bilinear', align_corners=False)
    return torch.cat([posemb[:, :1], resized[0].permute(1, 2, 0).reshape(1, -1, posemb.shape[-1])], dim=1)


def imagenet_model(source: str, *opts, transformer_type: str = TINY_VIT):
    cfg = tiny_cfg('MODEL.PRETRAIN_CHOICE', 'imagenet', 'MODEL.PRETRAIN_PATH', source, *opts,
                   transformer_type=transformer_type)
    return make_model(cfg, NUM_CLASSES, CAMERA_NUM, VIEW_NUM)


def assert_backbone_initialised_from(model, state) -> None:
    base = model.base.state_dict()
    for key, value in state.items():
        if key.startswith('head') or key in ('pos_embed', 'dist_token'):
            continue
        torch.testing.assert_close(base[key].reshape(value.shape), value, msg=key)
    torch.testing.assert_close(base['pos_embed'], bilinear_grid_resize(state['pos_embed'], 4, (5, 3)))


def test_pos_embed_resize_is_bilinear_and_keeps_the_class_token():
    # A 2x2 grid shrunk to 1x1: bilinear (half-pixel centres) averages the four positions.
    posemb = torch.tensor([[[9., 9.], [0., 4.], [2., 4.], [4., 8.], [6., 8.]]])
    torch.testing.assert_close(resize_pos_embed(posemb, (1, 1)), torch.tensor([[[9., 9.], [3., 6.]]]))
    posemb = torch.randn(1, 1 + 14 * 14, 6)
    resized = resize_pos_embed(posemb, (21, 10))
    assert resized.shape == (1, 1 + 21 * 10, 6)
    torch.testing.assert_close(resized, bilinear_grid_resize(posemb, 14, (21, 10)))


def test_jx_vit_file_initialises_the_backbone_and_resizes_pos_embed(tiny_vits, tmp_path):
    state = jx_vit_state()
    path = tmp_path / 'jx_vit_tiny.pth'
    torch.save(state, path)
    model = imagenet_model(str(path), *JPM_SIE)
    assert_backbone_initialised_from(model, state)
    # JPM branches are copies of the ImageNet last block and norm.
    torch.testing.assert_close(model.b2[0].mlp.fc2.weight, state['blocks.2.mlp.fc2.weight'])
    torch.testing.assert_close(model.b1[1].bias, state['norm.bias'])


def test_old_linear_patch_embedding_is_reshaped(tiny_vits, tmp_path):
    state = jx_vit_state()
    conv_weight = state['patch_embed.proj.weight']
    state['patch_embed.proj.weight'] = conv_weight.reshape(TINY_DIM, -1)
    path = tmp_path / 'old_vit.pth'
    torch.save(state, path)
    torch.testing.assert_close(imagenet_model(str(path)).base.patch_embed.proj.weight, conv_weight)


def test_distilled_deit_file_drops_the_distillation_token(tiny_vits, tmp_path):
    state = jx_vit_state()
    distilled = dict(state)
    distilled['dist_token'] = torch.randn(1, 1, TINY_DIM)
    distilled['pos_embed'] = torch.cat([state['pos_embed'][:, :1], torch.randn(1, 1, TINY_DIM),
                                        state['pos_embed'][:, 1:]], dim=1)
    distilled['head_dist.weight'], distilled['head_dist.bias'] = torch.randn(1000, TINY_DIM), torch.randn(1000)
    path = tmp_path / 'deit_tiny_distilled.pth'
    torch.save({'model': distilled}, path)
    assert_backbone_initialised_from(imagenet_model(str(path)), state)


def test_imagenet_weights_of_another_width_are_refused(tiny_vits, tmp_path):
    path = tmp_path / 'other.pth'
    torch.save(jx_vit_state(), path)
    with pytest.raises(CheckpointMismatchError) as error:
        imagenet_model(str(path), transformer_type='tiny_scaled_test_TransReID')
    message = str(error.value)
    assert "cls_token: checkpoint (1, 1, 32) vs model (1, 1, 24)" in message
    assert "blocks.2.norm1.weight: not in the model (checkpoint (32,))" in message
    assert 'TRANSFORMER_TYPE' in message


def test_missing_imagenet_file_says_where_to_get_it(tmp_path):
    with pytest.raises(WeightsNotFoundError) as error:
        imagenet_model(str(tmp_path / 'deit_tiny.pth'), transformer_type='deit_tiny_patch16_224_TransReID')
    message = str(error.value)
    assert 'deit_tiny.pth' in message and 'does not exist' in message
    assert 'https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth' in message
    assert 'timm:deit_tiny_patch16_224.fb_in1k' in message
    assert 'MODEL.PRETRAIN_CHOICE none' in message
    vit_base_hint = download_hint('vit_base_patch16_224_TransReID')
    assert 'releases/download/v0.1-vitjx/jx_vit_base_p16_224-80ecf9dd.pth' in vit_base_hint
    assert 'timm:vit_base_patch16_224.orig_in21k_ft_in1k' in vit_base_hint


def test_empty_pretrain_path_is_a_clear_error(tiny_vits):
    with pytest.raises(WeightsNotFoundError, match='empty path'):
        imagenet_model('')


def test_timm_source_uses_the_timm_state_dict(tiny_vits, monkeypatch):
    import timm

    state = jx_vit_state()
    requested = []

    def fake_create_model(name, pretrained=False, **kwargs):
        requested.append((name, pretrained))
        vit = timm.models.vision_transformer.VisionTransformer(
            img_size=64, patch_size=16, embed_dim=TINY_DIM, depth=3, num_heads=4, mlp_ratio=2.0, qkv_bias=True)
        vit.load_state_dict(state)
        return vit

    monkeypatch.setattr(timm, 'create_model', fake_create_model)
    model = imagenet_model('timm:vit_tiny_test.in1k')
    assert requested == [('vit_tiny_test.in1k', True)]
    assert_backbone_initialised_from(model, state)


def test_timm_source_offline_is_a_clear_error(tiny_vits, monkeypatch):
    import timm

    def offline(name, pretrained=False, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, 'create_model', offline)
    with pytest.raises(WeightsNotFoundError, match=r"timm could not provide .*vit_tiny_test.*couldn't connect.*"
                                                   r"MODEL\.PRETRAIN_CHOICE none"):
        imagenet_model('timm:vit_tiny_test')


def resnet50_from_imagenet_file(tmp_path, state):
    path = tmp_path / 'resnet50-19c8e357.pth'
    torch.save(state, path)
    cfg = default_cfg.clone()
    cfg.merge_from_list(['MODEL.PRETRAIN_PATH', str(path)])  # defaults: resnet50, 'imagenet'
    return make_model(cfg, NUM_CLASSES, 0, 0)


def test_resnet50_imagenet_file_loads_without_its_fc(tmp_path):
    torch.manual_seed(0)
    state = torchvision.models.resnet50().state_dict()
    base = resnet50_from_imagenet_file(tmp_path, state).base.state_dict()
    assert base.keys() == {key for key in state if not key.startswith('fc.')}
    for key in base:
        torch.testing.assert_close(base[key], state[key], msg=key)


def test_resnet50_imagenet_file_from_before_pytorch_0_4_1_loads(tmp_path):
    # resnet50-19c8e357.pth predates BatchNorm's num_batches_tracked buffers: a plain dict of
    # the other tensors, as that file holds.
    torch.manual_seed(0)
    state = {key: value for key, value in torchvision.models.resnet50().state_dict().items()
             if not key.endswith('num_batches_tracked')}
    base = resnet50_from_imagenet_file(tmp_path, state).base.state_dict()
    loaded = {key for key in base if not key.endswith('num_batches_tracked')}
    assert loaded == {key for key in state if not key.startswith('fc.')}
    for key in loaded:
        torch.testing.assert_close(base[key], state[key], msg=key)
    assert all(base[key].item() == 0 for key in base.keys() - loaded)


def test_adapting_leaves_matching_pos_embed_untouched():
    state = jx_vit_state()
    adapted = adapt_imagenet_vit_state(state, pos_embed_shape=(1, 17, TINY_DIM), grid_size=(4, 4),
                                       patch_weight_shape=(TINY_DIM, 3, 16, 16))
    assert adapted['pos_embed'] is state['pos_embed']
    assert not any(key.startswith('head') for key in adapted)
    assert weights.strip_module_prefix({'module.a.module.b': 1}) == {'a.module.b': 1}
