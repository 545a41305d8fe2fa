from .lr_scheduler import WarmupMultiStepLR
from .make_optimizer import build_param_groups, make_optimizer
from .scheduler_factory import create_scheduler

__all__ = ["make_optimizer", "build_param_groups", "create_scheduler", "WarmupMultiStepLR"]
