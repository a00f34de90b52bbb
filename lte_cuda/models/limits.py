"""Bounds on model specs, checked before anything is allocated.

A spec may come from an untrusted checkpoint or config: :func:`check_model_spec` checks
every argument's type and range and counts the numbers the model would hold (parameters
and buffers) from the spec alone, so that a file asking for ``n_resblocks: 200000`` is
refused in microseconds instead of growing the process by gigabytes. Errors are
``ValueError`` naming the key path (``model.args.encoder_spec.args.n_resblocks``) and value.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .lte import BACKENDS, ENCODERS, IMNETS, LTE
from .norm import check_data_norm
from .rdn import RDN_CONFIGS

# 1e9 float32 numbers are 4 GB: about 45 times the largest published LTE (RDN-LTE, 22M).
MAX_MODEL_NUMBERS = 1_000_000_000
_MAX_LIST = 64  # longest depths / num_heads / hidden_list


@dataclass(frozen=True)
class Bound:
    """What one argument may be (``kind``) and its range."""

    kind: str  # 'int', 'real', 'bool', 'int-list', 'choice' or 'data-norm'
    low: float = -math.inf
    high: float = math.inf
    choices: tuple = ()
    optional: bool = False  # None allowed
    min_items: int = 1  # shortest list for 'int-list'

    def check(self, value: Any, where: str) -> None:
        """Raise ``ValueError`` naming ``where`` unless ``value`` is within the bound."""
        if value is None and self.optional:
            return
        if self.kind == "data-norm":
            check_data_norm(value, where)
        elif self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{where} must be one of {list(self.choices)}, got {value!r}")
        elif self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{where} must be true or false, got {value!r}")
        elif self.kind == "int-list":
            if (
                not isinstance(value, (list, tuple))
                or not self.min_items <= len(value) <= _MAX_LIST
            ):
                raise ValueError(
                    f"{where} must be a list of {self.min_items} to {_MAX_LIST} integers, "
                    f"got {_short(value)}"
                )
            for i, item in enumerate(value):
                _check_number(item, f"{where}[{i}]", True, self.low, self.high)
        else:
            _check_number(value, where, self.kind == "int", self.low, self.high)


def _check_number(value: Any, where: str, integer: bool, low: float, high: float) -> None:
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        noun = "an integer" if integer else "a number"
        raise ValueError(f"{where} must be {noun} in [{low:g}, {high:g}], got {_short(value)}")


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _int(low: int, high: int, optional: bool = False) -> Bound:
    return Bound("int", low, high, optional=optional)


def _real(low: float, high: float, optional: bool = False) -> Bound:
    return Bound("real", low, high, optional=optional)


BOOL = Bound("bool")
SCALE = _int(1, 64)  # the unused upsampling tail's scale, accepted as published configs carry it

ARG_BOUNDS: dict[str, dict[str, Bound]] = {
    "edsr-baseline": {
        "n_resblocks": _int(0, 1024),
        "n_feats": _int(1, 4096),
        "res_scale": _real(0, 100),
        "scale": SCALE,
        "no_upsampling": BOOL,
        "rgb_range": _real(1e-6, 1e6),
    },
    "rdn": {
        "G0": _int(1, 4096),
        "RDNkSize": _int(1, 15),
        "RDNconfig": Bound("choice", choices=tuple(RDN_CONFIGS)),
        "scale": SCALE,
        "no_upsampling": BOOL,
        "D": _int(1, 1024, True),
        "C": _int(1, 1024, True),
        "G": _int(1, 4096, True),
    },
    "swinir": {
        "no_upsampling": BOOL,
        "img_size": _int(2, 1024),
        "embed_dim": _int(1, 4096),
        "depths": Bound("int-list", 1, 256),
        "num_heads": Bound("int-list", 1, 256),
        "window_size": _int(1, 64),
        "mlp_ratio": _real(1e-3, 64),
        "qkv_bias": BOOL,
        "qk_scale": _real(0, 1e6, True),
        "drop_path_rate": _real(0, 1),
    },
    "mlp": {
        "in_dim": _int(1, 8192),
        "out_dim": _int(1, 8192),
        "hidden_list": Bound("int-list", 1, 8192, min_items=0),
    },
    "lte": {
        "hidden_dim": _int(2, 8192),
        "backend": Bound("choice", choices=BACKENDS),
        "data_norm": Bound("data-norm", optional=True),
    },
}
_CONSTRUCTORS: dict[str, Callable[..., Any]] = {**ENCODERS, **IMNETS, "lte": LTE}
_SUB_SPECS = {"lte": ("encoder_spec", "imnet_spec")}
_PARTS = {"encoder_spec": ("edsr-baseline", "rdn", "swinir"), "imnet_spec": ("mlp",)}


def check_model_spec(spec: Any, where: str = "model", limit: int = MAX_MODEL_NUMBERS) -> int:
    """Check ``spec = {'name': ..., 'args': {...}}`` and return how many numbers (parameters
    and buffers) the model it describes holds; ``ValueError`` if an argument is out of its
    :data:`ARG_BOUNDS` or the count exceeds ``limit``. Nothing is allocated."""
    name, args = _name_and_args(spec, where, tuple(ARG_BOUNDS))
    count = _count(name, args, where)
    if count > limit:
        raise ValueError(
            f"{where} describes a model of {count:,} numbers (parameters and buffers), more than "
            f"the limit of {limit:,}: args {_short(args, 300)}"
        )
    return count


def _name_and_args(spec: Any, where: str, known: tuple[str, ...]) -> tuple[str, dict]:
    """The checked name and args (defaults filled in) of a spec."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where} must be a mapping with 'name' and 'args', got {_short(spec)}")
    name = spec.get("name")
    if name not in known:
        raise ValueError(f"unknown model name {name!r} at {where}.name; known: {sorted(known)}")
    args = spec.get("args", {})
    if not isinstance(args, Mapping):
        raise ValueError(f"{where}.args must be a mapping, got {_short(args)}")
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
    parameters = inspect.signature(_CONSTRUCTORS[name]).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _count(name: str, args: dict, where: str) -> int:
    if name == "lte":
        return _count_lte(args, where)
    return _COUNTERS[name](args, f"{where}.args")


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
        parts[key] = (name, sub_args, sub_where)
    name, encoder_args, encoder_where = parts["encoder_spec"]
    encoder = _COUNTERS[name](encoder_args, f"{encoder_where}.args")
    feats = _encoder_out_dim(name, encoder_args)
    imnet_args = {**parts["imnet_spec"][1], "in_dim": hidden}
    imnet = _count_mlp(imnet_args, f"{parts['imnet_spec'][2]}.args")
    # coef and freq 3x3 convolutions, the bias-free phase Linear (2 -> hidden / 2).
    return encoder + 2 * (9 * feats * hidden + hidden) + hidden + imnet


def _conv(c_in: int, c_out: int, k: int = 3) -> int:
    return c_in * c_out * k * k + c_out


def _count_edsr(a: dict, where: str) -> int:
    feats = a["n_feats"]
    mean_shifts = 2 * _conv(3, 3, 1)
    blocks = a["n_resblocks"] * 2 * _conv(feats, feats)
    return mean_shifts + _conv(3, feats) + blocks + _conv(feats, feats)


def _rdn_shape(a: dict) -> tuple[int, int, int]:
    blocks, convs, growth = RDN_CONFIGS[a["RDNconfig"]]
    return (
        blocks if a["D"] is None else a["D"],
        convs if a["C"] is None else a["C"],
        growth if a["G"] is None else a["G"],
    )


def _count_rdn(a: dict, where: str) -> int:
    g0, k = a["G0"], a["RDNkSize"]
    if k % 2 == 0:
        raise ValueError(f"{where}.RDNkSize must be odd (same-size convolutions), got {k}")
    blocks, convs, growth = _rdn_shape(a)
    block = sum(_conv(g0 + c * growth, growth, k) for c in range(convs)) + _conv(
        g0 + convs * growth, g0, 1
    )
    return (
        _conv(3, g0, k)
        + _conv(g0, g0, k)
        + blocks * block
        + _conv(blocks * g0, g0, 1)
        + _conv(g0, g0, k)
    )


def _count_swinir(a: dict, where: str) -> int:
    dim, window, size = a["embed_dim"], a["window_size"], a["img_size"]
    depths, heads = list(a["depths"]), list(a["num_heads"])
    if len(depths) != len(heads):
        raise ValueError(f"{where}.depths {depths} and {where}.num_heads {heads} differ in length")
    if size <= window or size % window:
        raise ValueError(
            f"{where}.img_size must be a multiple of window_size ({window}) above it, got {size}"
        )
    for i, h in enumerate(heads):
        if dim % h:
            raise ValueError(f"{where}.num_heads[{i}] = {h} does not divide embed_dim {dim}")
    hidden = int(dim * a["mlp_ratio"])
    total = _conv(3, dim) + 2 * dim  # conv_first, patch_embed norm
    for depth, h in zip(depths, heads, strict=True):
        for i in range(depth):
            attention = (2 * window - 1) ** 2 * h + window**4 + 3 * dim * dim + dim * dim + dim
            attention += 3 * dim if a["qkv_bias"] else 0
            mlp = dim * hidden + hidden + hidden * dim + dim
            shifted = i % 2 == 1 and window // 2 > 0
            mask = size * size * window * window if shifted else 0
            total += 4 * dim + attention + mlp + mask  # 4 * dim: the two LayerNorms
        total += _conv(dim, dim)
    return total + 2 * dim + _conv(dim, dim) + _conv(dim, _SWINIR_OUT_DIM)


def _count_mlp(a: dict, where: str) -> int:
    missing = [key for key in ("in_dim", "out_dim", "hidden_list") if key not in a]
    if missing:
        raise ValueError(f"{where} lacks {missing}")
    dims = [a["in_dim"], *a["hidden_list"], a["out_dim"]]
    return sum(d_in * d_out + d_out for d_in, d_out in zip(dims[:-1], dims[1:], strict=True))


_SWINIR_OUT_DIM = 64  # SwinIR.out_dim: its last convolution's fixed width


def _encoder_out_dim(name: str, args: dict) -> int:
    if name == "swinir":
        return _SWINIR_OUT_DIM
    return args["n_feats"] if name == "edsr-baseline" else args["G0"]


_COUNTERS: dict[str, Callable[[dict, str], int]] = {
    "edsr-baseline": _count_edsr,
    "rdn": _count_rdn,
    "swinir": _count_swinir,
    "mlp": _count_mlp,
}
