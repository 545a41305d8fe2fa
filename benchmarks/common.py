"""What every benchmark script shares: the device it times on, and the line naming it."""
from __future__ import annotations

import os
import platform

import torch


def benchmark_device(name: str) -> torch.device:
    """The --device to time on; a GPU that is not there is a usage error, not a traceback."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name} but no GPU is available here; use --device cpu")
    return device


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def describe_device(device: torch.device) -> str:
    """The GPU's name, or the CPU's model, cores, torch threads and load (other work on the
    machine changes CPU figures, so they say how busy it was)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"CPU {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"load average {load:.1f}")
