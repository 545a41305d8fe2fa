"""Choose the device once, from MODEL.DEVICE and MODEL.DEVICE_ID."""
from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger("transreid.device")


def apply_visible_devices(device_id: str) -> None:
    """Export MODEL.DEVICE_ID as CUDA_VISIBLE_DEVICES; only effective before CUDA starts.

    An explicit CUDA_VISIBLE_DEVICES in the environment (set by a cluster scheduler or by the
    user on the command line) wins over the config.
    """
    device_id = str(device_id).strip()
    if device_id and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = device_id


def select_device(requested: str, local_rank: int = 0) -> torch.device:
    """'cuda' (this process's GPU, `local_rank` under torch.distributed) or 'cpu'.

    'cuda' without a usable GPU falls back to the CPU with a warning, so a config written for
    a GPU machine still runs (slowly) on a laptop.
    """
    requested = str(requested).lower()
    if requested.startswith("cuda"):
        if torch.cuda.is_available():
            index = local_rank % torch.cuda.device_count()
            torch.cuda.set_device(index)
            return torch.device("cuda", index)
        logger.warning("MODEL.DEVICE is '%s' but no GPU is available: running on the CPU", requested)
        return torch.device("cpu")
    if requested == "cpu":
        return torch.device("cpu")
    raise ValueError(f"MODEL.DEVICE '{requested}' is unknown; use 'cuda' or 'cpu'")
