from .center_loss import CenterLoss
from .make_loss import ReIDLoss, make_loss
from .softmax_loss import CrossEntropyLabelSmooth
from .triplet_loss import TripletLoss, euclidean_dist, hard_example_mining

__all__ = ["make_loss", "ReIDLoss", "CrossEntropyLabelSmooth", "TripletLoss", "CenterLoss",
           "euclidean_dist", "hard_example_mining"]
