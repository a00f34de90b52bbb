"""The streaming pipeline: whole images decoded region by region in a memory budget, and
regions decoded from features. It calls the model only through an
:class:`~lte_cuda.inference.executor.Executor`."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch

from ..coords import Box
from ..models.lte import LTE, LTEFeatures
from .device import ENCODE_BYTES_PER_PIXEL, default_chunk, memory_budget
from .ensemble import DIHEDRAL_TRANSFORMS, self_ensemble
from .executor import Executor, torch_executor
from .features import FeatureSource
from .geometry import axis_coords, owned_outputs, padded_side, query_cell, with_margin
from .settings import InferenceSettings, settings_for
from .writing import Writer, write_run, writer


class NonFiniteOutputError(ValueError):
    """The model produced NaN or infinite values (its weights are likely corrupt)."""


def decode_box(
    executor: Executor,
    features: LTEFeatures,
    out_size: tuple[int, int],
    box: Box,
    chunk: int,
    write: Writer,
    on_chunk: Callable[[int], None] | None = None,
) -> None:
    """Decode output pixels ``box`` of an ``out_size`` output from ``features`` (which must
    cover the input pixels under ``box`` and one more around them), ``chunk`` queries at a
    time in row-major order, handing each run of pixels to ``write`` (and its length to
    ``on_chunk``)."""
    top, left, bottom, right = box
    dev = features.coef.device
    (out_h, out_w), (in_h, in_w) = out_size, features.image_size
    f_top, f_left, f_bottom, f_right = features.frame
    rows = axis_coords(out_h, in_h, f_top, f_bottom - f_top, dev)[top:bottom]
    cols = axis_coords(out_w, in_w, f_left, f_right - f_left, dev)[left:right]
    # One output pixel in the frame's units, enlarged beyond the trained scales.
    trained = executor.trained_max_scale
    cell = torch.tensor(
        [
            query_cell(out_h, in_h, f_bottom - f_top, trained),
            query_cell(out_w, in_w, f_right - f_left, trained),
        ],
        device=dev,
    )
    width, count = right - left, (bottom - top) * (right - left)
    for start in range(0, count, chunk):
        index = torch.arange(start, min(start + chunk, count), device=dev)
        coord = torch.stack((rows[index // width], cols[index % width]), dim=-1).unsqueeze(0)
        pred = executor.query(features, coord, cell.expand_as(coord).contiguous())
        if not torch.isfinite(pred).all():
            raise NonFiniteOutputError(
                "the model produced NaN or infinite values (corrupt weights?)"
            )
        write_run(write, top, left, width, start, pred[0].float().clamp_(0, 1).t())
        if on_chunk is not None:
            on_chunk(pred.shape[1])


def encode_image(
    model: LTE,
    rgb: torch.Tensor,
    *,
    device: str | torch.device | None = None,
    precision: str = "fp32",
) -> LTEFeatures:
    """rgb (1, 3, h, w) in [0, 1] -> features of the whole image (SwinIR: window-padded).

    The encoder runs on overlapping tiles when the image is larger than the memory budget
    allows (exact for EDSR-baseline and RDN; SwinIR is never tiled here). The model is
    moved to ``device`` in place and left there, its train/eval mode restored.
    """
    if rgb.dim() != 4 or rgb.shape[:2] != (1, 3):
        raise ValueError(f"rgb must have shape (1, 3, h, w), got {tuple(rgb.shape)}")
    settings = settings_for(device, precision=precision)
    with torch_executor(model, settings.device, precision) as executor, torch.inference_mode():
        source = FeatureSource(executor, rgb[0])
        tile, overlap = _tiling(executor, source.size, settings)
        return source.encode((0, 0, *source.size), tile, overlap)


def decode_region(
    model: LTE | Executor,
    features: LTEFeatures,
    out_size: tuple[int, int],
    box: Box,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Output pixels rows top:bottom, cols left:right (box = (top, left, bottom, right)) of
    the image of ``features`` upscaled to out_size (H, W), as float32 (3, bottom-top,
    right-left) in [0, 1]; equal to the same crop of lte_cuda.upscale(image, size=(W, H)).
    The features must cover the input pixels under ``box`` (and one more around them)."""
    top, left, bottom, right = box
    if not (0 <= top < bottom <= out_size[0] and 0 <= left < right <= out_size[1]):
        raise ValueError(f"box must lie inside the output {out_size} and be non-empty, got {box}")
    device = features.inp.device
    out = torch.empty((3, bottom - top, right - left), dtype=torch.float32, device=device)
    chunk = chunk_size or default_chunk(memory_budget(out.device))
    with _executor_for(model, device, "fp32") as executor, torch.inference_mode():
        decode_box(executor, features, out_size, box, chunk, writer(out, (top, left)))
    return out


def upscale_into(
    model: LTE | Executor, source: torch.Tensor, dest: torch.Tensor, settings: InferenceSettings
) -> None:
    """Upscale ``source (3, h, w)`` (uint8/uint16, or float in [0, 1]) into ``dest (C, H, W)``
    (C 3, or 1 for the mean of the channels; float in [0, 1], or uint8/uint16 rounded).

    An :class:`LTE` module is run by a :class:`~.executor.TorchExecutor` at the settings'
    device and precision: moved there in place and left there, its train/eval mode restored.
    Another executor runs as it is. Raises :class:`NonFiniteOutputError` if the model
    outputs NaN or inf.
    """
    with _executor_for(model, settings.device, settings.precision) as executor:
        out_size = tuple(dest.shape[-2:])
        passes = len(DIHEDRAL_TRANSFORMS) if settings.self_ensemble else 1
        total = passes * _region_count(executor, tuple(source.shape[-2:]), settings)
        report = _progress_counter(settings.progress, total)

        def decode(image: torch.Tensor, size: tuple[int, int], write: Writer) -> None:
            _stream(executor, image, size, write, settings, report)

        with torch.inference_mode():
            if settings.self_ensemble:
                self_ensemble(decode, source, out_size, writer(dest), dest.device)
            else:
                decode(source, out_size, writer(dest))


def _executor_for(
    model: LTE | Executor, device: torch.device, precision: str
) -> contextlib.AbstractContextManager[Executor]:
    """A context giving the executor that runs ``model`` (a torch one for a module)."""
    if isinstance(model, LTE):
        return torch_executor(model, device, precision)
    return contextlib.nullcontext(model)


def _stream(
    executor: Executor,
    pixels: torch.Tensor,
    out_size: tuple[int, int],
    write: Writer,
    settings: InferenceSettings,
    report: Callable[[], None],
) -> None:
    """Decode the whole output of ``pixels`` region by region (see the package docstring),
    calling ``report()`` after each region."""
    source = FeatureSource(executor, pixels)
    h, w = source.size
    tile, overlap = _tiling(executor, source.size, settings)
    if not _needs_streaming(executor, source.size, tile, settings):
        features = source.encode((0, 0, h, w), tile, overlap)
        box = (0, 0, *out_size)
        decode_box(
            executor, features, out_size, box, settings.chunk, write, settings.pixel_progress
        )
        report()
        return
    for y0 in range(0, h, tile):
        rows = owned_outputs(y0, min(y0 + tile, h), h, out_size[0])
        for x0 in range(0, w, tile):
            cols = owned_outputs(x0, min(x0 + tile, w), w, out_size[1])
            if rows[0] == rows[1] or cols[0] == cols[1]:
                report()  # a tile that owns no output pixel (downscaling)
                continue
            frame = with_margin((y0, x0, y0 + tile, x0 + tile), (h, w))
            features = source.encode(frame, tile + 2, overlap)
            box = (rows[0], cols[0], rows[1], cols[1])
            decode_box(
                executor, features, out_size, box, settings.chunk, write, settings.pixel_progress
            )
            report()


def _region_count(
    executor: Executor, image_size: tuple[int, int], settings: InferenceSettings
) -> int:
    """How many regions :func:`_stream` decodes an image of ``image_size`` in."""
    frame_size = tuple(padded_side(n, executor.traits.window) for n in image_size)
    tile, _ = _tiling(executor, frame_size, settings)
    if not _needs_streaming(executor, frame_size, tile, settings):
        return 1
    return math.ceil(frame_size[0] / tile) * math.ceil(frame_size[1] / tile)


def _progress_counter(
    progress: Callable[[int, int], None] | None, total: int
) -> Callable[[], None]:
    """A function that counts one region done and tells ``progress``."""
    done = 0

    def report() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    return report


def _needs_streaming(
    executor: Executor, frame_size: tuple[int, int], tile: int, settings: InferenceSettings
) -> bool:
    """Whether the maps of the whole input exceed half the budget (then they are streamed)."""
    if not executor.traits.local or tile >= max(frame_size):
        return False
    map_bytes = 2 * executor.channels * 4 * frame_size[0] * frame_size[1]
    return map_bytes > settings.budget // 2


def _tiling(
    executor: Executor, in_size: tuple[int, int], settings: InferenceSettings
) -> tuple[int, int]:
    """``(tile side, overlap)`` in encoder-input pixels; one tile covering all means no tiling."""
    whole = max(in_size)
    traits = executor.traits
    overlap = traits.radius if settings.tile_overlap is None else settings.tile_overlap
    if settings.tile_size is not None:
        tile = settings.tile_size
        if traits.window:
            # Tiles whose windows line up with the whole image's partition differ far less.
            tile, overlap = _round_up(tile, traits.window), _round_up(overlap, traits.window)
        return min(tile, whole), overlap
    pixels = settings.budget // ENCODE_BYTES_PER_PIXEL
    if not traits.local or in_size[0] * in_size[1] <= pixels:
        return whole, overlap
    # Keep the core at least as wide as the overlap, else recomputed borders dominate.
    return max(math.isqrt(pixels) - 2 * overlap, overlap, 16), overlap


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
