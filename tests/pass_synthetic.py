"""Synthetic PASS checkpoints and re-ID heads: state dicts with PASS's key names and shapes, drawn
from a seed, in the forms PASS publishes (its DINO training checkpoint and the bare backbone).

The backbone is TransReID-SSL's (tests/ssl_synthetic.py) with PASS's changes written out here:
`pos_embed` covers the patches alone, and the three part tokens and four extra position vectors
are added. tests/fixtures/pass/generate.py feeds the same state dicts to PASS's own code.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from tests.ssl_synthetic import PRETRAIN_GRID, _draw, backbone_shapes, dino_checkpoint

StateDict = Dict[str, torch.Tensor]

# vit_tiny5_patch16_224_TransReID's widths: the test builds the model through the config.
TOY = dict(embed_dim=192, depth=5, mlp_ratio=4)
TOY_TYPE = 'vit_tiny5_patch16_224_TransReID'
PASS_EXTRA_KEYS = ('part_token1', 'part_token2', 'part_token3', 'cls_pos', 'part1_pos', 'part2_pos', 'part3_pos')
STATE_SEED = 32
HEAD_SEED = 5
INPUT_SEED = 11
# Two images of each of two identities: the triplet loss needs positives in the batch.
LABELS = (0, 0, 1, 1)
NUM_CLASSES = 6
NUM_PARTS = 3


def pass_backbone_shapes(embed_dim: int, depth: int, mlp_ratio: float,
                         grid: Tuple[int, int] = PRETRAIN_GRID) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape of PASS's pre-trained backbone (its VisionTransformer, head removed)."""
    shapes = backbone_shapes(embed_dim, depth, mlp_ratio, grid, stem=False)
    shapes['pos_embed'] = (1, grid[0] * grid[1], embed_dim)
    shapes.update({key: (1, 1, embed_dim) for key in PASS_EXTRA_KEYS})
    return shapes


def synthetic_pass_state(embed_dim: int = TOY['embed_dim'], depth: int = TOY['depth'],
                         mlp_ratio: float = TOY['mlp_ratio'], seed: int = STATE_SEED) -> StateDict:
    """A bare PASS backbone (what their convert_model_dino.py writes), drawn in key order; the
    tokens and positions at the class token's scale, so that each one moves the features."""
    generator = torch.Generator().manual_seed(seed)
    return {key: 0.5 * torch.randn(shape, generator=generator) if key in PASS_EXTRA_KEYS
            else _draw(key, shape, generator)
            for key, shape in pass_backbone_shapes(embed_dim, depth, mlp_ratio).items()}


def pass_dino_checkpoint(backbone: StateDict, with_args: bool = True) -> dict:
    """`backbone` as PASS's main_pass.py saves it: the teacher unwrapped (`backbone.*`, `head.*`,
    a ViT has no batch norm to synchronise), the student under DDP (`module.backbone.*`),
    optimizer, epoch, args and the loss's centre. Without `with_args` the Namespace is left out,
    for loaders that cannot unpickle it safely."""
    checkpoint = dino_checkpoint(backbone, embed_dim=backbone['cls_token'].shape[-1])
    checkpoint['teacher'] = {key[len('module.'):]: value for key, value in checkpoint['teacher'].items()}
    if not with_args:
        del checkpoint['args']
    return checkpoint


def head_state(embed_dim: int, fusion: str, multi_neck: bool, seed: int = HEAD_SEED) -> StateDict:
    """Their build_transformer_pass's BN necks and classifier, with non-trivial statistics."""
    generator = torch.Generator().manual_seed(seed)
    fused = embed_dim * (2 if fusion == 'cat' else 1)
    necks = ['bottleneck'] + [f'bottleneck_{part}' for part in range(1, NUM_PARTS + 1)] if multi_neck \
        else ['bottleneck']
    width = embed_dim if multi_neck else fused
    state = {}
    for neck in necks:
        for leaf in ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'):
            key = f'{neck}.BN.{leaf}'  # '.BN.' marks a norm for _draw
            state[f'{neck}.{leaf}'] = _draw(key, () if leaf == 'num_batches_tracked' else (width,), generator)
    # Logits of order 1: the necks in train mode normalise by the statistics of four images,
    # which magnifies float32 rounding; larger logits would magnify it past the tolerance.
    state['classifier.weight'] = 0.02 * torch.randn(NUM_CLASSES, fused, generator=generator)
    return state


def synthetic_batch(height: int, width: int, seed: int = INPUT_SEED) -> Tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(len(LABELS), 3, height, width, generator=torch.Generator().manual_seed(seed))
    return images, torch.tensor(LABELS)
