"""CLIP-ReID (Li, Sun and Li, AAAI 2023): CLIP's image encoder with two BN necks and
classifiers, and per-identity text prompts learnt in a first stage (github.com/Syliz517/CLIP-ReID).

`model(x, label=None, cam_label=None, view_label=None, get_image=False, get_text=False)`, as theirs:

* `get_text`: the text feature of each label's prompt "A photo of a X X X X person." (vehicle for
  vehicle sets), whose four X are the label's learnt `cls_ctx` vectors;
* `get_image`: the projected class token (ViT) or attention-pooled feature (ResNet), stage 1's
  image feature;
* train mode: `([score, score_proj], [feature_last, feature, feature_proj], feature_proj)`: the two
  classifiers' scores, the features for the triplet loss (the next-to-last block's class token or
  layer3's pooled map, the last, the projection) and the projection for the image-to-text loss;
* eval mode: `[feature, feature_proj]` concatenated, before or after their BN necks (`TEST.NECK_FEAT`).

Module and parameter names are theirs (`image_encoder`, `prompt_learner`, `text_encoder`,
`bottleneck(_proj)`, `classifier(_proj)`, `cv_embed`), so their trained checkpoints load as saved.
"""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence, Tuple, Union

import torch
from open_clip.tokenizer import tokenize
from timm.layers import trunc_normal_
from torch import nn

from config import ConfigError, check_choice
from config.choices import NECK_FEATS

from . import weights
from .clip_weights import load_clip_pretrained
from .backbones.clip import (CLASS_CONTEXT_TOKENS, PROMPT_PREFIX_TOKENS, ClipModifiedResNet, ClipTextEncoder,
                             ClipVisionTransformer, clip_grid)
from .backbones.specs import CLIP_SPECS, ClipSpec
from .heads import linear_classifier, make_bn_neck

logger = logging.getLogger("transreid.model")

# CLIP-ReID's prompt: four learnt context vectors per identity stand in for the four X.
PERSON_PROMPT = "A photo of a X X X X person."
VEHICLE_PROMPT = "A photo of a X X X X vehicle."
# Their code switches to the vehicle prompt for these two dataset names only.
VEHICLE_DATASETS = ('VehicleID', 'veri')

# The parameters whose first dimension is the identity count.
PER_CLASS_KEYS = ('classifier.weight', 'classifier_proj.weight', 'prompt_learner.cls_ctx')

TrainOutput = Tuple[List[torch.Tensor], List[torch.Tensor], torch.Tensor]


def prompt_text(dataset_name: str) -> str:
    return VEHICLE_PROMPT if dataset_name in VEHICLE_DATASETS else PERSON_PROMPT


class PromptLearner(nn.Module):
    """Per-identity context vectors between the fixed prompt's token embeddings.

    `token_prefix` and `token_suffix` are the word embeddings of the prompt around the four X,
    read from CLIP's token embedding when the CLIP weights load (model/clip_weights.py);
    `cls_ctx` is N(0, 0.02²), as theirs."""

    def __init__(self, num_classes: int, prompt: str, spec: ClipSpec) -> None:
        super().__init__()
        self.register_buffer('tokenized_prompts', tokenize(prompt, spec.context_length), persistent=False)
        self.cls_ctx = nn.Parameter(torch.empty(num_classes, CLASS_CONTEXT_TOKENS, spec.text_width))
        nn.init.normal_(self.cls_ctx, std=0.02)
        suffix = spec.context_length - PROMPT_PREFIX_TOKENS - CLASS_CONTEXT_TOKENS
        self.register_buffer('token_prefix', torch.zeros(1, PROMPT_PREFIX_TOKENS, spec.text_width))
        self.register_buffer('token_suffix', torch.zeros(1, suffix, spec.text_width))

    def forward(self, label: torch.Tensor) -> torch.Tensor:
        batch = label.shape[0]
        return torch.cat([self.token_prefix.expand(batch, -1, -1), self.cls_ctx[label],
                          self.token_suffix.expand(batch, -1, -1)], dim=1)


def _image_encoder(spec: ClipSpec, size: Sequence[int], stride: Sequence[int]) -> nn.Module:
    # CLIP-ReID computes the grid from MODEL.STRIDE_SIZE[0] for the ResNet too (a 16x map).
    grid = clip_grid(size, stride)
    if not spec.is_vit and [int(side) for side in stride] != [16, 16]:
        raise ConfigError(f"MODEL.STRIDE_SIZE {list(stride)}: CLIP-ReID's ResNet pools a map 16 times smaller than "
                         "the image and sizes its position grid by the stride; set STRIDE_SIZE [16, 16]")
    if spec.is_vit:
        if int(stride[0]) != int(stride[1]):
            raise ConfigError(f"MODEL.STRIDE_SIZE {list(stride)}: CLIP-ReID steps its patches by one stride "
                             "(STRIDE_SIZE[0]) in both directions; give two equal numbers")
        return ClipVisionTransformer(spec, grid, int(stride[0]))
    return ClipModifiedResNet(spec, grid)


class CLIPReID(nn.Module):
    """CLIP-ReID's `build_transformer` for a `ClipSpec` (ViT or ResNet image tower)."""

    def __init__(self, spec: ClipSpec, num_classes: int, size: Sequence[int], stride: Sequence[int],
                 prompt: str = PERSON_PROMPT, sie_tables: Tuple[int, int] = (0, 0), sie_coe: float = 3.0,
                 neck_feat: str = 'before') -> None:
        super().__init__()
        self.spec = spec
        self.in_planes, self.in_planes_proj = spec.feature_dim, spec.embed_dim
        self.num_classes = num_classes
        self.neck_feat = check_choice('TEST.NECK_FEAT', neck_feat, NECK_FEATS)
        self.classifier = linear_classifier(self.in_planes, num_classes)
        self.classifier_proj = linear_classifier(self.in_planes_proj, num_classes)
        self.bottleneck = make_bn_neck(self.in_planes)
        self.bottleneck_proj = make_bn_neck(self.in_planes_proj)
        self.grid = clip_grid(size, stride)
        self.input_size = tuple(int(side) for side in size)
        self.image_encoder = _image_encoder(spec, size, stride)
        self.camera_num, self.view_num = sie_tables
        self.sie_coe = sie_coe
        if self.camera_num or self.view_num:
            if not spec.is_vit:
                raise ConfigError("SIE (MODEL.SIE_CAMERA / SIE_VIEW) needs the ViT image encoder (MODEL.NAME "
                                  "'ViT-B-16'): CLIP-ReID adds it to the class token, which its ResNet has not; "
                                  "set SIE_CAMERA and SIE_VIEW False")
            rows = max(self.camera_num, 1) * max(self.view_num, 1)
            self.cv_embed = nn.Parameter(torch.zeros(rows, self.in_planes))
            trunc_normal_(self.cv_embed, std=.02)
        self.prompt_learner = PromptLearner(num_classes, prompt, spec)
        self.text_encoder = ClipTextEncoder(spec)

    def sie_embedding(self, cam_label: Optional[torch.Tensor], view_label: Optional[torch.Tensor]
                      ) -> Optional[torch.Tensor]:
        """`SIE_COE` times the side-information row of each image, as their forward indexes it."""
        if not (self.camera_num or self.view_num):
            return None
        if (self.camera_num and cam_label is None) or (self.view_num and view_label is None):
            raise ValueError("this model has SIE embeddings (MODEL.SIE_CAMERA / SIE_VIEW): pass cam_label "
                             "and/or view_label")
        if self.camera_num and self.view_num:
            index = cam_label * self.view_num + view_label
        else:
            index = cam_label if self.camera_num else view_label
        return self.sie_coe * self.cv_embed[index.to(self.cv_embed.device, torch.long)]

    def text_features(self, label: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(self.prompt_learner(label), self.prompt_learner.tokenized_prompts)

    @torch.no_grad()
    def identity_text_features(self, chunk: int) -> torch.Tensor:
        """Every identity's text feature (classes x embedding), in chunks of `chunk` prompts: stage 2's
        fixed targets of the image-to-text loss (SOLVER.STAGE2.IMS_PER_BATCH in their loop)."""
        labels = torch.arange(self.num_classes, device=self.prompt_learner.cls_ctx.device)
        return torch.cat([self.text_features(part) for part in labels.split(chunk)])

    def prompt_parameters(self) -> List[nn.Parameter]:
        """What stage 1 trains: the learnt prompt vectors alone."""
        return list(self.prompt_learner.parameters())

    def freeze_text_side(self) -> None:
        """Stage 2: the text encoder and the learnt prompts stop training, as their stage-2 optimizer sets."""
        for module in (self.text_encoder, self.prompt_learner):
            module.requires_grad_(False)

    def image_features(self, x: torch.Tensor, cam_label: Optional[torch.Tensor] = None,
                       view_label: Optional[torch.Tensor] = None
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(feature_last, feature, feature_proj): class tokens (ViT) or pooled maps (ResNet)."""
        if not self.spec.is_vit:
            x3, x4, pooled = self.image_encoder(x)
            return x3.mean(dim=(2, 3)), x4.mean(dim=(2, 3)), pooled
        last, final, projected = self.image_encoder(x, self.sie_embedding(cam_label, view_label))
        return last[:, 0], final[:, 0], projected[:, 0]

    def forward(self, x: Optional[torch.Tensor] = None, label: Optional[torch.Tensor] = None,
                cam_label: Optional[torch.Tensor] = None, view_label: Optional[torch.Tensor] = None,
                get_image: bool = False, get_text: bool = False) -> Union[torch.Tensor, TrainOutput]:
        if get_text:
            return self.text_features(label)
        if get_image:
            if not self.spec.is_vit:
                return self.image_encoder(x)[2]
            return self.image_encoder(x)[2][:, 0]
        feat_last, feat, feat_proj = self.image_features(x, cam_label, view_label)
        necked, necked_proj = self.bottleneck(feat), self.bottleneck_proj(feat_proj)
        if self.training:
            return ([self.classifier(necked), self.classifier_proj(necked_proj)],
                    [feat_last, feat, feat_proj], feat_proj)
        if self.neck_feat == 'after':
            return torch.cat([necked, necked_proj], dim=1)
        return torch.cat([feat, feat_proj], dim=1)

    def load_param(self, trained_path: str) -> None:
        """A whole trained CLIP-ReID model (theirs as train_clipreid.py saves it, or this repository's)."""
        weights.load_trained_model(self, trained_path)

    def load_param_finetune(self, model_path: str) -> None:
        """A trained model to fine-tune: with another class count, the classifiers and the learnt
        prompts (one set per identity) start afresh and everything else loads strictly."""
        state = weights.strip_module_prefix(weights.read_state_dict(model_path, weights.TRAINED_MISSING_HINT))
        own = self.state_dict()
        per_class = [key for key in PER_CLASS_KEYS if key in own]
        fresh = [] if all(key not in state or state[key].shape == own[key].shape for key in per_class) else per_class
        if fresh:
            logger.info("Class count differs from %s: its classifiers and learnt prompts start afresh", model_path)
        weights.load_state_strict(self, {key: value for key, value in state.items() if key not in fresh}, model_path,
                                  allowed_missing=fresh, fix_hint=weights.TRAINED_FIX_HINT)


def build_clipreid(cfg, num_classes: int, camera_num: int, view_num: int) -> CLIPReID:
    """CLIP-ReID for `cfg` (MODEL.NAME 'ViT-B-16' or 'RN50'); MODEL.PRETRAIN_CHOICE 'imagenet' starts
    it from OpenAI's CLIP weights at MODEL.PRETRAIN_PATH (the whole-model choices are make_model's)."""
    spec = CLIP_SPECS[cfg.MODEL.NAME]
    sie_tables = (camera_num if cfg.MODEL.SIE_CAMERA else 0, view_num if cfg.MODEL.SIE_VIEW else 0)
    model = CLIPReID(spec, num_classes, cfg.INPUT.SIZE_TRAIN, cfg.MODEL.STRIDE_SIZE,
                     prompt=prompt_text(cfg.DATASETS.NAMES), sie_tables=sie_tables, sie_coe=cfg.MODEL.SIE_COE,
                     neck_feat=cfg.TEST.NECK_FEAT)
    logger.info("Built CLIP-ReID %s (%d identities, SIE cameras %d, views %d)", cfg.MODEL.NAME, num_classes,
                *sie_tables)
    if cfg.MODEL.PRETRAIN_CHOICE == 'imagenet':
        load_clip_pretrained(model, cfg.MODEL.PRETRAIN_PATH, cfg.MODEL.NAME)
    return model
