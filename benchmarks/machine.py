"""The machine a benchmark record was measured on, as every results.json stores it, and every
benchmark's refusal to time the reference fallback under the fused name.

    machine_info("cpu")      # the block results.json stores
    print(cpu_line())        # CPU model, flags, threads: the header of a benchmark's output
    require_fused("end_to_end")   # exits with one line if the compiled op did not load
"""

from __future__ import annotations

import os
import platform
import sys
import time

import torch

# The CPU flags that decide the speed of the decoder's matrix products and of the query op.
RELEVANT_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
)


def machine_info(device: str) -> dict:
    """CPU model and flags (:func:`cpu_summary`), core and thread counts, torch and Python
    versions, GPU name, the device measured, the load average at the start and the date."""
    cpu = cpu_summary()
    return {
        "cpu": cpu["cpu"]
        if cpu["cpu"] != "unknown"
        else platform.processor() or platform.machine(),
        "cpu_flags": cpu["flags"],
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "device": device,
        "load_average_start": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d"),
    }


def cpu_summary() -> dict:
    """The CPU's model name and the flags of :data:`RELEVANT_FLAGS` it has (from
    /proc/cpuinfo), torch's CPU capability, its native-bf16 checks and its thread count."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "flags": [flag for flag in RELEVANT_FLAGS if flag in flags],
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
        "amx": torch.cpu._is_amx_tile_supported(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def cpu_line() -> str:
    """:func:`cpu_summary` as one line for a benchmark's header."""
    s = cpu_summary()
    return (
        f"CPU {s['cpu']} ({s['cores']} cores, {s['threads']} threads; flags "
        f"{' '.join(s['flags']) or 'none of interest'}; torch {s['torch']} "
        f"capability {s['torch_capability']})"
    )


def require_fused(prog: str) -> None:
    """Exit with one line when the compiled op library did not load: a benchmark never times
    the reference fallback under the fused name."""
    from lte_cuda import ops

    if not ops.library_available():
        sys.exit(f"{prog}: the fused op is not available, refusing to time it: {ops.LIBRARY_ERROR}")
