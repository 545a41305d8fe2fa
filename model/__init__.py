from .make_model import (Backbone, ReIDModel, build_transformer, build_transformer_local, build_transformer_pass,
                         make_model)
from .weights import CheckpointMismatchError, WeightsNotFoundError

__all__ = ["make_model", "ReIDModel", "Backbone", "build_transformer", "build_transformer_local",
           "build_transformer_pass", "CheckpointMismatchError", "WeightsNotFoundError"]
