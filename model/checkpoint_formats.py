"""Checkpoint formats beside torch.save's state dicts: how a file is told apart and unwrapped.

* `.safetensors` (the format most ViT weights now ship in), read through the `safetensors` package.
* TorchScript archives (how OpenAI ships CLIP): a compiled program, refused with what to do.
* Self-supervised checkpoints (DINO, as TransReID-SSL publishes its LUPerson ViTs): the backbone
  under `teacher` (or `student` / `target_encoder` when a file holds only that), its keys
  prefixed `module.backbone.` or `backbone.`, beside a projection `head.*` that re-ID leaves out,
  and an `argparse.Namespace` of training arguments, which `weights_only` loading allows.
* Trained TransReID models (`base.*` beside the neck and classifiers) handed in as pre-trained
  backbone weights: refused with where such a file goes instead.
* Which Python objects a ZIP-format torch.save file pickles, read statically.

Pure functions on bytes, paths and mappings, as timm's `checkpoint_filter_fn`: the state dict is
adapted outside the model, which `model.weights` then loads strictly.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import struct
import zipfile
from typing import Dict, Iterator, List, Mapping, Optional

import torch

from utils.errors import UserError

StateDict = Dict[str, torch.Tensor]

SAFETENSORS_SUFFIX = '.safetensors'
# A safetensors file opens with the 8-byte little-endian length of a JSON header, then '{'.
SAFETENSORS_LENGTH_BYTES = 8
# torch.load's own test for a TorchScript archive: a 'constants.pkl' record in the ZIP.
TORCHSCRIPT_RECORD = 'constants.pkl'
# Non-tensor objects that published checkpoints pickle and that are safe to rebuild: DINO and
# TransReID-SSL save their command-line arguments.
ALLOWED_CHECKPOINT_GLOBALS = (argparse.Namespace,)

# The encoders of self-supervised checkpoints, in order of preference: DINO's momentum teacher is
# the one its authors (and TransReID-SSL) evaluate and fine-tune.
SELF_SUPERVISED_ENCODERS = ('teacher', 'student', 'target_encoder')
SELF_SUPERVISED_PREFIXES = ('module.', 'backbone.')
# Keys by which a CLIP state dict (OpenAI's or open_clip's) is recognised.
CLIP_MARKERS = ('visual.class_embedding', 'visual.transformer.resblocks.0.ln_1.weight', 'text_projection')
CLIP_HINT = ("CLIP's image encoder is not a TransReID ViT (pre-norm before the blocks, QuickGELU, a "
             "projection head): start CLIP-ReID from it with MODEL.NAME 'ViT-B-16' or 'RN50' and "
             "MODEL.PRETRAIN_PATH the CLIP file (docs/clipreid.md), or a TransReID from a jx ViT / "
             "DeiT or TransReID-SSL checkpoint (docs/ssl.md)")


# A whole re-ID model's state dict (what train.py saves, and the reference): the backbone under
# `base.`, beside the BN neck and the classifiers, which no pre-trained backbone file holds.
TRAINED_BACKBONE_PREFIX = 'base.'
TRAINED_HEAD_PREFIXES = ('bottleneck', 'classifier')
# The training state train.py writes beside the weights (processor/checkpoint.py LAST_CHECKPOINT).
RESUME_FILE = 'last_checkpoint.pth'


class SafetensorsMissingError(UserError, ImportError):
    """A .safetensors file handed in while the safetensors package is not installed."""


class CheckpointFormatError(UserError, RuntimeError):
    """A file of a format that holds no loadable state dict (TorchScript, CLIP); the message says
    what it is and what to do."""


@contextlib.contextmanager
def allowed_globals() -> Iterator[None]:
    """`weights_only` loading that also rebuilds `ALLOWED_CHECKPOINT_GLOBALS`."""
    with torch.serialization.safe_globals(list(ALLOWED_CHECKPOINT_GLOBALS)):
        yield


def looks_like_safetensors(path: str, head: bytes) -> bool:
    """By name, or by a header length that fits the file followed by a JSON object."""
    if path.endswith(SAFETENSORS_SUFFIX):
        return True
    if len(head) <= SAFETENSORS_LENGTH_BYTES:
        return False
    (length,) = struct.unpack('<Q', head[:SAFETENSORS_LENGTH_BYTES])
    return 2 <= length < 100_000_000 and head[SAFETENSORS_LENGTH_BYTES:SAFETENSORS_LENGTH_BYTES + 1] == b'{'


def read_safetensors(path: str) -> StateDict:
    """The tensors of a .safetensors file, on the CPU. Errors of a damaged file propagate for the
    caller to name the file."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise SafetensorsMissingError(f"'{path}' is a .safetensors file, which needs the safetensors package: "
                                      "pip install safetensors") from None
    return load_file(path, device='cpu')


# What torch's static reading of a damaged data.pkl raises: a missing record (RuntimeError), a
# cut-off stream (EOFError, struct.error, IndexError), an unknown opcode (UnpicklingError), an
# undecodable name (UnicodeDecodeError, a ValueError). Anything else is a bug and propagates.
DAMAGED_PICKLE_ERRORS = (RuntimeError, EOFError, struct.error, IndexError, pickle.UnpicklingError,
                         ValueError, OSError)


def unsafe_globals(path: str, file_format: str) -> Optional[List[str]]:
    """The Python classes and functions, other than torch's, that a ZIP-format file pickles;
    None where that cannot be told (a legacy file, or PyTorch before 2.5)."""
    lister = getattr(torch.serialization, 'get_unsafe_globals_in_checkpoint', None)
    if file_format != 'zip' or lister is None:
        return None
    try:
        return list(lister(path))
    except DAMAGED_PICKLE_ERRORS:
        return None


def is_torchscript_archive(path: str) -> bool:
    """A ZIP archive written by torch.jit.save (a compiled program with its weights)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.rsplit('/', 1)[-1] == TORCHSCRIPT_RECORD for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def torchscript_error(path: str) -> CheckpointFormatError:
    return CheckpointFormatError(
        f"'{path}' is a TorchScript archive (a compiled program saved by torch.jit.save, as OpenAI ships CLIP), "
        "not a state dict. If you trust it, extract its weights with "
        "torch.save(torch.jit.load(path, map_location='cpu').state_dict(), new_path) and give new_path; "
        f"an OpenAI CLIP file needs no extraction (its tensors are read without running its code): {CLIP_HINT}")


def self_supervised_encoder(checkpoint: Mapping) -> Mapping:
    """The encoder's state of a DINO-style checkpoint (`teacher` first), else `checkpoint` itself."""
    for key in SELF_SUPERVISED_ENCODERS:
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key]
    return checkpoint


def strip_self_supervised_prefixes(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Drop `module.` then `backbone.` from the start of each key (DINO's DataParallel-wrapped
    MultiCropWrapper); other keys, such as the projection `head.*`, keep their names."""
    stripped = {}
    for key, value in state.items():
        for prefix in SELF_SUPERVISED_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        stripped[key] = value
    return stripped


def check_not_clip(keys: Mapping[str, object], source: str) -> None:
    """Refuse a CLIP state dict by its keys, with why, rather than with hundreds of mismatches."""
    if any(marker in keys for marker in CLIP_MARKERS):
        raise CheckpointFormatError(f"'{source}' holds a CLIP model (keys visual.*, text_projection). {CLIP_HINT}")


def check_not_trained_model(keys: Mapping[str, object], source: str) -> None:
    """Refuse a trained TransReID model given as pre-trained backbone weights (MODEL.PRETRAIN_PATH
    with PRETRAIN_CHOICE 'imagenet'), saying where such a file goes, rather than listing every key
    as a mismatch."""
    if not (any(key.startswith(TRAINED_BACKBONE_PREFIX) for key in keys)
            and any(key.startswith(TRAINED_HEAD_PREFIXES) for key in keys)):
        return
    run = os.path.dirname(source) or '.'
    config = os.path.join(run, 'config.yaml')
    config = config if os.path.isfile(config) else 'CONFIG'
    resume = os.path.join(run, RESUME_FILE)
    resume = resume if os.path.isfile(resume) else os.path.join('RUN_FOLDER', RESUME_FILE)
    raise CheckpointFormatError(
        f"'{source}' is a trained TransReID model, not pre-trained backbone weights for MODEL.PRETRAIN_PATH "
        f"(PRETRAIN_CHOICE 'imagenet'): test it with python test.py --config_file {config} TEST.WEIGHT {source}, "
        f"continue its training with python train.py --config_file {config} MODEL.RESUME {resume}, or train "
        f"from it with MODEL.PRETRAIN_CHOICE finetune")
