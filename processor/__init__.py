from .processor import EvalResult, do_inference, do_train, evaluate, extract_features

__all__ = ["do_train", "do_inference", "evaluate", "extract_features", "EvalResult"]
