"""PASS's part-token ViT (Zhu et al., *PASS: Part-Aware Self-Supervised Pre-Training for Person
Re-Identification*, ECCV 2022; github.com/CASIA-IVA-Lab/PASS-reID, folder PASS_transreid).

TransReID's ViT with three learnable part tokens after the class token. The position embedding
is split as PASS splits it: `cls_pos`, `part1_pos`..`part3_pos` (one vector each) and
`pos_embed`, which covers the patches only (no class-token entry). Blocks, patch embedding, SIE
and the ICS stem are the TransReID ViT's; parameter names are PASS's, so that its LUPerson
checkpoints and the models its code trains load unchanged.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from timm.layers import trunc_normal_
from torch import nn

from .specs import vit_spec
from .vit_pytorch import TransReID
from .. import pass_weights, weights

NUM_PART_TOKENS = pass_weights.NUM_PART_TOKENS


class PASSTransReID(TransReID):
    """`forward` returns the normalised class token and the three part tokens, N x 4 x D.

    Their code adds SIE to a position embedding without the four token entries, which fails on the
    shapes; here SIE is added to every token, as in the TransReID ViT. JPM is not built on it
    (their configs do not use it).
    """

    part_count = NUM_PART_TOKENS

    def __init__(self, *args, local_feature: bool = False, **kwargs) -> None:
        if local_feature:
            raise ValueError("PASS's part-token ViT (MODEL.PASS) has no JPM branch; set MODEL.JPM False")
        super().__init__(*args, **kwargs)
        dim = self.embed_dim
        # The class token is the TransReID ViT's; the patches' grid loses its class-token entry.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, dim))
        trunc_normal_(self.pos_embed, std=.02)
        for part in range(1, NUM_PART_TOKENS + 1):
            # Zeros until the pre-trained weights load, as their re-ID model starts them.
            self.register_parameter(f'part_token{part}', nn.Parameter(torch.zeros(1, 1, dim)))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, dim))
        for part in range(1, NUM_PART_TOKENS + 1):
            self.register_parameter(f'part{part}_pos', nn.Parameter(torch.zeros(1, 1, dim)))

    def _prefix(self, name: str) -> torch.Tensor:
        """The class token then the part tokens (name 'token'), or their positions ('pos')."""
        if name == 'token':
            tensors = [self.cls_token] + [getattr(self, f'part_token{p}') for p in range(1, NUM_PART_TOKENS + 1)]
        else:
            tensors = [self.cls_pos] + [getattr(self, f'part{p}_pos') for p in range(1, NUM_PART_TOKENS + 1)]
        return torch.cat(tensors, dim=1)

    def embed(self, x: torch.Tensor, cam_label: Optional[torch.Tensor] = None,
              view_label: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Patch tokens after the class and part tokens, plus position and SIE embeddings."""
        x = self.patch_embed(x)
        x = torch.cat((self._prefix('token').expand(x.shape[0], -1, -1), x), dim=1)
        x = x + torch.cat((self._prefix('pos'), self.pos_embed), dim=1)
        return self.pos_drop(self.add_sie(x, cam_label, view_label))

    def forward(self, x: torch.Tensor, cam_label: Optional[torch.Tensor] = None,
                view_label: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.embed(x, cam_label, view_label)
        for block in self.blocks:
            x = block(x)
        return self.norm(x[:, :1 + NUM_PART_TOKENS])

    def load_param(self, source: str, backbone_name: str = 'PASS', hw_ratio: int = 1) -> None:
        """PASS's pre-trained weights: its DINO checkpoint (teacher, else student) or the backbone
        its converter writes, .pth or .safetensors; `hw_ratio` is the height : width of its grid."""
        state = weights.read_pretrained(source, pass_weights.download_hint(backbone_name))
        state = pass_weights.adapt_pass_state(state, source, self.patch_embed.grid_size, hw_ratio)
        weights.load_state_strict(self, state, source, allowed_missing={'sie_embed'},
                                  fix_hint=pass_weights.fix_hint(backbone_name, self.patch_embed.conv is not None))


def create_pass_vit(name: str, img_size: Sequence[int], stride_size: Sequence[int], drop_rate: float = 0.,
                    attn_drop_rate: float = 0., drop_path_rate: float = 0.1, camera: int = 0, view: int = 0,
                    sie_coe: float = 1.5, stem_conv: bool = False) -> PASSTransReID:
    """The part-token ViT with the widths of `name` (a `MODEL.TRANSFORMER_TYPE` of `VIT_SPECS`)."""
    return PASSTransReID(img_size=img_size, stride_size=stride_size, drop_rate=drop_rate,
                         attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, camera=camera, view=view,
                         sie_coe=sie_coe, stem_conv=stem_conv, **vit_spec(name))
