"""CLIP weights as users have them load into CLIP-ReID strictly: OpenAI's TorchScript archive read
without running it, open_clip's .safetensors (OpenAI's keys), timm's image-only layout mapped back
key for key; unknown, missing and foreign content is named."""
import os
import pickle
import warnings
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from model.backbones.specs import ClipSpec
from model.clip_weights import load_clip_pretrained, read_clip_state
from model.clipreid import CLIPReID
from model.weights import CheckpointMismatchError, UnreadableWeightsError, WeightsNotFoundError
from tests import clip_synthetic as synthetic
from tests.fixtures.clipreid.generate import SIZE

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'clipreid')
# CLIP's BPE ids of "<start> a photo of a" and "person . <end>" (OpenAI's vocabulary).
PREFIX_IDS = [49406, 320, 1125, 539, 320]
SUFFIX_IDS = [2533, 269, 49407]


@pytest.fixture(scope='module')
def state():
    return synthetic.synthetic_clip_state(synthetic.TINY_VIT)


def tiny_model() -> CLIPReID:
    return CLIPReID(ClipSpec(**synthetic.TINY_VIT), synthetic.NUM_CLASSES, SIZE, (16, 16))


def eval_feature(model: CLIPReID) -> torch.Tensor:
    images = synthetic.synthetic_batch(*SIZE)[0]
    with torch.no_grad():
        return model.eval()(images)


def torchscript_clip(state, path) -> None:
    """A scripted CLIP in OpenAI's layout (open_clip's QuickGELU CLIP), as OpenAI ships ViT-B-16.pt."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    spec = synthetic.TINY_VIT
    model = CLIP(spec['embed_dim'], CLIPVisionCfg(layers=spec['vision_layers'], width=spec['vision_width'],
                                                  patch_size=16, image_size=224, head_width=64),
                 CLIPTextCfg(context_length=77, vocab_size=synthetic.VOCAB_SIZE, width=spec['text_width'],
                             heads=spec['text_width'] // 64, layers=spec['text_layers']), quick_gelu=True)
    counters = ('input_resolution', 'context_length', 'vocab_size')
    model.load_state_dict({key: value for key, value in state.items() if key not in counters})
    with warnings.catch_warnings():  # torch deprecates scripting, the way such archives were made
        warnings.simplefilter('ignore', FutureWarning)
        torch.jit.script(model).save(str(path))


@pytest.fixture(scope='module')
def archive(state, tmp_path_factory):
    path = tmp_path_factory.mktemp('torchscript') / 'ViT-B-16.pt'
    torchscript_clip(state, path)
    return path


def test_torchscript_archive_loads_without_running_its_code(state, archive, tmp_path, monkeypatch):
    path = archive

    def refuse(*args, **kwargs):
        raise AssertionError("the archive's program must not be loaded")
    monkeypatch.setattr(torch.jit, 'load', refuse)
    read = read_clip_state(str(path))
    for key, value in state.items():
        if key not in ('input_resolution', 'context_length', 'vocab_size'):
            assert torch.equal(read[key], value), key
    assert set(read) - set(state) == {'attn_mask'}  # open_clip's causal mask, which CLIP-ReID rebuilds
    plain = tmp_path / 'plain.pt'
    torch.save(state, plain)
    from_archive, from_state = tiny_model(), tiny_model()
    load_clip_pretrained(from_archive, str(path))
    load_clip_pretrained(from_state, str(plain))
    expected = torch.load(os.path.join(FIXTURES, 'outputs.pt'), weights_only=True)['vit_s16']['eval_before']
    torch.testing.assert_close(eval_feature(from_archive), expected, atol=1e-5, rtol=0)
    assert torch.equal(eval_feature(from_archive), eval_feature(from_state))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_foreign_code_in_a_torchscript_archive_is_refused_unrun(tmp_path):
    marker = str(tmp_path / 'ran')
    path = tmp_path / 'evil.pt'
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr('evil/data.pkl', pickle.dumps(_Payload(marker), protocol=2))
        archive.writestr('evil/constants.pkl', pickle.dumps((), protocol=2))
    with pytest.raises(UnreadableWeightsError, match=r"posix\.mkdir is not read here"):
        read_clip_state(str(path))
    assert not os.path.exists(marker)


def test_open_clip_safetensors_load_as_the_torch_file(state, tmp_path):
    torch.save(state, tmp_path / 'clip.pt')
    save_file({key: value.contiguous() for key, value in state.items()}, str(tmp_path / 'open_clip_model.safetensors'))
    ours = [tiny_model(), tiny_model()]
    load_clip_pretrained(ours[0], str(tmp_path / 'clip.pt'))
    load_clip_pretrained(ours[1], str(tmp_path / 'open_clip_model.safetensors'))
    assert torch.equal(eval_feature(ours[0]), eval_feature(ours[1]))


def test_timm_layout_maps_back_to_openai_keys_one_for_one(state, tmp_path):
    from timm.models.vision_transformer import _convert_openai_clip

    timm_state = _convert_openai_clip(dict(state), None)  # timm's own converter, OpenAI -> timm
    path = tmp_path / 'model.safetensors'
    save_file({key: value.contiguous() for key, value in timm_state.items()}, str(path))
    read = read_clip_state(str(path))
    visual = {key: value for key, value in state.items() if key.startswith('visual.')}
    assert set(read) == set(visual)
    for key, value in visual.items():
        assert torch.equal(read[key], value), key
    with pytest.raises(CheckpointMismatchError, match="image tower only"):
        load_clip_pretrained(tiny_model(), str(path))


def test_prompt_tokens_come_from_the_token_embedding_and_the_heads_start_fresh(state, tmp_path):
    torch.save(state, tmp_path / 'clip.pt')
    model = tiny_model()
    initial_ctx = model.prompt_learner.cls_ctx.detach().clone()
    load_clip_pretrained(model, str(tmp_path / 'clip.pt'))
    table = state['token_embedding.weight']
    assert torch.equal(model.prompt_learner.token_prefix[0], table[PREFIX_IDS])
    suffix = model.prompt_learner.token_suffix[0]
    assert torch.equal(suffix[:3], table[SUFFIX_IDS])
    assert torch.equal(suffix[3:], table[0].expand(suffix.shape[0] - 3, -1))  # padding is token 0
    assert torch.equal(model.prompt_learner.cls_ctx, initial_ctx)


@pytest.mark.parametrize('change, named', [
    (lambda s: s.update({'visual.extra_scale': torch.ones(1)}), "image_encoder.extra_scale: not in the model"),
    (lambda s: s.pop('visual.ln_post.bias'), "image_encoder.ln_post.bias"),
    (lambda s: s.pop('transformer.resblocks.1.mlp.c_fc.weight'),
     "text_encoder.transformer.resblocks.1.mlp.c_fc.weight"),
    (lambda s: s.update({'visual.proj': torch.zeros(128, 32)}),
     "image_encoder.proj: checkpoint (128, 32) vs model (128, 64)"),
])
def test_every_key_is_accounted_for(state, tmp_path, change, named):
    changed = dict(state)
    change(changed)
    torch.save(changed, tmp_path / 'clip.pt')
    with pytest.raises(CheckpointMismatchError) as raised:
        load_clip_pretrained(tiny_model(), str(tmp_path / 'clip.pt'))
    assert named in str(raised.value)


def test_no_clip_weights_given_says_where_to_get_them():
    with pytest.raises(WeightsNotFoundError, match=r"no weights file given.*ViT-B-16\.pt or RN50\.pt"):
        load_clip_pretrained(tiny_model(), '')


def test_a_truncated_torchscript_archive_is_named(archive, tmp_path):
    damaged = tmp_path / 'damaged.pt'
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(damaged, 'w') as target:
        for item in source.infolist():
            data = source.read(item)
            target.writestr(item, data[:len(data) // 2] if item.filename.endswith('data.pkl') else data)
    with pytest.raises(UnreadableWeightsError, match="its TorchScript data could not be read safely"):
        read_clip_state(str(damaged))
