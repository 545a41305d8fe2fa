"""Synthetic SOLIDER checkpoints: state dicts with the key names and shapes of SOLIDER's Swin
(mmsegmentation layout plus the semantic controller), drawn from a seed, wrapped as SOLIDER's
main_solider.py saves them and as its convert_model.py writes the teacher.

The shapes are written out here, not read off this repository's model, so that a missing or
misnamed layer fails to load; tests/fixtures/solider/generate.py also checks them against
SOLIDER's own model.
"""
from __future__ import annotations

import argparse
from typing import Dict, Sequence, Tuple

import torch

StateDict = Dict[str, torch.Tensor]

TINY = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
WINDOW = 7
STATE_SEED = 41
INPUT_SEED = 3
BATCH = 2


def _linear(prefix: str, out_features: int, in_features: int, bias: bool = True) -> Dict[str, Tuple[int, ...]]:
    shapes = {f'{prefix}.weight': (out_features, in_features)}
    if bias:
        shapes[f'{prefix}.bias'] = (out_features,)
    return shapes


def _norm(prefix: str, width: int) -> Dict[str, Tuple[int, ...]]:
    return {f'{prefix}.weight': (width,), f'{prefix}.bias': (width,)}


def _block(prefix: str, width: int, heads: int) -> Dict[str, Tuple[int, ...]]:
    return {**_norm(f'{prefix}.norm1', width),
            f'{prefix}.attn.w_msa.relative_position_bias_table': ((2 * WINDOW - 1) ** 2, heads),
            f'{prefix}.attn.w_msa.relative_position_index': (WINDOW ** 2, WINDOW ** 2),
            **_linear(f'{prefix}.attn.w_msa.qkv', 3 * width, width),
            **_linear(f'{prefix}.attn.w_msa.proj', width, width), **_norm(f'{prefix}.norm2', width),
            **_linear(f'{prefix}.ffn.layers.0.0', 4 * width, width),
            **_linear(f'{prefix}.ffn.layers.1', width, 4 * width)}


def backbone_shapes(embed_dims: int, depths: Sequence[int], num_heads: Sequence[int],
                    semantic: bool = True) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape of SOLIDER's SwinTransformer backbone."""
    widths = [embed_dims * 2 ** index for index in range(len(depths))]
    shapes = {'patch_embed.projection.weight': (embed_dims, 3, 4, 4), 'patch_embed.projection.bias': (embed_dims,),
              **_norm('patch_embed.norm', embed_dims)}
    for stage, (width, depth, heads) in enumerate(zip(widths, depths, num_heads)):
        for block in range(depth):
            shapes.update(_block(f'stages.{stage}.blocks.{block}', width, heads))
        if stage < len(depths) - 1:
            shapes.update({**_norm(f'stages.{stage}.downsample.norm', 4 * width),
                           **_linear(f'stages.{stage}.downsample.reduction', 2 * width, 4 * width, bias=False)})
    for stage, width in enumerate(widths):
        shapes.update(_norm(f'norm{stage}', width))
    if semantic:
        for kind in ('w', 'b'):
            for stage in range(len(depths)):
                shapes.update(_linear(f'semantic_embed_{kind}.{stage}', widths[min(stage + 1, len(depths) - 1)], 2))
    return shapes


def _relative_position_index() -> torch.Tensor:
    """Their WindowMSA's index, computed as they compute it (a buffer that checkpoints carry)."""
    rows = torch.arange(0, (2 * WINDOW - 1) * WINDOW, 2 * WINDOW - 1)
    columns = torch.arange(0, WINDOW)
    coords = (rows[:, None] + columns[None, :]).reshape(1, -1)
    return (coords + coords.T).flip(1).contiguous()


def _draw(key: str, shape: Tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    leaf = key.rsplit('.', 1)[-1]
    if leaf == 'relative_position_index':
        return _relative_position_index()
    if 'norm' in key and leaf == 'weight':
        return 1 + 0.2 * torch.randn(shape, generator=generator)
    if leaf == 'bias':
        return 0.1 * torch.randn(shape, generator=generator)
    if leaf == 'relative_position_bias_table' or key.startswith('semantic_embed'):
        return 0.5 * torch.randn(shape, generator=generator)
    fan_in = int(torch.tensor(shape[1:]).prod().item())
    return fan_in ** -0.5 * torch.randn(shape, generator=generator)


def synthetic_state(embed_dims: int = TINY['embed_dims'], depths: Sequence[int] = TINY['depths'],
                    num_heads: Sequence[int] = TINY['num_heads'], seed: int = STATE_SEED) -> StateDict:
    generator = torch.Generator().manual_seed(seed)
    return {key: _draw(key, shape, generator) for key, shape in backbone_shapes(embed_dims, depths, num_heads).items()}


def teacher_state(backbone: StateDict) -> StateDict:
    """What SOLIDER's convert_model.py writes: the teacher, `backbone.*` beside the DINO `head.*`."""
    width = backbone['norm3.weight'].shape[0]
    head = {'head.mlp.0.weight': torch.ones(8, width), 'head.mlp.0.bias': torch.zeros(8),
            'head.last_layer.weight_g': torch.ones(16, 1), 'head.last_layer.weight_v': torch.ones(16, 8)}
    return {**{f'backbone.{key}': value for key, value in backbone.items()}, **head}


def solider_checkpoint(backbone: StateDict, with_args: bool = True) -> dict:
    """`backbone` as main_solider.py saves it: the teacher unwrapped (a Swin has no batch norm to
    synchronise), the student under DDP (`module.`), optimizer, epoch, args, the loss's centre."""
    teacher = teacher_state(backbone)
    student = {f'module.{key}': value + 1 if value.is_floating_point() else value for key, value in teacher.items()}
    checkpoint = {'student': student, 'teacher': teacher, 'epoch': 100,
                  'optimizer': {'state': {}, 'param_groups': [{'lr': 0.0005, 'params': [0, 1]}]},
                  'dino_loss': {'center': torch.zeros(1, 16)}}
    if with_args:
        checkpoint['args'] = argparse.Namespace(arch='swin_tiny', out_dim=65536, data_path='/data/LUP')
    return checkpoint


def synthetic_input(height: int, width: int, seed: int = INPUT_SEED) -> torch.Tensor:
    return torch.randn(BATCH, 3, height, width, generator=torch.Generator().manual_seed(seed))
