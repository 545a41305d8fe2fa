"""Attention rollout of a TransReID: where the class token of each branch looks in the image.

Attention rollout (Abnar and Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020):
each block's attention is averaged over its heads, the identity is added for the residual
connection and the rows are renormalised; these matrices are multiplied through the layers,
and the class token's row of the product, over the patch tokens, is the map.

The weights are read WITHOUT touching the forward pass: forward hooks record the output of
each block's `norm1` (the attention's input, on all tokens), and the attention is recomputed
here from `attn.qkv` (query and key rows), `attn.num_heads` and `attn.scale`. The last block of
a branch is only needed for its class-token row, so only that row is computed there.

Branches:

* ViT baseline (`build_transformer`): `base.blocks`; one global map.
* CLIP-ReID's ViT (`CLIPReID`, MODEL.NAME 'ViT-B-16'): `image_encoder.transformer.resblocks`, read
  from each block's `ln_1` and its `nn.MultiheadAttention` projections; one global map (the class
  token after the last block is its feature). Its ResNet has no tokens to draw.
* TransReID with JPM (`build_transformer_local`): `base.blocks[:-1]`, then the global branch
  `b1[0]` on all tokens and the local branch `b2[0]` on each of P parts (class token plus a
  group of shifted and shuffled patches). A part's tokens are mapped back to the image patches
  they came from (`jpm_layout`), so each local map is over the image's own patch grid:

  - padding: when the patch count does not divide by MODEL.SHUFFLE_GROUP, the shuffle pads
    with copies of a patch token; a copy's attention is credited to the patch it copies (so
    that patch may count twice in one part);
  - tail: P * part length may be less than the patch count; tail patches are in no part, so
    b2 never attends to them directly. A local map gives them only what the backbone blocks
    passed on to the part's tokens (usually little), not zero.

Why the local maps look like the global one: every branch ends with one block after the same
backbone rollout R. The branch's last step keeps a share c of its weight on the class token (its
residual half plus its own attention to it, so c >= 0.5), and its map is c times R's class-token
row plus what its attention sends through patch tokens, whose rows of R the backbone blocks have
already mixed with the whole image. So at least half of every map is the same picture, and
the local maps can differ from the global one only by what the rest adds.
`AttentionMaps.class_share` holds c per branch.

`spread_over_pixels` turns patch maps into pixel maps: each patch's weight covers its 16x16
pixels, averaged where patches overlap (stride below 16); pixels no patch covers are NaN.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Dict, Iterable, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.clip import PATCH_SIZE as CLIP_PATCH_SIZE
from .clipreid import CLIPReID
from .make_model import (build_transformer, build_transformer_local, build_transformer_pass,
                         shuffle_unit)

GLOBAL = "global"


def local_branch_name(part: int) -> str:
    """Name of the local branch of part `part` (1-based, as the classifier_1..P names)."""
    return f"local {part}"


# ------------------------------------------------------------------------------ the maths
def attention_weights(normed: torch.Tensor, attn: nn.Module, query_rows: Optional[int] = None
                      ) -> torch.Tensor:
    """softmax(Q Kᵀ · scale) of a block, per head, from its `norm1` output `normed` (B x T x D).

    `query_rows`: only the first rows (1: the class token's); all T by default.
    Returns B x heads x rows x T.
    """
    batch, tokens, dim = normed.shape
    heads = attn.num_heads
    weight, bias = attn.qkv.weight, attn.qkv.bias
    rows = tokens if query_rows is None else query_rows
    # qkv's output is laid out (3, heads, head_dim): queries are its first `dim` rows, keys the next.
    q = F.linear(normed[:, :rows], weight[:dim], None if bias is None else bias[:dim])
    k = F.linear(normed, weight[dim:2 * dim], None if bias is None else bias[dim:2 * dim])
    q = q.reshape(batch, rows, heads, -1).transpose(1, 2)
    k = k.reshape(batch, tokens, heads, -1).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-2, -1) * attn.scale, dim=-1)


def residual_attention(weights: torch.Tensor) -> torch.Tensor:
    """One rollout step: weights (B x heads x rows x T) averaged over the heads, plus the
    identity (the residual connection; the rows are the first tokens), rows renormalised."""
    mean = weights.float().mean(dim=1)
    rows, tokens = mean.shape[-2:]
    mixed = mean + torch.eye(rows, tokens, dtype=mean.dtype, device=mean.device)
    return mixed / mixed.sum(dim=-1, keepdim=True)


def rollout(layers: Iterable[torch.Tensor]) -> torch.Tensor:
    """Attention rollout of `layers` (each B x heads x rows x T, first layer first; only the
    last may have fewer rows than tokens): B x rows x T, how much each token of the input
    flows into each output row. A generator keeps one layer's weights in memory at a time."""
    result: Optional[torch.Tensor] = None
    for weights in layers:
        step = residual_attention(weights)
        result = step if result is None else step @ result
    if result is None:
        raise ValueError("rollout needs at least one layer of attention weights")
    return result


def spread_over_pixels(patch_maps: torch.Tensor, patch_size: Tuple[int, int],
                       stride: Tuple[int, int], image_size: Tuple[int, int]) -> torch.Tensor:
    """Maps over the patch grid (... x num_y x num_x) as maps over the image (... x H x W).

    Every pixel gets the mean weight of the patches that cover it; pixels that no patch covers
    (the right or bottom margin when (size - patch) is not a multiple of the stride) are NaN.
    """
    lead, grid = patch_maps.shape[:-2], patch_maps.shape[-2:]
    maps = patch_maps.reshape(-1, 1, *grid).float()
    kernel = torch.ones(1, 1, *patch_size, dtype=maps.dtype, device=maps.device)
    # conv_transpose2d with a ones kernel adds each patch's value over the pixels it covers.
    total = F.conv_transpose2d(maps, kernel, stride=stride)
    count = F.conv_transpose2d(torch.ones_like(maps[:1]), kernel, stride=stride)
    covered = total / count
    height, width = image_size
    if covered.shape[-2] > height or covered.shape[-1] > width:
        raise ValueError(f"a {tuple(grid)} grid of {patch_size} patches every {stride} pixels "
                         f"covers {tuple(covered.shape[-2:])} pixels, more than the image {image_size}")
    pixels = torch.full((maps.shape[0], 1, height, width), float("nan"), dtype=maps.dtype,
                        device=maps.device)
    pixels[..., :covered.shape[-2], :covered.shape[-1]] = covered
    return pixels.reshape(*lead, height, width)


# ------------------------------------------------------------------------------ JPM layout
@dataclass(frozen=True)
class JPMLayout:
    """Which image patch each token of each JPM part is (0-based, row-major patch indices)."""
    parts: torch.Tensor  # P x part length
    repeated: Tuple[int, ...]  # patches in the parts more than once (padding copies them)
    left_out: Tuple[int, ...]  # patches in no part (the tail)


def jpm_layout(model: build_transformer_local) -> JPMLayout:
    """The patches of each part of `model`'s local branch, found by running the model's own
    shift and shuffle on the token indices (so it follows whatever the model does)."""
    num_patches = model.base.patch_embed.num_patches
    part_length = num_patches // model.num_parts
    tokens = torch.arange(num_patches + 1).view(1, -1, 1)
    if model.rearrange:
        shuffled = shuffle_unit(tokens, model.shift_num, model.shuffle_groups)[0, :, 0]
    else:
        shuffled = tokens[0, 1:, 0]
    parts = (shuffled[:part_length * model.num_parts] - 1).view(model.num_parts, part_length)
    counts = torch.bincount(parts.flatten(), minlength=num_patches)
    return JPMLayout(parts, tuple(torch.nonzero(counts > 1).flatten().tolist()),
                     tuple(torch.nonzero(counts == 0).flatten().tolist()))


# ---------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class AttentionMaps:
    """Rollout of each branch's class token over the image patches."""
    maps: torch.Tensor  # B x branches x num_y x num_x, on the device of the images
    branches: Tuple[str, ...]  # 'global', then 'local 1'..'local P' with JPM
    # B x branches: the weight each branch's last step keeps on the class token, i.e. the share
    # of its map that is the backbone's class-token map, common to all branches (>= 0.5)
    class_share: torch.Tensor


@contextmanager
def recorded_norm1_outputs(blocks: Dict[str, nn.Module], norm: str = "norm1"
                           ) -> Iterator[Dict[str, torch.Tensor]]:
    """While open, the output of each named block's `norm1` (CLIP's: `ln_1`) in the latest
    forward pass. The hooks only record (they return None, so the output is unchanged) and are
    removed on exit."""
    records: Dict[str, torch.Tensor] = {}
    handles = [getattr(block, norm).register_forward_hook(_recorder(records, name))
               for name, block in blocks.items()]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def _recorder(records: Dict[str, torch.Tensor], name: str):
    def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
        records[name] = output.detach()
    return hook


def _last_blocks(model: nn.Module) -> Dict[str, nn.Module]:
    """The block that ends each branch: b1 / b2 with JPM, the backbone's last otherwise."""
    if isinstance(model, build_transformer_local):
        return {GLOBAL: model.b1[0], "local": model.b2[0]}
    if isinstance(model, (build_transformer, build_transformer_pass)):
        return {GLOBAL: model.base.blocks[-1]}
    raise ValueError(f"attention maps need a transformer re-ID model (MODEL.NAME transformer), "
                     f"not {type(model).__name__}")


@torch.no_grad()
def attention_maps(model: nn.Module, images: torch.Tensor, cam_label: Optional[torch.Tensor] = None,
                   view_label: Optional[torch.Tensor] = None) -> AttentionMaps:
    """Attention rollout of the global branch (and, with JPM, of each local branch) of `model`
    (in eval mode) on `images` (B x 3 x H x W, on the model's device)."""
    if model.training:
        raise ValueError("attention maps need the model in eval mode (dropout and stochastic "
                         "depth off): call model.eval() first")
    if isinstance(model, CLIPReID):
        return _clip_attention_maps(model, images, cam_label, view_label)
    last = _last_blocks(model)
    inner = list(model.base.blocks[:-1])
    blocks = {**{f"block {i}": block for i, block in enumerate(inner)}, **last}
    with recorded_norm1_outputs(blocks) as normed:
        model(images, cam_label=cam_label, view_label=view_label)
    base = _backbone_rollout(inner, normed, images.shape[0])
    steps = [_class_token_step(last[GLOBAL], normed[GLOBAL]).unsqueeze(1)]
    sources = [torch.arange(base.shape[1])[None]]  # the global branch: every token, in order
    if "local" in last:
        parts = jpm_layout(model).parts
        steps.append(_class_token_step(last["local"], normed["local"]).view(
            len(base), len(parts), -1))
        # Token j of part p is backbone token sources[p, j]: the class token, then its patches.
        sources.append(torch.cat([torch.zeros(len(parts), 1, dtype=torch.long), parts + 1], 1))
    prefix = 1 + getattr(model.base, "part_count", 0)  # PASS: three part tokens follow the class token
    maps = [_branch_rollout(step, base, source, prefix) for step, source in zip(steps, sources)]
    stacked = torch.cat(maps, dim=1)
    return AttentionMaps(stacked.reshape(*stacked.shape[:2], *model.base.patch_embed.grid_size),
                         branch_names(model), torch.cat([step[..., 0] for step in steps], dim=1))


def branch_names(model: nn.Module) -> Tuple[str, ...]:
    """'global', then 'local 1'..'local P' for a JPM model; ValueError for a model without
    attention."""
    if _clip_blocks(model):
        return (GLOBAL,)
    _last_blocks(model)  # checks that it is a transformer
    if isinstance(model, build_transformer_local):
        return (GLOBAL, *(local_branch_name(part) for part in range(1, model.num_parts + 1)))
    return (GLOBAL,)


def _backbone_rollout(inner: Sequence[nn.Module], normed: Dict[str, torch.Tensor],
                      batch: int) -> torch.Tensor:
    """B x T x T rollout of the blocks before the last (the identity when there are none)."""
    if inner:
        return rollout(attention_weights(normed[f"block {i}"], block.attn)
                       for i, block in enumerate(inner))
    tokens = normed[GLOBAL].shape[1]
    return torch.eye(tokens, device=normed[GLOBAL].device).expand(batch, -1, -1)


def _class_token_step(block: nn.Module, normed: torch.Tensor) -> torch.Tensor:
    """(B or B * P) x T: the class token's row of `block`'s rollout step."""
    return residual_attention(attention_weights(normed, block.attn, query_rows=1))[:, 0]


def _branch_rollout(step: torch.Tensor, base: torch.Tensor, sources: torch.Tensor,
                    prefix: int = 1) -> torch.Tensor:
    """B x parts x patches: class-token rows `step` (B x parts x part tokens) after `base`, where
    token j of part p is backbone token sources[p, j] (the global branch: one part, all tokens);
    the patches follow `prefix` tokens."""
    return (step.unsqueeze(2) @ base[:, sources.to(base.device)])[:, :, 0, prefix:]


def patch_grid(model: nn.Module) -> Tuple[int, int]:
    """(num_y, num_x): the patch grid of the model's maps."""
    if isinstance(model, CLIPReID):
        return tuple(model.grid)
    return tuple(model.base.patch_embed.grid_size)


def pixel_maps(model: nn.Module, maps: torch.Tensor) -> torch.Tensor:
    """`maps` (... x num_y x num_x) over the model's input pixels (... x H x W); see
    `spread_over_pixels`."""
    if isinstance(model, CLIPReID):
        patch = (CLIP_PATCH_SIZE, CLIP_PATCH_SIZE)
        return spread_over_pixels(maps, patch, tuple(model.image_encoder.conv1.stride), model.input_size)
    embed = model.base.patch_embed
    return spread_over_pixels(maps, tuple(embed.proj.kernel_size), tuple(embed.proj.stride),
                              embed.img_size)


# ------------------------------------------------------------------------------ CLIP-ReID
def _clip_blocks(model: nn.Module) -> Optional[Sequence[nn.Module]]:
    """CLIP-ReID's ViT blocks; None for any other model; ValueError for its ResNet."""
    if not isinstance(model, CLIPReID):
        return None
    if not model.spec.is_vit:
        raise ValueError("attention maps need CLIP-ReID's ViT (MODEL.NAME 'ViT-B-16'): its ResNet "
                         "has no class token to roll out")
    return list(model.image_encoder.transformer.resblocks)


def _as_timm_attention(block: nn.Module) -> SimpleNamespace:
    """A CLIP block seen as timm's (`attn.qkv`, `num_heads`, `scale`): nn.MultiheadAttention
    keeps the same stacked query / key / value projection as `in_proj_weight`."""
    attn = block.attn
    qkv = SimpleNamespace(weight=attn.in_proj_weight, bias=attn.in_proj_bias)
    return SimpleNamespace(attn=SimpleNamespace(qkv=qkv, num_heads=attn.num_heads, scale=attn.head_dim ** -0.5))


def _clip_attention_maps(model: CLIPReID, images: torch.Tensor, cam_label: Optional[torch.Tensor],
                         view_label: Optional[torch.Tensor]) -> AttentionMaps:
    *inner, last = _clip_blocks(model)
    blocks = {**{f"block {i}": block for i, block in enumerate(inner)}, GLOBAL: last}
    with recorded_norm1_outputs(blocks, norm="ln_1") as normed:
        model(images, cam_label=cam_label, view_label=view_label)
    base = _backbone_rollout([_as_timm_attention(block) for block in inner], normed, images.shape[0])
    step = _class_token_step(_as_timm_attention(last), normed[GLOBAL]).unsqueeze(1)
    maps = _branch_rollout(step, base, torch.arange(base.shape[1])[None])
    return AttentionMaps(maps.reshape(images.shape[0], 1, *model.grid), (GLOBAL,), step[..., 0])
