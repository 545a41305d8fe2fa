"""Multi-step learning rate with warm-up, for the ResNet-50 baseline."""
from __future__ import annotations

from bisect import bisect_right
from typing import List, Sequence

import torch
from timm.scheduler.scheduler import Scheduler

from config import check_choice
from config.choices import MULTISTEP_WARMUP_METHODS



class WarmupMultiStepLR(Scheduler):
    """lr(t) = base_lr × warm-up(t) × gamma ** (number of milestones ≤ t).

    During the first `warmup_epochs` epochs, warm-up(t) is `warmup_factor` ('constant') or
    rises linearly from `warmup_factor` at t = 0 towards 1 ('linear'); afterwards it is 1.
    These are the values of the reid-strong-baseline scheduler the reference carries.

    Built on timm's Scheduler so that it is driven exactly like the cosine schedule:
    `step(epoch)` sets the epoch's learning rate, `_get_lr(epoch)` returns it per param group,
    and `state_dict()` holds plain numbers that a weights_only checkpoint stores.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: Sequence[int],
                 gamma: float = 0.1, warmup_factor: float = 0.01, warmup_epochs: int = 5,
                 warmup_method: str = 'linear') -> None:
        milestones = [int(m) for m in milestones]
        if milestones != sorted(milestones):
            raise ValueError(f"SOLVER.STEPS must be increasing epochs, got {milestones}")
        check_choice('SOLVER.WARMUP_METHOD', warmup_method, MULTISTEP_WARMUP_METHODS)
        super().__init__(optimizer, param_group_field="lr")
        self.milestones = milestones
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_epochs = warmup_epochs
        self.warmup_method = warmup_method
        self.update_groups(self._get_lr(0))

    def _warmup_multiplier(self, t: int) -> float:
        if t >= self.warmup_epochs:
            return 1.0
        if self.warmup_method == 'constant':
            return self.warmup_factor
        alpha = t / self.warmup_epochs
        return self.warmup_factor * (1 - alpha) + alpha

    def _get_lr(self, t: int) -> List[float]:
        multiplier = self._warmup_multiplier(t) * self.gamma ** bisect_right(self.milestones, t)
        return [base_lr * multiplier for base_lr in self.base_values]
