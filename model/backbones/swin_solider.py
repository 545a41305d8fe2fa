"""SOLIDER's Swin Transformer (Chen et al., *Beyond Appearance: a Semantic Controllable
Self-Supervised Learning Framework for Human-Centric Visual Tasks*, CVPR 2023;
github.com/tinyvision/SOLIDER-REID, model/backbones/swin_transformer.py).

The mmsegmentation layout of Swin (`patch_embed.projection`, `stages.I.blocks.J.attn.w_msa`,
`ffn.layers`, an `nn.Unfold` patch merging, `norm0..3`) with SOLIDER's semantic controller: after
each stage, the tokens are scaled by softplus(W_s·λ) and shifted by W_b·λ, where
λ = (semantic_weight, 1 - semantic_weight) and W_s, W_b are frozen linear maps learnt in
pre-training (`semantic_embed_w`, `semantic_embed_b`). The re-ID feature is the average of the
last stage's normalised map.

Taken from timm where the maths is identical: the relative position index, window partition and
reverse, DropPath and the truncated-normal initialisation. timm's Swin block itself differs: it
shifts before padding a map that the window does not divide, and shrinks the window to small
maps; SOLIDER pads first (zeros at the bottom and right), then shifts, and keeps 7x7 windows.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath, to_2tuple
from timm.models.swin_transformer import get_relative_position_index, window_partition, window_reverse
from torch import nn

from .. import solider_weights, weights
from .specs import swin_spec
from .vit_pytorch import init_weights

# The masked entries of shifted-window attention, as theirs.
MASK_VALUE = -100.0


def pad_corner(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zeros at the bottom and right of an N x C x H x W map up to multiples of `multiple`."""
    pad_h, pad_w = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
    return F.pad(x, [0, pad_w, 0, pad_h]) if pad_h or pad_w else x


class WindowMSA(nn.Module):
    """Attention within a window, with a learnt bias for each relative position and head."""

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool = True,
                 attn_drop: float = 0., proj_drop: float = 0.) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer('relative_position_index', get_relative_position_index(window_size, window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop_p = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        windows, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(windows, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(tokens, tokens, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:  # one mask per window position, the same for every image
            bias = bias.unsqueeze(0) + mask.unsqueeze(1).unsqueeze(0)
            bias = bias.expand(windows // mask.shape[0], -1, -1, -1, -1).reshape(windows, self.num_heads,
                                                                                 tokens, tokens)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale,
                                           dropout_p=self.attn_drop_p if self.training else 0.)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(windows, tokens, dim)))


class ShiftWindowMSA(nn.Module):
    """Window attention over a map padded to whole windows, shifted by `shift_size` when set."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, qkv_bias: bool,
                 attn_drop: float, proj_drop: float, drop_path: float) -> None:
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.w_msa = WindowMSA(dim, num_heads, window_size, qkv_bias, attn_drop, proj_drop)
        self.drop = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def shift_mask(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Windows x tokens x tokens: MASK_VALUE between tokens that the roll brought together."""
        size, shift = self.window_size, self.shift_size
        regions = torch.zeros((1, height, width, 1), device=device)
        bands = (slice(0, -size), slice(-size, -shift), slice(-shift, None))
        for index, (rows, columns) in enumerate((r, c) for r in bands for c in bands):
            regions[:, rows, columns, :] = index
        windows = window_partition(regions, (size, size)).view(-1, size * size)
        differ = windows.unsqueeze(1) - windows.unsqueeze(2)
        return differ.masked_fill(differ != 0, MASK_VALUE).masked_fill(differ == 0, 0.0)

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        batch, _, dim = x.shape
        height, width = hw_shape
        size, shift = self.window_size, self.shift_size
        x = pad_corner(x.view(batch, height, width, dim).permute(0, 3, 1, 2), size).permute(0, 2, 3, 1)
        padded_h, padded_w = x.shape[1:3]
        mask = None
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            mask = self.shift_mask(padded_h, padded_w, x.device)
        windows = self.w_msa(window_partition(x, (size, size)).view(-1, size * size, dim), mask)
        x = window_reverse(windows.view(-1, size, size, dim), (size, size), padded_h, padded_w)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        return self.drop(x[:, :height, :width, :].reshape(batch, height * width, dim))


class FFN(nn.Module):
    """`identity` + Linear, GELU, dropout, linear, dropout (`layers.0.0`, `layers.1`), with
    stochastic depth; the block passes the un-normalised tokens as `identity`."""

    def __init__(self, dim: int, hidden: int, drop: float, drop_path: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop)),
                                    nn.Linear(hidden, dim), nn.Dropout(drop))
        self.dropout_layer = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        return identity + self.dropout_layer(self.layers(x))


class SwinBlock(nn.Module):
    """x + attention(norm1(x)), then x + FFN(norm2(x)); every second block shifts its windows."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: bool, drop: float, attn_drop: float,
                 drop_path: float, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftWindowMSA(dim, num_heads, window_size, window_size // 2 if shift else 0, True,
                                   attn_drop, drop, drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, mlp_ratio * dim, drop, drop_path)

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), hw_shape)
        return self.ffn(self.norm2(x), identity=x)


class PatchMerging(nn.Module):
    """2x2 neighbours (unfolded channel-major, as nn.Unfold orders them), norm, linear to `out_dim`."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.sampler = nn.Unfold(kernel_size=2, stride=2)
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> Tuple[torch.Tensor, Tuple[int, int]]:
        batch, _, dim = x.shape
        x = pad_corner(x.view(batch, *hw_shape, dim).permute(0, 3, 1, 2), 2)
        out_shape = (x.shape[2] // 2, x.shape[3] // 2)
        return self.reduction(self.norm(self.sampler(x).transpose(1, 2))), out_shape


class SwinStage(nn.Module):
    """Blocks at one resolution, then (except the last stage) patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, drop: float, attn_drop: float,
                 drop_paths: Sequence[float], downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([SwinBlock(dim, num_heads, window_size, index % 2 == 1, drop, attn_drop, rate)
                                     for index, rate in enumerate(drop_paths)])
        self.downsample = PatchMerging(dim, 2 * dim) if downsample else None

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int]):
        """(next stage's input, its shape, this stage's output, its shape)."""
        for block in self.blocks:
            x = block(x, hw_shape)
        if self.downsample is None:
            return x, hw_shape, x, hw_shape
        return (*self.downsample(x, hw_shape), x, hw_shape)


class SOLIDERSwin(nn.Module):
    """SOLIDER's Swin: 4x4 patches, four stages, a norm after each (`norm0..3`) and the semantic
    controller after each stage when `semantic_weight` >= 0 (their `SwinTransformer`).

    `forward` returns the average of the last stage's normalised map (N x 8C): the feature their
    re-ID model takes. The other stages' norms are kept for their checkpoints' keys; their
    outputs do not reach the feature and are not computed.
    """

    def __init__(self, embed_dims: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7, drop_rate: float = 0.,
                 attn_drop_rate: float = 0., drop_path_rate: float = 0.1, semantic_weight: float = 1.0) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(embed_dims)
        self.drop_after_pos = nn.Dropout(p=drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.num_features = [embed_dims * 2 ** index for index in range(len(depths))]
        self.stages = nn.ModuleList([
            SwinStage(width, depth, heads, window_size, drop_rate, attn_drop_rate,
                      rates[sum(depths[:index]):sum(depths[:index + 1])], downsample=index < len(depths) - 1)
            for index, (width, depth, heads) in enumerate(zip(self.num_features, depths, num_heads))])
        for index, width in enumerate(self.num_features):
            self.add_module(f'norm{index}', nn.LayerNorm(width))
        self.semantic_weight = semantic_weight
        self.semantic_embed_w: Optional[nn.ModuleList] = None
        self.semantic_embed_b: Optional[nn.ModuleList] = None
        if semantic_weight >= 0:
            # Stage I modulates stage I + 1's input: the last stage reuses the widest width.
            widths = [self.num_features[min(index + 1, len(depths) - 1)] for index in range(len(depths))]
            self.semantic_embed_w = nn.ModuleList([self._frozen_linear(width) for width in widths])
            self.semantic_embed_b = nn.ModuleList([self._frozen_linear(width) for width in widths])
        self.apply(init_weights)

    @staticmethod
    def _frozen_linear(width: int) -> nn.Linear:
        layer = nn.Linear(2, width)
        layer.requires_grad_(False)
        return layer

    def load_param(self, source: str, backbone_name: str = 'SOLIDER') -> None:
        """SOLIDER's pre-trained weights: its training checkpoint (teacher, else student), the
        teacher its convert_model.py writes, or the bare backbone, .pth or .safetensors."""
        state = weights.read_pretrained(source, solider_weights.download_hint(backbone_name))
        state = solider_weights.adapt_solider_state(state, source, self.semantic_embed_w is not None)
        weights.load_state_strict(self, state, source, fix_hint=f"These are not SOLIDER weights for {backbone_name} "
                                  "(MODEL.TRANSFORMER_TYPE); " + solider_weights.download_hint(backbone_name))

    @property
    def embed_dim(self) -> int:
        return self.num_features[-1]

    def semantic_vector(self, batch: int, device: torch.device) -> torch.Tensor:
        """(w, 1 - w) for each image: w weighs semantics against appearance."""
        weight = torch.full((batch, 1), float(self.semantic_weight), device=device)
        return torch.cat([weight, 1 - weight], dim=-1)

    def forward(self, x: torch.Tensor, cam_label: Optional[torch.Tensor] = None,
                view_label: Optional[torch.Tensor] = None) -> torch.Tensor:
        x, hw_shape = self.patch_embed(x)
        x = self.drop_after_pos(x)
        semantic = self.semantic_vector(x.shape[0], x.device) if self.semantic_embed_w is not None else None
        for index, stage in enumerate(self.stages):
            x, hw_shape, out, _ = stage(x, hw_shape)
            if semantic is not None:
                scale = F.softplus(self.semantic_embed_w[index](semantic)).unsqueeze(1)
                x = x * scale + self.semantic_embed_b[index](semantic).unsqueeze(1)
        # The last stage's output is taken before its (unused) semantic modulation, as theirs.
        return getattr(self, f'norm{len(self.stages) - 1}')(out).mean(dim=1)


class PatchEmbed(nn.Module):
    """4x4 patches (the image padded with zeros at the bottom and right), then a norm."""

    def __init__(self, embed_dims: int, patch_size: int = 4, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(in_chans, embed_dims, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.projection(pad_corner(x, self.patch_size))
        return self.norm(x.flatten(2).transpose(1, 2)), (x.shape[2], x.shape[3])


def create_solider_swin(name: str, drop_rate: float = 0., attn_drop_rate: float = 0., drop_path_rate: float = 0.1,
                        semantic_weight: float = 0.2) -> SOLIDERSwin:
    """The Swin `name` of specs.py's `SWIN_SPECS` (SOLIDER-REID's TRANSFORMER_TYPE names)."""
    return SOLIDERSwin(drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
                       semantic_weight=semantic_weight, **swin_spec(name))
