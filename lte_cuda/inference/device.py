"""The machine a run uses: device choice, precisions, free memory and the working-set budget."""

from __future__ import annotations

import torch

# Rough working-set estimates (float32, reference query path) used to size tiles and chunks:
# a query holds 4 neighbours x C=256 MLP inputs plus activations and gathered features;
# an encoder pixel holds RDN's dense concatenations (up to ~2k channels) plus coef/freq maps.
DECODE_BYTES_PER_QUERY = 32 * 1024
ENCODE_BYTES_PER_PIXEL = 16 * 1024
MIN_CHUNK, MAX_CHUNK = 1024, 2**20
CPU_BUDGET_CAP = 1 << 30


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``torch.device`` for ``device`` (``None``/``"auto"``: CUDA if available, else CPU);
    ``ValueError`` if it is malformed or names a CUDA device that is not there."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}"
        ) from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r} was asked for but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={str(device)!r} was asked for but only {torch.cuda.device_count()} "
                "CUDA device(s) exist"
            )
    return dev


def memory_budget(device: torch.device) -> int:
    """Bytes a call may use for its working set: half the free memory of a CUDA device, or
    on CPU ``min(1 GiB, a quarter of MemAvailable)``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return min(CPU_BUDGET_CAP, available_ram() // 4)


def default_chunk(budget: int) -> int:
    """Output pixels decoded per model call for a working-set budget of ``budget`` bytes."""
    return min(max(budget // DECODE_BYTES_PER_QUERY, MIN_CHUNK), MAX_CHUNK)


def check_fits(nbytes: int, device: torch.device, what: str) -> None:
    """``ValueError`` naming ``what`` when ``nbytes`` exceed the memory free on ``device``
    (MemAvailable on CPU): one clear line before allocating, instead of an out-of-memory kill."""
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_ram()
    if nbytes > free:
        raise ValueError(
            f"{what} needs {nbytes / 2**30:.2f} GiB, more than the {free / 2**30:.2f} GiB "
            f"free on {device}"
        )


def output_bytes(
    batch: int, channels: int, size: tuple[int, int], dtype: torch.dtype, self_ensemble: bool
) -> int:
    """Bytes :func:`~lte_cuda.inference.upscale_into` needs beside its working set for
    ``batch`` outputs of ``size``: the outputs, and the two float32 images of a self-ensemble."""
    pixels = size[0] * size[1]
    ensemble = 2 * 3 * pixels * 4 if self_ensemble else 0
    return batch * channels * pixels * dtype.itemsize + ensemble


def available_ram() -> int:
    """MemAvailable from /proc/meminfo; where that is unreadable, assume 4 GiB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30
