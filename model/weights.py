"""Reading weights that a user hands in, and fitting them into the models, strictly.

Two kinds of source:

* Pre-trained initialisation of a backbone: a local jx ViT / DeiT / torchvision ResNet-50 `.pth`
  (a state dict, possibly nested under 'model' or 'state_dict'), `timm:<model name>`, which
  timm downloads when the machine is online, or a TransReID-SSL / DINO checkpoint or
  `.safetensors` file (model/checkpoint_formats.py). ViT position embeddings are resized to the
  re-ID stride grid (model/pos_embed.py) and old linear patch-embedding weights reshaped.
* Trained TransReID models: the reference's `transformer_<epoch>.pth` (a bare state dict,
  maybe with DataParallel's `module.` prefixes) or this repository's training checkpoints
  (`{'model': state_dict, 'optimizer': ..., 'epoch': ...}`).

Unlike the reference, which prints and carries on, every mismatch raises a
`CheckpointMismatchError` that lists each offending key with both shapes. A directory (its newest
.pth files are named), an empty, truncated, damaged (CRC) or non-PyTorch file raises an
`UnreadableWeightsError` saying which; Python objects besides tensors (and DINO's Namespace) are
not unpickled, for safety; a TorchScript archive or a CLIP state dict is named as such.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from typing import Collection, Dict, Iterable, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from utils.errors import UserError
from utils.files import verify_zip

from . import checkpoint_formats as formats
from . import pass_weights
from .pos_embed import resize_pos_embed
from .pretrained_sources import download_hint

logger = logging.getLogger("transreid.model")

StateDict = Dict[str, torch.Tensor]

TIMM_PREFIX = 'timm:'
# Top-level keys under which DeiT, timm and this repository's training checkpoints nest the weights.
NESTING_KEYS = ('model', 'state_dict')
# ImageNet classification heads (ViT, distilled DeiT, ResNet), which a re-ID model replaces.
IMAGENET_HEAD_PREFIXES = ('head.', 'head_dist.', 'pre_logits.', 'fc.')
# Distilled DeiT's extra token; TransReID keeps only the class token.
DISTILLATION_TOKEN = 'dist_token'
# The reference's ViT keeps an unused 1000-way ImageNet head, saved in its trained checkpoints.
UNUSED_TRAINED_PREFIXES = ('base.fc.', 'base.head.')
CLASSIFIER_PREFIX = 'classifier'
BN_BATCH_COUNTER = 'num_batches_tracked'

class WeightsNotFoundError(UserError, FileNotFoundError):
    """A weights file (or timm download) that cannot be had; the message says where to get it."""


class CheckpointMismatchError(UserError, RuntimeError):
    """Weights whose keys or shapes do not fit the model; the message lists every offending key."""


class UnreadableWeightsError(WeightsNotFoundError):
    """A weights path that exists but is no usable weights file: a directory, or an empty,
    truncated or non-PyTorch file. A WeightsNotFoundError, so that every caller that reports a
    missing weights file in one line (train.py, test.py, the tools) reports this one too."""


def _shape(tensor: torch.Tensor) -> Tuple[int, ...]:
    return tuple(tensor.shape)


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Drop the `module.` prefix that (Distributed)DataParallel adds to every key."""
    prefix = 'module.'
    return {key[len(prefix):] if key.startswith(prefix) else key: value for key, value in state.items()}


def unwrap_state_dict(checkpoint: object, source: str) -> StateDict:
    """The tensors of `checkpoint`, looking inside the 'model' / 'state_dict' keys that wrap them,
    or inside a self-supervised checkpoint's encoder (`teacher`...), whose `backbone.` prefix goes."""
    encoder = formats.self_supervised_encoder(checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    self_supervised, checkpoint = encoder is not checkpoint, encoder
    for key in NESTING_KEYS:
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatchError(f"{source} holds a {type(checkpoint).__name__}, not a state dict "
                                      "(a mapping from parameter names to tensors)")
    state = {key: value for key, value in checkpoint.items() if isinstance(value, torch.Tensor)}
    if not state:
        raise CheckpointMismatchError(f"{source} holds no tensors; its top-level keys are "
                                      f"{sorted(map(str, checkpoint))[:10]}")
    formats.check_not_clip(state, source)
    return formats.strip_self_supervised_prefixes(state) if self_supervised else strip_module_prefix(state)


# --------------------------------------------------------------------------------------------
# Reading a weights file
# --------------------------------------------------------------------------------------------
# torch.save writes a ZIP archive (PyTorch >= 1.6) ...
ZIP_MAGIC = b'PK\x03\x04'
# ... or, before 1.6 (or with _use_new_zipfile_serialization=False), a pickle stream that opens
# with torch's magic number pickled at one of these protocols ...
LEGACY_TORCH_MAGICS = tuple(pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=protocol)
                            for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1))
# ... or, in its first releases (early 2017, when the first ImageNet files were saved), a tar
# archive, which torch.load still reads; tar marks its headers with 'ustar' at this offset.
TAR_MAGIC, TAR_MAGIC_OFFSET = b'ustar', 257
INTERRUPTED = "e.g. an interrupted copy or download; copy or download it again"
SHOWN_DIRECTORY_FILES = 3
EPOCH_FILE_NAME = re.compile(r'_(\d+)\.pth$')


def _newest_epoch_first(name: str) -> Tuple[bool, int, str]:
    # transformer_120.pth before transformer_60.pth: the last epoch is the usual choice.
    match = EPOCH_FILE_NAME.search(name)
    return match is None, -int(match.group(1)) if match else 0, name


def _weights_files_in(folder: str) -> List[str]:
    try:
        names = [name for name in os.listdir(folder) if name.endswith('.pth')]
    except OSError:
        return []
    return [os.path.join(folder, name) for name in sorted(names, key=_newest_epoch_first)]


def _directory_error(path: str, missing_hint: str) -> UnreadableWeightsError:
    found = _weights_files_in(path)
    if not found:
        return UnreadableWeightsError(f"'{path}' is a directory, not a weights file, and holds no .pth "
                                      f"file; {missing_hint}")
    shown = ', '.join(found[:SHOWN_DIRECTORY_FILES])
    more = f" ({len(found)} .pth files in all)" if len(found) > SHOWN_DIRECTORY_FILES else ''
    return UnreadableWeightsError(f"'{path}' is a directory, not a weights file; give one of the .pth "
                                  f"files in it, e.g. {shown}{more}")


def _check_path(path: str, missing_hint: str) -> None:
    if not path:
        raise WeightsNotFoundError(f"no weights file given (empty path); {missing_hint}")
    if os.path.isdir(path):
        raise _directory_error(path, missing_hint)
    if not os.path.isfile(path):
        raise WeightsNotFoundError(f"weights file '{path}' does not exist; {missing_hint}")
    if path.endswith('.npz'):
        raise WeightsNotFoundError(f"'{path}' is a JAX .npz checkpoint, which is not read here; use the "
                                   "PyTorch .pth port of the same weights or a 'timm:<model name>' source")


def _file_format(path: str) -> str:
    """'zip' or 'legacy' (the two formats of torch.save), or 'safetensors'; a TorchScript archive
    raises a CheckpointFormatError and any other file an UnreadableWeightsError, saying what it is."""
    with open(path, 'rb') as handle:
        head = handle.read(512)
    if not head:
        raise UnreadableWeightsError(f"weights file '{path}' is empty (0 bytes), {INTERRUPTED}")
    if formats.looks_like_safetensors(path, head):
        return 'safetensors'
    if head.startswith(ZIP_MAGIC):
        if not zipfile.is_zipfile(path):  # the archive's directory, at its end, is missing
            raise UnreadableWeightsError(f"weights file '{path}' is truncated (its ZIP archive has no end), "
                                         f"{INTERRUPTED}")
        if formats.is_torchscript_archive(path):
            raise formats.torchscript_error(path)
        return 'zip'
    if head.startswith(LEGACY_TORCH_MAGICS) or head[TAR_MAGIC_OFFSET:].startswith(TAR_MAGIC):
        return 'legacy'
    if head.startswith(b'\x80'):  # the PROTO opcode that starts every pickle since protocol 2
        raise UnreadableWeightsError(f"'{path}' is a plain Python pickle, not a file written by torch.save; "
                                     "if you trust it, unpickle it and torch.save its state dict")
    raise UnreadableWeightsError(f"'{path}' is not a PyTorch weights file (one written by torch.save): it "
                                 f"starts with {head[:40]!r}; a text or HTML file in its place is often a failed "
                                 "download or a Git LFS pointer (git lfs pull); copy or download it again")


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def _unpickling_error(path: str, file_format: str) -> Exception:
    # weights_only loading refuses both pickled Python objects and damaged data with this one
    # exception class; the pickle's list of classes tells the two apart where it can be read.
    resave = ("If you trust the file, re-save only its state dict: "
              "torch.save(torch.load(path, weights_only=False)['model'], new_path)")
    unsafe = formats.unsafe_globals(path, file_format)
    if unsafe:
        return CheckpointMismatchError(f"'{path}' holds Python objects besides tensors ({', '.join(unsafe)}), "
                                       f"which are not unpickled for safety. {resave}")
    if unsafe == []:
        return UnreadableWeightsError(f"weights file '{path}' is damaged (its pickled data cannot be read), "
                                      f"{INTERRUPTED}")
    return CheckpointMismatchError(f"'{path}' could not be read safely: either it holds Python objects besides "
                                   f"tensors, which are not unpickled for safety, or it is damaged ({INTERRUPTED}). "
                                   f"{resave}")


def load_file(path: str, missing_hint: str, mmap: bool = False) -> object:
    """What `path` holds, loaded with weights_only; a missing, empty, truncated, text or
    object-pickling file raises a WeightsNotFoundError (a UserError) that names it. `mmap`
    maps a ZIP-format file's tensors instead of reading them: a cheap check of the file."""
    _check_path(path, missing_hint)
    file_format = _file_format(path)
    if file_format == 'zip' and (damage := verify_zip(path)):
        raise UnreadableWeightsError(f"weights file '{path}' is damaged: {damage}; {INTERRUPTED}")
    try:
        if file_format == 'safetensors':
            return formats.read_safetensors(path)
        with formats.allowed_globals():
            return torch.load(path, map_location='cpu', weights_only=True,
                              mmap=mmap and file_format == 'zip')
    except UserError:
        raise
    except pickle.UnpicklingError:
        raise _unpickling_error(path, file_format) from None
    except MemoryError:
        raise
    except Exception as err:  # damaged data: torch raises RuntimeError, OSError, EOFError, IndexError...
        raise UnreadableWeightsError(f"weights file '{path}' could not be read ({_first_line(err)}); it is "
                                     f"probably truncated or damaged, {INTERRUPTED}") from err


def read_state_dict(path: str, missing_hint: str) -> StateDict:
    """State dict stored in `path`; a missing file raises `WeightsNotFoundError` with `missing_hint`."""
    return unwrap_state_dict(load_file(path, missing_hint), path)


def _timm_state_dict(model_name: str, missing_hint: str) -> StateDict:
    import timm

    try:
        model = timm.create_model(model_name, pretrained=True)
    except Exception as err:  # timm raises many kinds: unknown name, HTTP, hub, file-system errors
        raise WeightsNotFoundError(
            f"timm could not provide pretrained weights for '{model_name}' ({type(err).__name__}: {err}). "
            f"On a machine without internet, {missing_hint}") from err
    return dict(model.state_dict())


def read_pretrained(source: str, missing_hint: str) -> StateDict:
    """State dict of ImageNet weights from a local file or from `timm:<model name>`."""
    if source.startswith(TIMM_PREFIX):
        return _timm_state_dict(source[len(TIMM_PREFIX):], missing_hint)
    return read_state_dict(source, missing_hint)


def drop_prefixed(state: Mapping[str, torch.Tensor], prefixes: Sequence[str]) -> StateDict:
    return {key: value for key, value in state.items() if not key.startswith(tuple(prefixes))}


# --------------------------------------------------------------------------------------------
# Strict loading
# --------------------------------------------------------------------------------------------
def _may_be_missing(key: str, allowed_missing: Collection[str]) -> bool:
    # Files saved before PyTorch 0.4.1 (torchvision's ImageNet ResNet-50 among them) have no
    # BatchNorm batch counters; BatchNorm fills them in when loading such a file.
    return key in allowed_missing or key.rsplit('.', 1)[-1] == BN_BATCH_COUNTER


def state_mismatches(model_state: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                     allowed_missing: Collection[str] = ()) -> List[str]:
    """One line per key that is missing, unexpected or of another shape; empty when `state` fits."""
    problems = []
    for key, expected in model_state.items():
        if key not in state and not _may_be_missing(key, allowed_missing):
            problems.append(f"{key}: missing from the checkpoint (model {_shape(expected)})")
    for key, value in state.items():
        if key not in model_state:
            problems.append(f"{key}: not in the model (checkpoint {_shape(value)})")
        elif value.shape != model_state[key].shape:
            problems.append(f"{key}: checkpoint {_shape(value)} vs model {_shape(model_state[key])}")
    return problems


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                      allowed_missing: Collection[str] = (), fix_hint: str = '') -> None:
    """Copy `state` into `module`; every key must match in name and shape, except `allowed_missing`
    and BatchNorm batch counters, which may be missing."""
    problems = state_mismatches(module.state_dict(), state, allowed_missing)
    if problems:
        listing = '\n  '.join(problems)
        raise CheckpointMismatchError(f"{source} does not fit the model ({len(problems)} problem(s)):\n  "
                                      f"{listing}\n{fix_hint}".rstrip())
    module.load_state_dict(state, strict=False)


# --------------------------------------------------------------------------------------------
# ImageNet initialisation
# --------------------------------------------------------------------------------------------
def adapt_imagenet_vit_state(state: Mapping[str, torch.Tensor], pos_embed_shape: Sequence[int],
                             grid_size: Tuple[int, int], patch_weight_shape: Sequence[int],
                             hw_ratio: int = 1) -> StateDict:
    """Fit a jx ViT / DeiT or TransReID-SSL state dict to a TransReID backbone.

    Drops the classification (or DINO projection) heads and the distillation token, reshapes old
    linear patch-embedding weights to the convolution's, and resizes the position embedding, a
    grid `hw_ratio` times taller than wide, to `grid_size`.
    """
    distilled = DISTILLATION_TOKEN in state
    adapted = {}
    for key, value in drop_prefixed(state, IMAGENET_HEAD_PREFIXES).items():
        if key == DISTILLATION_TOKEN:
            continue
        if key == 'patch_embed.proj.weight' and value.ndim < 4:
            # Weights of ViTs trained before the patch embedding became a convolution.
            out_channels, _, kernel_h, kernel_w = patch_weight_shape
            value = value.reshape(out_channels, -1, kernel_h, kernel_w)
        elif key == 'pos_embed':
            if distilled:
                value = torch.cat([value[:, :1], value[:, 2:]], dim=1)
            if tuple(value.shape) != tuple(pos_embed_shape):
                value = resize_pos_embed(value, grid_size, hw_ratio)
        adapted[key] = value
    return adapted


def load_imagenet_vit(backbone: nn.Module, source: str, backbone_name: str, hw_ratio: int = 1) -> None:
    """Pre-trained weights from `source` into a TransReID ViT; only the SIE table may stay untouched."""
    stem = backbone.patch_embed.conv is not None
    hint = download_hint(backbone_name, stem)
    state = pass_weights.check_not_pass(read_pretrained(source, hint), source)
    formats.check_not_trained_model(state, source)
    state = adapt_imagenet_vit_state(state, backbone.pos_embed.shape, backbone.patch_embed.grid_size,
                                     backbone.patch_embed.proj.weight.shape, hw_ratio)
    load_state_strict(backbone, state, source, allowed_missing={'sie_embed'},
                      fix_hint=f"These are not pre-trained weights for {backbone_name} (MODEL.TRANSFORMER_TYPE) "
                               f"{'with' if stem else 'without'} the convolution stem (MODEL.STEM_CONV); " + hint)
    logger.info("Loaded pre-trained weights for %s from %s", backbone_name, source)


def load_imagenet_resnet(backbone: nn.Module, source: str) -> None:
    """torchvision-format ResNet-50 ImageNet weights (the 'fc' head dropped) into the backbone."""
    state = read_pretrained(source, download_hint('resnet50'))
    formats.check_not_trained_model(state, source)
    state = drop_prefixed(state, IMAGENET_HEAD_PREFIXES)
    load_state_strict(backbone, state, source,
                      fix_hint="Expected torchvision ResNet-50 weights; " + download_hint('resnet50'))
    logger.info("Loaded ImageNet weights for resnet50 from %s", source)


# --------------------------------------------------------------------------------------------
# Trained TransReID models
# --------------------------------------------------------------------------------------------
TRAINED_MISSING_HINT = ("point TEST.WEIGHT (testing) or MODEL.PRETRAIN_PATH (PRETRAIN_CHOICE self/finetune) "
                        "at a model trained by this repository or the reference (transformer_<epoch>.pth)")
TRAINED_FIX_HINT = ("Build the model with the settings it was trained with (MODEL.NAME, TRANSFORMER_TYPE, "
                    "STEM_CONV, JPM, SIE_CAMERA, SIE_VIEW, STRIDE_SIZE, INPUT.SIZE_TRAIN, ID_LOSS_TYPE and the "
                    "dataset's class and camera counts), or use MODEL.PRETRAIN_CHOICE finetune for new classifiers.")


def _classifier_keys(keys: Iterable[str]) -> List[str]:
    return [key for key in keys if key.startswith(CLASSIFIER_PREFIX)]


def load_trained_model(model: nn.Module, path: str, new_classifiers_on_mismatch: bool = False) -> None:
    """Load a whole trained model; with `new_classifiers_on_mismatch`, classifiers of another
    class count are left at their fresh initialisation (fine-tuning on a new dataset)."""
    load_trained_state(model, read_state_dict(path, TRAINED_MISSING_HINT), path,
                       new_classifiers_on_mismatch)


def load_trained_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: str,
                       new_classifiers_on_mismatch: bool = False) -> None:
    """`load_trained_model` of a state dict already read from `path`."""
    state = drop_prefixed(state, UNUSED_TRAINED_PREFIXES)
    allowed_missing: List[str] = []
    if new_classifiers_on_mismatch:
        model_state = model.state_dict()
        classifier_keys = _classifier_keys(state)
        if any(key in model_state and state[key].shape != model_state[key].shape for key in classifier_keys):
            logger.info("Class count differs from %s: its classifiers are dropped and trained anew", path)
            state = {key: value for key, value in state.items() if key not in classifier_keys}
            allowed_missing = _classifier_keys(model_state)
    load_state_strict(model, state, path, allowed_missing=allowed_missing, fix_hint=TRAINED_FIX_HINT)
    logger.info("Loaded trained model from %s", path)
