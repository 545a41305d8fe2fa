"""Synthetic TransReID-SSL backbones: state dicts with TransReID-SSL's key names and shapes, drawn
from a seed, and the DINO checkpoint that wraps them as TransReID-SSL publishes its LUPerson ViTs.

The shapes are written out here from TransReID-SSL's module layout, not read off this repository's
model, so that a missing or misnamed layer here fails to load. tests/fixtures/ssl/generate.py
feeds the same state dicts to TransReID-SSL's own model code to make the expected features.
"""
from __future__ import annotations

import argparse
from typing import Dict, Tuple

import torch

StateDict = Dict[str, torch.Tensor]

# Tiny widths for the exactness fixtures (TransReID-SSL's TransReID class takes any).
TINY = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=4)
STEM_WIDTH = 64
# The grid that TransReID-SSL pre-trains on: 256x128 at stride 16 (PRETRAIN_HW_RATIO 2).
PRETRAIN_GRID = (16, 8)
STATE_SEED = 24
INPUT_SEED = 7
BATCH = 2


def _bn_shapes(prefix: str, channels: int) -> Dict[str, Tuple[int, ...]]:
    return {f'{prefix}.weight': (channels,), f'{prefix}.bias': (channels,),
            f'{prefix}.running_mean': (channels,), f'{prefix}.running_var': (channels,),
            f'{prefix}.num_batches_tracked': ()}


def _ibn_shapes(prefix: str, channels: int) -> Dict[str, Tuple[int, ...]]:
    half = channels // 2
    return {f'{prefix}.IN.weight': (half,), f'{prefix}.IN.bias': (half,),
            **_bn_shapes(f'{prefix}.BN', channels - half)}


def backbone_shapes(embed_dim: int, depth: int, mlp_ratio: float, grid: Tuple[int, int],
                    stem: bool) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape of TransReID-SSL's backbone (its TransReID class without the unused `fc`)."""
    hidden = int(embed_dim * mlp_ratio)
    shapes: Dict[str, Tuple[int, ...]] = {
        'cls_token': (1, 1, embed_dim), 'pos_embed': (1, 1 + grid[0] * grid[1], embed_dim)}
    if stem:
        shapes.update({'patch_embed.conv.0.weight': (STEM_WIDTH, 3, 7, 7),
                       **_ibn_shapes('patch_embed.conv.1', STEM_WIDTH),
                       'patch_embed.conv.3.weight': (STEM_WIDTH, STEM_WIDTH, 3, 3),
                       **_ibn_shapes('patch_embed.conv.4', STEM_WIDTH),
                       'patch_embed.conv.6.weight': (STEM_WIDTH, STEM_WIDTH, 3, 3),
                       **_bn_shapes('patch_embed.conv.7', STEM_WIDTH),
                       'patch_embed.proj.weight': (embed_dim, STEM_WIDTH, 8, 8)})
    else:
        shapes['patch_embed.proj.weight'] = (embed_dim, 3, 16, 16)
    shapes['patch_embed.proj.bias'] = (embed_dim,)
    for block in range(depth):
        p = f'blocks.{block}'
        shapes.update({f'{p}.norm1.weight': (embed_dim,), f'{p}.norm1.bias': (embed_dim,),
                       f'{p}.attn.qkv.weight': (3 * embed_dim, embed_dim), f'{p}.attn.qkv.bias': (3 * embed_dim,),
                       f'{p}.attn.proj.weight': (embed_dim, embed_dim), f'{p}.attn.proj.bias': (embed_dim,),
                       f'{p}.norm2.weight': (embed_dim,), f'{p}.norm2.bias': (embed_dim,),
                       f'{p}.mlp.fc1.weight': (hidden, embed_dim), f'{p}.mlp.fc1.bias': (hidden,),
                       f'{p}.mlp.fc2.weight': (embed_dim, hidden), f'{p}.mlp.fc2.bias': (embed_dim,)})
    shapes.update({'norm.weight': (embed_dim,), 'norm.bias': (embed_dim,)})
    return shapes


def _draw(key: str, shape: Tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Values of the right scale for each kind of tensor, with non-trivial norm statistics."""
    leaf = key.rsplit('.', 1)[-1]
    if leaf == 'num_batches_tracked':
        return torch.tensor(1000, dtype=torch.long)
    if leaf == 'running_var':
        return 0.5 + torch.rand(shape, generator=generator)
    if leaf == 'running_mean':
        return 0.2 * torch.randn(shape, generator=generator)
    is_norm = '.IN.' in key or '.BN.' in key or 'norm' in key or key.startswith('patch_embed.conv.7')
    if leaf == 'weight' and (is_norm or len(shape) == 1):
        return 1 + 0.2 * torch.randn(shape, generator=generator)
    if leaf == 'bias':
        return 0.1 * torch.randn(shape, generator=generator)
    fan_in = max(1, int(torch.tensor(shape[1:]).prod().item())) if len(shape) > 1 else 1
    scale = 0.5 if key in ('cls_token', 'pos_embed') else fan_in ** -0.5
    return scale * torch.randn(shape, generator=generator)


def synthetic_state(stem: bool, embed_dim: int = TINY['embed_dim'], depth: int = TINY['depth'],
                    mlp_ratio: float = TINY['mlp_ratio'], grid: Tuple[int, int] = PRETRAIN_GRID,
                    seed: int = STATE_SEED) -> StateDict:
    """A bare backbone state dict (TransReID-SSL's converted checkpoint), drawn in key order."""
    generator = torch.Generator().manual_seed(seed)
    return {key: _draw(key, shape, generator)
            for key, shape in backbone_shapes(embed_dim, depth, mlp_ratio, grid, stem).items()}


def synthetic_input(height: int, width: int, seed: int = INPUT_SEED) -> torch.Tensor:
    return torch.randn(BATCH, 3, height, width, generator=torch.Generator().manual_seed(seed))


def dino_checkpoint(backbone: StateDict, embed_dim: int = TINY['embed_dim']) -> dict:
    """`backbone` as DINO's main_dino.py saves it: teacher and student MultiCropWrappers under
    DistributedDataParallel (`module.backbone.*`, `module.head.*`), optimizer, epoch, args
    (an argparse.Namespace) and the loss's centre. The student differs from the teacher."""
    head = {'head.mlp.0.weight': torch.ones(8, embed_dim), 'head.mlp.0.bias': torch.zeros(8),
            'head.last_layer.weight_g': torch.ones(16, 1), 'head.last_layer.weight_v': torch.ones(16, 8)}
    teacher = {**{f'backbone.{key}': value for key, value in backbone.items()}, **head}
    student = {f'module.{key}': value + 1 if value.is_floating_point() else value for key, value in teacher.items()}
    return {'student': student, 'teacher': {f'module.{key}': value for key, value in teacher.items()},
            'optimizer': {'state': {}, 'param_groups': [{'lr': 0.0005, 'params': [0, 1]}]},
            'epoch': 100, 'args': argparse.Namespace(arch='vit_small', patch_size=16, out_dim=65536, lr=0.0005,
                                                     local_crops_scale=(0.05, 0.4), data_path='/data/LUP'),
            'dino_loss': {'center': torch.zeros(1, 16)}}
