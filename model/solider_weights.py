"""Fitting SOLIDER's pre-trained checkpoints to its Swin (model/backbones/swin_solider.py).

SOLIDER (github.com/tinyvision/SOLIDER) pre-trains Swin on LUPerson with DINO plus a semantic
controller and saves DINO's training checkpoint; SOLIDER-REID's convert_model.py keeps only its
`teacher` (`backbone.*` beside the DINO projection `head.*`), and its loader keeps the
`backbone.` keys. Both files load here as they are: model/weights.py unwraps the training
checkpoint, and this module takes the converted teacher's `backbone.` keys, so their conversion
step is folded into loading. Pure functions on state dicts, as model/weights.py's adapt functions.
"""
from __future__ import annotations

from typing import Dict, Mapping

import torch

from utils.errors import UserError

StateDict = Dict[str, torch.Tensor]

BACKBONE_PREFIX = 'backbone.'
MODULE_PREFIX = 'module.'
DINO_HEAD_PREFIX = 'head.'
# Keys that only SOLIDER's Swin has, and keys of the families it is confused with.
SOLIDER_MARKERS = ('stages.0.blocks.0.attn.w_msa.qkv.weight',)
SEMANTIC_MARKER = 'semantic_embed_w.0.weight'
ORIGINAL_SWIN_MARKER = 'layers.0.blocks.0.attn.qkv.weight'
VIT_MARKER = 'cls_token'

SOLIDER_SOURCES = {
    'swin_tiny_patch4_window7_224': 'https://drive.google.com/file/d/12UyPVFmjoMVpQLHN07tNh4liHUmyDqg8/view',
    'swin_small_patch4_window7_224': 'https://drive.google.com/file/d/1oyEgASqDHc7YUPsQUMxuo2kBZyi2Tzfv/view',
    'swin_base_patch4_window7_224': 'https://drive.google.com/file/d/1uh7tO34tMf73MJfFqyFEGx42UBktTbZU/view',
}


class SwinFamilyError(UserError, RuntimeError):
    """Weights that are not SOLIDER's Swin: the message says which family they are."""


def download_hint(backbone_name: str) -> str:
    url = SOLIDER_SOURCES.get(backbone_name)
    where = f"download {url} (SOLIDER's README)" if url else "download SOLIDER's LUPerson checkpoint (docs/solider.md)"
    return f"{where} and set MODEL.PRETRAIN_PATH to it, or set MODEL.PRETRAIN_CHOICE none to train from scratch"


def _backbone_keys(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Their converted teacher's `backbone.` keys, else the state without the DINO head."""
    if any(key.startswith(BACKBONE_PREFIX) for key in state):
        state = {key[len(BACKBONE_PREFIX):]: value for key, value in state.items() if key.startswith(BACKBONE_PREFIX)}
    else:
        state = {key: value for key, value in state.items() if not key.startswith(DINO_HEAD_PREFIX)}
    return {key[len(MODULE_PREFIX):] if key.startswith(MODULE_PREFIX) else key: value for key, value in state.items()}


def adapt_solider_state(state: Mapping[str, torch.Tensor], source: str, semantic: bool) -> StateDict:
    """SOLIDER's backbone state from any of its forms; another family is named in one line.
    `semantic`: whether the model has the semantic controller (MODEL.SEMANTIC_WEIGHT >= 0)."""
    state = _backbone_keys(state)
    if ORIGINAL_SWIN_MARKER in state:
        raise SwinFamilyError(f"'{source}' is a Swin in Microsoft's layout (layers.*), such as ImageNet weights; "
                              "only SOLIDER's LUPerson checkpoints load here (docs/solider.md)")
    if VIT_MARKER in state or not all(key in state for key in SOLIDER_MARKERS):
        raise SwinFamilyError(f"'{source}' is not a SOLIDER Swin checkpoint (no stages.*.attn.w_msa keys); give "
                              "SOLIDER's LUPerson checkpoint, or a ViT config for ViT weights")
    if semantic and SEMANTIC_MARKER not in state:
        raise SwinFamilyError(f"'{source}' has no semantic controller (semantic_embed_*); set "
                              "MODEL.SEMANTIC_WEIGHT -1 to build the Swin without it")
    return state
