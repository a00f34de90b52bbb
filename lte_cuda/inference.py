"""Running an LTE model on whole images: one home for the rules every caller shares.

Device choice, the memory budget, SwinIR's window padding, the cell rule, tiling and the
encode/decode loop live here; :mod:`lte_cuda.upscale`, :mod:`lte_cuda.evaluate`,
:mod:`lte_cuda.demo` and :mod:`lte_cuda.texture_map` call them.

Memory stays bounded by a budget whatever the input and output size. When the coef/freq maps
of the whole input fit the budget they are built once (the encoder itself running on
overlapping tiles if needed) and every output pixel is decoded from them. Otherwise the work
streams over tiles of the input: a tile is encoded with the overlap of the encoder's receptive
field, its maps are built, the output pixels whose centres lie in it (their four neighbours
then lie in the tile grown by one pixel) are decoded and written, and the tile is dropped.
For convolutional encoders (EDSR-baseline, RDN) both give the untiled result to float
rounding; SwinIR is never streamed and only tiled when asked.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .coords import make_coord
from .image_io.convert import pixel_scale
from .models.lte import LTE, LTEFeatures
from .precision import autocast, resolve_precision

# The published models were trained on scales up to 4; above it the cell is enlarged.
TRAINED_MAX_SCALE = 4.0
# The eight flips and transposes of the image plane, (transpose, flip_y, flip_x); the first is
# the identity. Self-ensemble averages the model's outputs over them.
DIHEDRAL_TRANSFORMS = [
    (t, fy, fx) for t in (False, True) for fy in (False, True) for fx in (False, True)
]
# Encoders built only from stride-1 convolutions and pointwise ops: tiling them with an
# overlap of their receptive radius reproduces the untiled features.
LOCAL_ENCODERS = ("edsr-baseline", "rdn")

# Rough working-set estimates (float32, reference query path) used to size tiles and chunks:
# a query holds 4 neighbours x C=256 MLP inputs plus activations and gathered features;
# an encoder pixel holds RDN's dense concatenations (up to ~2k channels) plus coef/freq maps.
DECODE_BYTES_PER_QUERY = 32 * 1024
ENCODE_BYTES_PER_PIXEL = 16 * 1024
MIN_CHUNK, MAX_CHUNK = 1024, 2**20
CPU_BUDGET_CAP = 1 << 30
# Output rows converted at a time when a float result is written into its final dtype.
WRITE_BLOCK_PIXELS = 1 << 22

Box = tuple[int, int, int, int]  # (top, left, bottom, right), bottom/right exclusive
Writer = Callable[[int, int, torch.Tensor], None]  # (row, col, values (3, rows, cols) in [0, 1])


class NonFiniteOutputError(ValueError):
    """The model produced NaN or infinite values (its weights are likely corrupt)."""


@dataclass(frozen=True)
class InferenceSettings:
    """How one run uses the machine; :func:`settings_for` fills in the defaults."""

    device: torch.device
    budget: int  # bytes the working set may use (tiles, chunks)
    chunk: int  # output pixels decoded per model call
    precision: str = "fp32"  # resolved (fp32, bf16, fp16): lte_cuda.precision
    tile_size: int | None = None  # encoder tile side in input pixels; None: from the budget
    tile_overlap: int | None = None  # None: the encoder's receptive radius
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
    """Settings with ``device`` and ``precision`` (``"auto"`` too) resolved and the budget and
    chunk size defaulted from the device's free memory (the other arguments are assumed
    checked, as :mod:`lte_cuda.upscale` does)."""
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev).name
    budget = memory_budget(dev) if budget is None else budget
    chunk = chunk_size or default_chunk(budget)
    return InferenceSettings(
        dev,
        budget,
        chunk,
        precision,
        tile_size,
        tile_overlap,
        self_ensemble,
        progress,
        pixel_progress,
    )


def default_chunk(budget: int) -> int:
    """Output pixels decoded per model call for a working-set budget of ``budget`` bytes."""
    return min(max(budget // DECODE_BYTES_PER_QUERY, MIN_CHUNK), MAX_CHUNK)


# ----------------------------------------------------------------------------- machine


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``torch.device`` for ``device`` (``None``/``"auto"``: CUDA if available, else CPU);
    ``ValueError`` if it is malformed or names a CUDA device that is not there."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}"
        ) from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r} was asked for but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={str(device)!r} was asked for but only {torch.cuda.device_count()} "
                "CUDA device(s) exist"
            )
    return dev


def memory_budget(device: torch.device) -> int:
    """Bytes a call may use for its working set: half the free memory of a CUDA device, or
    on CPU ``min(1 GiB, a quarter of MemAvailable)``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return min(CPU_BUDGET_CAP, available_ram() // 4)


def check_fits(nbytes: int, device: torch.device, what: str) -> None:
    """``ValueError`` naming ``what`` when ``nbytes`` exceed the memory free on ``device``
    (MemAvailable on CPU): one clear line before allocating, instead of an out-of-memory kill."""
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_ram()
    if nbytes > free:
        raise ValueError(
            f"{what} needs {nbytes / 2**30:.2f} GiB, more than the {free / 2**30:.2f} GiB "
            f"free on {device}"
        )


def output_bytes(
    batch: int, channels: int, size: tuple[int, int], dtype: torch.dtype, self_ensemble: bool
) -> int:
    """Bytes :func:`upscale_into` needs beside its working set for ``batch`` outputs of
    ``size``: the outputs, and the two float32 images of a self-ensemble."""
    pixels = size[0] * size[1]
    ensemble = 2 * 3 * pixels * 4 if self_ensemble else 0
    return batch * channels * pixels * dtype.itemsize + ensemble


def available_ram() -> int:
    """MemAvailable from /proc/meminfo; where that is unreadable, assume 4 GiB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def autocast_for(settings: InferenceSettings) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for a reduced precision, else a context that does nothing."""
    return autocast(settings.precision, settings.device)


# ----------------------------------------------------------------------------- model rules


def encoder_name(model: nn.Module) -> str:
    """The registry name of ``model``'s encoder (``"edsr-baseline"``, ``"rdn"``, ``"swinir"``)."""
    spec = getattr(model, "spec", None) or {}
    return spec.get("args", {}).get("encoder_spec", {}).get("name", "")


def padding_window(model: nn.Module) -> int:
    """The window a SwinIR encoder needs its input padded to (its own ``window_size``), else 0."""
    return model.encoder.window_size if encoder_name(model) == "swinir" else 0


def padded_side(n: int, window: int) -> int:
    """A side of ``n`` pixels after the published SwinIR padding (``window`` 0: unpadded)."""
    return (n // window + 1) * window if window else n


def reflect_pad_to_window(inp: torch.Tensor, window: int) -> torch.Tensor:
    """Pad bottom/right by mirroring to ``(h // window + 1) * window`` rows (and columns), as
    the published SwinIR test does; images smaller than half a window are mirrored again."""
    for dim in (-2, -1):
        target = padded_side(inp.shape[dim], window)
        while inp.shape[dim] < target:
            inp = torch.cat([inp, inp.flip(dim)], dim)
        inp = inp.narrow(dim, 0, target)
    return inp


def receptive_radius(module: nn.Module) -> int:
    """How far (in pixels) an output of ``module`` can see, if it chains stride-1
    convolutions and pointwise ops: the sum of every conv's reach. It is an upper bound,
    exact when all convolutions lie on one path (EDSR-baseline: 1 + 16*2 + 1 = 34;
    RDN config B: 1 + 1 + 16*8 + 1 = 131)."""
    radius = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            if m.stride != (1, 1):
                raise ValueError(f"cannot tile through a strided convolution {m}")
            radius += max(d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size))
    return radius


def cell_enlargement(scale: float, trained_max_scale: float = TRAINED_MAX_SCALE) -> float:
    """Factor on the cell for an upscaling ``scale`` beyond the training range (published)."""
    return max(scale / trained_max_scale, 1.0)


def query_cell(n_out: int, n_image: int, n_frame: int) -> float:
    """Cell of one output pixel along an axis, in [-1, 1] units of a feature frame of
    ``n_frame`` input pixels, for ``n_out`` output pixels spanning ``n_image`` input pixels,
    enlarged beyond the trained scales."""
    return 2.0 / n_out * n_image / n_frame * cell_enlargement(n_out / n_image)


def axis_coords(
    n_out: int, n_image: int, frame_start: int, n_frame: int, device: torch.device
) -> torch.Tensor:
    """Centres of ``n_out`` output pixels spanning ``n_image`` input pixels, in [-1, 1]
    units of the frame of input pixels ``frame_start : frame_start + n_frame``."""
    if frame_start == 0 and n_frame == n_image:
        return make_coord((n_out,), device=device)[:, 0]
    centres = (torch.arange(n_out, dtype=torch.float64, device=device) * 2 + 1) * (n_image / n_out)
    return ((centres - 2 * frame_start) / n_frame - 1).float()


# ----------------------------------------------------------------------------- encode / decode


def normalise(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``pixels (3, h, w)`` (uint8/uint16, or float in [0, 1]) -> ``(1, 3, h, w)`` float32
    in [-1, 1] on ``device``, as the model expects."""
    image = pixels.to(device)
    if image.is_floating_point():
        image = image.float()
    else:
        image = image.float() / pixel_scale(pixels.dtype)
    return ((image - 0.5) / 0.5).unsqueeze(0)


def encode_box(
    model: LTE, source: torch.Tensor, box: Box, tile: int, overlap: int, device: torch.device
) -> LTEFeatures:
    """Features of the pixels ``box`` of ``source (3, h, w)`` (the encoder's input, see
    :func:`normalise`), running the encoder on tiles of ``tile`` pixels grown by ``overlap``
    (clipped to ``source``) and keeping only each tile's own pixels."""
    top, left, bottom, right = box
    h, w = source.shape[-2:]
    coef_map = freq_map = None
    for y0 in range(top, bottom, tile):
        for x0 in range(left, right, tile):
            y1, x1 = min(y0 + tile, bottom), min(x0 + tile, right)
            ya, xa = max(y0 - overlap, 0), max(x0 - overlap, 0)
            yb, xb = min(y1 + overlap, h), min(x1 + overlap, w)
            feat = model.encoder(normalise(source[:, ya:yb, xa:xb], device))
            # SwinIR pads a tile to its window at the bottom/right: keep the tile's own pixels.
            feat = feat[:, :, : yb - ya, : xb - xa]
            core = (slice(None), slice(None), slice(y0 - ya, y1 - ya), slice(x0 - xa, x1 - xa))
            coef, freq = model.coef(feat)[core], model.freq(feat)[core]
            if coef_map is None:
                # Channels-last: the layout the fused op reads, so no chunk has to copy the maps.
                shape = (1, coef.shape[1], bottom - top, right - left)
                like = {"dtype": coef.dtype, "device": coef.device}
                coef_map = torch.empty(shape, memory_format=torch.channels_last, **like)
                freq_map = torch.empty(shape, memory_format=torch.channels_last, **like)
            place = (
                slice(None),
                slice(None),
                slice(y0 - top, y1 - top),
                slice(x0 - left, x1 - left),
            )
            coef_map[place] = coef
            freq_map[place] = freq
    inp = normalise(source[:, top:bottom, left:right], device)
    return LTEFeatures(inp=inp, coef=coef_map, freq=freq_map)


def encode_image(
    model: LTE,
    rgb: torch.Tensor,
    *,
    device: str | torch.device | None = None,
    precision: str = "fp32",
) -> LTEFeatures:
    """rgb (1, 3, h, w) in [0, 1] -> features of the whole image (normalised, SwinIR-padded).

    The encoder runs on overlapping tiles when the image is larger than the memory budget
    allows (exact for EDSR-baseline and RDN; SwinIR is never tiled here). The model is put
    in eval mode on ``device`` and left there.
    """
    if rgb.dim() != 4 or rgb.shape[:2] != (1, 3):
        raise ValueError(f"rgb must have shape (1, 3, h, w), got {tuple(rgb.shape)}")
    settings = settings_for(device, precision=precision)
    source = _encoder_source(model, rgb[0])
    tile, overlap = _tiling(model, source.shape[-2:], settings)
    model.to(settings.device).eval()
    with torch.inference_mode(), autocast_for(settings):
        return encode_box(model, source, (0, 0, *source.shape[-2:]), tile, overlap, settings.device)


def decode_region(
    model: LTE,
    features: LTEFeatures,
    image_size: tuple[int, int],
    out_size: tuple[int, int],
    box: Box,
    *,
    frame: Box | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Output pixels rows top:bottom, cols left:right (box = (top, left, bottom, right)) of
    the image upscaled to out_size (H, W) from an input of image_size (h, w), as float32
    (3, bottom-top, right-left) in [0, 1]; equal to the same crop of
    lte_cuda.upscale(image, size=(W, H)). ``frame`` is the input box the features cover
    (default: the whole image); it must hold the input pixels under ``box``."""
    top, left, bottom, right = box
    if not (0 <= top < bottom <= out_size[0] and 0 <= left < right <= out_size[1]):
        raise ValueError(f"box must lie inside the output {out_size} and be non-empty, got {box}")
    out = torch.empty(
        (3, bottom - top, right - left), dtype=torch.float32, device=features.inp.device
    )
    frame = frame or (0, 0, *features.inp.shape[-2:])
    chunk = chunk_size or default_chunk(memory_budget(out.device))
    with torch.inference_mode():
        decode_box(
            model, features, frame, image_size, out_size, box, chunk, _writer(out, (top, left))
        )
    return out


def decode_box(
    model: LTE,
    features: LTEFeatures,
    frame: Box,
    image_size: tuple[int, int],
    out_size: tuple[int, int],
    box: Box,
    chunk: int,
    write: Writer,
    on_chunk: Callable[[int], None] | None = None,
) -> None:
    """Decode output pixels ``box`` from ``features`` of the input pixels ``frame``, ``chunk``
    queries at a time in row-major order, handing each run of pixels to ``write`` (and its
    length to ``on_chunk``)."""
    top, left, bottom, right = box
    dev = features.coef.device
    (out_h, out_w), (in_h, in_w) = out_size, image_size
    f_top, f_left, f_bottom, f_right = frame
    rows = axis_coords(out_h, in_h, f_top, f_bottom - f_top, dev)[top:bottom]
    cols = axis_coords(out_w, in_w, f_left, f_right - f_left, dev)[left:right]
    # One output pixel in the frame's units, enlarged beyond the trained scales.
    cell = torch.tensor(
        [query_cell(out_h, in_h, f_bottom - f_top), query_cell(out_w, in_w, f_right - f_left)],
        device=dev,
    )
    width, count = right - left, (bottom - top) * (right - left)
    for start in range(0, count, chunk):
        index = torch.arange(start, min(start + chunk, count), device=dev)
        coord = torch.stack((rows[index // width], cols[index % width]), dim=-1).unsqueeze(0)
        pred = model.query(features, coord, cell.expand_as(coord).contiguous())
        if not torch.isfinite(pred).all():
            raise NonFiniteOutputError(
                "the model produced NaN or infinite values (corrupt weights?)"
            )
        values = (pred[0].float() * 0.5 + 0.5).clamp_(0, 1).t()
        _write_run(write, top, left, width, start, values)
        if on_chunk is not None:
            on_chunk(values.shape[1])


def _write_run(
    write: Writer, top: int, left: int, width: int, start: int, values: torch.Tensor
) -> None:
    """Hand ``values (3, n)``, the row-major pixels ``start:start+n`` of a box ``width``
    wide at (top, left), to ``write`` as at most three rectangles."""
    n = values.shape[1]
    row, col = divmod(start, width)
    pos = 0
    if col:  # the end of a row begun by the previous chunk
        pos = min(width - col, n)
        write(top + row, left + col, values[:, :pos].unsqueeze(1))
        row += 1
    full = (n - pos) // width
    if full:
        write(top + row, left, values[:, pos : pos + full * width].reshape(3, full, width))
        pos, row = pos + full * width, row + full
    if pos < n:
        write(top + row, left, values[:, pos:].unsqueeze(1))


def _writer(dest: torch.Tensor, origin: tuple[int, int] = (0, 0)) -> Writer:
    """A writer into ``dest (C, H, W)`` (C 1: the mean of the three channels; integer dtypes:
    rounded to their full range) for boxes given in coordinates offset by ``origin``."""
    scale = None if dest.is_floating_point() else pixel_scale(dest.dtype)

    def write(row: int, col: int, values: torch.Tensor) -> None:
        if dest.shape[0] == 1:
            values = values.mean(dim=0, keepdim=True)
        if scale is not None:
            values = (values * scale).round_()
        row, col = row - origin[0], col - origin[1]
        dest[:, row : row + values.shape[1], col : col + values.shape[2]].copy_(values)

    return write


# ----------------------------------------------------------------------------- whole images


def upscale_into(
    model: LTE, source: torch.Tensor, dest: torch.Tensor, settings: InferenceSettings
) -> None:
    """Upscale ``source (3, h, w)`` (uint8/uint16, or float in [0, 1]) into ``dest (C, H, W)``
    (C 3, or 1 for the mean of the channels; float in [0, 1], or uint8/uint16 rounded).

    The model is moved to the settings' device in place and left there, its train/eval mode
    restored. Raises :class:`NonFiniteOutputError` if the model outputs NaN or inf.
    """
    out_size = tuple(dest.shape[-2:])
    passes = len(DIHEDRAL_TRANSFORMS) if settings.self_ensemble else 1
    report = _progress_counter(settings.progress, passes * _region_count(model, source, settings))
    was_training = model.training
    # Moved outside inference mode, so the parameters stay usable for training afterwards.
    model.to(settings.device).eval()
    try:
        with torch.inference_mode(), autocast_for(settings):
            if not settings.self_ensemble:
                _stream(model, source, out_size, _writer(dest), settings, report)
                return
            total = torch.zeros((3, *out_size), dtype=torch.float32, device=dest.device)
            for n, transform in enumerate(DIHEDRAL_TRANSFORMS):
                # The identity decodes in place; the others into a buffer turned back.
                size = out_size[::-1] if transform[0] else out_size
                target = total if n == 0 else total.new_empty((3, *size))
                _stream(
                    model, _dihedral(source, *transform), size, _writer(target), settings, report
                )
                if n > 0:
                    total += _undo_dihedral(target, *transform)
            total /= len(DIHEDRAL_TRANSFORMS)
            _copy_in_blocks(total, _writer(dest))
    finally:
        model.train(was_training)


def _stream(
    model: LTE,
    source: torch.Tensor,
    out_size: tuple[int, int],
    write: Writer,
    settings: InferenceSettings,
    report: Callable[[], None],
) -> None:
    """Decode the whole output of ``source`` region by region (see the module docstring),
    calling ``report()`` after each region."""
    image_size = tuple(source.shape[-2:])
    source = _encoder_source(model, source)
    frame_size = tuple(source.shape[-2:])
    tile, overlap = _tiling(model, frame_size, settings)
    if not _needs_streaming(model, frame_size, tile, settings):
        features = encode_box(model, source, (0, 0, *frame_size), tile, overlap, settings.device)
        decode_box(
            model,
            features,
            (0, 0, *frame_size),
            image_size,
            out_size,
            (0, 0, *out_size),
            settings.chunk,
            write,
            settings.pixel_progress,
        )
        report()
        return
    h, w = frame_size
    for y0 in range(0, h, tile):
        rows = _owned_outputs(y0, min(y0 + tile, h), h, out_size[0])
        for x0 in range(0, w, tile):
            cols = _owned_outputs(x0, min(x0 + tile, w), w, out_size[1])
            if rows[0] == rows[1] or cols[0] == cols[1]:
                report()  # a tile that owns no output pixel (downscaling)
                continue
            # One pixel more on each side holds every neighbour and bilinear tap of the pixels.
            frame = (max(y0 - 1, 0), max(x0 - 1, 0), min(y0 + tile + 1, h), min(x0 + tile + 1, w))
            features = encode_box(model, source, frame, tile + 2, overlap, settings.device)
            box = (rows[0], cols[0], rows[1], cols[1])
            decode_box(
                model,
                features,
                frame,
                image_size,
                out_size,
                box,
                settings.chunk,
                write,
                settings.pixel_progress,
            )
            report()


def _region_count(model: LTE, source: torch.Tensor, settings: InferenceSettings) -> int:
    """How many regions :func:`_stream` decodes ``source (3, h, w)`` in."""
    frame_size = tuple(padded_side(n, padding_window(model)) for n in source.shape[-2:])
    tile, _ = _tiling(model, frame_size, settings)
    if not _needs_streaming(model, frame_size, tile, settings):
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


def _owned_outputs(start: int, stop: int, n_in: int, n_out: int) -> tuple[int, int]:
    """The output pixels ``[first, last)`` along an axis whose centres lie in input pixels
    ``[start, stop)``: ``start <= (i + 1/2) * n_in / n_out < stop``, in integers."""

    def first_at_or_after(position: int) -> int:
        return min(max(-((n_in - 2 * position * n_out) // (2 * n_in)), 0), n_out)

    return first_at_or_after(start), first_at_or_after(stop)


def _encoder_source(model: LTE, rgb: torch.Tensor) -> torch.Tensor:
    """What the encoder reads for ``rgb (3, h, w)``: the image itself, or for SwinIR the image
    in float mirrored out to its window, as the published test pads it."""
    window = padding_window(model)
    if not window:
        return rgb
    image = rgb.float() if rgb.is_floating_point() else rgb.float() / pixel_scale(rgb.dtype)
    return reflect_pad_to_window(image, window)


def _needs_streaming(
    model: LTE, frame_size: tuple[int, int], tile: int, settings: InferenceSettings
) -> bool:
    """Whether the maps of the whole input exceed half the budget (then they are streamed)."""
    if encoder_name(model) not in LOCAL_ENCODERS or tile >= max(frame_size):
        return False
    map_bytes = 2 * model.coef.out_channels * 4 * frame_size[0] * frame_size[1]
    return map_bytes > settings.budget // 2


def _tiling(model: LTE, in_size: tuple[int, int], settings: InferenceSettings) -> tuple[int, int]:
    """``(tile side, overlap)`` in encoder-input pixels; one tile covering all means no tiling."""
    whole = max(in_size)
    local = encoder_name(model) in LOCAL_ENCODERS
    window = padding_window(model)
    if settings.tile_overlap is not None:
        overlap = settings.tile_overlap
    else:
        overlap = receptive_radius(model.encoder) + max(
            receptive_radius(model.coef), receptive_radius(model.freq)
        )
        # SwinIR: attention reaches further; a few windows more shrink seams, not remove them.
        overlap += 0 if local else 4 * window
    if settings.tile_size is not None:
        tile = settings.tile_size
        if window:
            # Tiles whose windows line up with the whole image's partition differ far less.
            tile, overlap = -(-tile // window) * window, -(-overlap // window) * window
        return min(tile, whole), overlap
    pixels = settings.budget // ENCODE_BYTES_PER_PIXEL
    if not local or in_size[0] * in_size[1] <= pixels:
        return whole, overlap
    # Keep the core at least as wide as the overlap, else recomputed borders dominate.
    return max(math.isqrt(pixels) - 2 * overlap, overlap, 16), overlap


def _copy_in_blocks(values: torch.Tensor, write: Writer) -> None:
    """``write`` all of ``values (3, H, W)`` a few rows at a time (bounded temporaries)."""
    rows = max(WRITE_BLOCK_PIXELS // values.shape[-1], 1)
    for top in range(0, values.shape[1], rows):
        write(top, 0, values[:, top : top + rows])


def _dihedral(image: torch.Tensor, transpose: bool, flip_y: bool, flip_x: bool) -> torch.Tensor:
    """``image (..., H, W)`` transposed, then flipped; :func:`_undo_dihedral` inverts it."""
    return _flip(image.transpose(-1, -2) if transpose else image, flip_y, flip_x)


def _undo_dihedral(
    image: torch.Tensor, transpose: bool, flip_y: bool, flip_x: bool
) -> torch.Tensor:
    image = _flip(image, flip_y, flip_x)
    return image.transpose(-1, -2) if transpose else image


def _flip(image: torch.Tensor, flip_y: bool, flip_x: bool) -> torch.Tensor:
    dims = [dim for dim, flip in ((-2, flip_y), (-1, flip_x)) if flip]
    return image.flip(dims) if dims else image  # no copy for the identity


def batched_predict(
    model: nn.Module,
    inp: torch.Tensor,
    coord: torch.Tensor,
    cell: torch.Tensor,
    bsize: int | None = None,
) -> torch.Tensor:
    """Normalised prediction (B, Q, 3) for a normalised ``inp``: features once, then
    queries in chunks of ``bsize`` (all at once when None)."""
    with torch.no_grad():
        if bsize is None:
            return model(inp, coord, cell)
        features = model.encode(inp)
        chunks = [
            model.query(features, coord[:, i : i + bsize], cell[:, i : i + bsize])
            for i in range(0, coord.shape[1], bsize)
        ]
        return torch.cat(chunks, dim=1)
