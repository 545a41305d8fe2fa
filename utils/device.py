"""Choose the device once, from MODEL.DEVICE and MODEL.DEVICE_ID."""
from __future__ import annotations

import logging
import os

import torch

from utils.errors import ConfigError

logger = logging.getLogger("transreid.device")


def apply_visible_devices(device_id: str) -> None:
    """Export MODEL.DEVICE_ID as CUDA_VISIBLE_DEVICES; only effective before CUDA starts.

    An explicit CUDA_VISIBLE_DEVICES in the environment (set by a cluster scheduler or by the
    user on the command line) wins over the config.
    """
    device_id = str(device_id).strip()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        if device_id:
            os.environ["CUDA_VISIBLE_DEVICES"] = device_id
    elif device_id and visible != device_id:
        logger.info("CUDA_VISIBLE_DEVICES=%s from the environment wins over MODEL.DEVICE_ID '%s'",
                    visible, device_id)


def uses_gpu(requested: str) -> bool:
    """Whether MODEL.DEVICE `requested` will run on a GPU here (select_device's choice)."""
    return str(requested).strip().lower().startswith("cuda") and torch.cuda.is_available()


def select_device(requested: str, local_rank: int = 0) -> torch.device:
    """'cuda' (this process's GPU: `local_rank` under torch.distributed), 'cuda:N' (GPU N of
    one process) or 'cpu'.

    'cuda' without a usable GPU falls back to the CPU with a warning, so a config written for
    a GPU machine still runs (slowly) on a laptop.
    """
    text = str(requested).strip().lower()
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cuda", "cpu"):
        raise ConfigError(f"MODEL.DEVICE '{requested}' is unknown; use 'cuda', 'cuda:N' or 'cpu'")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        _warn_once(f"MODEL.DEVICE is '{text}' but no GPU is available: running on the CPU")
        return torch.device("cpu")
    index = _gpu_index(device, text, local_rank)
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


_WARNED = set()


def loader_workers(requested: int) -> int:
    """DATALOADER.NUM_WORKERS, at most one per CPU this process may use: more only contend for
    the same cores (and torch warns of it at every loader). Workers seed augmentation by index,
    so their number never changes what they load."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if requested > (cpus or 1):
        message = (f"DATALOADER.NUM_WORKERS {requested} but this process may use {cpus} CPUs: "
                   f"{cpus} loader workers")
        if message not in _WARNED:
            _WARNED.add(message)
            logger.info(message)
        return cpus or 1
    return requested


def _warn_once(message: str) -> None:
    """A warning that every later choice of the device would repeat, given once per process."""
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def _gpu_index(device: torch.device, text: str, local_rank: int) -> int:
    count = torch.cuda.device_count()
    if device.index is None:
        return local_rank % count
    if local_rank != 0:
        raise ConfigError(f"MODEL.DEVICE '{text}' pins every process to one GPU; under "
                         "torchrun use 'cuda': each process takes the GPU of its LOCAL_RANK")
    if device.index >= count:
        raise ConfigError(f"MODEL.DEVICE '{text}' but only {count} GPU(s) are visible "
                         "(CUDA_VISIBLE_DEVICES / MODEL.DEVICE_ID renumber them from 0)")
    return device.index
