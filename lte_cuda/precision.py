"""The precision rule: which arithmetic a run uses, and why. Every caller resolves it here.

``"auto"`` (the default of :func:`lte_cuda.upscale`, ``lte-sr upscale``, ``view`` and ``demo``):

- on CPU, bf16 where the processor computes bf16 natively (AVX512-BF16 or AMX, as torch's own
  checks report them): there the decoder's matrix products run at about twice the float32 rate
  and the output stays within 0.02 dB PSNR and 2/255 per pixel of float32
  (tests/test_precision.py); elsewhere bf16 is emulated and slower, so fp32;
- on CUDA, fp32, until a GPU run shows a reduced precision meeting the same quality rule
  (benchmarks/gpu_check.py measures bf16 and fp16 against it).

``"fp32"``, ``"bf16"`` and ``"fp16"`` are taken as asked. Setting the environment variable
``LTE_CUDA_NO_NATIVE_BF16=1`` makes the CPU count as one without native bf16 (to test the
fallback, or to keep fp32 on a machine whose bf16 you do not trust).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

# Requested name -> autocast dtype (None: plain float32).
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
CHOICES = ("auto", *PRECISIONS)
NO_NATIVE_BF16_ENV = "LTE_CUDA_NO_NATIVE_BF16"
# The quality rule a reduced precision must meet against fp32 to be chosen by "auto".
MAX_PSNR_DELTA_DB = 0.02
MAX_PIXEL_DELTA = 2 / 255


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` (fp32/bf16/fp16), the autocast ``dtype`` (None for
    fp32) and ``reason``, one short phrase saying why it was chosen."""

    name: str
    dtype: torch.dtype | None
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def native_bf16() -> str | None:
    """The CPU feature that computes bf16 natively (``"AMX"`` or ``"AVX512-BF16"``), or None
    (also when ``LTE_CUDA_NO_NATIVE_BF16`` is set to anything but ``""``/``"0"``)."""
    if os.environ.get(NO_NATIVE_BF16_ENV, "") not in ("", "0"):
        return None
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX512-BF16"
    return None


def resolve_precision(requested: str, device: torch.device | str) -> Precision:
    """The precision a run on ``device`` uses for ``requested`` (``"auto"`` or a name of
    :data:`PRECISIONS`); ``ValueError`` naming the argument for anything else."""
    if requested not in CHOICES:
        raise ValueError(f"precision must be one of {', '.join(CHOICES)}, got {requested!r}")
    device_type = torch.device(device).type
    if requested != "auto":
        reason = "asked for"
        if requested == "bf16" and device_type == "cpu" and native_bf16() is None:
            reason = "asked for; this CPU emulates bf16, fp32 is faster here"
        return Precision(requested, PRECISIONS[requested], reason)
    if device_type != "cpu":
        return Precision("fp32", None, f"auto: fp32 on {device_type} until bf16/fp16 are verified")
    feature = native_bf16()
    if feature is None:
        return Precision("fp32", None, "auto: this CPU has no native bf16")
    return Precision("bf16", torch.bfloat16, f"auto: this CPU computes bf16 natively ({feature})")


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` for a resolved reduced ``precision`` name (bf16,
    fp16), else a context that does nothing (fp32)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
