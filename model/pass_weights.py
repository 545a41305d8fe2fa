"""Fitting PASS's pre-trained checkpoints to the part-token ViT (model/backbones/vit_pass.py).

PASS (github.com/CASIA-IVA-Lab/PASS-reID) pre-trains on LUPerson with DINO and publishes the
training checkpoint: the encoder under `teacher` (`backbone.*`, beside the DINO projection
`head.*`) and `student` (`module.backbone.*`), which model/weights.py unwraps as it does
TransReID-SSL's. What differs is the backbone: three part tokens (`part_token1..3`), one position
vector for each of the four leading tokens (`cls_pos`, `part1_pos..part3_pos`) and a `pos_embed`
of the patches alone, which their loader resizes whole to the re-ID grid (bilinear, no class
entry set aside). Pure functions on state dicts, as model/weights.py's adapt functions.
"""
from __future__ import annotations

import logging
from typing import Dict, Mapping, Tuple

import torch
from timm.layers import resample_abs_pos_embed

from utils.errors import UserError

from .pos_embed import source_grid

logger = logging.getLogger("transreid.model")

StateDict = Dict[str, torch.Tensor]

NUM_PART_TOKENS = 3
PART_KEYS = tuple(f'part_token{part}' for part in range(1, NUM_PART_TOKENS + 1))
POSITION_KEYS = ('cls_pos',) + tuple(f'part{part}_pos' for part in range(1, NUM_PART_TOKENS + 1))
PASS_KEYS = PART_KEYS + POSITION_KEYS
# The DINO projection head, which re-ID leaves out, as their loader does.
DINO_HEAD_PREFIX = 'head.'

# PASS README's pre-trained LUPerson models (Google Drive), by MODEL.TRANSFORMER_TYPE.
DRIVE = 'https://drive.google.com/file/d/'
PASS_SOURCES = {
    'vit_small_ssl_patch16_224_TransReID': DRIVE + '1q7oxT0vWvt0Ia0NMmdVlA3oUs0UCQq3C/view',
    'vit_base_patch16_224_TransReID': DRIVE + '1sZUrabY6Lke-BJoxOEviX5ALJ017x4Ft/view',
}


class CheckpointFamilyError(UserError, RuntimeError):
    """Weights of another model family (a PASS checkpoint for a plain ViT, or the reverse)."""


def download_hint(backbone_name: str) -> str:
    url = PASS_SOURCES.get(backbone_name)
    where = f"download {url} (PASS's README)" if url else "download PASS's LUPerson checkpoint (docs/pass.md)"
    return f"{where} and set MODEL.PRETRAIN_PATH to it, or set MODEL.PRETRAIN_CHOICE none to train from scratch"


def fix_hint(backbone_name: str, stem: bool) -> str:
    return (f"These are not PASS weights for {backbone_name} (MODEL.TRANSFORMER_TYPE) "
            f"{'with' if stem else 'without'} the convolution stem (MODEL.STEM_CONV); " + download_hint(backbone_name))


def is_pass_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether `state` has any of PASS's part tokens or extra position vectors."""
    return any(key in state for key in PASS_KEYS)


def check_not_pass(state: StateDict, source: str) -> StateDict:
    """`state`, unless it is a PASS checkpoint, which a plain ViT refuses in one line instead of
    a grid error on its `pos_embed` (which has no class-token entry) and seven unexpected keys."""
    if is_pass_state(state):
        raise CheckpointFamilyError(f"'{source}' is a PASS checkpoint (part tokens {', '.join(PART_KEYS)}); "
                                    "set MODEL.PASS True to build PASS's part-token ViT (configs/*/vit_*_pass*.yml)")
    return state


def resize_patch_pos_embed(posemb: torch.Tensor, grid_size: Tuple[int, int], hw_ratio: int) -> torch.Tensor:
    """Their `resize_pos_embed`: the (1, N, D) patch positions, a grid `hw_ratio` times taller
    than wide, bilinearly resized (half-pixel centres, no antialiasing) to `grid_size`."""
    old_size = source_grid(posemb.shape[1], hw_ratio)
    logger.info("Resizing PASS position embedding from a %dx%d grid to %dx%d", *old_size, *grid_size)
    return resample_abs_pos_embed(posemb, new_size=list(grid_size), old_size=list(old_size),
                                  num_prefix_tokens=0, interpolation='bilinear', antialias=False)


def adapt_pass_state(state: Mapping[str, torch.Tensor], source: str, grid_size: Tuple[int, int],
                     hw_ratio: int) -> StateDict:
    """A PASS backbone state dict (DINO wrapping already removed) fitted to a part-token ViT with
    a `grid_size` patch grid: the DINO head left out and `pos_embed` resized where its grid differs."""
    missing = [key for key in PASS_KEYS if key not in state]
    if missing:
        kind = "a ViT checkpoint of another family (ImageNet, TransReID-SSL)" if len(missing) == len(PASS_KEYS) \
            else "an incomplete PASS checkpoint"
        raise CheckpointFamilyError(f"'{source}' is {kind}: it lacks {', '.join(missing)}; give PASS's LUPerson "
                                    "checkpoint, or set MODEL.PASS False to load these weights into a plain ViT")
    adapted = {key: value for key, value in state.items() if not key.startswith(DINO_HEAD_PREFIX)}
    posemb = adapted.get('pos_embed')
    if posemb is not None and posemb.ndim == 3 and tuple(posemb.shape[1:2]) != (grid_size[0] * grid_size[1],):
        adapted['pos_embed'] = resize_patch_pos_embed(posemb, grid_size, hw_ratio)
    return adapted
