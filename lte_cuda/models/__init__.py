"""Models in the published registry layout: ``make_model({'name': ..., 'args': {...}})``.

Names: ``lte`` (the full model), encoders ``edsr-baseline``, ``rdn``, ``swinir``, and the
decoder ``mlp``. :data:`PRESETS` holds the published LTE configurations, :data:`BACKENDS`
the implementations of the query step (:data:`DEFAULT_BACKEND` unless one is asked for).
Specs are checked against :mod:`.limits` before anything is built.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from .limits import MAX_MODEL_NUMBERS, check_model_spec
from .lte import BACKENDS, DEFAULT_BACKEND, ENCODERS, IMNETS, LTE, make_part
from .mlp import MLP

MODELS = {"lte": LTE, **ENCODERS, **IMNETS}

_IMNET_SPEC = {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [256, 256, 256]}}

# The published `model.args` of each configuration (as stored in its checkpoints).
PRESETS: dict[str, dict[str, Any]] = {
    f"{encoder}-lte": {
        "encoder_spec": {"name": encoder, "args": {"no_upsampling": True}},
        "imnet_spec": _IMNET_SPEC,
        "hidden_dim": 256,
    }
    for encoder in ENCODERS
}


def make_model(spec: dict, **extra_args: Any) -> nn.Module:
    """Build ``spec = {'name': ..., 'args': {...}}``; ``extra_args`` override ``spec['args']``
    (e.g. ``backend="reference"`` for ``lte``).

    ``ValueError`` naming the key and value for an unknown name, an argument out of bounds,
    or a model larger than :data:`MAX_MODEL_NUMBERS`, before anything is allocated.
    """
    if isinstance(spec, dict) and extra_args:
        spec = {**spec, "args": {**(spec.get("args") or {}), **extra_args}}
    check_model_spec(spec)
    return make_part(MODELS, spec, **extra_args)


def build_preset(name: str, encoder_args: dict | None = None, **overrides: Any) -> LTE:
    """Build a published configuration by name (a key of :data:`PRESETS`).

    ``encoder_args`` are merged into the encoder's args (e.g. ``{"n_resblocks": 2}`` for a
    small model); ``overrides`` replace LTE args (``hidden_dim``, ``imnet_spec``, ``backend``).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    args = copy.deepcopy(PRESETS[name])
    args["encoder_spec"]["args"].update(encoder_args or {})
    args.update(overrides)
    return LTE(**args)


__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "LTE",
    "MAX_MODEL_NUMBERS",
    "MLP",
    "MODELS",
    "PRESETS",
    "build_preset",
    "check_model_spec",
    "make_model",
]
