from .center_loss import CenterLoss
from .make_loss import LOSS_PARTS, ReIDLoss, make_loss
from .softmax_loss import CrossEntropyLabelSmooth
from .triplet_loss import TripletLoss, euclidean_dist, hard_example_mining

__all__ = ["make_loss", "ReIDLoss", "LOSS_PARTS", "CrossEntropyLabelSmooth", "TripletLoss", "CenterLoss",
           "euclidean_dist", "hard_example_mining"]
