"""Architecture of each TransReID ViT backbone, and the feature width a config produces.

One table shared by the model, the losses (center-loss width) and the tools, so that a new
backbone is added in one place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

from config import check_choice
from config.choices import CLIP_MODEL_NAMES, MODEL_NAMES, TRANSFORMER_TYPES

VIT_SPECS: Dict[str, Dict[str, Any]] = {
    'vit_base_patch16_224_TransReID': dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                                           qkv_bias=True),
    'deit_base_patch16_224_TransReID': dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                                            qkv_bias=True),
    # The reference's vit_small: no qkv bias and the attention scale of ViT-B.
    'vit_small_patch16_224_TransReID': dict(embed_dim=768, depth=8, num_heads=8, mlp_ratio=3.0,
                                            qkv_bias=False, qk_scale=768 ** -0.5),
    'deit_small_patch16_224_TransReID': dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0,
                                             qkv_bias=True),
    # Not in the reference: TransReID-SSL's ViT-S (DINO on LUPerson). Its configs call it
    # vit_small_patch16_224_TransReID, the name that builds the network above here and in TransReID.
    'vit_small_ssl_patch16_224_TransReID': dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0,
                                                qkv_bias=True),
    # Not in the reference: small enough to train the embedded synthetic default on a CPU.
    'deit_tiny_patch16_224_TransReID': dict(embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0,
                                            qkv_bias=True),
    # Not in the reference: DeiT-Tiny's widths with 5 blocks, the quickstart's backbone. From
    # scratch on the synthetic set it learns as much as 12 blocks (mAP 41.1% vs 40.1% after the
    # quickstart's 40 epochs) for 40% of the training FLOPs, so the quickstart fits 5 minutes
    # on 2 CPU cores.
    'vit_tiny5_patch16_224_TransReID': dict(embed_dim=192, depth=5, num_heads=3, mlp_ratio=4.0,
                                            qkv_bias=True),
}

# SOLIDER's Swin Transformers (model/backbones/swin_solider.py), under SOLIDER-REID's names.
SWIN_SPECS: Dict[str, Dict[str, Any]] = {
    'swin_tiny_patch4_window7_224': dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    'swin_small_patch4_window7_224': dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    'swin_base_patch4_window7_224': dict(embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}

RESNET50_FEATURE_DIM = 2048
# PASS's ways to fuse the class token with the parts' mean (MODEL.FEAT_FUSION).
FEAT_FUSIONS = ('cat', 'mean')
# Bottleneck blocks widen their input four times (ResNet-50 and CLIP's ModifiedResNet).
RESNET_EXPANSION = 4


@dataclass(frozen=True)
class ClipSpec:
    """Widths of one CLIP model (model/backbones/clip.py): the image tower (`vision_layers` an int
    for a ViT, four block counts for a ResNet), the shared embedding and the text tower."""
    vision_layers: Any
    vision_width: int
    embed_dim: int
    text_width: int = 512
    text_layers: int = 12
    context_length: int = 77
    vocab_size: int = 49408

    @property
    def is_vit(self) -> bool:
        return isinstance(self.vision_layers, int)

    @property
    def feature_dim(self) -> int:
        """Width of the image feature before the projection (the first BN neck's)."""
        return self.vision_width if self.is_vit else self.vision_width * 8 * RESNET_EXPANSION


# OpenAI's published CLIP models under CLIP-ReID's MODEL.NAME.
CLIP_SPECS: Dict[str, ClipSpec] = {
    'ViT-B-16': ClipSpec(vision_layers=12, vision_width=768, embed_dim=512),
    'RN50': ClipSpec(vision_layers=(3, 4, 6, 3), vision_width=64, embed_dim=1024),
    # CLIP's shape at toy widths (2 heads of 64 in both towers) for the synthetic set; 16 tokens
    # hold the prompt (12 with its start and end), and a fifth of the text tower's cost.
    'ViT-T-16': ClipSpec(vision_layers=4, vision_width=128, embed_dim=64, text_width=128, text_layers=2,
                         context_length=16),
}
assert set(CLIP_SPECS) == set(CLIP_MODEL_NAMES), "config/choices.py CLIP_MODEL_NAMES is stale"
# load_config checks MODEL.TRANSFORMER_TYPE against config.choices without importing torch.
assert set(VIT_SPECS) | set(SWIN_SPECS) == set(TRANSFORMER_TYPES), "config/choices.py TRANSFORMER_TYPES is stale"


def model_name(cfg) -> str:
    """`MODEL.NAME`, checked here only, for the model factory and `feature_dim` alike."""
    return check_choice('MODEL.NAME', cfg.MODEL.NAME, MODEL_NAMES)


def is_swin(cfg) -> bool:
    """Whether `cfg` builds SOLIDER's Swin (a swin_* `MODEL.TRANSFORMER_TYPE`)."""
    return model_name(cfg) == 'transformer' and cfg.MODEL.TRANSFORMER_TYPE in SWIN_SPECS


def vit_spec(transformer_type: str) -> Dict[str, Any]:
    """Architecture of the ViT `transformer_type` (a `MODEL.TRANSFORMER_TYPE`)."""
    return VIT_SPECS[check_choice('MODEL.TRANSFORMER_TYPE', transformer_type, sorted(VIT_SPECS))]


def swin_spec(transformer_type: str) -> Dict[str, Any]:
    """Architecture of the Swin `transformer_type` (a `MODEL.TRANSFORMER_TYPE`)."""
    return SWIN_SPECS[check_choice('MODEL.TRANSFORMER_TYPE', transformer_type, sorted(SWIN_SPECS))]


def feature_dim(cfg) -> int:
    """Width of the global feature (and of each JPM local feature) that `cfg` builds; with PASS
    the fused feature, twice the ViT's width for MODEL.FEAT_FUSION 'cat'."""
    if model_name(cfg) == 'resnet50':
        return RESNET50_FEATURE_DIM
    if cfg.MODEL.NAME in CLIP_SPECS:
        return CLIP_SPECS[cfg.MODEL.NAME].feature_dim
    if is_swin(cfg):  # the last of four stages, each twice as wide as the one before
        return swin_spec(cfg.MODEL.TRANSFORMER_TYPE)['embed_dims'] * 8
    width = vit_spec(cfg.MODEL.TRANSFORMER_TYPE)['embed_dim']
    if cfg.MODEL.PASS:
        fusion = check_choice('MODEL.FEAT_FUSION', cfg.MODEL.FEAT_FUSION, FEAT_FUSIONS)
        return width * (2 if fusion == 'cat' else 1)
    return width


def eval_feature_dim(cfg) -> int:
    """Width of the eval-mode feature that `cfg` builds: the global feature, followed with JPM
    by its MODEL.DEVIDE_LENGTH local ones (model/make_model.py); CLIP-ReID's is followed by its
    projection (model/clipreid.py)."""
    if model_name(cfg) in CLIP_SPECS:
        return feature_dim(cfg) + CLIP_SPECS[cfg.MODEL.NAME].embed_dim
    parts = cfg.MODEL.DEVIDE_LENGTH if cfg.MODEL.JPM and model_name(cfg) == 'transformer' else 0
    return feature_dim(cfg) * (1 + parts)
