"""Files written atomically, and training checkpoints with everything needed to resume exactly."""
from __future__ import annotations

import contextlib
import os
import random
import tempfile
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch


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


def load_checkpoint(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint '{path}' (MODEL.RESUME) does not exist; it is the "
                                "'last_checkpoint.pth' that training writes to OUTPUT_DIR")
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"model", "optimizer", "epoch"} - set(state)
    if missing:
        raise ValueError(f"'{path}' is not a training checkpoint (no {sorted(missing)}); to start "
                         "from trained weights use MODEL.PRETRAIN_CHOICE 'self' with MODEL.PRETRAIN_PATH")
    return state
