"""What the training loop logs and guards, kept on the device so that no step waits for the host.

Reading a CUDA tensor on the host (`.item()`, `.tolist()`, `if tensor:`) waits until the GPU has
finished every queued kernel, so the CPU can no longer run ahead and queue the next step. The
training step therefore only adds to device tensors; `StepStats.read` is the one read, every
SOLVER.LOG_PERIOD iterations and at the end of an epoch.

A non-finite loss must still never reach the weights. The step cannot look at the loss, so it
decides on the device: from the first step whose loss is non-finite on, every update is skipped
(`skip_updates_if`), the step and its loss are recorded here, and the next read stops training
naming them. Without loss scaling (bf16, fp32) a non-finite gradient is recorded and stopped on
alike; with fp16's GradScaler it is the ordinary overflow that the scaler skips and answers by
halving the scale, not a fault.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import torch

NON_FINITE_LOSS, NON_FINITE_GRADIENT = 1, 2


@dataclass(frozen=True)
class Fault:
    """The first step whose loss (or, unscaled, gradient) was not finite."""
    kind: int
    epoch: int
    iteration: int
    loss: float

    def describe(self) -> str:
        where = f"at epoch {self.epoch}, iteration {self.iteration}"
        if self.kind == NON_FINITE_LOSS:
            return f"loss is {self.loss} {where}"
        return f"a gradient is not finite {where} (loss {self.loss}, no loss scaling to lower)"


@dataclass(frozen=True)
class Reading:
    """Means since the epoch started (loss and its parts weighted by images, accuracy by
    steps); `parts` are the loss's unweighted terms by name (`ReIDLoss.last_parts`)."""
    loss: float
    accuracy: float
    fault: Optional[Fault]
    parts: Dict[str, float] = field(default_factory=dict)


class StepStats:
    """Device-side sums of loss and accuracy, and the first `Fault` of the epoch."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start_epoch()

    def _zero(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.zeros((), dtype=dtype, device=self.device)

    def start_epoch(self) -> None:
        self.loss_sum, self.accuracy_sum = self._zero(), self._zero()
        self.part_sums: Dict[str, torch.Tensor] = {}
        self.images = self.steps = 0  # host counts: batch sizes are known there
        self.fault_kind, self.fault_epoch, self.fault_iteration = (
            self._zero(torch.int64), self._zero(torch.int64), self._zero(torch.int64))
        self.fault_loss = self._zero()

    @property
    def halted(self) -> torch.Tensor:
        """Device bool: a fault was recorded, so no update may happen until the read stops."""
        return self.fault_kind != 0

    def add(self, loss: torch.Tensor, accuracy: torch.Tensor, batch_size: int,
            parts: Optional[Dict[str, torch.Tensor]] = None) -> None:
        self.loss_sum += loss.detach().float() * batch_size
        for name, part in (parts or {}).items():
            self.part_sums[name] = self.part_sums.get(name, self._zero()) + part.detach().float() * batch_size
        self.accuracy_sum += accuracy.detach().float()
        self.images += batch_size
        self.steps += 1

    def record(self, faulty: torch.Tensor, kind: int, loss: torch.Tensor, epoch: int,
               iteration: int) -> None:
        """Record (device bool) `faulty` as a fault of `kind` unless one is recorded already."""
        first = faulty & ~self.halted
        # Python scalars as torch.where operands go to the kernel as arguments: no copy to the GPU.
        self.fault_kind = torch.where(first, kind, self.fault_kind)
        self.fault_epoch = torch.where(first, epoch, self.fault_epoch)
        self.fault_iteration = torch.where(first, iteration, self.fault_iteration)
        self.fault_loss = torch.where(first, loss.detach().float(), self.fault_loss)

    def read(self) -> Reading:
        """The one host read (a device sync) of everything above."""
        names = sorted(self.part_sums)
        values = torch.stack([t.double() for t in (
            self.loss_sum, self.accuracy_sum, self.fault_kind, self.fault_epoch,
            self.fault_iteration, self.fault_loss, *(self.part_sums[n] for n in names))]).tolist()
        loss_sum, accuracy_sum, kind, epoch, iteration, fault_loss, *part_sums = values
        fault = Fault(int(kind), int(epoch), int(iteration), fault_loss) if kind else None
        images = max(self.images, 1)
        return Reading(loss_sum / images, accuracy_sum / max(self.steps, 1), fault,
                       {name: total / images for name, total in zip(names, part_sums)})


def loss_gate(loss: torch.Tensor, halted: torch.Tensor) -> torch.Tensor:
    """1 where the step may update, NaN where it may not (this loss, or an earlier one, is not
    finite). The loss is multiplied by it before backward: x1 changes no bit, and NaN makes
    every gradient downstream NaN, so that the gradient checks below (and fp16's GradScaler,
    and under DDP every other rank through the all-reduce) skip the update too."""
    blocked = halted | ~torch.isfinite(loss.detach())
    return torch.where(blocked, float("nan"), 1.0)


def gradients(optimizer: torch.optim.Optimizer) -> List[torch.Tensor]:
    return [param.grad for group in optimizer.param_groups for param in group["params"]
            if param.grad is not None]


def any_non_finite(tensors: Iterable[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Device bool: some element of `tensors` is inf or NaN. GradScaler's own multi-tensor
    check (here with a scale of 1), exact and one pass, where a norm could overflow."""
    found = torch.zeros((), dtype=torch.float32, device=device)
    one = torch.ones((), dtype=torch.float32, device=device)
    groups: Dict[Tuple[torch.device, torch.dtype], List[torch.Tensor]]
    groups = collections.defaultdict(list)
    for tensor in tensors:
        groups[(tensor.device, tensor.dtype)].append(tensor)
    for grouped in groups.values():
        torch._amp_foreach_non_finite_check_and_unscale_(grouped, found, one)
    return found > 0


def _skips_by_zero_gradient(optimizer: torch.optim.Optimizer) -> bool:
    """Plain SGD (no momentum, weight decay or maximize) keeps a parameter exactly when its
    gradient is 0: the center-loss optimizer."""
    return type(optimizer) is torch.optim.SGD and all(
        not group["momentum"] and not group["weight_decay"] and not group.get("maximize")
        for group in optimizer.param_groups)


def skip_updates_if(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """`optimizer.step()` unless the device bool `skip`, decided without reading it on the host
    where the optimizer allows:

    * fused optimizers (Adam, AdamW, SGD on CUDA here) take the flag into their kernel, as they
      take GradScaler's (`found_inf`; their step counts are rolled back too);
    * plain SGD steps with gradients zeroed where `skip`;
    * any other optimizer reads `skip` on the host: free on the CPU, one sync on CUDA, which is
      what GradScaler does for such optimizers as well.
    """
    if getattr(optimizer, "_step_supports_amp_scaling", False):
        optimizer.grad_scale, optimizer.found_inf = None, skip.float()
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
    elif _skips_by_zero_gradient(optimizer):
        for grad in gradients(optimizer):
            grad.copy_(torch.where(skip, 0.0, grad))
        optimizer.step()
    elif not skip.item():
        optimizer.step()
