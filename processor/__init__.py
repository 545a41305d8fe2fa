from utils.metrics import EvalResult

from .inference import FeatureExtractor, distance_matrix, evaluate, make_evaluator
from .processor import do_inference, do_train

__all__ = ["do_train", "do_inference", "evaluate", "make_evaluator", "distance_matrix", "FeatureExtractor",
           "EvalResult"]
