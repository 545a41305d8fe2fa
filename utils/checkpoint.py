"""Training checkpoints written atomically, with everything needed to resume exactly."""
from __future__ import annotations

import os
import random
import tempfile
from typing import Any, Dict

import numpy as np
import torch


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash mid-write
    leaves the previous file intact instead of a truncated one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".pth")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


def rng_states() -> Dict[str, Any]:
    """All random states, as plain tensors and lists so that weights_only loading accepts them."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }


def restore_rng_states(states: Dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def load_checkpoint(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint '{path}' (MODEL.RESUME) does not exist; it is the "
                                "'last_checkpoint.pth' that training writes to OUTPUT_DIR")
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"model", "optimizer", "scheduler", "epoch"} - set(state)
    if missing:
        raise ValueError(f"'{path}' is not a training checkpoint (no {sorted(missing)}); to start "
                         "from trained weights use MODEL.PRETRAIN_CHOICE 'self' with MODEL.PRETRAIN_PATH")
    return state
