"""The TransReID vision transformer: overlapping patch embedding and side-information embedding (SIE).

Module and parameter names are the reference's (`patch_embed.proj`, `cls_token`, `pos_embed`,
`sie_embed`, `blocks.N.attn.qkv`, `blocks.N.mlp.fc1`, `norm`, ...) so that jx ViT / DeiT ImageNet
weights and the reference's trained checkpoints load unchanged. The MLP and stochastic depth are
timm's; attention goes through `torch.nn.functional.scaled_dot_product_attention`.
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, to_2tuple, trunc_normal_
from torch import nn

from .specs import vit_spec
from .stem import STEM_STRIDE, STEM_WIDTH, make_ics_stem
from .. import weights

logger = logging.getLogger("transreid.model")

PATCH_SIZE = 16
LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class Attention(nn.Module):
    """Multi-head self-attention, softmax(Q·Kᵀ·scale)·V; `qk_scale` overrides head_dim^-0.5."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: Optional[float] = None,
                 attn_drop: float = 0., proj_drop: float = 0.) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop_p = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        """Output of every token (N x T x D), or with `cls_only` of the class token alone
        (N x 1 x D): its query against the keys and values of all T tokens."""
        batch, tokens, dim = x.shape
        if cls_only:
            q, k, v = self._class_query_keys_values(x)
            tokens = 1
        else:
            q, k, v = self._split_heads(self.qkv(x), 3).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop_p if self.training else 0.,
                                           scale=self.scale)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(batch, tokens, dim)))

    def _split_heads(self, x: torch.Tensor, parts: int) -> torch.Tensor:
        """N x T x (parts * D) -> parts x N x heads x T x head_dim."""
        batch, tokens, _ = x.shape
        return x.reshape(batch, tokens, parts, self.num_heads, -1).permute(2, 0, 3, 1, 4)

    def _class_query_keys_values(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Rows [0, D) of the qkv weight make queries, rows [D, 3D) keys and values. Projecting
        # the class token alone through the query rows saves a third of the projection (forward
        # and backward), which measured faster than projecting every token and slicing.
        dim = x.shape[-1]
        weight, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(x[:, :1], weight[:dim], None if bias is None else bias[:dim])
        kv = F.linear(x, weight[dim:], None if bias is None else bias[dim:])
        k, v = self._split_heads(kv, 2).unbind(0)
        return self._split_heads(q, 1)[0], k, v


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), with stochastic depth.

    `block(x, cls_only=True)` is the class token's output alone (N x 1 x D), for the last block
    where nothing else is used: norm1 and the keys and values still cover every token, the
    query, attention, projection, residual, norm2 and MLP only the class token. Without
    dropout (the configs' MODEL.DROP_OUT and ATT_DROP_RATE are 0) it equals `block(x)[:, :1]`,
    gradients included, also in train mode with stochastic depth: DropPath draws one N x 1 x 1
    mask on both paths, so one seed drops the same samples. With non-zero dropout the masks
    cover only the class token's row (N x 1 x D, and N x heads x 1 x T for attention), so one
    seed draws different masks: the output then has the distribution of token 0 of the full
    block, not the same values.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4., qkv_bias: bool = False,
                 qk_scale: Optional[float] = None, drop: float = 0., attn_drop: float = 0., drop_path: float = 0.,
                 norm_layer: Callable[[int], nn.Module] = LayerNorm) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                              attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        residual = x[:, :1] if cls_only else x
        x = residual + self.drop_path(self.attn(self.norm1(x), cls_only=cls_only))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbedOverlap(nn.Module):
    """16x16 patches taken every `stride_size` pixels (overlapping when the stride is below 16).

    Grid: num_y = (H - 16) // stride_y + 1, num_x = (W - 16) // stride_x + 1.

    With `stem_conv`, TransReID-SSL's ICS stem (`conv`) halves the image first and the projection
    takes 8x8 patches of its features every stride / 2 positions: the same receptive field and
    the same grid for even image sizes and strides. (TransReID-SSL's own projection always steps
    by 8, so any stride but 16 breaks its token count; the config check refuses odd strides.)
    """

    def __init__(self, img_size: Union[int, Sequence[int]] = 224, patch_size: int = PATCH_SIZE,
                 stride_size: Union[int, Sequence[int]] = 16, in_chans: int = 3, embed_dim: int = 768,
                 stem_conv: bool = False) -> None:
        super().__init__()
        self.img_size = tuple(to_2tuple(img_size))
        patch = to_2tuple(patch_size)
        stride = tuple(to_2tuple(stride_size))
        self.num_y = (self.img_size[0] - patch[0]) // stride[0] + 1
        self.num_x = (self.img_size[1] - patch[1]) // stride[1] + 1
        self.num_patches = self.num_y * self.num_x
        logger.info("Patch stride %s: %d x %d patches%s", stride, self.num_y, self.num_x,
                    " after the ICS convolution stem" if stem_conv else "")
        self.conv: Optional[nn.Sequential] = None
        if stem_conv:
            if any(side % STEM_STRIDE for side in (*stride, *self.img_size)):
                raise ValueError(f"the convolution stem (MODEL.STEM_CONV) needs even strides and image sides, "
                                 f"got stride {stride} and size {self.img_size}")
            self.conv = make_ics_stem(in_chans)
            in_chans = STEM_WIDTH
            patch = tuple(side // STEM_STRIDE for side in patch)
            stride = tuple(side // STEM_STRIDE for side in stride)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch, stride=stride)
        # He initialisation over the output fan, as the reference initialises this convolution.
        fan_out = patch[0] * patch[1] * embed_dim
        nn.init.normal_(self.proj.weight, std=(2. / fan_out) ** 0.5)

    @property
    def grid_size(self) -> Tuple[int, int]:
        return self.num_y, self.num_x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if (height, width) != self.img_size:
            raise ValueError(f"input images are {height}x{width} but the model was built for "
                             f"{self.img_size[0]}x{self.img_size[1]} (INPUT.SIZE_TRAIN); resize them or set "
                             "INPUT.SIZE_TEST equal to INPUT.SIZE_TRAIN")
        if self.conv is not None:
            x = self.conv(x)
        return self.proj(x).flatten(2).transpose(1, 2)


def init_weights(module: nn.Module) -> None:
    """The reference's initialisation of a transformer's linear and LayerNorm layers."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class TransReID(nn.Module):
    """ViT backbone of TransReID.

    `forward` returns the normalised class token (N x D), or, with `local_feature` (JPM), all tokens
    after the second-to-last block (N x (1 + patches) x D): the JPM head runs its own copies of the
    last block and norm. SIE adds `sie_coe` x a learned embedding of the camera, the view, or the
    camera-view pair (index camera * view_num + view) to every token; a count of 1 or less turns that
    side information off, and the table exists only when some count exceeds 1.
    """

    def __init__(self, img_size: Union[int, Sequence[int]] = 224, patch_size: int = PATCH_SIZE,
                 stride_size: Union[int, Sequence[int]] = 16, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4., qkv_bias: bool = False,
                 qk_scale: Optional[float] = None, drop_rate: float = 0., attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0., camera: int = 0, view: int = 0, local_feature: bool = False,
                 sie_coe: float = 1.0, norm_layer: Callable[[int], nn.Module] = LayerNorm,
                 stem_conv: bool = False) -> None:
        super().__init__()
        self.embed_dim = self.num_features = embed_dim
        self.local_feature = local_feature
        self.patch_embed = PatchEmbedOverlap(img_size, patch_size, stride_size, in_chans, embed_dim, stem_conv)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.cam_num = camera if camera > 1 else 0
        self.view_num = view if view > 1 else 0
        self.sie_coe = sie_coe
        self.sie_embed = self._make_sie_table(embed_dim)
        self.pos_drop = nn.Dropout(p=drop_rate)
        # On the CPU also when built under torch.device('meta') (shape checks): the rates are plain numbers.
        drop_path_rates = torch.linspace(0, drop_path_rate, depth, device='cpu').tolist()  # stochastic depth decay
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop=drop_rate, attn_drop=attn_drop_rate,
                  drop_path=rate, norm_layer=norm_layer)
            for rate in drop_path_rates])
        self.norm = norm_layer(embed_dim)
        trunc_normal_(self.cls_token, std=.02)
        trunc_normal_(self.pos_embed, std=.02)
        self.apply(init_weights)

    def _make_sie_table(self, embed_dim: int) -> Optional[nn.Parameter]:
        size = max(self.cam_num, 1) * max(self.view_num, 1) if (self.cam_num or self.view_num) else 0
        if not size:
            return None
        logger.info("SIE with %d cameras, %d views, coefficient %s", self.cam_num, self.view_num, self.sie_coe)
        table = nn.Parameter(torch.zeros(size, 1, embed_dim))
        trunc_normal_(table, std=.02)
        return table

    def sie_index(self, cam_label: Optional[torch.Tensor], view_label: Optional[torch.Tensor]) -> torch.Tensor:
        """Row of the SIE table for each image: camera * view_num + view, camera, or view."""
        if self.cam_num and cam_label is None:
            raise ValueError("this model has SIE camera embeddings (MODEL.SIE_CAMERA): pass cam_label")
        if self.view_num and view_label is None:
            raise ValueError("this model has SIE view embeddings (MODEL.SIE_VIEW): pass view_label")
        if self.cam_num and self.view_num:
            return cam_label * self.view_num + view_label
        return cam_label if self.cam_num else view_label

    def embed(self, x: torch.Tensor, cam_label: Optional[torch.Tensor] = None,
              view_label: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Patch tokens with the class token prepended, plus position and side-information embeddings."""
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed
        return self.pos_drop(self.add_sie(x, cam_label, view_label))

    def add_sie(self, x: torch.Tensor, cam_label: Optional[torch.Tensor],
                view_label: Optional[torch.Tensor]) -> torch.Tensor:
        """`x` plus each image's SIE embedding (times MODEL.SIE_COE) on every token."""
        if self.sie_embed is None:
            return x
        index = self.sie_index(cam_label, view_label).to(self.sie_embed.device, torch.long)
        return x + self.sie_coe * self.sie_embed[index]

    def forward(self, x: torch.Tensor, cam_label: Optional[torch.Tensor] = None,
                view_label: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.embed(x, cam_label, view_label)
        for block in self.blocks[:-1]:
            x = block(x)
        if self.local_feature:
            return x
        # Only the class token leaves the last block.
        return self.norm(self.blocks[-1](x, cls_only=True))[:, 0]

    def load_param(self, source: str, backbone_name: str = 'TransReID', hw_ratio: int = 1) -> None:
        """Pre-trained initialisation from a jx ViT / DeiT file, `timm:<model name>`, or a
        TransReID-SSL (DINO) checkpoint; `hw_ratio` is the height : width of its position grid."""
        weights.load_imagenet_vit(self, source, backbone_name, hw_ratio)


def create_vit(name: str, img_size: Sequence[int], stride_size: Sequence[int], drop_rate: float = 0.,
               attn_drop_rate: float = 0., drop_path_rate: float = 0.1, camera: int = 0, view: int = 0,
               local_feature: bool = False, sie_coe: float = 1.5, stem_conv: bool = False) -> TransReID:
    """The backbone `name` of `VIT_SPECS` (a `MODEL.TRANSFORMER_TYPE`), with TransReID-SSL's ICS
    convolution stem before the patch projection when `stem_conv`."""
    return TransReID(img_size=img_size, stride_size=stride_size, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                     drop_path_rate=drop_path_rate, camera=camera, view=view, local_feature=local_feature,
                     sie_coe=sie_coe, stem_conv=stem_conv, **vit_spec(name))
