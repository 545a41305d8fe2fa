"""CLIP-ReID's first stage: the per-identity text prompts learnt against cached image features
(their processor/processor_clipreid_stage1.py), beside `do_train`, which is their second stage.

Their loop: the training images' projected features are computed once (test transforms, no
gradient); then each epoch (SOLVER.STAGE1.MAX_EPOCHS, the cosine schedule stepped first) draws
a random permutation of them and, batch by batch (STAGE1.IMS_PER_BATCH, the last one short), the
text features of the batch's labels, the image-to-text plus text-to-image contrastive loss, and
an optimizer step on the prompts (`cls_ctx`) alone. `<MODEL.NAME>_stage1_<epoch>.pth` holds the
model every STAGE1.CHECKPOINT_PERIOD epochs, as theirs.

As for TransReID runs, `last_checkpoint.pth` holds the state after every epoch (marked stage 1),
so MODEL.RESUME continues stage 1 exactly, then stage 2. Each epoch's permutation is drawn from
(SOLVER.SEED, epoch), so a resumed run draws what the uninterrupted one drew, and every process
of a distributed run trains the same prompts (their processes each train their own copy).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Optional, Tuple

import torch
import torch.distributed as dist

from model.clipreid_objectives import stage1_loss
from utils.device import select_device
from utils.precision import autocast
from utils.progress import Progress

from .checkpoint import Checkpointer, TrainingObjects, load_checkpoint, rng_states, state_stage
from .processor import NonFiniteLossError, amp_dtype

logger = logging.getLogger("transreid.train")

STAGE = 1


def resumes_stage1(cfg) -> bool:
    """Whether MODEL.RESUME names a state of stage 1 (stage 2 then starts afresh after it)."""
    return bool(cfg.MODEL.RESUME) and state_stage(load_checkpoint(cfg.MODEL.RESUME, mmap=True)) == STAGE


@torch.no_grad()
def cache_image_features(model: torch.nn.Module, loader, device: torch.device,
                         dtype: Optional[torch.dtype]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of every training image, in the loader's order. The model stays in
    training mode, as theirs (only RN50's batch norms differ: batch statistics)."""
    model.train()
    features, labels = [], []
    for img, pid, *_ in Progress(loader, len(loader), "stage 1: image features", logger,
                                 enabled=os.isatty(2)):
        with autocast(device, dtype):
            features.append(model(img.to(device), get_image=True).float())
        labels.append(torch.as_tensor(pid, device=device))
    return torch.cat(features), torch.cat(labels)


class PromptTrainer:
    """State of stage 1; `do_train_stage1` is its public face."""

    def __init__(self, cfg, model, optimizer, scheduler, local_rank: int) -> None:
        self.cfg, self.stage1 = cfg, cfg.SOLVER.STAGE1
        self.device = select_device(cfg.MODEL.DEVICE, local_rank)
        self.model = model.to(self.device)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.amp_dtype = amp_dtype(cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.is_main = not cfg.MODEL.DIST_TRAIN or dist.get_rank() == 0
        self.checkpointer = Checkpointer(cfg, TrainingObjects(model, optimizer, None, None, self.scaler),
                                         stage=STAGE)
        self.start_epoch = 1

    def resume(self, path: str) -> None:
        self.start_epoch = self.checkpointer.restore(path)["epoch"] + 1
        logger.info("Resumed stage 1 from %s: continuing at epoch %d of %d", path, self.start_epoch,
                    self.stage1.MAX_EPOCHS)

    def epoch_batches(self, num_images: int, epoch: int) -> Tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(self.cfg.SOLVER.SEED * 100003 + epoch)
        order = torch.randperm(num_images, generator=generator).to(self.device)
        # Theirs also steps on an empty last batch when the count divides evenly (Adam then
        # moves the prompts by its momentum alone); not here.
        return order.split(self.stage1.IMS_PER_BATCH)

    def train_step(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp_dtype):
            text = self.model(label=labels, get_text=True)
        loss = stage1_loss(features, text.float(), labels)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def train_epoch(self, epoch: int, features: torch.Tensor, labels: torch.Tensor) -> float:
        self.scheduler.step(epoch)
        self.model.train()
        total, count = torch.zeros((), device=self.device), 0
        batches = self.epoch_batches(len(labels), epoch)
        for n_iter, batch in enumerate(batches, start=1):
            total += self.train_step(features[batch], labels[batch]) * len(batch)
            count += len(batch)
            if n_iter % self.stage1.LOG_PERIOD == 0:
                self._log(epoch, f"Iteration[{n_iter}/{len(batches)}] ", total.item() / count)
        loss = total.item() / max(count, 1)
        self._log(epoch, "done. ", loss)
        return loss

    def _log(self, epoch: int, where: str, loss: float) -> None:
        if loss != loss or loss in (float('inf'), float('-inf')):
            raise NonFiniteLossError(f"stage 1's loss became non-finite in epoch {epoch}; lower "
                                     f"SOLVER.STAGE1.BASE_LR or resume from {self.checkpointer.last_path}")
        logger.info("Stage 1 epoch[%d] %sLoss: %.3f, Base Lr: %.2e", epoch, where, loss,
                    self.scheduler._get_lr(epoch)[0])

    def run(self, loader, resume: str = "") -> None:
        start = time.perf_counter()
        # Before a resume restores the weights: the caching pass moves RN50's running
        # statistics, and the saved state holds them as they were after it.
        features, labels = cache_image_features(self.model, loader, self.device, self.amp_dtype)
        logger.info("stage 1: %d image features cached in %.1f s", len(labels), time.perf_counter() - start)
        if resume:
            self.resume(resume)
        max_epochs = self.stage1.MAX_EPOCHS
        with self.checkpointer:
            for epoch in range(self.start_epoch, max_epochs + 1):
                self.checkpointer.check()
                self.train_epoch(epoch, features, labels)
                if self.is_main:
                    if epoch % self.stage1.CHECKPOINT_PERIOD == 0 or epoch == max_epochs:
                        self.checkpointer.save_weights(f"stage1_{epoch}")
                    self.checkpointer.save_state(epoch, -1.0, [rng_states(self.device)])
        logger.info("Stage 1 running time: %.1f s", time.perf_counter() - start)


def do_train_stage1(cfg, model, train_loader_stage1, optimizer, scheduler, local_rank: int) -> None:
    """Learn the prompts of `model` (their signature); resumes when MODEL.RESUME is a stage-1
    state. `train_loader_stage1` yields the training images with the test transforms."""
    trainer = PromptTrainer(cfg, model, optimizer, scheduler, local_rank)
    model.prompt_learner.requires_grad_(True)
    try:
        trainer.run(train_loader_stage1, cfg.MODEL.RESUME if resumes_stage1(cfg) else "")
    finally:
        model.prompt_learner.requires_grad_(False)
    if cfg.MODEL.DIST_TRAIN:  # one set of prompts, whatever each GPU's rounding did
        dist.broadcast(model.prompt_learner.cls_ctx.data, src=0)
