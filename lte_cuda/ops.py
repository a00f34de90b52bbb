"""The fused LTE query op, ``lte_cuda.ops.lte_basis``.

The C++ library ``lte_cuda._C`` defines the ops ``lte_cuda::lte_basis`` and
``lte_cuda::lte_basis_backward`` with CPU (and, when built, CUDA) kernels. This module loads it
and adds what lives on the Python side: autograd, fake kernels for torch.compile, and the
autocast rule. Without a usable library it falls back to :mod:`lte_cuda.reference`, warning once.

Kernel variants: besides the default kernels (the ones verified on a GPU), variants toward the
memory bound are compiled into every build and chosen by name, through the environment variable
``LTE_CUDA_KERNEL`` (``default``, or a comma-separated list of names from
:data:`KERNEL_VARIANTS`) or :func:`set_kernel_variants`. docs/query-step.md describes them.
"""

from __future__ import annotations

import os
import warnings

import torch

from . import reference

REBUILD_HINT = "rebuild it against the installed torch with: pip install ."


def _load_library() -> tuple[str | None, bool]:
    """Loads lte_cuda._C; returns (why it is unusable or None, whether it has CUDA kernels)."""
    try:
        from . import _build_info
    except ImportError:
        return f"the compiled op library is not built ({REBUILD_HINT})", False
    if _build_info.TORCH_VERSION != torch.__version__:
        # Loading a library built against another torch can crash the process: refuse first.
        return (
            f"the compiled op library was built against torch {_build_info.TORCH_VERSION} but "
            f"torch {torch.__version__} is installed; {REBUILD_HINT}",
            False,
        )
    try:
        from . import _C  # noqa: F401  (registers the ops)
    except ImportError as err:
        return f"the compiled op library failed to load ({err}); {REBUILD_HINT}", False
    return None, _build_info.WITH_CUDA


LIBRARY_ERROR, HAS_CUDA_KERNELS = _load_library()
_warned_fallback = False

KERNEL_ENV = "LTE_CUDA_KERNEL"
KERNEL_VARIANTS: dict[str, str] = {
    "sync_free_backward": "the backward groups entries by pixel in buffers sized by the shapes "
    "alone (stable sort + binary search), so no device-to-host copy; same sums, same order",
    "autocast_x": "under autocast, float32 features are read as they are and x is written in "
    "the autocast dtype (no cast passes over the features); the backward reads grad_x in it",
}
_selected_variants: frozenset[str] | None = None  # None: read KERNEL_ENV at each use


def parse_kernel_variants(spec: str) -> frozenset[str]:
    """``"default"`` or comma-separated names of :data:`KERNEL_VARIANTS` -> the set of names."""
    names = {name.strip() for name in spec.split(",")} - {"", "default"}
    unknown = sorted(names - KERNEL_VARIANTS.keys())
    if unknown:
        raise ValueError(
            f"{KERNEL_ENV}: unknown kernel variant {', '.join(unknown)} in {spec!r}; known: "
            f"default, {', '.join(KERNEL_VARIANTS)}"
        )
    return frozenset(names)


def set_kernel_variants(spec: str | None) -> None:
    """Selects the kernel variants for the calls that follow (``"default"``: none); ``None``
    goes back to the environment variable ``LTE_CUDA_KERNEL``. Raises ValueError on unknown
    names."""
    global _selected_variants
    _selected_variants = None if spec is None else parse_kernel_variants(spec)


def active_kernel_variants() -> frozenset[str]:
    """The kernel variants in use: those of :func:`set_kernel_variants`, else of
    ``LTE_CUDA_KERNEL`` (empty: the default kernels)."""
    if _selected_variants is not None:
        return _selected_variants
    return parse_kernel_variants(os.environ.get(KERNEL_ENV, "default"))


def library_available() -> bool:
    """Whether the fused kernels are in use (otherwise lte_basis runs the reference)."""
    return LIBRARY_ERROR is None


def _check_inputs(coef, freq, phase_weight, coord, cell) -> None:
    """The C++ argument checks, mirrored for fake tensors and the reference fallback, in the
    C++ order so the two can be compared line by line: shapes, then dtypes and devices."""
    _check_shapes(coef, freq, phase_weight, coord, cell)
    _check_dtypes_and_devices(coef, freq, phase_weight, coord, cell)


def _check_shapes(coef, freq, phase_weight, coord, cell) -> None:
    torch._check(
        coef.dim() == 4,
        lambda: f"lte_basis: coef must have shape (B, C, h, w), got {tuple(coef.shape)}",
    )
    torch._check(
        freq.shape == coef.shape,
        lambda: (
            f"lte_basis: freq must have the shape of coef (B, C, h, w) = {tuple(coef.shape)}, got {tuple(freq.shape)}"
        ),
    )
    batch, channels = coef.shape[0], coef.shape[1]
    torch._check(
        channels > 0 and channels % 2 == 0,
        lambda: (
            f"lte_basis: the channel count C of coef must be even and positive, got C={channels}"
        ),
    )
    torch._check(
        coef.shape[2] >= 1 and coef.shape[3] >= 1,
        lambda: f"lte_basis: coef must have h >= 1 and w >= 1, got {tuple(coef.shape)}",
    )
    torch._check(
        tuple(phase_weight.shape) == (channels // 2, 2),
        lambda: (
            f"lte_basis: phase_weight must have shape (C/2, 2) = ({channels // 2}, 2), got {tuple(phase_weight.shape)}"
        ),
    )
    torch._check(
        coord.dim() == 3 and coord.shape[2] == 2,
        lambda: f"lte_basis: coord must have shape (B, Q, 2), got {tuple(coord.shape)}",
    )
    torch._check(
        cell.shape == coord.shape,
        lambda: (
            f"lte_basis: cell must have the shape of coord {tuple(coord.shape)}, got {tuple(cell.shape)}"
        ),
    )
    torch._check(
        coord.shape[0] == batch,
        lambda: f"lte_basis: coord has batch size {coord.shape[0]} but coef has batch size {batch}",
    )


def _check_dtypes_and_devices(coef, freq, phase_weight, coord, cell) -> None:
    floats = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    torch._check(
        coef.dtype in floats,
        lambda: f"lte_basis: coef must be float16, bfloat16, float32 or float64, got {coef.dtype}",
    )
    torch._check(
        freq.dtype == coef.dtype and phase_weight.dtype == coef.dtype,
        lambda: (
            "lte_basis: coef, freq and phase_weight must have one dtype, got coef "
            f"{coef.dtype}, freq {freq.dtype}, phase_weight {phase_weight.dtype}"
        ),
    )
    torch._check(
        coord.dtype == cell.dtype,
        lambda: (
            f"lte_basis: coord and cell must have one dtype, got coord {coord.dtype}, cell {cell.dtype}"
        ),
    )
    low_precision = coef.dtype in (torch.float16, torch.bfloat16)
    torch._check(
        coord.dtype == coef.dtype or (low_precision and coord.dtype == torch.float32),
        lambda: (
            f"lte_basis: coord and cell must have the dtype of coef ({coef.dtype}) or float32 "
            f"when coef is float16/bfloat16, got {coord.dtype}"
        ),
    )
    devices = [t.device for t in (coef, freq, phase_weight, coord, cell)]
    torch._check(
        all(d == devices[0] for d in devices),
        lambda: (
            "lte_basis: all tensors must be on one device, got coef {}, freq {}, "
            "phase_weight {}, coord {}, cell {}".format(*devices)
        ),
    )


def _check_output_dtype(what: str, dtype: torch.dtype, coef: torch.Tensor) -> torch.dtype:
    """The C++ rule for x and grad_x: coef's dtype, or float16/bfloat16 beside float32 coef.
    ``what`` starts the message, e.g. ``"lte_basis: out_dtype must be"``."""
    allowed = dtype == coef.dtype or (
        coef.dtype == torch.float32 and dtype in (torch.float16, torch.bfloat16)
    )
    torch._check(
        allowed,
        lambda: (
            f"{what} the dtype of coef ({coef.dtype}) or float16/bfloat16 when coef "
            f"is float32, got {dtype}"
        ),
    )
    return dtype


def _check_grad_x(grad_x, coef, coord) -> None:
    """The C++ checks of the backward's grad_x, mirrored for fake tensors."""
    expected = (coef.shape[0], coord.shape[1], 4, coef.shape[1])
    torch._check(
        tuple(grad_x.shape) == expected,
        lambda: (
            f"lte_basis_backward: grad_x must have shape (B, Q, 4, C) = {expected}, got "
            f"{tuple(grad_x.shape)}"
        ),
    )
    _check_output_dtype("lte_basis_backward: grad_x must have", grad_x.dtype, coef)
    torch._check(
        grad_x.device == coef.device,
        lambda: (
            f"lte_basis_backward: grad_x must be on the device of coef ({coef.device}), got "
            f"{grad_x.device}"
        ),
    )


def lte_basis(
    coef: torch.Tensor,
    freq: torch.Tensor,
    phase_weight: torch.Tensor,
    coord: torch.Tensor,
    cell: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LTE's query step, fused: the MLP inputs of each query's four neighbours and their weights.

    Args:
        coef: amplitude maps ``(B, C, h, w)``, C even.
        freq: frequency maps ``(B, C, h, w)``; channels ``2k, 2k+1`` are the (row, col) pair k.
        phase_weight: ``phase.weight`` of the LTE head, ``(C//2, 2)``.
        coord: query coordinates ``(B, Q, 2)``, (row, col) in [-1, 1] units; out-of-range
            values are clamped as the published code clamps them.
        cell: the query's output-pixel size ``(B, Q, 2)`` in the same units.

    Returns:
        ``x (B, Q, 4, C)``: the MLP input of each neighbour, neighbours in the order of row/col
        offsets (-1,-1), (-1,+1), (+1,-1), (+1,+1); ``x[..., k] = coef_k cos(pi phi_k)`` and
        ``x[..., C/2 + k] = coef_{C/2+k} sin(pi phi_k)``.
        ``weights (B, Q, 4)``: normalised area weights, each neighbour weighted by the area of
        the diagonally opposite one.

    Dtypes: float32 or float64 throughout; float16/bfloat16 features (coef, freq,
    phase_weight) with coord/cell of the same dtype or float32, computed in float32 and returned
    in the features' dtype. Under torch.autocast the features are cast to the autocast dtype and
    coord/cell to float32, by torch's own rule: float64 tensors are never cast (a float64 call
    runs as it is). With the ``autocast_x`` kernel variant, float32 features are not cast: x and
    weights come in the autocast dtype, computed from the float32 features.

    Gradients flow to coef, freq and phase_weight. coord and cell get none (they are data, and
    the nearest-pixel choice is piecewise constant); weights is not differentiable. Double
    backward is not supported and raises. A map without rows or columns is a ``ValueError``.
    Meta tensors give meta results of the right shapes (as under torch.compile).
    """
    if not torch.compiler.is_compiling():
        reference.check_map_size(coef)
    if LIBRARY_ERROR is None:
        if coef.is_cuda and not HAS_CUDA_KERNELS:
            raise RuntimeError(
                "lte_basis: got CUDA tensors but lte_cuda was built without CUDA kernels; rebuild "
                "with a CUDA build of torch: FORCE_CUDA=1 pip install ."
            )
        return torch.ops.lte_cuda.lte_basis(coef, freq, phase_weight, coord, cell)
    if os.environ.get("LTE_CUDA_REQUIRE_LIBRARY") == "1":
        raise RuntimeError(f"lte_basis: LTE_CUDA_REQUIRE_LIBRARY=1 but {LIBRARY_ERROR}")
    global _warned_fallback
    if not _warned_fallback:
        warnings.warn(f"lte_cuda: using the slow reference path: {LIBRARY_ERROR}", stacklevel=2)
        _warned_fallback = True
    if not torch.compiler.is_compiling():  # dynamo cannot trace the message lambdas
        _check_inputs(coef, freq, phase_weight, coord, cell)
    return reference.lte_basis(coef, freq, phase_weight, coord, cell)


def _feature_gradients(grad_x, inputs, wanted, sync_free) -> tuple[torch.Tensor | None, ...]:
    """The backward op's gradients of coef, freq and phase_weight; None where not ``wanted``."""
    grads = torch.ops.lte_cuda.lte_basis_backward(grad_x, *inputs, sync_free=sync_free)
    return tuple(grad if want else None for grad, want in zip(grads, wanted))


class _BasisLinear(torch.autograd.Function):
    """``F.linear(lte_basis(...)[0], weight, bias)`` that keeps the op's inputs, not x, for
    backward and recomputes x there (one more forward call of the op)."""

    @staticmethod
    def forward(ctx, coef, freq, phase_weight, coord, cell, weight, bias):
        x, weights = torch.ops.lte_cuda.lte_basis(coef, freq, phase_weight, coord, cell)
        ctx.save_for_backward(coef, freq, phase_weight, coord, cell, weight)
        ctx.has_bias = bias is not None
        ctx.sync_free = "sync_free_backward" in active_kernel_variants()
        ctx.mark_non_differentiable(weights)
        return torch.nn.functional.linear(x.reshape(-1, x.shape[-1]), weight, bias), weights

    @staticmethod
    def backward(ctx, grad_y, _grad_weights):
        coef, freq, phase_weight, coord, cell, weight = ctx.saved_tensors
        wanted = ctx.needs_input_grad
        grad_weight = grad_bias = None
        if wanted[5]:
            x, _ = torch.ops.lte_cuda.lte_basis(coef, freq, phase_weight, coord, cell)
            grad_weight = grad_y.T @ x.reshape(-1, x.shape[-1])
            del x  # free it before grad_x, its twin in size, is made
        if ctx.has_bias and wanted[6]:
            grad_bias = grad_y.sum(0)
        feature_grads = (None, None, None)
        if any(wanted[:3]):
            batch, queries, _ = coord.shape
            grad_x = (grad_y @ weight).view(batch, queries, 4, -1)
            feature_grads = _feature_gradients(
                grad_x, (coef, freq, phase_weight, coord, cell), wanted[:3], ctx.sync_free
            )
        return (*feature_grads, None, None, grad_weight, grad_bias)


def lte_basis_linear(
    coef: torch.Tensor,
    freq: torch.Tensor,
    phase_weight: torch.Tensor,
    coord: torch.Tensor,
    cell: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`lte_basis` followed by the MLP's first layer, ``F.linear(x, weight, bias)``, for
    training in less memory: returns ``(y, weights (B, Q, 4))`` with y as rows
    ``(B * Q * 4, out)``, one per query-neighbour pair in x's order, ready for the next layers.

    Same values and gradients (plus those of ``weight`` and ``bias``) as the two calls, but x,
    the largest tensor of a training step (``B*Q*4*C`` values), is not kept for backward: it
    is recomputed there, which costs one more forward call of the op. For float32/float64
    inputs outside autocast; elsewhere (reference fallback, half precision, autocast) it is
    exactly the two calls.
    """
    fused = (
        LIBRARY_ERROR is None
        and (HAS_CUDA_KERNELS or not coef.is_cuda)  # else lte_basis raises its clear error
        and not torch.is_autocast_enabled(coef.device.type)
        and coef.dtype in (torch.float32, torch.float64)
    )
    if fused:
        if not torch.compiler.is_compiling():
            reference.check_map_size(coef)
        return _BasisLinear.apply(coef, freq, phase_weight, coord, cell, weight, bias)
    x, weights = lte_basis(coef, freq, phase_weight, coord, cell)
    return torch.nn.functional.linear(x.reshape(-1, x.shape[-1]), weight, bias), weights


# ---- Python kernels of the two ops: fake (torch.compile), autograd, autocast ----------------


def _fake_lte_basis(coef, freq, phase_weight, coord, cell, out_dtype=None):
    _check_inputs(coef, freq, phase_weight, coord, cell)
    requested = coef.dtype if out_dtype is None else out_dtype
    dtype = _check_output_dtype("lte_basis: out_dtype must be", requested, coef)
    batch, channels = coef.shape[0], coef.shape[1]
    queries = coord.shape[1]
    x = coef.new_empty((batch, queries, 4, channels), dtype=dtype)
    return x, coef.new_empty((batch, queries, 4), dtype=dtype)


def _fake_lte_basis_backward(grad_x, coef, freq, phase_weight, coord, cell, sync_free=False):
    _check_inputs(coef, freq, phase_weight, coord, cell)
    _check_grad_x(grad_x, coef, coord)
    # The kernels return feature gradients channels-last strided, like their inputs' layout.
    like = {"dtype": coef.dtype, "device": coef.device}
    return (
        torch.empty_permuted(coef.shape, (0, 2, 3, 1), **like),
        torch.empty_permuted(freq.shape, (0, 2, 3, 1), **like),
        torch.empty(phase_weight.shape, **like),
    )


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:5])
    ctx.num_inputs = len(inputs)
    # The backward variant is fixed when the forward runs, as the rest of the tape is.
    ctx.sync_free = "sync_free_backward" in active_kernel_variants()
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_x, _grad_weights):
    wanted = ctx.needs_input_grad[:3]
    grads = _feature_gradients(grad_x, ctx.saved_tensors, wanted, ctx.sync_free)
    return (*grads, *[None] * (ctx.num_inputs - 3))


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "lte_basis: double backward (gradients of gradients) is not supported; use "
        "lte_cuda.reference.lte_basis if you need it (with a torch whose grid_sample has "
        "double backward: 2.13 has, 2.11 has not)"
    )


def _setup_backward_context(ctx, inputs, output) -> None:
    pass


def _autocast_cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """torch's own autocast rule: floating tensors go to ``dtype``, except float64 ones."""
    if tensor.is_floating_point() and tensor.dtype != torch.float64:
        return tensor.to(dtype)
    return tensor


def _autocast_lte_basis(device_type: str, coef, freq, phase_weight, coord, cell, out_dtype):
    """lte_basis under autocast: features in the autocast dtype, geometry in float32 (the
    nearest-pixel choice needs the bits), float64 left alone; the kernels compute in float32
    either way. On CPU, and on CUDA with the ``autocast_x`` variant, float32 features are read
    as they are and only x and weights are written in the autocast dtype."""
    dtype = torch.get_autocast_dtype(device_type)
    geometry = (_autocast_cast(coord, torch.float32), _autocast_cast(cell, torch.float32))
    features = (coef, freq, phase_weight)
    # The CPU kernels always read float32 features as given (x in the autocast dtype: half
    # the bytes written); on CUDA that waits for the autocast_x variant's GPU verification.
    read_as_given = (device_type == "cpu" or "autocast_x" in active_kernel_variants()) and all(
        t.dtype == torch.float32 for t in features
    )
    if read_as_given:
        out_dtype = dtype if out_dtype is None else out_dtype
    else:
        features = tuple(_autocast_cast(t, dtype) for t in features)
    with torch.autocast(device_type, enabled=False):
        return torch.ops.lte_cuda.lte_basis(*features, *geometry, out_dtype)


def _autocast_cpu(coef, freq, phase_weight, coord, cell, out_dtype=None):
    return _autocast_lte_basis("cpu", coef, freq, phase_weight, coord, cell, out_dtype)


def _autocast_cuda(coef, freq, phase_weight, coord, cell, out_dtype=None):
    return _autocast_lte_basis("cuda", coef, freq, phase_weight, coord, cell, out_dtype)


if LIBRARY_ERROR is None:
    torch.library.register_fake("lte_cuda::lte_basis", _fake_lte_basis)
    torch.library.register_fake("lte_cuda::lte_basis_backward", _fake_lte_basis_backward)
    torch.library.register_autograd("lte_cuda::lte_basis", _backward, setup_context=_setup_context)
    torch.library.register_autograd(
        "lte_cuda::lte_basis_backward", _no_double_backward, setup_context=_setup_backward_context
    )
    # torch.library.register_autocast casts every floating input to one dtype; the rule above
    # needs two (features, geometry), so the autocast kernels are registered directly. The
    # registrations live as long as this Library object.
    _AUTOCAST_LIBRARY = torch.library.Library("lte_cuda", "IMPL")
    _AUTOCAST_LIBRARY.impl("lte_basis", _autocast_cpu, "AutocastCPU")
    _AUTOCAST_LIBRARY.impl("lte_basis", _autocast_cuda, "AutocastCUDA")
