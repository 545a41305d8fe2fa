"""Where to get the pre-trained weights of each backbone, for the message of a missing file.

ImageNet files are the reference README's links; TransReID-SSL's LUPerson checkpoints (its
README's Google Drive links, docs/ssl.md) depend on the stem as well as on the backbone: the ICS
checkpoints hold the convolution stem (MODEL.STEM_CONV), the plain ViT-S does not.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Tuple

FROM_SCRATCH_HINT = "or set MODEL.PRETRAIN_CHOICE none to train from scratch"

# Backbone -> (ImageNet file, the timm name of the same weights or '').
IMAGENET_SOURCES: Dict[str, Tuple[str, str]] = {
    'vit_base_patch16_224_TransReID': (
        'https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-vitjx/'
        'jx_vit_base_p16_224-80ecf9dd.pth', 'timm:vit_base_patch16_224.orig_in21k_ft_in1k'),
    'deit_base_patch16_224_TransReID': (
        'https://dl.fbaipublicfiles.com/deit/deit_base_distilled_patch16_224-df68dfff.pth',
        'timm:deit_base_distilled_patch16_224.fb_in1k'),
    'vit_small_patch16_224_TransReID': (
        'https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/'
        'vit_small_p16_224-15ec54c9.pth', ''),
    'deit_small_patch16_224_TransReID': (
        'https://dl.fbaipublicfiles.com/deit/deit_small_distilled_patch16_224-649709d9.pth',
        'timm:deit_small_distilled_patch16_224.fb_in1k'),
    'deit_tiny_patch16_224_TransReID': (
        'https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth',
        'timm:deit_tiny_patch16_224.fb_in1k'),
    'resnet50': ('https://download.pytorch.org/models/resnet50-19c8e357.pth', 'timm:resnet50.tv_in1k'),
}


class SSLCheckpoint(NamedTuple):
    model: str  # as TransReID-SSL's README names it
    file: str  # the name its configs (and the ones here) give the file
    url: str


# (backbone, with the ICS stem) -> TransReID-SSL's checkpoint for it.
SSL_SOURCES: Dict[Tuple[str, bool], SSLCheckpoint] = {
    ('vit_small_ssl_patch16_224_TransReID', False): SSLCheckpoint(
        'ViT-S/16', 'vit_small_cfs_lup.pth',
        'https://drive.google.com/file/d/1ODxA7mJv17UfzwfXtY9dTWNsYghoNWGB/view'),
    ('vit_small_ssl_patch16_224_TransReID', True): SSLCheckpoint(
        'ViT-S/16+ICS', 'vit_small_ics_cfs_lup.pth',
        'https://drive.google.com/file/d/18FL9JaJNlo15-UksalcJRXX-0dgo4Mz4/view'),
    ('vit_base_patch16_224_TransReID', True): SSLCheckpoint(
        'ViT-B/16+ICS', 'vit_base_ics_cfs_lup.pth',
        'https://drive.google.com/file/d/1ZFMCBZ-lNFMeBD5K8PtJYJfYEk5D9isd/view'),
}


def _ssl_hint(checkpoint: SSLCheckpoint) -> str:
    return (f"download TransReID-SSL's {checkpoint.model} LUPerson checkpoint ({checkpoint.file}) from "
            f"{checkpoint.url} into pretrained/ and set MODEL.PRETRAIN_PATH to it (docs/ssl.md), "
            f"{FROM_SCRATCH_HINT}")


def _no_stem_weights_hint(backbone_name: str) -> str:
    published = ', '.join(f"{checkpoint.model} ({name})" for (name, stem), checkpoint in SSL_SOURCES.items()
                          if stem)
    return (f"no published weights fit {backbone_name} with the ICS stem (MODEL.STEM_CONV True); TransReID-SSL "
            f"publishes {published} (docs/ssl.md): point MODEL.PRETRAIN_PATH at weights of your own, set "
            f"MODEL.STEM_CONV False for ImageNet weights, {FROM_SCRATCH_HINT}")


def download_hint(backbone_name: str, stem_conv: bool = False) -> str:
    """Where to get pre-trained weights for `backbone_name` (a TRANSFORMER_TYPE or 'resnet50')
    with or without the ICS stem."""
    if (backbone_name, stem_conv) in SSL_SOURCES:
        return _ssl_hint(SSL_SOURCES[backbone_name, stem_conv])
    if stem_conv:
        return _no_stem_weights_hint(backbone_name)
    url, timm_name = IMAGENET_SOURCES.get(backbone_name, (None, ''))
    if url is None:
        return f"point MODEL.PRETRAIN_PATH at ImageNet weights for {backbone_name}, {FROM_SCRATCH_HINT}"
    timm_hint = f", or set MODEL.PRETRAIN_PATH {timm_name} (needs internet)" if timm_name else ''
    return (f"download {url} into pretrained/ and set MODEL.PRETRAIN_PATH to it{timm_hint}, "
            f"{FROM_SCRATCH_HINT}")
