"""Optimizers of the model and of the center-loss centres."""
from __future__ import annotations

import inspect
import logging
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from config import check_choice
from config.choices import OPTIMIZERS
from utils.device import uses_gpu

logger = logging.getLogger("transreid.solver")

# Every identity classifier of the models: `classifier` and JPM's `classifier_1..P`.
CLASSIFIER_NAME = 'classifier'
# Options that choose the update kernels: the same update, a different implementation.
KERNEL_OPTIONS = ('foreach', 'fused')


def parameter_settings(cfg, name: str) -> Tuple[float, float]:
    """(learning rate, weight decay) of the parameter called `name`, by the reference's rules:
    biases get BASE_LR × BIAS_LR_FACTOR and WEIGHT_DECAY_BIAS; with LARGE_FC_LR the classifier
    layers get 2 × BASE_LR (their biases keep WEIGHT_DECAY_BIAS)."""
    solver = cfg.SOLVER
    lr, weight_decay = solver.BASE_LR, solver.WEIGHT_DECAY
    if "bias" in name:
        lr, weight_decay = solver.BASE_LR * solver.BIAS_LR_FACTOR, solver.WEIGHT_DECAY_BIAS
    if solver.LARGE_FC_LR and CLASSIFIER_NAME in name:
        lr = solver.BASE_LR * 2
    return lr, weight_decay


def build_param_groups(cfg, model: nn.Module) -> List[Dict[str, Any]]:
    """One param group per distinct (lr, weight_decay), in order of first appearance, each
    listing its trainable tensors in model order; frozen tensors are left out.

    The reference makes one group per tensor; the update is the same, but hundreds of groups
    make every optimizer step loop in Python.
    """
    grouped: Dict[Tuple[float, float], List[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            grouped.setdefault(parameter_settings(cfg, name), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": weight_decay}
            for (lr, weight_decay), params in grouped.items()]


def kernel_devices() -> Tuple[List[str], List[str]]:
    """(device types with fused optimizer kernels, with multi-tensor foreach kernels) in this torch."""
    try:
        from torch.utils._foreach_utils import (_get_foreach_kernels_supported_devices,
                                                _get_fused_kernels_supported_devices)
    except ImportError:  # torch moved its private helpers: CUDA has both in every recent torch
        return ['cuda'], ['cuda']
    return _get_fused_kernels_supported_devices(), _get_foreach_kernels_supported_devices()


def kernel_options(optimizer_class: type, device_type: str) -> Dict[str, bool]:
    """The fastest update kernels that `optimizer_class` offers on `device_type`: `fused=True`
    (one kernel per step) where torch has fused kernels for that device, else `foreach=True`
    (multi-tensor ops) where it has foreach kernels for it, else nothing: torch's per-tensor loop.

    The CPU keeps the loop. torch has no foreach kernels for it (foreach measured slower than
    the loop there), and its CPU fused kernels, though faster, round differently from the loop,
    which Adam's normalised step amplifies on parameters whose gradient is rounding noise (biases
    before a BN neck): CPU runs would no longer repeat those of earlier versions.
    """
    accepted = inspect.signature(optimizer_class).parameters
    fused_devices, foreach_devices = kernel_devices()
    if 'fused' in accepted and device_type in fused_devices and device_type != 'cpu':
        return {'fused': True}
    if 'foreach' in accepted and device_type in foreach_devices:
        return {'foreach': True}
    return {}


def optimizer_class_and_defaults(cfg) -> Tuple[type, Dict[str, Any]]:
    name = check_choice('SOLVER.OPTIMIZER_NAME', cfg.SOLVER.OPTIMIZER_NAME, OPTIMIZERS)
    optimizer_class = getattr(torch.optim, name)
    defaults: Dict[str, Any] = {"lr": cfg.SOLVER.BASE_LR}
    if name == 'SGD':
        defaults["momentum"] = cfg.SOLVER.MOMENTUM
    # The model is on the CPU here and moves to MODEL.DEVICE later: decide by the config.
    defaults.update(kernel_options(optimizer_class, 'cuda' if uses_gpu(cfg.MODEL.DEVICE) else 'cpu'))
    return optimizer_class, defaults


def keep_kernel_choice(optimizer: torch.optim.Optimizer, state_dict: Dict[str, Any]) -> Dict[str, Any]:
    """load_state_dict pre-hook: a checkpoint's param groups carry the kernel options of the run
    that wrote it (on another device, or by an older version), which would replace this run's;
    keep this run's."""
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups):
        return state_dict  # load_state_dict reports the mismatch
    state_dict["param_groups"] = [
        {**saved, **{key: current[key] for key in KERNEL_OPTIONS if key in current}}
        for saved, current in zip(saved_groups, optimizer.param_groups)]
    return state_dict


def make_optimizer(cfg, model: nn.Module,
                   center_criterion: nn.Module) -> Tuple[torch.optim.Optimizer, torch.optim.SGD]:
    """`(optimizer, optimizer_center)`: SOLVER.OPTIMIZER_NAME over the model's trainable
    parameters, and plain SGD at SOLVER.CENTER_LR over the center-loss centres."""
    optimizer_class, defaults = optimizer_class_and_defaults(cfg)
    param_groups = build_param_groups(cfg, model)
    optimizer = optimizer_class(param_groups, **defaults)
    optimizer.register_load_state_dict_pre_hook(keep_kernel_choice)
    settings = ", ".join(f"({group['lr']:g}, {group['weight_decay']:g})" for group in param_groups)
    kernels = ", ".join(key for key in KERNEL_OPTIONS if defaults.get(key)) or "default"
    logger.info("%s (%s kernels) over %d parameter tensors in %d groups (lr, weight decay): %s",
                optimizer_class.__name__, kernels, sum(len(group["params"]) for group in param_groups),
                len(param_groups), settings)
    optimizer_center = torch.optim.SGD(center_criterion.parameters(), lr=cfg.SOLVER.CENTER_LR)
    return optimizer, optimizer_center


def make_optimizer_1stage(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """CLIP-ReID's stage-1 optimizer (their name): SOLVER.STAGE1.OPTIMIZER_NAME over the learnt
    prompts alone, at STAGE1.BASE_LR and STAGE1.WEIGHT_DECAY."""
    stage1 = cfg.SOLVER.STAGE1
    name = check_choice('SOLVER.STAGE1.OPTIMIZER_NAME', stage1.OPTIMIZER_NAME, OPTIMIZERS)
    optimizer_class = getattr(torch.optim, name)
    defaults: Dict[str, Any] = {"lr": stage1.BASE_LR}
    if name == 'SGD':
        defaults["momentum"] = stage1.MOMENTUM
    defaults.update(kernel_options(optimizer_class, 'cuda' if uses_gpu(cfg.MODEL.DEVICE) else 'cpu'))
    group = {"params": model.prompt_parameters(), "lr": stage1.BASE_LR, "weight_decay": stage1.WEIGHT_DECAY}
    logger.info("stage 1: %s over the learnt prompts, lr %g, weight decay %g", name, stage1.BASE_LR,
                stage1.WEIGHT_DECAY)
    return optimizer_class([group], **defaults)
