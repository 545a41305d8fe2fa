"""Mixed precision by name: the dtypes of SOLVER.AMP_DTYPE (training) and TEST.AMP_DTYPE
(feature extraction), and the autocast context of one."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

AMP_DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16, 'fp32': None}


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """torch.autocast of `dtype` on `device`, or nothing for full precision (None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def inference_dtype(name: str, device: torch.device) -> Optional[torch.dtype]:
    """TEST.AMP_DTYPE on `device`: bf16 anywhere (CPUs with bf16 units gain too), fp16 on CUDA
    only (the CPU has no fast fp16 matrix products), else full precision."""
    dtype = AMP_DTYPES[name]
    return None if dtype is torch.float16 and device.type != 'cuda' else dtype
