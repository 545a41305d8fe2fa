"""The learning-rate schedule of a config."""
from __future__ import annotations

import logging
from typing import Union

import torch
from timm.scheduler import CosineLRScheduler

from .lr_scheduler import WarmupMultiStepLR

logger = logging.getLogger("transreid.solver")

# The reference's cosine settings ("type 2" in its scheduler_factory), relative to BASE_LR.
COSINE_LR_MIN_FACTOR = 0.002
COSINE_WARMUP_LR_INIT_FACTOR = 0.01

LRScheduler = Union[CosineLRScheduler, WarmupMultiStepLR]


def _cosine_scheduler(cfg, optimizer: torch.optim.Optimizer) -> CosineLRScheduler:
    """Linear warm-up from 0.01 × BASE_LR over WARMUP_EPOCHS, then one cosine cycle of
    MAX_EPOCHS down to 0.002 × BASE_LR, stepped per epoch.

    warmup_prefix=False as the reference: the cosine is indexed by the absolute epoch, so it
    takes over at cos(π · WARMUP_EPOCHS / MAX_EPOCHS) rather than restarting at its peak.
    """
    base_lr = cfg.SOLVER.BASE_LR
    return CosineLRScheduler(
        optimizer,
        t_initial=cfg.SOLVER.MAX_EPOCHS,
        lr_min=COSINE_LR_MIN_FACTOR * base_lr,
        cycle_mul=1.0,
        cycle_limit=1,
        warmup_t=cfg.SOLVER.WARMUP_EPOCHS,
        warmup_lr_init=COSINE_WARMUP_LR_INIT_FACTOR * base_lr,
        warmup_prefix=False,
        t_in_epochs=True,
        noise_range_t=None,
    )


def _multistep_scheduler(cfg, optimizer: torch.optim.Optimizer) -> WarmupMultiStepLR:
    solver = cfg.SOLVER
    return WarmupMultiStepLR(optimizer, milestones=solver.STEPS, gamma=solver.GAMMA,
                             warmup_factor=solver.WARMUP_FACTOR,
                             warmup_epochs=solver.WARMUP_EPOCHS,
                             warmup_method=solver.WARMUP_METHOD)


def create_scheduler(cfg, optimizer: torch.optim.Optimizer) -> LRScheduler:
    """Cosine with warm-up for the transformers (the reference's schedule) and, for the
    ResNet-50 baseline, WarmupMultiStepLR on SOLVER.STEPS (the reference uses the cosine for
    every model and leaves STEPS, GAMMA and WARMUP_FACTOR unused).

    Both are driven the same way: `scheduler.step(epoch)` at the start of each epoch (counted
    from 1), `scheduler._get_lr(epoch)` for the logged values, and `state_dict()` /
    `load_state_dict()` in checkpoints.
    """
    if cfg.MODEL.NAME == 'resnet50':
        scheduler = _multistep_scheduler(cfg, optimizer)
        logger.info("learning rate: warm-up multi-step, milestones %s, gamma %g",
                    list(cfg.SOLVER.STEPS), cfg.SOLVER.GAMMA)
    else:
        scheduler = _cosine_scheduler(cfg, optimizer)
        logger.info("learning rate: cosine over %d epochs after %d warm-up epochs",
                    cfg.SOLVER.MAX_EPOCHS, cfg.SOLVER.WARMUP_EPOCHS)
    return scheduler
