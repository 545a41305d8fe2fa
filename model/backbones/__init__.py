from .resnet import ResNet
from .specs import RESNET50_FEATURE_DIM, VIT_SPECS, feature_dim, model_name, vit_spec
from .vit_pytorch import TransReID, create_vit
from .vit_pass import PASSTransReID, create_pass_vit

__all__ = ["ResNet", "TransReID", "create_vit", "PASSTransReID", "create_pass_vit", "VIT_SPECS",
           "RESNET50_FEATURE_DIM", "feature_dim", "model_name", "vit_spec"]
