"""How one run uses the machine: :class:`InferenceSettings`, built once from the API's or the
command line's options by :func:`settings_for` and passed down to every part of the run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral

import torch

from ..precision import resolve_precision
from . import device as machine
from .device import default_chunk, resolve_device


@dataclass(frozen=True)
class InferenceSettings:
    """How one run uses the machine; :func:`settings_for` checks the options and fills in
    the defaults."""

    device: torch.device
    budget: int  # bytes the working set may use (tiles, chunks)
    chunk: int  # output pixels decoded per model call
    precision: str = "fp32"  # resolved (fp32, bf16, fp16): lte_cuda.precision
    tile_size: int | None = None  # encoder tile side in input pixels; None: from the budget
    tile_overlap: int | None = None  # None: the encoder's radius
    self_ensemble: bool = False
    # Called as progress(done, total) after each region of the input is decoded (every
    # pass counted: 8 with self-ensemble); may raise to stop the run.
    progress: Callable[[int, int], None] | None = None
    # Called with the number of output pixels just decoded, after each decode chunk (finer
    # than ``progress``: a whole image is often one region).
    pixel_progress: Callable[[int], None] | None = None


def settings_for(
    device: str | torch.device | None = None,
    *,
    precision: str = "fp32",
    chunk_size: int | None = None,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    self_ensemble: bool = False,
    budget: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    pixel_progress: Callable[[int], None] | None = None,
) -> InferenceSettings:
    """Settings from the options of :func:`lte_cuda.upscale` (see there; ``budget`` is its
    ``memory_budget``), checked, with ``device`` resolved and the budget and chunk size
    defaulted from the device's free memory, and ``precision`` (``"auto"`` too) resolved by
    :func:`lte_cuda.precision.resolve_precision`. ``ValueError``/``TypeError`` name the bad
    option and what was received."""
    if not isinstance(self_ensemble, bool):
        raise TypeError(f"self_ensemble must be True or False, got {self_ensemble!r}")
    chunk = _optional_int(chunk_size, "chunk_size", 1)
    tile = _optional_int(tile_size, "tile_size", 1)
    overlap = _optional_int(tile_overlap, "tile_overlap", 0)
    budget = _optional_int(budget, "memory_budget", 1)
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev).name
    budget = machine.memory_budget(dev) if budget is None else budget
    chunk = chunk or default_chunk(budget)
    return InferenceSettings(
        dev, budget, chunk, precision, tile, overlap, self_ensemble, progress, pixel_progress
    )


def _optional_int(value: object, name: str, low: int) -> int | None:
    """``value`` as an int of at least ``low``, or None; ``ValueError`` naming ``name``."""
    if value is None:
        return None
    if not isinstance(value, Integral) or isinstance(value, bool) or value < low:
        kind = "a positive" if low else "a non-negative"
        raise ValueError(f"{name} must be {kind} integer, got {value!r}")
    return int(value)
