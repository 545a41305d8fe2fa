"""Synthetic CLIP checkpoints for the CLIP-ReID exactness fixtures: OpenAI's key names and shapes at
tiny widths, drawn from a seed, and CLIP-ReID's heads (classifiers, BN necks, SIE table, learnt
prompts) as its train_clipreid.py saves them.

The shapes are written out here from OpenAI's clip/model.py layout, not read off this repository's
model, so that a missing or misnamed layer fails to load. tests/fixtures/clipreid/generate.py feeds
the same tensors to CLIP-ReID's own code to make the expected outputs. Imports torch only: the
generator runs it beside CLIP-ReID's own `model` and `config` packages.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

StateDict = Dict[str, torch.Tensor]

# Tiny widths: 2 heads of 64 channels in both towers (CLIP's head width), 3 image and 2 text blocks.
TINY_VIT = dict(vision_layers=3, vision_width=128, embed_dim=64, text_width=128, text_layers=2)
TINY_RESNET = dict(vision_layers=(1, 1, 1, 1), vision_width=8, embed_dim=64, text_width=128, text_layers=2)
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408
PATCH = 16
# OpenAI's ViT-B/16 is trained at 224x224: a 14x14 grid; its RN50 pools a 7x7 map.
VIT_PRETRAIN_GRID = 14
RESNET_PRETRAIN_GRID = 7
STATE_SEED = 31
HEAD_SEED = 32
INPUT_SEED = 33
BATCH = 4
NUM_CLASSES = 5
CAMERAS = 3
VIEWS = 2


def _block_shapes(prefix: str, width: int) -> Dict[str, Tuple[int, ...]]:
    return {f'{prefix}.attn.in_proj_weight': (3 * width, width), f'{prefix}.attn.in_proj_bias': (3 * width,),
            f'{prefix}.attn.out_proj.weight': (width, width), f'{prefix}.attn.out_proj.bias': (width,),
            f'{prefix}.ln_1.weight': (width,), f'{prefix}.ln_1.bias': (width,),
            f'{prefix}.mlp.c_fc.weight': (4 * width, width), f'{prefix}.mlp.c_fc.bias': (4 * width,),
            f'{prefix}.mlp.c_proj.weight': (width, 4 * width), f'{prefix}.mlp.c_proj.bias': (width,),
            f'{prefix}.ln_2.weight': (width,), f'{prefix}.ln_2.bias': (width,)}


def _bn_shapes(prefix: str, channels: int) -> Dict[str, Tuple[int, ...]]:
    return {f'{prefix}.weight': (channels,), f'{prefix}.bias': (channels,), f'{prefix}.running_mean': (channels,),
            f'{prefix}.running_var': (channels,), f'{prefix}.num_batches_tracked': ()}


def _vit_shapes(layers: int, width: int, embed_dim: int) -> Dict[str, Tuple[int, ...]]:
    shapes = {'visual.class_embedding': (width,), 'visual.positional_embedding': (VIT_PRETRAIN_GRID ** 2 + 1, width),
              'visual.proj': (width, embed_dim), 'visual.conv1.weight': (width, 3, PATCH, PATCH),
              'visual.ln_pre.weight': (width,), 'visual.ln_pre.bias': (width,),
              'visual.ln_post.weight': (width,), 'visual.ln_post.bias': (width,)}
    for block in range(layers):
        shapes.update(_block_shapes(f'visual.transformer.resblocks.{block}', width))
    return shapes


def _bottleneck_shapes(prefix: str, inplanes: int, planes: int) -> Dict[str, Tuple[int, ...]]:
    shapes = {f'{prefix}.conv1.weight': (planes, inplanes, 1, 1), **_bn_shapes(f'{prefix}.bn1', planes),
              f'{prefix}.conv2.weight': (planes, planes, 3, 3), **_bn_shapes(f'{prefix}.bn2', planes),
              f'{prefix}.conv3.weight': (planes * 4, planes, 1, 1), **_bn_shapes(f'{prefix}.bn3', planes * 4)}
    if inplanes != planes * 4 or prefix.endswith('.0'):
        shapes.update({f'{prefix}.downsample.0.weight': (planes * 4, inplanes, 1, 1),
                       **_bn_shapes(f'{prefix}.downsample.1', planes * 4)})
    return shapes


def _resnet_shapes(layers, width: int, embed_dim: int) -> Dict[str, Tuple[int, ...]]:
    shapes = {'visual.conv1.weight': (width // 2, 3, 3, 3), **_bn_shapes('visual.bn1', width // 2),
              'visual.conv2.weight': (width // 2, width // 2, 3, 3), **_bn_shapes('visual.bn2', width // 2),
              'visual.conv3.weight': (width, width // 2, 3, 3), **_bn_shapes('visual.bn3', width)}
    inplanes = width
    for index, blocks in enumerate(layers, start=1):
        planes = width * 2 ** (index - 1)
        for block in range(blocks):
            shapes.update(_bottleneck_shapes(f'visual.layer{index}.{block}', inplanes, planes))
            inplanes = planes * 4
    shapes['visual.attnpool.positional_embedding'] = (RESNET_PRETRAIN_GRID ** 2 + 1, inplanes)
    for name in ('q', 'k', 'v'):
        shapes.update({f'visual.attnpool.{name}_proj.weight': (inplanes, inplanes),
                       f'visual.attnpool.{name}_proj.bias': (inplanes,)})
    shapes.update({'visual.attnpool.c_proj.weight': (embed_dim, inplanes), 'visual.attnpool.c_proj.bias': (embed_dim,)})
    return shapes


def openai_clip_shapes(vision_layers, vision_width: int, embed_dim: int, text_width: int,
                       text_layers: int) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape of OpenAI's CLIP state dict (ViT when `vision_layers` is an int, else ResNet)."""
    if isinstance(vision_layers, int):
        shapes = _vit_shapes(vision_layers, vision_width, embed_dim)
    else:
        shapes = _resnet_shapes(vision_layers, vision_width, embed_dim)
    shapes.update({'positional_embedding': (CONTEXT_LENGTH, text_width), 'text_projection': (text_width, embed_dim),
                   'logit_scale': (), 'token_embedding.weight': (VOCAB_SIZE, text_width),
                   'ln_final.weight': (text_width,), 'ln_final.bias': (text_width,)})
    for block in range(text_layers):
        shapes.update(_block_shapes(f'transformer.resblocks.{block}', text_width))
    return shapes


def _draw(key: str, shape: Tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    if key.endswith('num_batches_tracked'):
        return torch.tensor(7)
    if key.endswith('running_var'):
        return 0.5 + torch.rand(shape, generator=generator)
    if any(part in key for part in ('ln_', 'bn', 'downsample.1')) and key.endswith('.weight'):
        return 1.0 + 0.1 * torch.randn(shape, generator=generator)
    if len(shape) == 4:  # convolutions: unit variance out for unit variance in
        scale = (shape[1] * shape[2] * shape[3]) ** -0.5
    else:
        scale = shape[-1] ** -0.5 if len(shape) == 2 else 0.1
    return scale * torch.randn(shape, generator=generator)


def synthetic_clip_state(spec: Dict, seed: int = STATE_SEED) -> StateDict:
    """OpenAI-layout CLIP tensors at the widths of `spec` (TINY_VIT / TINY_RESNET), with the three
    size counters that OpenAI's TorchScript models keep."""
    generator = torch.Generator().manual_seed(seed)
    shapes = openai_clip_shapes(**spec)
    state = {key: _draw(key, shape, generator) for key, shape in sorted(shapes.items())}
    state['logit_scale'] = torch.tensor(4.6052)
    state.update(input_resolution=torch.tensor(224), context_length=torch.tensor(CONTEXT_LENGTH),
                 vocab_size=torch.tensor(VOCAB_SIZE))
    return state


def as_shipped_by_openai(state: StateDict) -> StateDict:
    """The state in half precision, as OpenAI's files store CLIP's floating-point tensors."""
    return {key: value.half() if value.is_floating_point() else value for key, value in state.items()}


def synthetic_heads(spec: Dict, sie_rows: int, seed: int = HEAD_SEED) -> StateDict:
    """CLIP-ReID's parts beside CLIP's weights, with drawn (not initial) values: learnt prompts,
    classifiers, BN necks with running statistics, and the SIE table when `sie_rows`."""
    generator = torch.Generator().manual_seed(seed)
    width = spec['vision_width'] if isinstance(spec['vision_layers'], int) else spec['vision_width'] * 32
    proj = spec['embed_dim']
    heads = {'prompt_learner.cls_ctx': 0.02 * torch.randn(NUM_CLASSES, 4, spec['text_width'], generator=generator),
             'classifier.weight': 0.01 * torch.randn(NUM_CLASSES, width, generator=generator),
             'classifier_proj.weight': 0.01 * torch.randn(NUM_CLASSES, proj, generator=generator)}
    for name, channels in (('bottleneck', width), ('bottleneck_proj', proj)):
        for key, shape in _bn_shapes(name, channels).items():
            heads[key] = _draw(key.replace('bottleneck', 'bn'), shape, generator)
        heads[f'{name}.bias'] = torch.zeros(channels)  # frozen at zero in their training
    if sie_rows:
        heads['cv_embed'] = 0.02 * torch.randn(sie_rows, width, generator=generator)
    return heads


def synthetic_batch(height: int, width: int, seed: int = INPUT_SEED):
    """(images, labels, cameras, views) of BATCH images, two per identity for the triplet loss."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(BATCH, 3, height, width, generator=generator)
    labels = torch.tensor([0, 0, 3, 3])
    cameras = torch.tensor([0, 2, 1, 2])
    views = torch.tensor([1, 0, 0, 1])
    return images, labels, cameras, views
