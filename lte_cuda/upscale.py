"""Upscale images to any size with an LTE model, in bounded memory.

:func:`upscale` takes a PIL image, a numpy array or a torch tensor and returns the same kind;
this module checks the arguments and finds the model, :mod:`lte_cuda.inference` does the
work (tiles, chunks, the memory budget) and :mod:`lte_cuda.image_io.convert` the conversions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from numbers import Integral, Real
from pathlib import Path

import torch

from .bicubic import bicubic_into
from .checkpoint import load_model
from .image_io.convert import ImageLike, to_pixels
from .inference import (
    Executor,
    NonFiniteOutputError,
    check_fits,
    output_bytes,
    settings_for,
    upscale_into,
)
from .inference.ensemble import DIHEDRAL_TRANSFORMS
from .models import LTE, PRESETS

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "default.pth"

# Requests beyond these are refused rather than attempted (2**31 pixels is 24 GiB of float32 RGB).
MAX_SIDE = 65536
MAX_PIXELS = 2**31


def upscale(
    image: ImageLike,
    scale: float | tuple[float, float] | None = None,
    size: tuple[int, int] | None = None,
    *,
    model: LTE | Executor | str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    chunk_size: int | None = None,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    self_ensemble: bool = False,
    memory_budget: int | None = None,
    runtime: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImageLike:
    """Super-resolve ``image`` by ``scale`` or to ``size`` with an LTE model.

    (Long for its argument documentation; the body is about twenty lines.)

    Args:
        image: a PIL image; a numpy array ``(H, W)`` or ``(H, W, C)``, uint8, uint16 or
            float in [0, 1]; or a float tensor ``(C, H, W)`` or ``(B, C, H, W)`` in [0, 1]. C is 1
            (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA). PIL modes other than L, LA, RGB
            and RGBA are converted to RGB (RGBA if they carry transparency) first.
        scale: a positive factor, or ``(scale_y, scale_x)``. The output is
            ``round(H * scale_y) x round(W * scale_x)`` (halves rounded up).
        size: the exact output ``(width, height)``. Pass exactly one of ``scale`` and ``size``.
        model: an :class:`~lte_cuda.models.LTE`, a checkpoint path, or a preset name with
            bundled weights (``lte_cuda/weights/<name>.pth``); ``None`` uses the bundled
            default model ``lte_cuda/weights/default.pth``. A module is moved to ``device``
            in place and left there, with its train/eval mode restored. With ``runtime``,
            also an ``lte-sr export --parts`` file (``OUT.onnx`` names its two graphs), or
            the executor :func:`resolve_runner` returns (reused across calls).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"``/``None`` (CUDA if present)
            or a ``torch.device``.
        precision: ``"auto"`` (bf16 on a CPU that computes it natively, else fp32: the rule
            of :mod:`lte_cuda.precision`), ``"fp32"``, ``"fp16"`` or ``"bf16"``; the
            reduced ones run under ``torch.autocast`` on ``device``. With ``runtime``:
            ``"fp32"`` (also for ``"auto"``) or ``"int8"`` (the MLP's matrix products
            quantised, :func:`lte_cuda.export.runtimes.quantize_int8`).
        chunk_size: output pixels decoded per model call; default from free device memory.
        tile_size: side, in input pixels, of the encoder tiles (without their overlap);
            default: none while the whole input fits the budget. Exact for EDSR-baseline and
            RDN; only approximate for SwinIR (global attention), tiled only when asked.
        tile_overlap: input pixels added around every tile; default the encoder's receptive
            radius (plus 4 windows for SwinIR).
        self_ensemble: average the outputs for the eight flips and transposes of the input
            (the "+" of EDSR+): 8x the time, usually a few hundredths of a dB better; it holds
            two float32 images of the output's size.
        memory_budget: bytes the working set (tiles, chunks) may use; default half the free
            memory of a CUDA device, or on CPU min(1 GiB, a quarter of MemAvailable). Above it
            the input is streamed in tiles (:mod:`lte_cuda.inference`).
        runtime: ``None`` (torch), ``"onnxruntime"`` or ``"openvino"``: the model's exported
            encode and query graphs run there, on the CPU, through the same tiles, chunks and
            budget (:mod:`lte_cuda.export`; needs the ``runtime`` extra). A module is exported
            once per runtime and precision and the result kept with it.
        progress: called as ``progress(done, total)`` in output pixels (every image of a
            batch and every pass of a self-ensemble counted) after each decoded chunk.
    Returns:
        The upscaled image as the same kind: PIL image of the same mode, numpy array of the
        same dtype (uint8/uint16 rounded) and layout, or tensor of the same dtype, device and layout.
        Colour goes through the model; gray inputs are replicated to RGB and the mean of the
        three predicted channels is returned; alpha is upscaled bicubically.

    Raises:
        TypeError: ``image``, ``scale``, ``size``, ``model`` or ``self_ensemble`` of an
            unsupported type.
        ValueError: out-of-range or malformed arguments, CUDA asked for but absent, no
            model available (:class:`~lte_cuda.checkpoint.CheckpointError` for bad files), or
            a model that outputs NaN or inf (:class:`~lte_cuda.inference.NonFiniteOutputError`,
            naming the model file).
    """
    pixels, new_output, restore = to_pixels(image)
    height, width = pixels.shape[-2:]
    out_h, out_w = output_size(height, width, scale, size)
    on_runtime = runtime is not None or _is_executor(model)
    _check_int8(precision, on_runtime)
    passes = len(DIHEDRAL_TRANSFORMS) if self_ensemble is True else 1
    total = len(pixels) * passes * out_h * out_w
    settings = settings_for(
        "cpu" if on_runtime and device in (None, "auto") else device,
        precision="fp32" if on_runtime else precision,  # the torch side's autocast: none
        chunk_size=chunk_size,
        tile_size=tile_size,
        tile_overlap=tile_overlap,
        self_ensemble=self_ensemble,
        budget=memory_budget,
        pixel_progress=None if progress is None else _pixel_counter(progress, total),
    )
    runner = resolve_runner(model, runtime, precision, settings.device)
    need = output_bytes(
        len(pixels), pixels.shape[1], (out_h, out_w), pixels.dtype, settings.self_ensemble
    )
    check_fits(need, pixels.device, f"the {out_w}x{out_h} output")
    result = new_output(out_h, out_w)
    _upscale_images(pixels, result, runner, settings, model)
    return restore(result)


def _upscale_images(pixels, result, runner, settings, model) -> None:
    """Each image of ``pixels (B, C, H, W)`` into its output in ``result``: colour through the
    model (gray replicated to RGB, the mean of the three predictions kept), alpha bicubically.
    A non-finite output from a model read from a file names that file."""
    channels = pixels.shape[1]
    for img, out in zip(pixels, result):
        rgb = img[:3] if channels >= 3 else img[:1].expand(3, -1, -1)
        try:
            upscale_into(runner, rgb, out[:3] if channels >= 3 else out[:1], settings)
        except NonFiniteOutputError as err:
            if isinstance(model, LTE) or _is_executor(model):
                raise  # a module: its caller knows where it came from
            raise NonFiniteOutputError(f"model {model_file(model)}: {err}") from None
        if channels in (2, 4):
            bicubic_into(img[-1], out[-1])


def _pixel_counter(progress: Callable[[int, int], None], total: int) -> Callable[[int], None]:
    """A per-chunk callback that sums the pixels decoded and tells ``progress``."""
    done = 0

    def count(pixels: int) -> None:
        nonlocal done
        done += pixels
        progress(done, total)

    return count


def _preset_weights(name: str) -> Path:
    """Where the bundled weights of preset ``name`` live."""
    return WEIGHTS_DIR / f"{name}.pth"


def model_file(model: str | os.PathLike | None) -> str:
    """The file :func:`resolve_model` reads for ``model`` (a path, a preset name or None)."""
    if model is None:
        return str(DEFAULT_WEIGHTS)
    if isinstance(model, str) and model in PRESETS:
        return str(_preset_weights(model))
    return str(model)


def output_size(
    height: int,
    width: int,
    scale: float | tuple[float, float] | None = None,
    size: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """The output ``(height, width)`` of :func:`upscale` for an input of ``height x width``;
    raises ``ValueError``/``TypeError`` naming the bad argument."""
    if (scale is None) == (size is None):
        got = "both" if scale is not None else "neither"
        raise ValueError(f"pass exactly one of scale= and size= (got {got})")
    if size is not None:
        if (
            not isinstance(size, Sequence)
            or isinstance(size, str)
            or len(size) != 2
            or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in size)
        ):
            raise TypeError(f"size must be (width, height) as two integers, got {size!r}")
        out_w, out_h = int(size[0]), int(size[1])
        if out_w < 1 or out_h < 1:
            raise ValueError(f"size must be positive, got {size!r}")
    else:
        scale_y, scale_x = _scale_pair(scale)
        # Compare before rounding: a huge finite scale would overflow int conversion.
        if height * scale_y > MAX_SIDE or width * scale_x > MAX_SIDE:
            raise ValueError(
                f"scale={scale!r} on a {width}x{height} image exceeds the maximum output side {MAX_SIDE}"
            )
        out_h = math.floor(height * scale_y + 0.5)
        out_w = math.floor(width * scale_x + 0.5)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"scale={scale!r} on a {width}x{height} image gives an empty output")
    if max(out_h, out_w) > MAX_SIDE or out_h * out_w > MAX_PIXELS:
        raise ValueError(
            f"output {out_w}x{out_h} is too large (limits: side {MAX_SIDE}, {MAX_PIXELS} pixels)"
        )
    return out_h, out_w


def _scale_pair(scale: object) -> tuple[float, float]:
    """``(scale_y, scale_x)`` from a number or a pair, checked positive and finite."""
    if isinstance(scale, Real) and not isinstance(scale, bool):
        pair = (scale, scale)
    elif (
        isinstance(scale, Sequence)
        and not isinstance(scale, str)
        and len(scale) == 2
        and all(isinstance(v, Real) and not isinstance(v, bool) for v in scale)
    ):
        pair = tuple(scale)
    else:
        raise TypeError(f"scale must be a number or (scale_y, scale_x), got {scale!r}")
    if not all(math.isfinite(v) and v > 0 for v in pair):
        raise ValueError(f"scale must be positive and finite, got {scale!r}")
    return float(pair[0]), float(pair[1])


def resolve_runner(
    model: LTE | Executor | str | os.PathLike | None,
    runtime: str | None = None,
    precision: str = "fp32",
    device: torch.device | None = None,
) -> LTE | Executor:
    """What runs ``model`` for :func:`upscale` (see there): the LTE module for torch, or with
    ``runtime`` an executor over its exported graphs (an executor given is used as it is)."""
    if _is_executor(model):
        return model
    _check_int8(precision, runtime is not None)
    if runtime is None:
        return resolve_model(model)
    if device is not None and device.type != "cpu":
        raise ValueError(f"runtime={runtime!r} runs on the CPU, got device={str(device)!r}")
    from .export.executor import runtime_executor  # the runtime extra, imported when asked for

    exported = isinstance(model, (str, os.PathLike)) and str(model).endswith(".onnx")
    graphs = "fp32" if precision == "auto" else precision  # a runtime's default: its fp32 graphs
    return runtime_executor(model if exported else resolve_model(model), runtime, graphs)


def _check_int8(precision: str, on_runtime: bool) -> None:
    """int8 graphs run on a runtime only: one clear line otherwise."""
    if precision == "int8" and not on_runtime:
        raise ValueError(
            "precision='int8' runs on a runtime: pass runtime='onnxruntime' or 'openvino'"
        )


def _is_executor(model: object) -> bool:
    """Whether ``model`` is an executor (not a module, a path or a name)."""
    return not isinstance(model, LTE) and hasattr(model, "encode_tile")


def resolve_model(model: LTE | str | os.PathLike | None = None) -> LTE:
    """The LTE module :func:`upscale` uses for ``model`` (see there).

    Raises ``TypeError`` for other types, ``ValueError`` when no weights are bundled for
    the request, :class:`~lte_cuda.checkpoint.CheckpointError` for a bad checkpoint file.
    """
    if isinstance(model, LTE):
        return model
    if model is None:
        if DEFAULT_WEIGHTS.is_file():
            return load_model(DEFAULT_WEIGHTS)
        raise ValueError(
            "no model given and no default model is bundled yet "
            f"(expected {DEFAULT_WEIGHTS}); pass a checkpoint path as model"
        )
    if isinstance(model, str) and model in PRESETS:
        weights = _preset_weights(model)
        if weights.is_file():
            return load_model(weights)
        # A preset without weights would only produce noise.
        raise ValueError(
            f"model={model!r} is a preset name but no weights are bundled for it "
            f"(expected {weights}); pass a checkpoint path"
        )
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    raise TypeError(
        f"model must be an LTE module, a checkpoint path or a preset name, got {type(model).__name__}"
    )
