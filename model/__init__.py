from .make_model import Backbone, ReIDModel, build_transformer, build_transformer_local, make_model
from .weights import CheckpointMismatchError, WeightsNotFoundError

__all__ = ["make_model", "ReIDModel", "Backbone", "build_transformer", "build_transformer_local",
           "CheckpointMismatchError", "WeightsNotFoundError"]
