"""CLIP weights for CLIP-ReID, read without running their code and adapted outside the model.

Sources, each mapped key by key to the model and loaded strictly:

* OpenAI's `ViT-B-16.pt` / `RN50.pt`: TorchScript archives. `torch.load(weights_only=True)` refuses
  them and `torch.jit.load` compiles the program they carry; here the archive's `data.pkl` is read
  by a restricted unpickler that builds only tensors and attribute holders (`read_torchscript_tensors`).
* OpenAI's keys in a state dict (`.pt` / `.bin` written by torch.save, or open_clip's
  `open_clip_model.safetensors`).
* timm's `vit_base_patch16_clip_224.openai` layout (`model.safetensors`): the image tower alone, its
  keys mapped back to OpenAI's (`timm_to_openai_visual`), the inverse of timm's `_convert_openai_clip`.

`adapt_openai_clip_state` turns OpenAI's keys into CLIP-ReID's: `visual.*` to `image_encoder.*`,
the text tower to `text_encoder.*`, the position grid resized to the crop as CLIP-ReID resizes it,
and the token embedding read into the prompt's fixed parts; what CLIP-ReID leaves unused
(`logit_scale`, OpenAI's size counters, the text mask) is named and dropped.
"""
from __future__ import annotations

import logging
import pickle
import zipfile
from typing import Dict, Mapping, Optional, Tuple

import torch

from . import checkpoint_formats as formats
from . import weights
from .backbones.clip import CLASS_CONTEXT_TOKENS, PROMPT_PREFIX_TOKENS
from .pos_embed import resize_pos_embed

logger = logging.getLogger("transreid.model")

StateDict = Dict[str, torch.Tensor]

CLIP_MISSING_HINT = ("point MODEL.PRETRAIN_PATH at OpenAI's CLIP weights for MODEL.NAME (ViT-B-16.pt or RN50.pt, "
                     "the files CLIP-ReID downloads into ~/.cache/clip), or open_clip's open_clip_model.safetensors "
                     "of the same model")
# Tensors of OpenAI's files that CLIP-ReID does not use: the contrastive temperature, the size
# counters that OpenAI's TorchScript model keeps as buffers, and the causal mask kept as an attribute.
UNUSED_CLIP_KEYS = ('logit_scale', 'input_resolution', 'context_length', 'vocab_size')
UNUSED_CLIP_SUFFIXES = ('attn_mask',)
TEXT_KEYS = ('transformer.', 'positional_embedding', 'ln_final.', 'text_projection')
TOKEN_EMBEDDING = 'token_embedding.weight'
# What CLIP's weights do not hold: CLIP-ReID's heads, SIE table and learnt prompts start afresh.
FRESH_PREFIXES = ('classifier', 'bottleneck', 'cv_embed', 'prompt_learner.cls_ctx')

STORAGE_DTYPES = {
    'FloatStorage': torch.float32, 'HalfStorage': torch.float16, 'BFloat16Storage': torch.bfloat16,
    'DoubleStorage': torch.float64, 'LongStorage': torch.int64, 'IntStorage': torch.int32,
    'ShortStorage': torch.int16, 'CharStorage': torch.int8, 'ByteStorage': torch.uint8, 'BoolStorage': torch.bool,
}


class _ScriptObject:
    """Holder of a TorchScript module's pickled attributes; never runs any of its code."""


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *_unused) -> torch.Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


def _typed_list(values) -> list:
    return list(values)


def _untagged(value, _type_name):
    return value


# TorchScript pickles its typed lists and containers through these helpers; each only rebuilds data.
TORCHSCRIPT_CONTAINERS = {'build_intlist': _typed_list, 'build_doublelist': _typed_list,
                          'build_boollist': _typed_list, 'build_tensorlist': _typed_list,
                          'build_genericlist': _typed_list, 'restore_type_tag': _untagged}


class _TensorOnlyUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript `data.pkl`: tensors, ordered dicts and attribute holders only."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, data: bytes) -> None:
        import io
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix
        self.holders: Dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if module == 'torch._utils' and name == '_rebuild_tensor_v2':
            return _rebuild_tensor
        if module == 'torch.jit._pickle' and name in TORCHSCRIPT_CONTAINERS:
            return TORCHSCRIPT_CONTAINERS[name]
        if module == 'collections' and name == 'OrderedDict':
            import collections
            return collections.OrderedDict
        if module == 'torch' and name in STORAGE_DTYPES:
            return name
        if module.startswith('__torch__'):
            return self.holders.setdefault(f'{module}.{name}', type(name, (_ScriptObject,), {}))
        raise pickle.UnpicklingError(f"{module}.{name} is not read here (only tensors and module attributes)")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid
        if kind != 'storage' or storage_type not in STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"unexpected record {pid!r}")
        raw = bytearray(self.archive.read(f'{self.prefix}/data/{key}'))
        dtype = STORAGE_DTYPES[storage_type]
        return torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)


def _collect_tensors(obj: object, prefix: str, into: StateDict) -> None:
    for name, value in vars(obj).items():
        if isinstance(value, torch.Tensor):
            into[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _collect_tensors(value, f'{prefix}{name}.', into)


def read_torchscript_tensors(path: str) -> StateDict:
    """Every tensor attribute of the module tree that a TorchScript archive pickles, by dotted name,
    without compiling or running its code."""
    with zipfile.ZipFile(path) as archive:
        names = [name for name in archive.namelist() if name.endswith('/data.pkl') and name.count('/') == 1]
        if len(names) != 1:
            raise weights.UnreadableWeightsError(f"'{path}' is a TorchScript archive without one data.pkl record")
        prefix = names[0].split('/')[0]
        order = f'{prefix}/byteorder'
        if order in archive.namelist() and archive.read(order).strip() != b'little':
            raise weights.UnreadableWeightsError(f"'{path}' stores big-endian tensors, which are not read here")
        try:
            root = _TensorOnlyUnpickler(archive, prefix, archive.read(names[0])).load()
        # Damaged or hostile records: a refused name, a truncated pickle, a tensor outside its storage, a bad CRC.
        except (pickle.UnpicklingError, ValueError, KeyError, TypeError, IndexError, AttributeError, EOFError,
                RuntimeError, zipfile.BadZipFile) as err:
            raise weights.UnreadableWeightsError(f"'{path}': its TorchScript data could not be read safely "
                                                 f"({err})") from err
    state: StateDict = {}
    if isinstance(root, _ScriptObject):
        _collect_tensors(root, '', state)
    return {key: value.clone() for key, value in state.items()}


TIMM_VISUAL_SWAPS = (
    ('patch_embed.proj', 'conv1'), ('norm_pre', 'ln_pre'), ('blocks.', 'transformer.resblocks.'),
    ('.norm1', '.ln_1'), ('.norm2', '.ln_2'), ('attn.qkv.', 'attn.in_proj_'), ('attn.proj', 'attn.out_proj'),
    ('mlp.fc1', 'mlp.c_fc'), ('mlp.fc2', 'mlp.c_proj'),
)


def is_timm_clip_layout(state: Mapping[str, torch.Tensor]) -> bool:
    return 'cls_token' in state and 'norm_pre.weight' in state


def timm_to_openai_visual(state: Mapping[str, torch.Tensor], source: str) -> StateDict:
    """OpenAI's `visual.*` keys of a timm CLIP ViT (`vit_base_patch16_clip_224.openai`)."""
    converted: StateDict = {}
    for key, value in state.items():
        if key == 'head.bias':
            if value.abs().max() != 0:
                raise weights.CheckpointMismatchError(f"{source}: head.bias is not zero, so this is not CLIP's "
                                                      "bias-free projection")
            continue
        if key == 'cls_token':
            key, value = 'class_embedding', value.reshape(-1)
        elif key == 'pos_embed':
            key, value = 'positional_embedding', value.reshape(value.shape[-2], value.shape[-1])
        elif key == 'head.weight':
            key, value = 'proj', value.t()
        elif key == 'norm.weight' or key == 'norm.bias':
            key = 'ln_post.' + key.split('.')[1]
        else:
            for old, new in TIMM_VISUAL_SWAPS:
                key = key.replace(old, new)
        converted['visual.' + key] = value
    return converted


def read_clip_state(path: str) -> StateDict:
    """OpenAI-keyed CLIP tensors of `path` (TorchScript archive, state dict, or .safetensors in
    open_clip's or timm's layout)."""
    if path and zipfile.is_zipfile(path) and formats.is_torchscript_archive(path):
        return read_torchscript_tensors(path)
    loaded = weights.load_file(path, CLIP_MISSING_HINT)
    state = loaded.get('state_dict', loaded) if isinstance(loaded, Mapping) else loaded
    if not isinstance(state, Mapping):
        raise weights.CheckpointMismatchError(f"'{path}' holds a {type(state).__name__}, not CLIP's weights")
    state = weights.strip_module_prefix({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
    return timm_to_openai_visual(state, path) if is_timm_clip_layout(state) else state


def _resized_grid(value: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    if value.shape[0] == grid[0] * grid[1] + 1:
        return value
    return resize_pos_embed(value.unsqueeze(0), grid).squeeze(0)


def adapt_openai_clip_state(state: Mapping[str, torch.Tensor], grid: Tuple[int, int],
                            tokenized_prompt: torch.Tensor, source: str) -> StateDict:
    """CLIP-ReID's keys for OpenAI's: the image tower under `image_encoder.` with its position grid
    resized to `grid`, the text tower under `text_encoder.`, and the prompt's fixed token embeddings."""
    adapted: StateDict = {}
    for key, value in state.items():
        if key in UNUSED_CLIP_KEYS or key.endswith(UNUSED_CLIP_SUFFIXES):
            continue
        if key == TOKEN_EMBEDDING:
            embedded = value[tokenized_prompt]
            adapted['prompt_learner.token_prefix'] = embedded[:, :PROMPT_PREFIX_TOKENS]
            adapted['prompt_learner.token_suffix'] = embedded[:, PROMPT_PREFIX_TOKENS + CLASS_CONTEXT_TOKENS:]
        elif key.startswith('visual.'):
            if key in ('visual.positional_embedding', 'visual.attnpool.positional_embedding'):
                value = _resized_grid(value, grid)
            adapted['image_encoder.' + key[len('visual.'):]] = value
        elif key.startswith(TEXT_KEYS):
            adapted['text_encoder.' + key] = value
        else:
            adapted[key] = value  # not CLIP's: load_state_strict names it
    if not any(key.startswith('text_encoder.') for key in adapted):
        raise weights.CheckpointMismatchError(
            f"'{source}' holds CLIP's image tower only (timm's layout); CLIP-ReID needs the text tower too: use "
            "OpenAI's ViT-B-16.pt / RN50.pt or open_clip's open_clip_model.safetensors of the same model")
    return {key: value.float() if value.is_floating_point() else value for key, value in adapted.items()}


def load_clip_pretrained(model, source: str, model_name: Optional[str] = None) -> None:
    """OpenAI's CLIP weights from `source` into a CLIPReID model, strictly: only the heads, the SIE
    table and the learnt prompts (`FRESH_PREFIXES`) stay at their initialisation."""
    state = adapt_openai_clip_state(read_clip_state(source), model.grid,
                                    model.prompt_learner.tokenized_prompts, source)
    fresh = [key for key in model.state_dict() if key.startswith(FRESH_PREFIXES)]
    weights.load_state_strict(model, state, source, allowed_missing=fresh,
                              fix_hint=f"These are not OpenAI CLIP weights for MODEL.NAME {model_name or ''}; "
                                       + CLIP_MISSING_HINT)
    logger.info("Loaded CLIP weights from %s", source)
