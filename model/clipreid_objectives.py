"""CLIP-ReID's two objectives beside the ID and triplet losses, as its code computes them.

* Stage 1 (`processor_clipreid_stage1.py`): the supervised contrastive loss of its
  `loss/supcontrast.py` (temperature 1, on unnormalised features), image-to-text plus
  text-to-image, between cached image features and the text features of the same labels.
* Stage 2 (`processor_clipreid_stage2.py`, `loss/make_loss.py`): the image-to-text cross-entropy of
  each image's projected feature against the frozen text features of every identity.

Pure tensor functions, so that the training loops and the loss module share one definition.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Their SupConLoss fixes the temperature at 1.
SUPCON_TEMPERATURE = 1.0


def supervised_contrastive(anchors: torch.Tensor, contrasts: torch.Tensor, anchor_labels: torch.Tensor,
                           contrast_labels: torch.Tensor, temperature: float = SUPCON_TEMPERATURE) -> torch.Tensor:
    """Mean over anchors of -mean log p(positive), p the softmax of anchor · contrast / temperature
    over all contrasts, positives those of the anchor's label (their SupConLoss)."""
    positives = (anchor_labels.unsqueeze(1) == contrast_labels.unsqueeze(0)).to(anchors.dtype)
    logits = anchors @ contrasts.t() / temperature
    log_prob = F.log_softmax(logits, dim=1)
    return -((positives * log_prob).sum(1) / positives.sum(1)).mean()


def stage1_loss(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Stage 1's loss of a batch: image-to-text plus text-to-image contrast (row i of each is label i's)."""
    return (supervised_contrastive(image_features, text_features, labels, labels)
            + supervised_contrastive(text_features, image_features, labels, labels))


def i2t_logits(image_projections: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Stage 2's image-to-text scores: each image's projected feature against every identity's
    text feature (rows of `text_features` in label order), unnormalised as theirs."""
    return image_projections @ text_features.t()


def i2t_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Stage 2's image-to-text cross-entropy; their make_loss smooths it as the ID loss
    (`smoothing` 0.1 with MODEL.IF_LABELSMOOTH 'on': (1 - 0.1) one-hot + 0.1 / classes)."""
    return F.cross_entropy(logits, labels, label_smoothing=smoothing)
