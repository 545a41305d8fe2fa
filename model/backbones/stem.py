"""TransReID-SSL's ICS stem ("IBN-based convolution stem"): convolutions before the patch projection.

Module and parameter names are TransReID-SSL's (`patch_embed.conv.{0,1.IN,1.BN,3,4.IN,4.BN,6,7}`)
so that its LUPerson checkpoints load unchanged. The stem halves the image (a 7x7 convolution of
stride 2) and keeps that resolution (two 3x3 convolutions), so the patch projection after it sees
8x8 patches of half-size features where a plain ViT sees 16x16 pixels.
"""
from __future__ import annotations

import torch
from torch import nn

STEM_WIDTH = 64
STEM_STRIDE = 2


class IBN(nn.Module):
    """Instance norm (with affine parameters) on the first half of the channels, batch norm on
    the rest: IBN-Net's 'a' block, as TransReID-SSL's stem uses it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.half = channels // 2
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.IN(x[:, :self.half].contiguous()), self.BN(x[:, self.half:].contiguous())], dim=1)


def make_ics_stem(in_chans: int = 3, width: int = STEM_WIDTH) -> nn.Sequential:
    """7x7/2 convolution, IBN, ReLU; 3x3 convolution, IBN, ReLU; 3x3 convolution, BN, ReLU.

    Indices 0..8 give the checkpoint keys; the convolutions have no bias (a norm follows each).
    """
    return nn.Sequential(
        nn.Conv2d(in_chans, width, kernel_size=7, stride=STEM_STRIDE, padding=3, bias=False),
        IBN(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, kernel_size=3, stride=1, padding=1, bias=False),
        IBN(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, kernel_size=3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    )
