"""CLIP's towers as CLIP-ReID changes them (Li et al., AAAI 2023; github.com/Syliz517/CLIP-ReID).

The blocks are open_clip's (`Transformer` with QuickGELU and float32 LayerNorms, `Bottleneck`,
`AttentionPool2d`): the same maths and parameter names as OpenAI's clip/model.py, so that OpenAI's
keys map one to one (docs/clipreid.md). CLIP-ReID's changes live in the shells here:

* ViT: the patch convolution steps by `MODEL.STRIDE_SIZE` (overlapping patches), the position grid
  is that of the crop, SIE is added to the class token before the position embedding, and the
  forward returns the tokens after the next-to-last block, after the last block's `ln_post`, and
  projected;
* ResNet: layer4 keeps stride 1 and the attention pool's position grid is the crop's;
* text: the transformer over prompt embeddings, read at each prompt's end-of-text token.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn
from open_clip.modified_resnet import AttentionPool2d, Bottleneck
from open_clip.transformer import LayerNormFp32, QuickGELU, Transformer

from .specs import RESNET_EXPANSION, ClipSpec

PATCH_SIZE = 16
# OpenAI's RN50 and the ViT alike: attention heads are 64 channels wide.
HEAD_WIDTH = 64
# CLIP-ReID's prompt "A photo of a X X X X person.": the start-of-text token and four words, then
# four learnt context vectors per identity in place of the X, then the rest.
PROMPT_PREFIX_TOKENS = 5
CLASS_CONTEXT_TOKENS = 4


def clip_grid(size: Sequence[int], stride: Sequence[int]) -> Tuple[int, int]:
    """CLIP-ReID's token grid of a crop: ((H - 16) // stride + 1, (W - 16) // stride + 1); the
    ResNet reuses it for its 16x-downsampled map (stride 16)."""
    return (int(size[0] - PATCH_SIZE) // int(stride[0]) + 1, int(size[1] - PATCH_SIZE) // int(stride[1]) + 1)


def clip_transformer(width: int, layers: int) -> Transformer:
    return Transformer(width, layers, width // HEAD_WIDTH, act_layer=QuickGELU, norm_layer=LayerNormFp32,
                       batch_first=True)


class ClipVisionTransformer(nn.Module):
    """OpenAI's ViT image tower (keys `conv1`, `class_embedding`, ..., `proj`) with overlapping
    patches of stride `stride` and a position grid `grid` (CLIP-ReID's `h/w_resolution`)."""

    def __init__(self, spec: ClipSpec, grid: Tuple[int, int], stride: int) -> None:
        super().__init__()
        width, scale = spec.vision_width, spec.vision_width ** -0.5
        self.grid = tuple(grid)
        self.conv1 = nn.Conv2d(3, width, kernel_size=PATCH_SIZE, stride=stride, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid[0] * grid[1] + 1, width))
        self.ln_pre = LayerNormFp32(width)
        self.transformer = clip_transformer(width, spec.vision_layers)
        self.ln_post = LayerNormFp32(width)
        self.proj = nn.Parameter(scale * torch.randn(width, spec.embed_dim))

    def forward(self, x: torch.Tensor, cv_embed: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens after the next-to-last block, tokens after the last block and `ln_post`, each
        batch x (1 + H*W) x width; the class token's of those projected, batch x 1 x embedding).

        Theirs projects every token and reads the class token's; projecting it alone gives the
        same numbers, and a plain 2-d product that OpenVINO's int8 graphs keep batch-shaped."""
        x = self.conv1(x)
        if tuple(x.shape[-2:]) != self.grid:
            raise ValueError(f"input images of {x.shape[-2]}x{x.shape[-1]} patches, but the model was built for "
                             f"{self.grid[0]}x{self.grid[1]} (INPUT.SIZE_TRAIN and MODEL.STRIDE_SIZE); resize them "
                             "or set INPUT.SIZE_TEST equal to INPUT.SIZE_TRAIN")
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        if cv_embed is not None:
            cls = cls + cv_embed.unsqueeze(1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype))
        blocks = self.transformer.resblocks
        for block in blocks[:-1]:
            x = block(x)
        last = self.ln_post(blocks[-1](x))
        return x, last, (last[:, 0] @ self.proj).unsqueeze(1)


class ReIDAttentionPool2d(AttentionPool2d):
    """open_clip's attention pool with a position grid of any height and width (not only square)."""

    def __init__(self, grid: Tuple[int, int], embed_dim: int, num_heads: int, output_dim: int) -> None:
        super().__init__(1, embed_dim, num_heads, output_dim)
        self.positional_embedding = nn.Parameter(torch.randn(grid[0] * grid[1] + 1, embed_dim) / embed_dim ** 0.5)


class ClipModifiedResNet(nn.Module):
    """OpenAI's ModifiedResNet (three-convolution stem, anti-aliased strides, attention pool) with
    layer4 at stride 1, as CLIP-ReID builds it; returns (layer3 map, layer4 map, pooled projection)."""

    def __init__(self, spec: ClipSpec, grid: Tuple[int, int]) -> None:
        super().__init__()
        width = spec.vision_width
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        inplanes = width
        for index, (blocks, stride) in enumerate(zip(spec.vision_layers, (1, 2, 2, 1)), start=1):
            planes = width * 2 ** (index - 1)
            layers = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * RESNET_EXPANSION
            layers += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            self.add_module(f'layer{index}', nn.Sequential(*layers))
        self.attnpool = ReIDAttentionPool2d(grid, inplanes, inplanes // HEAD_WIDTH, spec.embed_dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x.to(self.conv1.weight.dtype)
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = self.relu(bn(conv(x)))
        x3 = self.layer3(self.layer2(self.layer1(self.avgpool(x))))
        x4 = self.layer4(x3)
        return x3, x4, self.attnpool(x4)


def causal_mask(length: int) -> torch.Tensor:
    """CLIP's additive text mask: each token sees itself and the tokens before it."""
    return torch.full((length, length), float('-inf')).triu_(1)


class ClipTextEncoder(nn.Module):
    """CLIP's text transformer over token embeddings (CLIP-ReID's `TextEncoder`): the feature of
    each prompt is its end-of-text token's (the highest token id), projected."""

    def __init__(self, spec: ClipSpec) -> None:
        super().__init__()
        self.transformer = clip_transformer(spec.text_width, spec.text_layers)
        self.positional_embedding = nn.Parameter(torch.empty(spec.context_length, spec.text_width))
        self.ln_final = LayerNormFp32(spec.text_width)
        self.text_projection = nn.Parameter(torch.empty(spec.text_width, spec.embed_dim))
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=spec.text_width ** -0.5)
        self.register_buffer('attn_mask', causal_mask(spec.context_length), persistent=False)

    def forward(self, prompts: torch.Tensor, tokenized_prompts: torch.Tensor) -> torch.Tensor:
        x = prompts + self.positional_embedding.to(prompts.dtype)
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask))
        eot = tokenized_prompts.argmax(dim=-1).expand(x.shape[0])
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection
