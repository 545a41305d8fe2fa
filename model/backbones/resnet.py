"""ResNet-50 backbone of the strong-baseline (`MODEL.NAME resnet50`), on torchvision's ResNet."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet as TorchvisionResNet

from .. import weights

RESNET50_LAYERS = (3, 4, 6, 3)


class ResNet(TorchvisionResNet):
    """torchvision's ResNet without its pooling and classifier, returning the last feature map.

    `last_stride` 1 keeps layer4 at the resolution of layer3 (16x downsampling instead of 32x).
    The stem is the reference's: no ReLU after `bn1` and a 2x2 max-pool, so that its trained
    ResNet checkpoints give the same features; parameter names are torchvision's (and the reference's).
    """

    def __init__(self, last_stride: int = 1, layers=RESNET50_LAYERS) -> None:
        super().__init__(Bottleneck, list(layers))
        self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2, padding=0)
        del self.avgpool, self.fc
        first_block = self.layer4[0]
        first_block.conv2.stride = (last_stride, last_stride)
        first_block.downsample[0].stride = (last_stride, last_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def load_param(self, source: str) -> None:
        """ImageNet initialisation from a torchvision ResNet-50 file or `timm:<model name>`."""
        weights.load_imagenet_resnet(self, source)
