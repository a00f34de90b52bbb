"""The input/output normalisation a model was trained with (the published ``data_norm``).

A model normalises its input pixels ``(x - inp.sub) / inp.div`` and its predictions come out
in the target's normalised units, turned back by ``y * gt.div + gt.sub``. The published code
reads the norm from the config and leaves it out of checkpoints; here the model spec holds it,
so every caller gets the same rule. Published checkpoints (no norm stored) were trained with
:data:`PUBLISHED_NORM`; a training config without ``data_norm`` trains with
:data:`IDENTITY_NORM`, as the published trainer does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

PUBLISHED_NORM = {"inp": {"sub": [0.5], "div": [0.5]}, "gt": {"sub": [0.5], "div": [0.5]}}
IDENTITY_NORM = {"inp": {"sub": [0], "div": [1]}, "gt": {"sub": [0], "div": [1]}}


def check_data_norm(value: Any, where: str = "data_norm") -> None:
    """``ValueError`` naming ``where`` unless ``value`` is ``{'inp': {'sub': [...], 'div':
    [...]}, 'gt': {...}}`` with 1 or 3 finite numbers per list (a zero divisor is let through,
    as published: training then stops on its non-finite loss)."""
    if not isinstance(value, Mapping) or set(value) != {"inp", "gt"}:
        raise ValueError(f"{where} must be a mapping with keys 'inp' and 'gt', got {value!r:.80}")
    for part in ("inp", "gt"):
        entry = value[part]
        if not isinstance(entry, Mapping) or set(entry) != {"sub", "div"}:
            raise ValueError(
                f"{where}.{part} must be a mapping with keys 'sub' and 'div', got {entry!r:.80}"
            )
        for key in ("sub", "div"):
            numbers = entry[key]
            ok = (
                isinstance(numbers, (list, tuple))
                and len(numbers) in (1, 3)
                and all(_finite(v) for v in numbers)
            )
            if not ok:
                raise ValueError(
                    f"{where}.{part}.{key} must be a list of 1 or 3 finite numbers, "
                    f"got {numbers!r:.80}"
                )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def norm_buffers(data_norm: Mapping) -> dict[str, torch.Tensor]:
    """``inp_sub``/``inp_div`` shaped to broadcast over images ``(B, 3, h, w)`` and
    ``gt_sub``/``gt_div`` over query values ``(B, Q, 3)``, float32."""
    shapes = {"inp": (1, -1, 1, 1), "gt": (1, 1, -1)}
    return {
        f"{part}_{key}": torch.tensor(data_norm[part][key], dtype=torch.float32).view(shape)
        for part, shape in shapes.items()
        for key in ("sub", "div")
    }
