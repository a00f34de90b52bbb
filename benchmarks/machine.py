"""The machine a benchmark record was measured on, as every results.json stores it."""

from __future__ import annotations

import os
import platform
import time

import torch


def machine_info(device: str) -> dict:
    """CPU model, core and thread counts, torch and Python versions, GPU name, the device
    measured, the load average at the start and the date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "device": device,
        "load_average_start": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d"),
    }
