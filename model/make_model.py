"""Re-ID models built from a config: ResNet-50 baseline, ViT baseline (with SIE), TransReID with JPM
and PASS's part-token ViT.

Every model is called as `model(x, label=None, cam_label=None, view_label=None)`:

* train mode: `(cls_score, global_feat)`; with JPM two lists, `[score_global, score_1..P]` and
  `[feat_global, feat_1..P]` (features before the BN neck, for the triplet loss);
* eval mode: the feature matrix, before or after the BN neck (`TEST.NECK_FEAT`); with JPM
  `[global, local_1/P, ..., local_P/P]` concatenated (P = `MODEL.DEVIDE_LENGTH`, 4 in the paper);
  with PASS the class token and the mean of the part tokens, fused as `MODEL.FEAT_FUSION` says.

Module names are the reference's (`base`, `b1`, `b2`, `bottleneck`, `bottleneck_1..4`,
`classifier`, `classifier_1..4`) so that its trained checkpoints load with `load_param`.

`MODEL.NAME` 'ViT-B-16' / 'RN50' builds CLIP-ReID instead (model/clipreid.py), called and
answering as its authors' code does.
"""
from __future__ import annotations

import copy
import logging
from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from config import check_choice
from config.choices import CLIP_MODEL_NAMES, NECK_FEATS, NECK_TYPES, PRETRAIN_CHOICES
from utils.errors import ConfigError

from . import weights
from .backbones import ResNet, TransReID, create_pass_vit, create_vit, feature_dim, model_name
from .backbones.specs import FEAT_FUSIONS, is_swin
from .backbones.swin_solider import SOLIDERSwin, create_solider_swin
from .clipreid import build_clipreid
from .heads import MarginHead, make_bn_neck, make_classifier

logger = logging.getLogger("transreid.model")


TrainOutput = Tuple[torch.Tensor, torch.Tensor]
JPMTrainOutput = Tuple[List[torch.Tensor], List[torch.Tensor]]


def shuffle_unit(features: torch.Tensor, shift: int, group: int) -> torch.Tensor:
    """JPM's shift and patch shuffle of a token sequence (class token first); returns patch tokens.

    Shift: the reference's slicing (`features[:, shift:]` then `features[:, 1:shift]`) counts the class
    token, so the patches rotate left by `shift - 1` and the class token is dropped. Shuffle: the
    sequence is cut into `group` consecutive groups and interleaved (token j of every group, then
    token j + 1, ...). When the patch count does not divide by `group`, the sequence is padded with
    copies of its second-to-last token, as the reference does (one copy, for its two groups).
    """
    if shift < 1 or group < 1:
        raise ValueError(f"MODEL.SHIFT_NUM ({shift}) and MODEL.SHUFFLE_GROUP ({group}) must be at least 1")
    x = torch.roll(features[:, 1:], shifts=1 - shift, dims=1)
    padding = -x.shape[1] % group
    if padding:
        x = torch.cat([x, x[:, -2:-1].expand(-1, padding, -1)], dim=1)
    batch, _, dim = x.shape
    return x.view(batch, group, -1, dim).transpose(1, 2).reshape(batch, -1, dim)


class ReIDModel(nn.Module):
    """Global BN neck, identity classifier and checkpoint loading shared by all models."""

    def __init__(self, num_classes: int, cfg) -> None:
        super().__init__()
        self.in_planes = feature_dim(cfg)
        self.num_classes = num_classes
        self.neck = check_choice('MODEL.NECK', cfg.MODEL.NECK, NECK_TYPES)
        self.neck_feat = check_choice('TEST.NECK_FEAT', cfg.TEST.NECK_FEAT, NECK_FEATS)
        self.classifier = self._make_classifier(cfg)
        self.bottleneck = make_bn_neck(self.in_planes)

    def _make_classifier(self, cfg) -> nn.Module:
        return make_classifier(cfg.MODEL.ID_LOSS_TYPE, self.in_planes, self.num_classes,
                               scale=cfg.SOLVER.COSINE_SCALE, margin=cfg.SOLVER.COSINE_MARGIN)

    def apply_neck(self, feat: torch.Tensor, bottleneck: nn.BatchNorm1d) -> torch.Tensor:
        return bottleneck(feat) if self.neck == 'bnneck' else feat

    @staticmethod
    def score(classifier: nn.Module, feat: torch.Tensor, label: Optional[torch.Tensor]) -> torch.Tensor:
        if not isinstance(classifier, MarginHead):
            return classifier(feat)
        if label is None:
            raise ValueError(f"the {type(classifier).__name__} classifier (MODEL.ID_LOSS_TYPE) needs the "
                             "labels in train mode: call model(x, label, ...)")
        return classifier(feat, label)

    def eval_feature(self, global_feat: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        return feat if self.neck_feat == 'after' else global_feat

    def load_param(self, trained_path: str) -> None:
        """Load a whole trained model (reference or this repository's checkpoints), strictly."""
        weights.load_trained_model(self, trained_path)

    def load_param_finetune(self, model_path: str) -> None:
        """Load a trained model to fine-tune; classifiers of another class count start afresh."""
        weights.load_trained_model(self, model_path, new_classifiers_on_mismatch=True)


class Backbone(ReIDModel):
    """ResNet-50 strong baseline: global average pooling, BN neck, classifier."""

    def __init__(self, num_classes: int, cfg) -> None:
        super().__init__(num_classes, cfg)
        self.base = ResNet(last_stride=cfg.MODEL.LAST_STRIDE)
        if cfg.MODEL.PRETRAIN_CHOICE == 'imagenet':
            self.base.load_param(cfg.MODEL.PRETRAIN_PATH)
        self.gap = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor, label: Optional[torch.Tensor] = None,
                cam_label: Optional[torch.Tensor] = None,
                view_label: Optional[torch.Tensor] = None) -> Union[torch.Tensor, TrainOutput]:
        global_feat = self.gap(self.base(x)).flatten(1)
        feat = self.apply_neck(global_feat, self.bottleneck)
        if self.training:
            return self.score(self.classifier, feat, label), global_feat
        return self.eval_feature(global_feat, feat)


def create_transformer_base(cfg, camera_num: int, view_num: int,
                            local_feature: bool) -> Union[TransReID, SOLIDERSwin]:
    """The config's ViT backbone (PASS's part-token ViT with MODEL.PASS), with SIE and the ICS stem
    where enabled, initialised from pre-trained weights (ImageNet, TransReID-SSL, PASS) for 'imagenet';
    or SOLIDER's Swin for a swin_* TRANSFORMER_TYPE."""
    if is_swin(cfg):
        return create_swin_base(cfg)
    settings = dict(img_size=cfg.INPUT.SIZE_TRAIN, stride_size=cfg.MODEL.STRIDE_SIZE,
                    drop_rate=cfg.MODEL.DROP_OUT, attn_drop_rate=cfg.MODEL.ATT_DROP_RATE,
                    drop_path_rate=cfg.MODEL.DROP_PATH,
                    camera=camera_num if cfg.MODEL.SIE_CAMERA else 0,
                    view=view_num if cfg.MODEL.SIE_VIEW else 0,
                    sie_coe=cfg.MODEL.SIE_COE, stem_conv=cfg.MODEL.STEM_CONV)
    if cfg.MODEL.PASS:
        base = create_pass_vit(cfg.MODEL.TRANSFORMER_TYPE, **settings)
    else:
        base = create_vit(cfg.MODEL.TRANSFORMER_TYPE, local_feature=local_feature, **settings)
    if cfg.MODEL.PRETRAIN_CHOICE == 'imagenet':
        base.load_param(cfg.MODEL.PRETRAIN_PATH, cfg.MODEL.TRANSFORMER_TYPE, cfg.MODEL.PRETRAIN_HW_RATIO)
    return base


def create_swin_base(cfg) -> SOLIDERSwin:
    """SOLIDER's Swin with MODEL.SEMANTIC_WEIGHT, initialised from SOLIDER's checkpoint for
    'imagenet'; the ViT's options (SIE, JPM, stem, PASS) have no meaning for it."""
    for key in ('SIE_CAMERA', 'SIE_VIEW', 'JPM', 'STEM_CONV', 'PASS'):
        if cfg.MODEL[key]:
            raise ConfigError(f"MODEL.{key} is a ViT option, but MODEL.TRANSFORMER_TYPE "
                              f"'{cfg.MODEL.TRANSFORMER_TYPE}' is SOLIDER's Swin; set MODEL.{key} False")
    base = create_solider_swin(cfg.MODEL.TRANSFORMER_TYPE, drop_rate=cfg.MODEL.DROP_OUT,
                               attn_drop_rate=cfg.MODEL.ATT_DROP_RATE, drop_path_rate=cfg.MODEL.DROP_PATH,
                               semantic_weight=cfg.MODEL.SEMANTIC_WEIGHT)
    if cfg.MODEL.PRETRAIN_CHOICE == 'imagenet':
        base.load_param(cfg.MODEL.PRETRAIN_PATH, cfg.MODEL.TRANSFORMER_TYPE)
    return base


class build_transformer(ReIDModel):
    """ViT baseline: the class token of the last layer, BN neck, classifier; with SOLIDER's Swin,
    the average of its last stage's map in place of the class token (their `build_transformer`)."""

    def __init__(self, num_classes: int, camera_num: int, view_num: int, cfg) -> None:
        super().__init__(num_classes, cfg)
        self.base = create_transformer_base(cfg, camera_num, view_num, local_feature=False)

    def forward(self, x: torch.Tensor, label: Optional[torch.Tensor] = None,
                cam_label: Optional[torch.Tensor] = None,
                view_label: Optional[torch.Tensor] = None) -> Union[torch.Tensor, TrainOutput]:
        global_feat = self.base(x, cam_label=cam_label, view_label=view_label)
        feat = self.apply_neck(global_feat, self.bottleneck)
        if self.training:
            return self.score(self.classifier, feat, label), global_feat
        return self.eval_feature(global_feat, feat)


class build_transformer_local(ReIDModel):
    """TransReID with the jigsaw patch module (JPM).

    The backbone stops before its last block. A global branch `b1` (copy of the last block and
    norm) gives the global feature; the local branch `b2` (another copy) runs on each of P groups
    of shifted and shuffled patches with the class token prepended, giving P local features.
    Each feature has its own BN neck and classifier.
    """

    def __init__(self, num_classes: int, camera_num: int, view_num: int, cfg) -> None:
        super().__init__(num_classes, cfg)
        self.base = create_transformer_base(cfg, camera_num, view_num, local_feature=True)
        # Copies made after the ImageNet initialisation, so both branches start from its last block.
        self.b1 = nn.Sequential(copy.deepcopy(self.base.blocks[-1]), copy.deepcopy(self.base.norm))
        self.b2 = nn.Sequential(copy.deepcopy(self.base.blocks[-1]), copy.deepcopy(self.base.norm))
        self.num_parts = cfg.MODEL.DEVIDE_LENGTH
        if not 1 <= self.num_parts <= self.base.patch_embed.num_patches:
            raise ValueError(f"MODEL.DEVIDE_LENGTH {self.num_parts} must be between 1 and the patch count "
                             f"{self.base.patch_embed.num_patches}")
        for part in range(1, self.num_parts + 1):
            self.add_module(f'classifier_{part}', self._make_classifier(cfg))
            self.add_module(f'bottleneck_{part}', make_bn_neck(self.in_planes))
        self.shift_num = cfg.MODEL.SHIFT_NUM
        self.shuffle_groups = cfg.MODEL.SHUFFLE_GROUP
        self.rearrange = cfg.MODEL.RE_ARRANGE

    @staticmethod
    def branch_class_token(branch: nn.Sequential, tokens: torch.Tensor) -> torch.Tensor:
        """Class token of a branch (`b1`, `b2`: block, then norm), computed for that token alone."""
        block, norm = branch
        return norm(block(tokens, cls_only=True))[:, 0]

    def _branch_modules(self, name: str) -> List[nn.Module]:
        """The global module `name` followed by its P local copies `name_1..name_P`."""
        return [getattr(self, name)] + [getattr(self, f'{name}_{part}') for part in range(1, self.num_parts + 1)]

    def local_features(self, tokens: torch.Tensor) -> List[torch.Tensor]:
        """Class token of `b2` on each group of (shifted and shuffled) patches."""
        batch, num_tokens, dim = tokens.shape
        part_length = (num_tokens - 1) // self.num_parts
        patches = shuffle_unit(tokens, self.shift_num, self.shuffle_groups) if self.rearrange else tokens[:, 1:]
        # All parts go through b2 as one batch of batch * P sequences (ordered image-major).
        parts = patches[:, :part_length * self.num_parts].reshape(batch * self.num_parts, part_length, dim)
        cls_tokens = tokens[:, :1].repeat_interleave(self.num_parts, dim=0)
        local = self.branch_class_token(self.b2, torch.cat([cls_tokens, parts], dim=1))
        return list(local.view(batch, self.num_parts, dim).unbind(1))

    def forward(self, x: torch.Tensor, label: Optional[torch.Tensor] = None,
                cam_label: Optional[torch.Tensor] = None,
                view_label: Optional[torch.Tensor] = None) -> Union[torch.Tensor, JPMTrainOutput]:
        tokens = self.base(x, cam_label=cam_label, view_label=view_label)
        feats = [self.branch_class_token(self.b1, tokens)] + self.local_features(tokens)
        necked = [self.apply_neck(feat, neck) for feat, neck in zip(feats, self._branch_modules('bottleneck'))]
        if self.training:
            scores = [self.score(classifier, feat, label)
                      for classifier, feat in zip(self._branch_modules('classifier'), necked)]
            return scores, feats
        chosen = necked if self.neck_feat == 'after' else feats
        return torch.cat([chosen[0]] + [feat / self.num_parts for feat in chosen[1:]], dim=1)


class build_transformer_pass(ReIDModel):
    """PASS: the class token and the mean of the three part tokens, fused side by side
    (MODEL.FEAT_FUSION 'cat') or averaged ('mean').

    With MODEL.MULTI_NECK each token has its BN neck (`bottleneck`, `bottleneck_1..3`) and the
    necked tokens are fused the same way; without, one BN neck follows the fused feature. One
    classifier scores the fused feature after the neck; training returns it with the fused
    feature before the neck (for the triplet loss), as their `build_transformer_pass` does.
    """

    def __init__(self, num_classes: int, camera_num: int, view_num: int, cfg) -> None:
        super().__init__(num_classes, cfg)
        self.base = create_transformer_base(cfg, camera_num, view_num, local_feature=False)
        self.multi_neck = bool(cfg.MODEL.MULTI_NECK)
        self.feat_fusion = check_choice('MODEL.FEAT_FUSION', cfg.MODEL.FEAT_FUSION, FEAT_FUSIONS)
        if self.multi_neck:
            self.bottleneck = make_bn_neck(self.base.embed_dim)
            for part in range(1, self.base.part_count + 1):
                self.add_module(f'bottleneck_{part}', make_bn_neck(self.base.embed_dim))

    def fuse(self, global_feat: torch.Tensor, parts: List[torch.Tensor]) -> torch.Tensor:
        parts_mean = sum(part / len(parts) for part in parts)
        if self.feat_fusion == 'cat':
            return torch.cat((global_feat, parts_mean), dim=1)
        return (global_feat + parts_mean) / 2

    def forward(self, x: torch.Tensor, label: Optional[torch.Tensor] = None,
                cam_label: Optional[torch.Tensor] = None,
                view_label: Optional[torch.Tensor] = None) -> Union[torch.Tensor, TrainOutput]:
        global_feat, *parts = self.base(x, cam_label=cam_label, view_label=view_label).unbind(1)
        before = self.fuse(global_feat, parts)
        if self.multi_neck:
            necks = [self.bottleneck] + [getattr(self, f'bottleneck_{p}') for p in range(1, len(parts) + 1)]
            necked = [self.apply_neck(feat, neck) for feat, neck in zip([global_feat] + parts, necks)]
            after = self.fuse(necked[0], necked[1:])
        else:
            after = self.apply_neck(before, self.bottleneck)
        if self.training:
            return self.score(self.classifier, after, label), before
        return self.eval_feature(before, after)


def make_model(cfg, num_class: int, camera_num: int, view_num: int) -> ReIDModel:
    """Model for `cfg` with `num_class` identities; `camera_num` / `view_num` size the SIE tables.

    `MODEL.PRETRAIN_CHOICE`: 'imagenet' initialises the backbone from `MODEL.PRETRAIN_PATH`, 'self'
    loads a whole trained model from it, 'finetune' too but with new classifiers when the class
    count differs, 'none' trains from scratch.
    """
    check_choice('MODEL.PRETRAIN_CHOICE', cfg.MODEL.PRETRAIN_CHOICE, PRETRAIN_CHOICES)
    if model_name(cfg) in CLIP_MODEL_NAMES:
        model = build_clipreid(cfg, num_class, camera_num, view_num)  # 'imagenet': OpenAI's CLIP weights
    elif model_name(cfg) == 'transformer':
        if cfg.MODEL.PASS and cfg.MODEL.JPM:
            raise ConfigError("MODEL.PASS (PASS's part-token ViT) has no JPM branch; set MODEL.JPM False")
        model_class = build_transformer_pass if cfg.MODEL.PASS else (
            build_transformer_local if cfg.MODEL.JPM else build_transformer)
        model = model_class(num_class, camera_num, view_num, cfg)
        logger.info("Built %s (%s)%s", cfg.MODEL.TRANSFORMER_TYPE, model_class.__name__,
                    " with JPM" if cfg.MODEL.JPM else "")
    else:
        model = Backbone(num_class, cfg)
        logger.info("Built resnet50 (last stride %d)", cfg.MODEL.LAST_STRIDE)
    if cfg.MODEL.PRETRAIN_CHOICE == 'self':
        model.load_param(cfg.MODEL.PRETRAIN_PATH)
    elif cfg.MODEL.PRETRAIN_CHOICE == 'finetune':
        model.load_param_finetune(cfg.MODEL.PRETRAIN_PATH)
    return model
