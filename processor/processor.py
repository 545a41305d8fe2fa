"""Training and evaluation loops: `do_train` and `do_inference`, as the reference names them."""
from __future__ import annotations

import logging
import os
import time
from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from datasets import set_train_epoch
from datasets.device_augment import DeviceAugment
from .compiled import CompiledForward, compile_enabled
from loss.cluster_contrast import ClusterContrast
from utils.device import select_device
from utils.errors import UserError
from utils.metrics import EvalResult
from utils.precision import AMP_DTYPES, autocast
from utils.progress import Progress
from utils.seed import set_seed

from .checkpoint import Checkpointer, TrainingObjects, restore_rng_states, rng_states, unwrap
from .dist_watchdog import start_watchdog
from .evaluation import evaluate, evaluate_features, log_result
from .inference import FeatureExtractor
from .run_log import MetricsLog
from .step_stats import (NON_FINITE_GRADIENT, NON_FINITE_LOSS, Reading, StepStats, any_non_finite,
                         gradients, loss_gate, skip_updates_if)


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss (or, without loss scaling, a gradient) became NaN or infinite; no update from
    that step on reached the weights."""


def amp_dtype(cfg, device: torch.device) -> Optional[torch.dtype]:
    """Mixed-precision dtype on CUDA per SOLVER.AMP_DTYPE (checked by load_config); None (full
    precision) elsewhere."""
    return AMP_DTYPES[cfg.SOLVER.AMP_DTYPE] if device.type == 'cuda' else None


def do_inference(cfg, model: torch.nn.Module, val_loader, num_query: int,
                 title: str = "Validation Results", verification: bool = False) -> EvalResult:
    """Evaluate `model` on a query-then-gallery loader and log mAP, CMC and mINP (and with
    `verification` TAR@FAR, EER and thresholds), as the reference's do_inference; returns the
    whole EvalResult (the reference returned its `cmc[0], cmc[4]`)."""
    extractor = FeatureExtractor(cfg, model, select_device(cfg.MODEL.DEVICE))
    return inference_of(cfg, extractor, val_loader, num_query, title, verification)


def inference_of(cfg, extractor: FeatureExtractor, val_loader, num_query: int,
                 title: str = "Validation Results", verification: bool = False) -> EvalResult:
    """`do_inference` through any backend: a PyTorch model or an exported file."""
    result = evaluate_features(cfg, extractor, val_loader, num_query, verification)
    log_result(logging.getLogger("transreid.test"), result, title)
    return result


class Trainer:
    """State of one training run; `do_train` is its public face."""

    def __init__(self, cfg, model, center_criterion, train_loader, val_loader, optimizer,
                 optimizer_center, scheduler, loss_fn, num_query: int, local_rank: int) -> None:
        self.cfg = cfg
        self.logger = logging.getLogger("transreid.train")
        self.distributed = bool(cfg.MODEL.DIST_TRAIN)
        if self.distributed and not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("MODEL.DIST_TRAIN is True but torch.distributed is not initialised; "
                               "launch with dist_train.sh (torchrun), or set MODEL.DIST_TRAIN False")
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.device = select_device(cfg.MODEL.DEVICE, local_rank)
        # A stuck rank ends the job within MODEL.DIST_HANG_TIMEOUT (see processor/dist_watchdog.py).
        self.watchdog = start_watchdog(cfg.MODEL.DIST_HANG_TIMEOUT) if self.distributed else None
        self.device_augment = (DeviceAugment.from_cfg(cfg).to(self.device)
                               if cfg.INPUT.DEVICE_AUGMENT else None)
        self.model = self._place_model(model)
        # The forward that training calls; self.model stays the uncompiled module that
        # checkpoints and evaluation see (evaluation compiles its own, see FeatureExtractor).
        self.forward = CompiledForward(self.model, compile_enabled(cfg, self.device), "training")
        self.center_criterion = center_criterion.to(self.device)
        self.train_loader, self.val_loader, self.num_query = train_loader, val_loader, num_query
        self.optimizer, self.optimizer_center = optimizer, optimizer_center
        self.scheduler, self.loss_fn = scheduler, loss_fn
        self.amp_dtype = amp_dtype(cfg, self.device)
        # Only fp16 needs loss scaling; bf16 has fp32's exponent range.
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.amp_dtype == torch.float16)
        # MODEL.TRAIN_MODE 'usl' / 'uda': cluster-contrast's loss, which clusters before each epoch
        self.clustering = loss_fn if isinstance(loss_fn, ClusterContrast) else None
        self.uses_center = 'center' in cfg.MODEL.METRIC_LOSS_TYPE and self.clustering is None
        self.stats = StepStats(self.device)
        if self.distributed and self.uses_center:
            # The centers live outside DDP: start every rank from rank 0's.
            for param in self.center_criterion.parameters():
                dist.broadcast(param.data, src=0)
        self.checkpointer = Checkpointer(cfg, TrainingObjects(
            self.model, optimizer, optimizer_center, self.center_criterion, self.scaler))
        self.best_mAP = -1.0
        self.start_epoch = 1
        self.loss_parts: dict = {}
        # Replaced by the run's metrics.csv writer in `run`; steps outside a run log nowhere.
        self.metrics = MetricsLog(cfg.OUTPUT_DIR, 1, enabled=False)

    def _place_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model.to(self.device)
        if not self.distributed:
            return model
        device_ids = [self.device.index] if self.device.type == 'cuda' else None
        # JPM or SIE settings can leave parameters without gradient in a step.
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---------------------------------------------------------------- checkpoints
    def all_rng_states(self) -> List[dict]:
        """Every rank's random states, in rank order (a collective under DDP)."""
        states = rng_states(self.device)
        if not self.distributed:
            return [states]
        gathered: List[Optional[dict]] = [None] * self.world_size
        dist.all_gather_object(gathered, states)
        return gathered

    def resume(self, path: str) -> None:
        """Continue from a training checkpoint (see `Checkpointer.restore`)."""
        state = self.checkpointer.restore(path)
        self.best_mAP = state['best_mAP']
        self.start_epoch = state['epoch'] + 1
        self._restore_rng(state['rng'], path)
        self.logger.info("Resumed from %s: continuing at epoch %d of %d", path, self.start_epoch,
                         self.cfg.SOLVER.MAX_EPOCHS)

    def _restore_rng(self, saved, path: str) -> None:
        per_rank = [saved] if isinstance(saved, dict) else saved
        if len(per_rank) == self.world_size:
            restore_rng_states(per_rank[self.rank], self.device)
            return
        self.logger.warning("%s was written by %d process(es), this run has %d: random "
                            "augmentation restarts from SOLVER.SEED, so the run continues but "
                            "not exactly as an uninterrupted one", path, len(per_rank),
                            self.world_size)
        set_seed(self.cfg.SOLVER.SEED + self.rank + self.start_epoch)

    # ---------------------------------------------------------------- training
    def _to_device(self, *tensors: torch.Tensor) -> List[torch.Tensor]:
        return [t.to(self.device, non_blocking=True) for t in tensors]

    def train_step(self, batch: Sequence[torch.Tensor], epoch: int,
                   n_iter: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """One update; returns (loss, accuracy) as device tensors. Nothing here reads the device
        on the host (see processor/step_stats.py): a non-finite loss is recorded in
        `self.stats`, blocks this and every later update, and stops training at the next read."""
        img, target, target_cam, target_view, *augment_params = self._to_device(*batch)
        if self.device_augment is not None:
            # uint8 images and per-image parameters from the workers (INPUT.DEVICE_AUGMENT)
            img = self.device_augment(img, *augment_params)
        self._zero_grad()
        # A compile error surfaces in the first forward or backward: the step then runs again
        # eagerly, from cleared gradients.
        loss, accuracy = self.forward.run(
            lambda forward: self._forward_backward(forward, img, target, target_cam, target_view),
            before_retry=self._zero_grad)
        self.stats.record(~torch.isfinite(loss), NON_FINITE_LOSS, loss, epoch, n_iter)
        self._update(loss, epoch, n_iter)
        return loss, accuracy

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_center.zero_grad(set_to_none=True)

    def _forward_backward(self, forward, img: torch.Tensor, target: torch.Tensor,
                          target_cam: torch.Tensor,
                          target_view: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.amp_dtype):
            # CLIP-ReID's models add a third output, the image-to-text loss's input.
            score, feat, *extra = forward(img, target, cam_label=target_cam, view_label=target_view)
            loss = self.loss_fn(score, feat, target, target_cam, *extra)
        global_score = score[0] if isinstance(score, list) else score
        accuracy = (self.clustering.last_accuracy if self.clustering is not None
                    else (global_score.argmax(1) == target).float().mean())
        self.loss_parts = dict(getattr(self.loss_fn, "last_parts", {}))
        gated = loss * loss_gate(loss, self.stats.halted)
        self.scaler.scale(gated).backward()
        return loss.detach(), accuracy

    def _update(self, loss: torch.Tensor, epoch: int, n_iter: int) -> None:
        """The optimizer steps, each skipped on the device when the step may not update."""
        if self.scaler.is_enabled():
            # fp16: GradScaler skips a step whose gradients are inf/NaN, the gated loss's
            # included, and halves the scale: an overflow is ordinary there, not a fault. It
            # reads its flag on the host unless the optimizer is fused (CUDA here), which takes
            # the flag into its kernel instead.
            self.scaler.step(self.optimizer)
        else:
            # bf16 / fp32: no scale to lower, so a non-finite gradient is a fault like the loss.
            faulty = any_non_finite(gradients(self.optimizer), self.device)
            self.stats.record(faulty, NON_FINITE_GRADIENT, loss, epoch, n_iter)
            skip_updates_if(self.optimizer, faulty)
        if self.uses_center:
            self._step_centers()
        self.scaler.update()

    def _step_centers(self) -> None:
        """The center-loss step, outside GradScaler (which would read its flag on the host for
        this unfused SGD): undo the loss scale and weight so that CENTER_LR alone sets how fast
        the centers move, and skip where the step may not update or the centers' gradient is
        not finite. Under DDP average the gradients as DDP does for the model, so the centers
        stay equal. (A center overflow alone does not lower the fp16 scale; the features'
        gradients, which the same loss term drives, do.)"""
        loss_scale = self.scaler.scale(torch.ones((), device=self.device))  # 1 unless fp16
        factor = 1.0 / (self.cfg.SOLVER.CENTER_LOSS_WEIGHT * self.world_size) / loss_scale
        grads = gradients(self.optimizer_center)
        for grad in grads:
            if self.distributed:
                dist.all_reduce(grad)
            grad.mul_(factor)
        skip_updates_if(self.optimizer_center,
                        self.stats.halted | any_non_finite(grads, self.device))

    def read_stats(self) -> Reading:
        """Loss and accuracy so far in the epoch (a host read: a device sync); raises
        NonFiniteLossError if a step recorded a fault, on every rank when one rank did."""
        reading = self.stats.read()
        fault = reading.fault
        if self.distributed:
            # The other ranks skipped their updates (the gated gradients reach them through
            # the all-reduce) but may have recorded nothing: stop them with the faulty rank.
            flag = torch.tensor([float(fault is not None)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() and fault is None:
                raise NonFiniteLossError(
                    "the loss became non-finite on another process (its log names the step); "
                    f"{self._stop_advice()}")
        if fault is not None:
            raise NonFiniteLossError(f"{fault.describe()}; {self._stop_advice()}")
        return reading

    def _stop_advice(self) -> str:
        return (f"training stopped at the next read of the loss (every SOLVER.LOG_PERIOD "
                f"iterations), and no update from that step on reached the weights. The last good "
                f"checkpoint is {self.checkpointer.last_path} (if one was written): lower "
                f"SOLVER.BASE_LR or resume from it with MODEL.RESUME")

    def _log_progress(self, epoch: int, n_iter: int, num_iters: int, reading: Reading) -> None:
        lr = self.scheduler._get_lr(epoch)[0]
        self.logger.info("Epoch[{}] Iteration[{}/{}] Loss: {:.3f}, Acc: {:.3f}, Base Lr: {:.2e}"
                         .format(epoch, n_iter, num_iters, reading.loss, reading.accuracy, lr))
        self.metrics.log_progress(epoch, n_iter, self._metric_values(reading, lr))

    @staticmethod
    def _metric_values(reading: Reading, lr: float) -> dict:
        return {"loss": reading.loss, "accuracy": reading.accuracy, "lr": lr, **reading.parts}

    def train_epoch(self, epoch: int) -> None:
        self.scheduler.step(epoch)
        if self.clustering is not None:  # this epoch's pseudo-identities, memory and loader
            clusters = self.clustering.start_epoch(unwrap(self.model), self.device, epoch)
            self.metrics.log_clusters(epoch, clusters)
        set_train_epoch(self.train_loader, epoch)
        self.model.train()
        self.stats.start_epoch()
        # len() of the identity sampler is an estimate; the timing divides by the batches run.
        num_iters, num_batches = len(self.train_loader), 0
        start = time.perf_counter()
        # A bar on a terminal only: in log files the LOG_PERIOD lines already show progress.
        batches = Progress(self.train_loader, num_iters, f"epoch {epoch}", self.logger,
                           enabled=self.is_main and os.isatty(2))
        for n_iter, batch in enumerate(batches, start=1):
            loss, accuracy = self.train_step(batch, epoch, n_iter)
            self.stats.add(loss, accuracy, batch[0].shape[0], self.loss_parts)
            num_batches = n_iter
            if n_iter % self.cfg.SOLVER.LOG_PERIOD == 0:
                self._log_progress(epoch, n_iter, num_iters, self.read_stats())
        reading = self.read_stats()  # waits for the device: the timing below is complete
        elapsed = time.perf_counter() - start
        speed = self.stats.images * self.world_size / elapsed
        self.logger.info("Epoch {} done. Loss: {:.3f}, Acc: {:.3f}, Time per batch: {:.3f}[s] "
                         "Speed: {:.1f}[samples/s]".format(
                             epoch, reading.loss, reading.accuracy, elapsed / max(num_batches, 1),
                             speed))
        self.metrics.log_epoch(epoch, num_batches, {
            **self._metric_values(reading, self.scheduler._get_lr(epoch)[0]), "img_per_s": speed})

    def validate(self, epoch: int, rng: List[dict]) -> EvalResult:
        """Evaluate; a new best mAP is recorded in the resume state before its weights are
        written (the checkpointer writes in the order queued, and drops what follows a failed
        write), so a crash between the two can never let a worse model replace the best."""
        result = evaluate(self.cfg, unwrap(self.model), self.val_loader, self.num_query,
                          self.device)
        log_result(self.logger, result, f"Validation Results - Epoch: {epoch}")
        self.metrics.log_eval(epoch, result)
        if result.mAP > self.best_mAP:
            self.best_mAP = result.mAP
            self.checkpointer.save_state(epoch, self.best_mAP, rng)
            self.checkpointer.save_weights('best')
        return result

    def close(self) -> None:
        """Stop this rank's heartbeat (after `run`, or when it failed)."""
        if self.watchdog is not None:
            self.watchdog.stop()

    def run(self) -> Optional[EvalResult]:
        max_epochs = self.cfg.SOLVER.MAX_EPOCHS
        self.logger.info("start training: epochs %d to %d on %s%s", self.start_epoch, max_epochs,
                         self.device, f" x {self.world_size} processes" if self.distributed else "")
        result = None
        if self.num_query == 0:
            self.logger.info("Evaluation skipped: the dataset has no query images (DATASETS.NAMES "
                             "'%s' has no query/gallery split); checkpoints are still saved",
                             self.cfg.DATASETS.NAMES)
        # Opened here, after a resume set start_epoch: rows of epochs trained again are dropped.
        self.metrics = MetricsLog(self.cfg.OUTPUT_DIR, len(self.train_loader), self.start_epoch,
                                  enabled=self.is_main and bool(self.cfg.OUTPUT_DIR))
        # Leaving the block waits for the queued checkpoint writes: a failed one is raised (when
        # nothing else is), so the last epoch's files are checked too.
        start_training = getattr(self.loss_fn, "start_training", None)
        if start_training is not None:  # after a resume: from the restored weights
            start_training(unwrap(self.model), self.device)
        with self.metrics, self.checkpointer:
            result = self._train_epochs(max_epochs)
        if self.distributed:
            self.watchdog.finish()
        return result

    def _train_epochs(self, max_epochs: int) -> Optional[EvalResult]:
        result = None
        if self.start_epoch > max_epochs:
            self.logger.warning("Nothing to train: the run is at epoch %d and SOLVER.MAX_EPOCHS "
                                "is %d; raise SOLVER.MAX_EPOCHS to train on", self.start_epoch - 1,
                                max_epochs)
        for epoch in range(self.start_epoch, max_epochs + 1):
            self.checkpointer.check()  # a write of an earlier epoch that failed stops here
            self.train_epoch(epoch)
            last = epoch == max_epochs
            evaluate_now = self.num_query > 0 and (epoch % self.cfg.SOLVER.EVAL_PERIOD == 0
                                                   or last)
            checkpoint_now = epoch % self.cfg.SOLVER.CHECKPOINT_PERIOD == 0 or last
            rng = self.all_rng_states()
            # Rank 0 alone evaluates and saves; the others wait at the barrier instead of
            # entering the unwrapped model's forward (the reference hangs there). Weights and
            # resume state are queued, in this order, before evaluation starts, so a failing
            # evaluation loses nothing; the state is written every epoch whatever
            # CHECKPOINT_PERIOD says (the reference's configs set it to the epoch count, and a
            # crash would lose the run), and again after an evaluation that raised the best
            # mAP, which it records.
            if self.is_main:
                if checkpoint_now:
                    self.checkpointer.save_weights(epoch)
                self.checkpointer.save_state(epoch, self.best_mAP, rng)
                if evaluate_now:
                    result = self.validate(epoch, rng)
            if self.distributed:
                self.watchdog.wait_for_all(f"epoch_{epoch}")
        return result


def do_train(cfg, model, center_criterion, train_loader, val_loader, optimizer, optimizer_center,
             scheduler, loss_fn, num_query, local_rank):
    """Train per `cfg`, resuming from MODEL.RESUME when set; returns the last validation result."""
    trainer = Trainer(cfg, model, center_criterion, train_loader, val_loader, optimizer,
                      optimizer_center, scheduler, loss_fn, num_query, local_rank)
    try:
        if cfg.MODEL.RESUME:
            trainer.resume(cfg.MODEL.RESUME)
        return trainer.run()
    finally:
        trainer.close()
