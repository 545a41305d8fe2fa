"""Files written atomically, and training checkpoints with everything needed to resume exactly."""
from __future__ import annotations

import contextlib
import logging
import os
import random
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Union

import numpy as np
import torch
from yacs.config import CfgNode

from utils.errors import UserError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """A temporary path next to `path`, renamed to `path` only if the block succeeds: a crash
    mid-write leaves the previous file intact instead of a truncated one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the mode open() would have.
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def atomic_save(obj: Any, path: str) -> None:
    """torch.save through `atomic_output`, synced to disk before the rename."""
    with atomic_output(path) as tmp_path, open(tmp_path, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


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
              "best_mAP", "rng", "config")
# Keys whose change on resume is expected and not worth reporting.
RESUME_IGNORED_KEYS = ("MODEL.RESUME",)


def load_checkpoint(path: str, mmap: bool = False) -> Dict[str, Any]:
    """The training state in `path` (MODEL.RESUME); a file that is none raises a ResumeError
    naming what it is. `mmap` leaves the tensors on disk: a quick check before a run starts."""
    from model.weights import WeightsNotFoundError, load_file  # model imports utils

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
    """What the training state saves and restores besides counters."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    optimizer_center: torch.optim.Optimizer
    center_criterion: torch.nn.Module
    scaler: torch.amp.GradScaler


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


class Checkpointer:
    """The files of a training run in OUTPUT_DIR, and the one owner of their formats.

    * `<MODEL.NAME>_<epoch>.pth` and `<MODEL.NAME>_best.pth`: the model's state dict alone, in
      the reference's format (what test.py, the tools and MODEL.PRETRAIN_PATH read);
    * `last_checkpoint.pth`: everything needed to resume exactly (`STATE_KEYS`).

    Every file is written atomically: a crash mid-write leaves the previous one.
    """

    def __init__(self, cfg, objects: TrainingObjects) -> None:
        self.cfg = cfg
        self.objects = objects
        self.logger = logging.getLogger("transreid.train")

    def path(self, name: str) -> str:
        return os.path.join(self.cfg.OUTPUT_DIR, name)

    @property
    def last_path(self) -> str:
        return self.path(LAST_CHECKPOINT)

    def save_weights(self, tag: Union[int, str]) -> str:
        """The model alone as `<MODEL.NAME>_<tag>.pth` (an epoch or 'best')."""
        path = self.path(f"{self.cfg.MODEL.NAME}_{tag}.pth")
        atomic_save(unwrap(self.objects.model).state_dict(), path)
        return path

    def save_state(self, epoch: int, best_mAP: float, rng: List[dict]) -> None:
        """Everything needed to resume after `epoch`; `rng` holds each rank's random states."""
        o = self.objects
        atomic_save({
            "model": unwrap(o.model).state_dict(),
            "optimizer": o.optimizer.state_dict(),
            "optimizer_center": o.optimizer_center.state_dict(),
            "center_criterion": o.center_criterion.state_dict(),
            "scaler": o.scaler.state_dict(),
            "epoch": epoch,
            "best_mAP": best_mAP,
            "rng": rng,
            "config": self.cfg.dump(),
        }, self.last_path)
        self.logger.info("Saved the training state of epoch %d to %s", epoch, self.last_path)

    def restore(self, path: str) -> Dict[str, Any]:
        """Load the state of `path` into the training objects; returns the state (its epoch,
        best_mAP and rng are the caller's). The learning rate follows this run's config (the
        schedule is a function of the epoch), so SOLVER.MAX_EPOCHS can be raised."""
        state = load_checkpoint(path)
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
        o.optimizer_center.load_state_dict(state["optimizer_center"])
        o.center_criterion.load_state_dict(state["center_criterion"])
        o.scaler.load_state_dict(state["scaler"])
