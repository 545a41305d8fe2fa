from utils.metrics import EvalResult

from .evaluation import distance_matrix, evaluate, make_evaluator
from .inference import FeatureExtractor
from .processor import do_inference, do_train

__all__ = ["do_train", "do_inference", "evaluate", "make_evaluator", "distance_matrix", "FeatureExtractor",
           "EvalResult"]
