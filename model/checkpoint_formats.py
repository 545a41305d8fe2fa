"""Checkpoint formats beside torch.save's state dicts: how a file is told apart and unwrapped.

* `.safetensors` (the format most ViT weights now ship in), read through the `safetensors` package.
* TorchScript archives (how OpenAI ships CLIP): a compiled program, refused with what to do.
* Self-supervised checkpoints (DINO, as TransReID-SSL publishes its LUPerson ViTs): the backbone
  under `teacher` (or `student` / `target_encoder` when a file holds only that), its keys
  prefixed `module.backbone.` or `backbone.`, beside a projection `head.*` that re-ID leaves out,
  and an `argparse.Namespace` of training arguments, which `weights_only` loading allows.

Pure functions on bytes, paths and mappings, as timm's `checkpoint_filter_fn`: the state dict is
adapted outside the model, which `model.weights` then loads strictly.
"""
from __future__ import annotations

import argparse
import contextlib
import struct
import zipfile
from typing import Dict, Iterator, Mapping

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
             "projection head) and its weights are not loaded here; start from a jx ViT / DeiT or a "
             "TransReID-SSL checkpoint instead (docs/ssl.md)")


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
        f"a CLIP file will still not fit: {CLIP_HINT}")


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
