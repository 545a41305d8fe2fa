"""The learning-rate schedule of a config."""
from __future__ import annotations

import logging
from typing import List, Union

import torch
from timm.scheduler import CosineLRScheduler

from .lr_scheduler import WarmupMultiStepLR
from config.choices import UNLABELLED_MODES
from config.stages import is_clipreid

logger = logging.getLogger("transreid.solver")

# The reference's cosine settings ("type 2" in its scheduler_factory), relative to BASE_LR.
COSINE_LR_MIN_FACTOR = 0.002
COSINE_WARMUP_LR_INIT_FACTOR = 0.01



class EpochEndCosineLRScheduler(CosineLRScheduler):
    """TransReID-SSL's schedule (SOLVER.WARMUP_METHOD 'cosine'): the reference's cosine, stepped
    at the end of each epoch instead of its start.

    TransReID-SSL calls `scheduler.step(epoch)` after epoch `epoch`, so epoch 1 trains at the
    warm-up's first value and epoch e at the cosine's value for e - 1. The trainer here steps at
    the start of each epoch, hence the shift by one: `_get_lr(e)` is the learning rate that epoch
    e trains with, in both repositories. (TransReID-SSL logs `_get_lr(e)`, one epoch ahead of the
    rate in use; the log here shows the rate in use.)
    """

    def _get_lr(self, t: int) -> List[float]:
        return super()._get_lr(max(t - 1, 0))


LRScheduler = Union[CosineLRScheduler, WarmupMultiStepLR]


def _cosine_scheduler(cfg, optimizer: torch.optim.Optimizer, epoch_end: bool = False) -> CosineLRScheduler:
    """Linear warm-up from 0.01 × BASE_LR over WARMUP_EPOCHS, then one cosine cycle of
    MAX_EPOCHS down to 0.002 × BASE_LR, stepped per epoch.

    warmup_prefix=False as the reference: the cosine is indexed by the absolute epoch, so it
    takes over at cos(π · WARMUP_EPOCHS / MAX_EPOCHS) rather than restarting at its peak.
    """
    base_lr = cfg.SOLVER.BASE_LR
    scheduler_class = EpochEndCosineLRScheduler if epoch_end else CosineLRScheduler
    return scheduler_class(
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
    ResNet-50 baseline and training without labels, WarmupMultiStepLR on SOLVER.STEPS (the reference uses the cosine for
    every model and leaves STEPS, GAMMA and WARMUP_FACTOR unused). SOLVER.WARMUP_METHOD 'cosine'
    (TransReID-SSL's configs) gives its cosine, one epoch later, for any model.

    Both are driven the same way: `scheduler.step(epoch)` at the start of each epoch (counted
    from 1), `scheduler._get_lr(epoch)` for the logged values, and `state_dict()` /
    `load_state_dict()` in checkpoints.
    """
    if cfg.SOLVER.WARMUP_METHOD == 'cosine':
        # TransReID-SSL: 'cosine' picks its cosine schedule for any model.
        scheduler = _cosine_scheduler(cfg, optimizer, epoch_end=True)
        logger.info("learning rate: TransReID-SSL's cosine over %d epochs after %d warm-up epochs, "
                    "stepped at the end of each epoch", cfg.SOLVER.MAX_EPOCHS, cfg.SOLVER.WARMUP_EPOCHS)
    elif cfg.MODEL.NAME == 'resnet50' or cfg.MODEL.TRAIN_MODE in UNLABELLED_MODES or is_clipreid(cfg):
        # cluster-contrast's recipe: StepLR (x GAMMA every 20 epochs: STEPS (21, 41), epochs
        # counted from 1) for any model; CLIP-ReID's stage 2 (SOLVER.STAGE2.* copied here)
        scheduler = _multistep_scheduler(cfg, optimizer)
        logger.info("learning rate: warm-up multi-step, milestones %s, gamma %g",
                    list(cfg.SOLVER.STEPS), cfg.SOLVER.GAMMA)
    else:
        scheduler = _cosine_scheduler(cfg, optimizer)
        logger.info("learning rate: cosine over %d epochs after %d warm-up epochs",
                    cfg.SOLVER.MAX_EPOCHS, cfg.SOLVER.WARMUP_EPOCHS)
    return scheduler


def create_scheduler_1stage(cfg, optimizer: torch.optim.Optimizer) -> CosineLRScheduler:
    """CLIP-ReID's stage-1 schedule (their create_scheduler): linear warm-up from
    STAGE1.WARMUP_LR_INIT over STAGE1.WARMUP_EPOCHS, then one cosine cycle of STAGE1.MAX_EPOCHS
    down to STAGE1.LR_MIN, indexed by the absolute epoch, stepped at the start of each epoch."""
    stage1 = cfg.SOLVER.STAGE1
    return CosineLRScheduler(optimizer, t_initial=stage1.MAX_EPOCHS, lr_min=stage1.LR_MIN, cycle_mul=1.0,
                             cycle_decay=0.1, cycle_limit=1, warmup_t=stage1.WARMUP_EPOCHS,
                             warmup_lr_init=stage1.WARMUP_LR_INIT, warmup_prefix=False, t_in_epochs=True,
                             noise_range_t=None)
