"""Resizing a ViT's position embedding to the patch grid of a re-ID input size and stride.

ImageNet ViTs have square grids (14x14 at 224x224). TransReID-SSL's LUPerson ViTs were pre-trained
at 256x128, a 16x8 grid: their `MODEL.PRETRAIN_HW_RATIO` 2 tells the loader so, as here.
"""
from __future__ import annotations

import logging
import math
from typing import Tuple

import torch
from timm.layers import resample_abs_pos_embed

from utils.errors import UserError

logger = logging.getLogger("transreid.model")


class PosEmbedGridError(UserError, RuntimeError):
    """A position embedding whose token count is no grid of the declared height : width ratio."""


def source_grid(num_patches: int, hw_ratio: int = 1) -> Tuple[int, int]:
    """(rows, columns) of `num_patches` positions laid out `hw_ratio` times taller than wide.

    TransReID-SSL computes rows = int(sqrt(N * ratio)), columns = rows // ratio and reshapes
    without a check; here the grid must hold exactly N positions.
    """
    rows = math.isqrt(num_patches * hw_ratio)
    columns = rows // hw_ratio
    if rows * columns != num_patches:
        advice = ("set MODEL.PRETRAIN_HW_RATIO to the height : width of the grid it was pre-trained on "
                  "(2 for TransReID-SSL's 256x128 checkpoints)")
        raise PosEmbedGridError(f"pos_embed with {num_patches} patch positions is not a grid {hw_ratio} times "
                                f"taller than wide (MODEL.PRETRAIN_HW_RATIO {hw_ratio}); {advice}")
    return rows, columns


def resize_pos_embed(posemb: torch.Tensor, grid_size: Tuple[int, int], hw_ratio: int = 1) -> torch.Tensor:
    """Bilinearly resize the patch grid of a (1, 1 + N, D) position embedding to `grid_size`
    (the (num_y, num_x) grid of the overlapping patch embedding); the class token stays.

    The interpolation is TransReID's and TransReID-SSL's: bilinear, half-pixel centres
    (align_corners False), without antialiasing, also when shrinking.
    """
    old_size = source_grid(posemb.shape[1] - 1, hw_ratio)
    logger.info("Resizing position embedding from a %dx%d grid to %dx%d", *old_size, *grid_size)
    return resample_abs_pos_embed(posemb, new_size=list(grid_size), old_size=list(old_size),
                                  num_prefix_tokens=1, interpolation='bilinear', antialias=False)
