"""lte_cuda: arbitrary-scale image super-resolution with LTE and a fused query kernel.

The names below are imported on first use (PEP 562), so that ``import lte_cuda.ops`` loads
neither PIL nor the inference code.
"""

from __future__ import annotations

import importlib
import sys
import types

# Public name -> the submodule that defines it (None: the name is a submodule itself).
_HOMES = {
    "ops": None,
    "reference": None,
    "make_coord": "coords",
    "to_pixel_samples": "coords",
    "CheckpointError": "checkpoint",
    "load_model": "checkpoint",
    "save_model": "checkpoint",
    "psnr": "metrics",
    "upscale": "upscale",
}

__all__ = list(_HOMES)


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{_HOMES[name] or name}", __name__)
    value = module if _HOMES[name] is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """``lte_cuda.upscale`` is the function, not its module of the same name: importing the
    module (``from lte_cuda.upscale import ...``) binds the function here instead."""

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and _HOMES.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
