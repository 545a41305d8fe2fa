"""The one owner of a training run's folder (OUTPUT_DIR): its files, their formats, its lock
and resume.

* `<MODEL.NAME>_<epoch>.pth`, `<MODEL.NAME>_best.pth`: the model's state dict alone, in the
  reference's format (what test.py, the tools and MODEL.PRETRAIN_PATH read);
* `last_checkpoint.pth`: everything needed to resume exactly (`STATE_KEYS`);
* `.transreid_run.lock`: one live run per folder (`lock_output_dir`).

Checkpoints are written off the training loop's critical path (see `Checkpointer`).
"""
from __future__ import annotations

import logging
import os
import pickle
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Set, Union

import numpy as np
import torch
from yacs.config import CfgNode

from model.weights import WeightsNotFoundError, load_file
from utils.background_writer import (BackgroundWriter, Write, copies_done, layout, snapshot,
                                     tensors_in)
from utils.errors import ConfigError, UserError
from utils.file_lock import FileLock, describe_holder
from utils.files import DiskFullError, remove_stale_temp_files


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


def rng_states(device: Optional[torch.device] = None) -> Dict[str, Any]:
    """This process's random states, as plain tensors and lists so that weights_only loading
    accepts them; the CUDA state is the one of `device` (each process drives one GPU)."""
    np_state = np.random.get_state()
    on_gpu = device is not None and device.type == "cuda"
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if on_gpu else None,
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }


def restore_rng_states(states: Dict[str, Any], device: Optional[torch.device] = None) -> None:
    torch.set_rng_state(states["torch"])
    if isinstance(states["cuda"], torch.Tensor) and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


class ResumeError(UserError, ValueError):
    """A training checkpoint that this run's config cannot continue."""


class ResumeStateNotFoundError(ResumeError, FileNotFoundError):
    """MODEL.RESUME names a file that does not exist."""


LAST_CHECKPOINT = "last_checkpoint.pth"
RESUME_MISSING_HINT = ("MODEL.RESUME must name the 'last_checkpoint.pth' that training writes to "
                       "OUTPUT_DIR")
# Entries of the training state; 'model' and 'epoch' identify one.
STATE_KEYS = ("model", "optimizer", "optimizer_center", "center_criterion", "scaler", "epoch",
              "best_mAP", "rng", "config", "output_dir")
# Keys whose change on resume is expected and not worth reporting.
RESUME_IGNORED_KEYS = ("MODEL.RESUME",)


def load_checkpoint(path: str, mmap: bool = False) -> Dict[str, Any]:
    """The training state in `path` (MODEL.RESUME); a file that is none raises a ResumeError
    naming what it is. `mmap` leaves the tensors on disk: a quick check before a run starts."""
    if not os.path.exists(path):
        raise ResumeStateNotFoundError(f"checkpoint '{path}' (MODEL.RESUME) does not exist; it is "
                                       "the 'last_checkpoint.pth' that training writes to OUTPUT_DIR")
    try:
        state = load_file(path, RESUME_MISSING_HINT, mmap)
    except WeightsNotFoundError as err:
        raise ResumeError(f"MODEL.RESUME: {err}") from None
    missing = {"model", "optimizer", "epoch"} - set(state) if isinstance(state, dict) else {"model"}
    if missing:
        raise ResumeError(f"'{path}' is not a training checkpoint (no {sorted(missing)}); to start "
                          "from trained weights use MODEL.PRETRAIN_CHOICE 'self' with MODEL.PRETRAIN_PATH")
    return state


def _flat_config(node, prefix: str = "") -> dict:
    flat = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        flat.update(_flat_config(value, name + ".") if isinstance(value, dict) else {name: value})
    return flat


def config_changes(saved_dump: str, cfg) -> List[str]:
    """'KEY saved -> now' for every key whose value differs from the checkpoint's config."""
    saved = _flat_config(CfgNode.load_cfg(saved_dump))
    now = _flat_config(CfgNode.load_cfg(cfg.dump()))
    return [f"{key} {saved.get(key)!r} -> {now.get(key)!r}" for key in sorted(saved.keys() | now.keys())
            if key not in RESUME_IGNORED_KEYS and saved.get(key) != now.get(key)]


@dataclass
class TrainingObjects:
    """What the training state saves and restores besides counters (CLIP-ReID's stage 1 has
    no center loss: None there)."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    optimizer_center: Optional[torch.optim.Optimizer]
    center_criterion: Optional[torch.nn.Module]
    scaler: torch.amp.GradScaler


STAGE_NAMES = {1: "CLIP-ReID's stage 1 (the prompts)", None: "a model's training"}


def state_stage(state: Dict[str, Any]) -> Optional[int]:
    """The CLIP-ReID stage a training state belongs to (1: the prompts); None for any other."""
    return stage if isinstance(stage := state.get("stage"), int) and stage in STAGE_NAMES else None


def _check_optimizer_kind(optimizer: torch.optim.Optimizer, saved: Dict[str, Any]) -> None:
    """Another optimizer's state loads without complaint and fails at the first step (SGD
    finds no 'momentum' in AdamW's groups): compare the hyperparameters the groups carry."""
    groups = saved.get("param_groups") or [{}]
    # Only keys that tell the kinds apart: a newer torch adds other defaults over time.
    missing = sorted({"momentum", "betas"} & set(optimizer.defaults) - set(groups[0]))
    if missing:
        raise ValueError(f"it holds the state of another optimizer than this run's "
                         f"{type(optimizer).__name__} (its groups lack {missing}): "
                         "SOLVER.OPTIMIZER_NAME changed")


class CheckpointWriteError(UserError, OSError):
    """A checkpoint file could not be written (not for lack of space: see DiskFullError)."""


def saved_epoch(path: str) -> Optional[int]:
    """The epoch of the training state in `path`; None when there is no readable one."""
    try:
        # mmap: the tensors stay on disk, only the small index is read.
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError):
        return None  # missing, damaged or not a torch.save file: nothing to resume from
    epoch = state.get("epoch") if isinstance(state, dict) else None
    return int(epoch) if isinstance(epoch, int) else None


def resume_hint(output_dir: str) -> str:
    """How to continue a run of `output_dir` that stopped: the MODEL.RESUME of its last state."""
    path = os.path.join(output_dir, LAST_CHECKPOINT)
    epoch = saved_epoch(path)
    if epoch is None:
        return "No epoch had been saved, so there is nothing to resume: start the run again."
    return f"Continue from the last saved epoch ({epoch}) with MODEL.RESUME {path}"


# A model file and the resume state in flight at most (a third snapshot waits for the oldest).
MAX_PENDING_WRITES = 2


class Checkpointer:
    """The files of a training run in OUTPUT_DIR, and the one owner of their formats.

    * `<MODEL.NAME>_<epoch>.pth` and `<MODEL.NAME>_best.pth`: the model's state dict alone, in
      the reference's format (what test.py, the tools and MODEL.PRETRAIN_PATH read);
    * `last_checkpoint.pth`: everything needed to resume exactly (`STATE_KEYS`).

    `save_weights` and `save_state` return once the state is copied off the device; a
    background thread writes the files in the order asked for, each atomically (a crash
    mid-write leaves the previous one). A failed write is raised, as a UserError saying what to
    resume from, by the next `save_*` or `check()`; `close()` (or leaving `with checkpointer:`)
    waits for the last write and raises its failure too.
    """

    def __init__(self, cfg, objects: TrainingObjects, stage: Optional[int] = None) -> None:
        self.cfg = cfg
        self.objects = objects
        self.stage = stage
        self.logger = logging.getLogger("transreid.train")
        self.writer = BackgroundWriter(self.logger)
        self._failure_raised = False

    def path(self, name: str) -> str:
        return os.path.join(self.cfg.OUTPUT_DIR, name)

    @property
    def last_path(self) -> str:
        return self.path(LAST_CHECKPOINT)

    def save_weights(self, tag: Union[int, str]) -> str:
        """Queue the model alone as `<MODEL.NAME>_<tag>.pth` (an epoch or 'best')."""
        path = self.path(f"{self.cfg.MODEL.NAME}_{tag}.pth")
        self._queue(lambda: unwrap(self.objects.model).state_dict(), path,
                    f"Saved the model weights to {path}")
        return path

    def save_state(self, epoch: int, best_mAP: float, rng: List[dict]) -> None:
        """Queue everything needed to resume after `epoch`; `rng` holds each rank's random
        states."""
        self._queue(lambda: self.training_state(epoch, best_mAP, rng), self.last_path,
                    f"Saved the training state of epoch {epoch} to {self.last_path}")

    def training_state(self, epoch: int, best_mAP: float, rng: List[dict]) -> Dict[str, Any]:
        """The resume state (`STATE_KEYS`); its tensors are the live ones, not copies."""
        o = self.objects
        centers = {} if o.center_criterion is None else {
            "optimizer_center": o.optimizer_center.state_dict(),
            "center_criterion": o.center_criterion.state_dict()}
        return {
            "model": unwrap(o.model).state_dict(),
            "optimizer": o.optimizer.state_dict(),
            **centers,
            **({} if self.stage is None else {"stage": self.stage}),
            "scaler": o.scaler.state_dict(),
            "epoch": epoch,
            "best_mAP": best_mAP,
            "rng": rng,
            "config": self.cfg.dump(),
            # Where this run writes: resuming elsewhere is refused if that folder holds
            # another run's state (`check_output_dir_is_free`).
            "output_dir": os.path.realpath(self.cfg.OUTPUT_DIR),
        }

    def _queue(self, make_state, path: str, done_message: str) -> None:
        self.check()
        self.writer.wait(max_pending=MAX_PENDING_WRITES - 1)
        self.check()
        live = make_state()
        key = layout(tensors_in(live))
        buffers = self.writer.take_buffers(key)
        cuda_devices: Set[torch.device] = set()
        state = snapshot(live, cuda_devices, iter(buffers) if buffers is not None else None)
        self.writer.submit(Write(state, path, done_message, copies_done(cuda_devices), key))

    def check(self) -> None:
        """Raise the failure of an earlier write, if one failed: as a UserError naming the
        file and what to resume from when the fault is the file system's."""
        failure = self.writer.failure()
        if failure is None:
            return
        path, err = failure
        self._failure_raised = True
        hint = resume_hint(self.cfg.OUTPUT_DIR)
        if isinstance(err, DiskFullError):
            raise err.with_fix("training stopped. Free space there (or copy OUTPUT_DIR to a disk "
                               f"with room and resume the copy). {hint}") from err
        if isinstance(err, OSError):
            raise CheckpointWriteError(f"writing '{path}' failed ({err}); training stopped. "
                                       f"{hint}") from err
        raise err  # not the file system's fault: a bug, with its traceback

    def close(self) -> None:
        """Wait for the queued writes; raise the failure of any."""
        self.writer.shutdown()
        self.check()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # Already failing (or interrupted): let the queued writes land, each atomically, and
        # report a failed one without hiding the exception on its way.
        self.writer.shutdown()
        failure = self.writer.failure()
        if failure is not None and not self._failure_raised:
            self.logger.error("writing '%s' failed as well: %s", *failure)

    def restore(self, path: str) -> Dict[str, Any]:
        """Load the state of `path` into the training objects; returns the state (its epoch,
        best_mAP and rng are the caller's). The learning rate follows this run's config (the
        schedule is a function of the epoch), so SOLVER.MAX_EPOCHS can be raised."""
        state = load_checkpoint(path)
        if state_stage(state) != self.stage:
            raise ResumeError(f"{path} is the state of {STAGE_NAMES[state_stage(state)]}, not of "
                              f"{STAGE_NAMES[self.stage]} that this run continues")
        changes = config_changes(state["config"], self.cfg) if "config" in state else []
        if changes:
            self.logger.warning("Resuming %s with settings that differ from its run's: %s", path,
                                "; ".join(changes))
        try:
            self._load(state)
        except (RuntimeError, KeyError, ValueError) as err:
            raise ResumeError(
                f"{path} does not fit this run's model or optimizer ({err}); settings changed "
                f"since it was written: {'; '.join(changes) or 'none recorded'}. Resume with the "
                "config it was written with (config.yaml beside it)") from err
        return state

    def _load(self, state: Dict[str, Any]) -> None:
        o = self.objects
        unwrap(o.model).load_state_dict(state["model"])
        _check_optimizer_kind(o.optimizer, state["optimizer"])
        o.optimizer.load_state_dict(state["optimizer"])
        if o.center_criterion is not None:
            o.optimizer_center.load_state_dict(state["optimizer_center"])
            o.center_criterion.load_state_dict(state["center_criterion"])
        o.scaler.load_state_dict(state["scaler"])


# ---------------------------------------------------------------------------- the run's folder
# Under torch.distributed only rank 0 locks OUTPUT_DIR (it alone writes there); a second run's
# rank 0 is refused and exits, and the launcher (torchrun) then stops that run's other ranks.
RUN_LOCK_FILE = ".transreid_run.lock"
"""Lock file of a run in OUTPUT_DIR (removed again when the run ends normally)."""


class OutputDirInUseError(UserError, RuntimeError):
    """Another live run holds the lock of this OUTPUT_DIR; the message names its PID and host."""


def lock_output_dir(folder: str) -> FileLock:
    """Lock `folder` (OUTPUT_DIR) for this run, creating it if needed; call `release()` (or
    use `with`) when the run ends. Raises OutputDirInUseError while another run holds it."""
    try:
        os.makedirs(folder, exist_ok=True)
        lock = FileLock(os.path.join(folder, RUN_LOCK_FILE))
        holder = lock.try_acquire()
    except OSError as err:  # a file in the way, no permission, a read-only file system
        raise ConfigError(f"OUTPUT_DIR '{folder}' cannot hold this run's files "
                          f"({err.strerror}: '{err.filename}'); choose another OUTPUT_DIR") from None
    if holder is not None:
        raise OutputDirInUseError(
            f"OUTPUT_DIR '{folder}' is in use by {describe_holder(holder)}; wait for it to "
            "finish or choose another OUTPUT_DIR")
    return lock


def check_output_dir_is_free(cfg) -> None:
    """Refuse to start over the resume state of another run in OUTPUT_DIR.

    A restart that forgets MODEL.RESUME would replace that state after one epoch; with the
    reference's configs (model files only at the last epoch) that loses the whole run. So
    would resuming run A's state into run B's folder, which then mixes the two runs' files.
    Resuming is allowed into an empty or new folder (a copy of the run continues there), and
    into the folder the state came from: MODEL.RESUME is that folder's `last_checkpoint.pth`
    (the same file, however the paths are spelt), or a state whose recorded OUTPUT_DIR
    (`output_dir`, a real path) is this folder (a copy kept there, e.g. to roll back).
    """
    path = os.path.join(cfg.OUTPUT_DIR, LAST_CHECKPOINT)
    if not os.path.isfile(path):
        return
    if not cfg.MODEL.RESUME:
        raise ResumeError(
            f"OUTPUT_DIR '{cfg.OUTPUT_DIR}' holds the resume state of an earlier run ({path}); "
            f"continue it with MODEL.RESUME {path}, or choose another OUTPUT_DIR, or delete that "
            "file to start over there")
    if _state_belongs_to(cfg.MODEL.RESUME, cfg.OUTPUT_DIR):
        return
    raise ResumeError(
        f"MODEL.RESUME '{cfg.MODEL.RESUME}' is the state of another run than the one in OUTPUT_DIR "
        f"'{cfg.OUTPUT_DIR}' ({path}, which resuming there would replace); set OUTPUT_DIR to the "
        f"folder it came from, or to a new folder to continue it there, or continue that "
        f"folder's own run with MODEL.RESUME {path}")


def _state_belongs_to(resume: str, output_dir: str) -> bool:
    """Whether the training state `resume` was written by a run in `output_dir`."""
    path = os.path.join(output_dir, LAST_CHECKPOINT)
    if os.path.exists(resume) and os.path.samefile(resume, path):
        return True
    recorded = load_checkpoint(resume, mmap=True).get("output_dir")
    return recorded is not None and recorded == os.path.realpath(output_dir)


def claim_output_dir(cfg) -> FileLock:
    """What the writing rank does before anything is built: lock OUTPUT_DIR (the current folder
    when empty, where the files then go), refuse another run's resume state there, and remove
    the temporary files of killed writes (no writer of the folder is alive once the lock is
    held). Release the lock when the run ends."""
    folder = cfg.OUTPUT_DIR or os.curdir
    lock = lock_output_dir(folder)
    try:
        check_output_dir_is_free(cfg)
        remove_stale_temp_files(folder)
    except BaseException:
        lock.release()
        raise
    return lock
