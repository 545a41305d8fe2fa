from .resnet import ResNet
from .specs import RESNET50_FEATURE_DIM, VIT_SPECS, feature_dim, model_name, vit_spec
from .vit_pytorch import TransReID, create_vit

__all__ = ["ResNet", "TransReID", "create_vit", "VIT_SPECS", "RESNET50_FEATURE_DIM", "feature_dim",
           "model_name", "vit_spec"]
