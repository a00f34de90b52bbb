"""Bounds on model specs, checked before anything is allocated.

A spec may come from an untrusted checkpoint or config: :func:`check_model_spec` checks
every argument's type and range and counts the numbers the model would hold (parameters
and buffers) from the spec alone, so that a file asking for ``n_resblocks: 200000`` is
refused in microseconds instead of growing the process by gigabytes. Errors are
``ValueError`` naming the key path (``model.args.encoder_spec.args.n_resblocks``) and value.
The bounds and the counts are declared by each model class (``arg_bounds``,
``count_numbers``, ``out_dim_of``; see :mod:`.bounds`); this module only walks the spec.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from .bounds import Bound, short_repr
from .lte import ENCODERS, IMNETS, LTE

# 1e9 float32 numbers are 4 GB: about 45 times the largest published LTE (RDN-LTE, 22M).
MAX_MODEL_NUMBERS = 1_000_000_000

_CLASSES: dict[str, type[nn.Module]] = {**ENCODERS, **IMNETS, "lte": LTE}
ARG_BOUNDS: dict[str, dict[str, Bound]] = {name: cls.arg_bounds for name, cls in _CLASSES.items()}
_SUB_SPECS = {"lte": ("encoder_spec", "imnet_spec")}
_PARTS = {"encoder_spec": tuple(ENCODERS), "imnet_spec": tuple(IMNETS)}


def check_model_spec(spec: Any, where: str = "model", limit: int = MAX_MODEL_NUMBERS) -> int:
    """Check ``spec = {'name': ..., 'args': {...}}`` and return how many numbers (parameters
    and buffers) the model it describes holds; ``ValueError`` if an argument is out of its
    class's ``arg_bounds`` or the count exceeds ``limit``. Nothing is allocated."""
    name, args = _name_and_args(spec, where, tuple(ARG_BOUNDS))
    if name == "lte":
        count = _count_lte(args, where)
    else:
        count = _CLASSES[name].count_numbers(args, f"{where}.args")
    if count > limit:
        raise ValueError(
            f"{where} describes a model of {count:,} numbers (parameters and buffers), more than "
            f"the limit of {limit:,}: args {short_repr(args, 300)}"
        )
    return count


def _name_and_args(spec: Any, where: str, known: tuple[str, ...]) -> tuple[str, dict]:
    """The checked name and args (defaults filled in) of a spec."""
    if not isinstance(spec, Mapping):
        raise ValueError(
            f"{where} must be a mapping with 'name' and 'args', got {short_repr(spec)}"
        )
    name = spec.get("name")
    if name not in known:
        raise ValueError(f"unknown model name {name!r} at {where}.name; known: {sorted(known)}")
    args = spec.get("args", {})
    if not isinstance(args, Mapping):
        raise ValueError(f"{where}.args must be a mapping, got {short_repr(args)}")
    bounds = ARG_BOUNDS[name]
    allowed = set(bounds) | set(_SUB_SPECS.get(name, ()))
    for key, value in args.items():
        if key not in allowed:
            raise ValueError(
                f"{where}.args.{key}: unknown argument of {name}; known: {sorted(allowed)}"
            )
        if key in bounds:
            bounds[key].check(value, f"{where}.args.{key}")
    return name, {**_defaults(name), **args}


def _defaults(name: str) -> dict[str, Any]:
    """The constructor's defaults: what an argument absent from a spec becomes."""
    parameters = inspect.signature(_CLASSES[name]).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _count_lte(args: dict, where: str) -> int:
    hidden = args["hidden_dim"]
    if hidden % 2:
        raise ValueError(f"{where}.args.hidden_dim must be even (cos/sin pairs), got {hidden}")
    parts = {}
    for key in _SUB_SPECS["lte"]:
        if key not in args:
            raise ValueError(f"{where}.args lacks {key!r}")
        sub_where = f"{where}.args.{key}"
        name, sub_args = _name_and_args(args[key], sub_where, _PARTS[key])
        parts[key] = (_CLASSES[name], sub_args, f"{sub_where}.args")
    encoder, encoder_args, encoder_where = parts["encoder_spec"]
    feats = encoder.out_dim_of(encoder_args)
    imnet, imnet_args, imnet_where = parts["imnet_spec"]
    numbers = encoder.count_numbers(encoder_args, encoder_where)
    numbers += imnet.count_numbers({**imnet_args, "in_dim": hidden}, imnet_where)
    # coef and freq 3x3 convolutions, the bias-free phase Linear (2 -> hidden / 2).
    return numbers + 2 * (9 * feats * hidden + hidden) + hidden
