"""Upscale images to any size with an LTE model, in bounded memory.

:func:`upscale` takes a PIL image, a numpy array or a torch tensor and returns the same kind.
Memory stays bounded for any output size: the encoder runs on overlapping tiles of the
input when it is large, and the output pixels are decoded in chunks of queries written
into the output buffer, so no full-resolution coordinate or feature tensor is ever built.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .checkpoint import load_model
from .coords import make_coord
from .models import LTE, PRESETS

ImageLike = Union[Image.Image, np.ndarray, torch.Tensor]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "default.pth"

# Requests beyond these are refused rather than attempted (2**31 pixels is 24 GiB of float32 RGB).
MAX_SIDE = 65536
MAX_PIXELS = 2**31
# The published models were trained on scales up to 4; above it the cell is enlarged.
TRAINED_MAX_SCALE = 4.0

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# The eight flips and transposes of the image plane, (transpose, flip_y, flip_x); the first is
# the identity. Self-ensemble averages the model's outputs over them.
DIHEDRAL_TRANSFORMS = [(t, fy, fx) for t in (False, True) for fy in (False, True) for fx in (False, True)]
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

_PIL_MODES = ("L", "LA", "RGB", "RGBA")


def upscale(
    image: ImageLike,
    scale: float | tuple[float, float] | None = None,
    size: tuple[int, int] | None = None,
    *,
    model: LTE | str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    chunk_size: int | None = None,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    self_ensemble: bool = False,
) -> ImageLike:
    """Super-resolve ``image`` by ``scale`` or to ``size`` with an LTE model.

    Args:
        image: a PIL image; a numpy array ``(H, W)`` or ``(H, W, C)``, uint8 or float in
            [0, 1]; or a float tensor ``(C, H, W)`` or ``(B, C, H, W)`` in [0, 1]. C is 1
            (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA). PIL modes other than L, LA, RGB
            and RGBA are converted to RGB (RGBA if they carry transparency) first.
        scale: a positive factor, or ``(scale_y, scale_x)``. The output is
            ``round(H * scale_y) x round(W * scale_x)`` (halves rounded up).
        size: the exact output ``(width, height)``. Pass exactly one of ``scale`` and ``size``.
        model: an :class:`~lte_cuda.models.LTE`, a checkpoint path, or a preset name with
            bundled weights (``lte_cuda/weights/<name>.pth``); ``None`` uses the bundled
            default model ``lte_cuda/weights/default.pth``. A module is moved to ``device``
            in place and left there, with its train/eval mode restored and the features
            cached by ``gen_feat`` cleared.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"``/``None`` (CUDA if present)
            or a ``torch.device``.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``; the last two run under
            ``torch.autocast`` on ``device``.
        chunk_size: output pixels decoded per model call; default from free device memory.
        tile_size: side, in input pixels, of the encoder tiles (without their overlap);
            default: no tiling while the whole input fits the memory budget. For
            EDSR-baseline and RDN tiled features equal untiled ones (to float rounding).
            SwinIR attends over shifted windows and pads globally, so tiling it is only
            approximate (the overlap shrinks seams, it does not remove the difference); it is
            therefore never tiled unless ``tile_size`` is given, and then tile and overlap
            are rounded up to multiples of its window so that the windows line up.
        tile_overlap: input pixels added around every tile; default the encoder's receptive
            radius (plus 4 windows for SwinIR).
        self_ensemble: average the outputs for the eight flips and transposes of the input
            (the "+" of EDSR+): 8x the time, usually a few hundredths of a dB better.

    Returns:
        The upscaled image as the same kind: PIL image of the same mode, numpy array of the
        same dtype (uint8 rounded) and layout, or tensor of the same dtype, device and layout.
        Colour goes through the model; gray inputs are replicated to RGB and the mean of the
        three predicted channels is returned; alpha is upscaled bicubically.

    Raises:
        TypeError: ``image``, ``scale``, ``size``, ``model`` or ``self_ensemble`` of an
            unsupported type.
        ValueError: out-of-range or malformed arguments, CUDA asked for but absent, or no
            model available (:class:`~lte_cuda.checkpoint.CheckpointError` for bad files).
    """
    pixels, restore = _image_to_tensor(image)
    height, width = pixels.shape[-2:]
    out_h, out_w = output_size(height, width, scale, size)
    dev = resolve_device(device)
    lte = resolve_model(model)

    channels = pixels.shape[1]
    result = torch.empty(
        (pixels.shape[0], channels, out_h, out_w), dtype=torch.float32, device=pixels.device
    )
    for i, img in enumerate(pixels):
        rgb = img[:3] if channels >= 3 else img[:1].expand(3, -1, -1)
        sr = super_resolve(
            lte,
            rgb.unsqueeze(0),
            (out_h, out_w),
            device=dev,
            precision=precision,
            chunk_size=chunk_size,
            tile_size=tile_size,
            tile_overlap=tile_overlap,
            self_ensemble=self_ensemble,
        )[0]
        if channels >= 3:
            result[i, :3] = sr
        else:
            result[i, 0] = sr.mean(dim=0)
        if channels in (2, 4):
            alpha = F.interpolate(
                img[-1:].unsqueeze(0), size=(out_h, out_w), mode="bicubic", align_corners=False
            )
            result[i, -1] = alpha[0, 0].clamp_(0, 1)
    return restore(result)


def super_resolve(
    model: LTE,
    rgb: torch.Tensor,
    out_size: tuple[int, int],
    *,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    chunk_size: int | None = None,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    self_ensemble: bool = False,
) -> torch.Tensor:
    """The core of :func:`upscale`: ``rgb (B, 3, h, w)`` in [0, 1] -> ``(B, 3, H, W)`` float32
    in [0, 1] on ``rgb``'s device, ``out_size = (H, W)`` (not range-checked here:
    :func:`output_size` does that). Other arguments are as in :func:`upscale`.

    The cell is ``(2 / H, 2 / W)``, enlarged per axis by ``max(s / 4, 1)`` with ``s`` the
    axis's output/input ratio (the published rule for scales beyond training). For SwinIR
    the input is first reflection-padded as the published test does and the queries are
    placed on the unpadded part.
    """
    if not isinstance(model, LTE):
        raise TypeError(f"model must be an LTE module, got {type(model).__name__}")
    if rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ValueError(f"rgb must have shape (B, 3, h, w), got {tuple(rgb.shape)}")
    dev = resolve_device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    autocast_dtype = PRECISIONS[precision]
    autocast = (
        torch.autocast(dev.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    )
    budget = memory_budget(dev)
    chunk = _positive_int(chunk_size, "chunk_size") if chunk_size is not None else (
        min(max(budget // DECODE_BYTES_PER_QUERY, MIN_CHUNK), MAX_CHUNK)
    )
    window = _swinir_window(model)
    if not isinstance(self_ensemble, bool):
        raise TypeError(f"self_ensemble must be True or False, got {self_ensemble!r}")
    transforms = DIHEDRAL_TRANSFORMS if self_ensemble else DIHEDRAL_TRANSFORMS[:1]

    was_training = model.training
    # Moved outside inference mode, so the parameters stay usable for training afterwards.
    model.to(dev).eval()
    out = torch.empty((rgb.shape[0], 3, *out_size), dtype=torch.float32, device=rgb.device)
    try:
        with torch.inference_mode(), autocast:
            for i in range(rgb.shape[0]):
                for n, transform in enumerate(transforms):
                    image = _dihedral(rgb[i].to(dev, torch.float32), *transform)
                    inp = ((image - 0.5) / 0.5).unsqueeze(0)
                    if window:
                        inp = reflect_pad_to_window(inp, window)
                    tile, overlap = _tiling(model, inp.shape[-2:], budget, tile_size, tile_overlap)
                    _encode(model, inp, tile, overlap)
                    # The identity decodes in place; the others into a buffer turned back.
                    size = out_size[::-1] if transform[0] else out_size
                    target = out[i] if n == 0 else out.new_empty((3, *size))
                    _decode(model, target, image.shape[-2:], inp.shape[-2:], chunk)
                    if n > 0:
                        out[i] += _undo_dihedral(target, *transform)
                if len(transforms) > 1:
                    out[i] /= len(transforms)
    finally:
        # Drop the cached full-size maps: they can be large and belong to this call only.
        model.inp = model.feat = model.coef_map = model.freq_map = None
        model.train(was_training)
    return out


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
        scale_y, scale_x = _parse_scale(scale)
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


def _parse_scale(scale: object) -> tuple[float, float]:
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


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``torch.device`` for ``device`` (``None``/``"auto"``: CUDA if available, else CPU);
    ``ValueError`` if it is malformed or names a CUDA device that is not there."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}") from err
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
        weights = WEIGHTS_DIR / f"{model}.pth"
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


def memory_budget(device: torch.device) -> int:
    """Bytes a call may use for its working set: half the free memory of a CUDA device, or
    on CPU ``min(1 GiB, a quarter of MemAvailable)``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return min(CPU_BUDGET_CAP, _available_ram() // 4)


def _available_ram() -> int:
    """MemAvailable from /proc/meminfo; where that is unreadable, assume 4 GiB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


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


def _encoder_name(model: LTE) -> str:
    return model.spec["args"]["encoder_spec"]["name"]


def _swinir_window(model: LTE) -> int:
    """The window size a SwinIR encoder needs its input padded to, else 0."""
    return model.encoder.window_size if _encoder_name(model) == "swinir" else 0


def reflect_pad_to_window(inp: torch.Tensor, window: int) -> torch.Tensor:
    """Pad bottom/right by mirroring to ``(h // window + 1) * window`` rows (and columns), as
    the published SwinIR test does; images smaller than half a window are mirrored again."""
    for dim in (2, 3):
        target = (inp.shape[dim] // window + 1) * window
        while inp.shape[dim] < target:
            inp = torch.cat([inp, inp.flip(dim)], dim)
        inp = inp.narrow(dim, 0, target)
    return inp


def _tiling(
    model: LTE,
    in_size: tuple[int, int],
    budget: int,
    tile_size: int | None,
    tile_overlap: int | None,
) -> tuple[int, int]:
    """``(tile side, overlap)`` in encoder-input pixels; one tile covering all means no tiling."""
    whole = max(in_size)
    local = _encoder_name(model) in LOCAL_ENCODERS
    window = _swinir_window(model)
    if tile_overlap is not None:
        overlap = _non_negative_int(tile_overlap, "tile_overlap")
    else:
        overlap = receptive_radius(model.encoder) + max(
            receptive_radius(model.coef), receptive_radius(model.freq)
        )
        # SwinIR: attention reaches further; a few windows more shrink seams, not remove them.
        overlap += 0 if local else 4 * window
    if tile_size is not None:
        tile = _positive_int(tile_size, "tile_size")
        if window:
            # Tiles whose windows line up with the whole image's partition differ far less.
            tile, overlap = -(-tile // window) * window, -(-overlap // window) * window
        return min(tile, whole), overlap
    pixels = budget // ENCODE_BYTES_PER_PIXEL
    if not local or in_size[0] * in_size[1] <= pixels:
        return whole, overlap
    # Keep the core at least as wide as the overlap, else recomputed borders dominate.
    return max(math.isqrt(pixels) - 2 * overlap, overlap, 16), overlap


def _encode(model: LTE, inp: torch.Tensor, tile: int, overlap: int) -> None:
    """Fill the model's ``inp``, ``coef_map`` and ``freq_map`` for ``inp (1, 3, h, w)``,
    running encoder + coef/freq convs on tiles of ``tile`` pixels grown by ``overlap``."""
    _, _, h, w = inp.shape
    coef_map = freq_map = None
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            ya, xa = max(y0 - overlap, 0), max(x0 - overlap, 0)
            yb, xb = min(y1 + overlap, h), min(x1 + overlap, w)
            feat = model.encoder(inp[:, :, ya:yb, xa:xb])
            # SwinIR pads a tile to its window at the bottom/right: keep the tile's own pixels.
            feat = feat[:, :, : yb - ya, : xb - xa]
            core = (slice(None), slice(None), slice(y0 - ya, y1 - ya), slice(x0 - xa, x1 - xa))
            coef, freq = model.coef(feat)[core], model.freq(feat)[core]
            if coef_map is None:
                # Channels-last: the layout the fused op reads, so no chunk has to copy the maps.
                shape = (1, coef.shape[1], h, w)
                like = {"dtype": coef.dtype, "device": coef.device}
                coef_map = torch.empty(shape, memory_format=torch.channels_last, **like)
                freq_map = torch.empty(shape, memory_format=torch.channels_last, **like)
            coef_map[:, :, y0:y1, x0:x1] = coef
            freq_map[:, :, y0:y1, x0:x1] = freq
    # query_rgb decodes from these; the encoder output itself is not needed any more.
    model.inp, model.feat, model.coef_map, model.freq_map = inp, None, coef_map, freq_map


def _decode(
    model: LTE,
    out: torch.Tensor,
    in_size: tuple[int, int],
    enc_size: tuple[int, int],
    chunk: int,
) -> None:
    """Decode every pixel of ``out (3, H, W)`` from the model's maps, ``chunk`` queries at a
    time in row-major order. ``in_size`` is the image, ``enc_size`` the (padded) encoder input."""
    out_h, out_w = out.shape[-2:]
    dev = model.coef_map.device
    rows = _axis_coords(out_h, in_size[0], enc_size[0], dev)
    cols = _axis_coords(out_w, in_size[1], enc_size[1], dev)
    # One output pixel in encoder-input units, enlarged beyond the trained scales.
    cell = torch.tensor(
        [
            2.0 / out_h * in_size[0] / enc_size[0] * max(out_h / in_size[0] / TRAINED_MAX_SCALE, 1.0),
            2.0 / out_w * in_size[1] / enc_size[1] * max(out_w / in_size[1] / TRAINED_MAX_SCALE, 1.0),
        ],
        device=dev,
    )
    flat = out.view(3, out_h * out_w)
    for start in range(0, out_h * out_w, chunk):
        index = torch.arange(start, min(start + chunk, out_h * out_w), device=dev)
        coord = torch.stack((rows[index // out_w], cols[index % out_w]), dim=-1).unsqueeze(0)
        pred = model.query_rgb(coord, cell.expand_as(coord).contiguous())
        flat[:, start : start + index.numel()] = (pred[0].float() * 0.5 + 0.5).clamp_(0, 1).t()


def _dihedral(image: torch.Tensor, transpose: bool, flip_y: bool, flip_x: bool) -> torch.Tensor:
    """``image (..., H, W)`` transposed, then flipped; :func:`_undo_dihedral` inverts it."""
    return _flip(image.transpose(-1, -2) if transpose else image, flip_y, flip_x)


def _undo_dihedral(image: torch.Tensor, transpose: bool, flip_y: bool, flip_x: bool) -> torch.Tensor:
    image = _flip(image, flip_y, flip_x)
    return image.transpose(-1, -2) if transpose else image


def _flip(image: torch.Tensor, flip_y: bool, flip_x: bool) -> torch.Tensor:
    dims = [dim for dim, flip in ((-2, flip_y), (-1, flip_x)) if flip]
    return image.flip(dims) if dims else image  # no copy for the identity


def _axis_coords(n_out: int, n_in: int, n_enc: int, device: torch.device) -> torch.Tensor:
    """Centres of ``n_out`` output pixels spanning the first ``n_in`` of ``n_enc`` input
    pixels, in the encoder input's [-1, 1] units."""
    if n_in == n_enc:
        return make_coord((n_out,), device=device)[:, 0]
    centres = (torch.arange(n_out, dtype=torch.float64, device=device) * 2 + 1) * (n_in / n_out)
    return (centres / n_enc - 1).float()


def _positive_int(value: object, name: str) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _non_negative_int(value: object, name: str) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _image_to_tensor(image: ImageLike):
    """``(pixels (B, C, H, W) float32 in [0, 1], restore)`` where ``restore`` turns a result
    of the same layout back into ``image``'s kind, dtype and shape."""
    if isinstance(image, Image.Image):
        return _from_pil(image)
    if isinstance(image, np.ndarray):
        return _from_numpy(image)
    if isinstance(image, torch.Tensor):
        return _from_tensor(image)
    raise TypeError(
        f"image must be a PIL.Image, a numpy array or a torch tensor, got {type(image).__name__}"
    )


def _from_pil(image: Image.Image):
    if image.mode not in _PIL_MODES:
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            # PIL's own conversion clips these to 8 bits; scaling them is the caller's call.
            raise TypeError(
                f"image: PIL mode {image.mode!r} is not supported; convert it to L, RGB or RGBA first"
            )
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    pixels, restore = _from_numpy(np.asarray(image))
    return pixels, lambda result: Image.fromarray(restore(result))


def _from_numpy(array: np.ndarray):
    if array.ndim not in (2, 3) or (array.ndim == 3 and not 1 <= array.shape[2] <= 4):
        raise ValueError(
            f"image: numpy arrays must be (H, W) or (H, W, C) with C in 1..4, got shape {array.shape}"
        )
    if array.dtype == np.uint8:
        tensor = torch.from_numpy(array.astype(np.float32) / 255.0)
    elif np.issubdtype(array.dtype, np.floating):
        tensor = torch.from_numpy(array.astype(np.float32))
    else:
        raise TypeError(f"image: numpy arrays must be uint8 or float in [0, 1], got dtype {array.dtype}")
    hwc = tensor if array.ndim == 3 else tensor.unsqueeze(-1)
    pixels = _checked(hwc.permute(2, 0, 1).unsqueeze(0))

    def restore(result: torch.Tensor) -> np.ndarray:
        out = result[0].permute(1, 2, 0).numpy()
        if array.ndim == 2:
            out = out[:, :, 0]
        if array.dtype == np.uint8:
            return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
        return out.astype(array.dtype)

    return pixels, restore


def _from_tensor(tensor: torch.Tensor):
    if tensor.dim() not in (3, 4) or not 1 <= tensor.shape[-3] <= 4:
        raise ValueError(
            f"image: tensors must be (C, H, W) or (B, C, H, W) with C in 1..4, got shape {tuple(tensor.shape)}"
        )
    if not tensor.is_floating_point():
        raise TypeError(f"image: tensors must be float in [0, 1], got dtype {tensor.dtype}")
    batched = tensor.dim() == 4
    pixels = _checked((tensor if batched else tensor.unsqueeze(0)).detach().float())

    def restore(result: torch.Tensor) -> torch.Tensor:
        result = result.to(tensor.dtype)
        return result if batched else result[0]

    return pixels, restore


def _checked(pixels: torch.Tensor) -> torch.Tensor:
    """``pixels`` after checking it is non-empty, finite and within [0, 1]."""
    if pixels.numel() == 0:
        raise ValueError(f"image is empty (shape {tuple(pixels.shape)})")
    if not torch.isfinite(pixels).all():
        raise ValueError("image contains NaN or infinite values")
    low, high = pixels.min().item(), pixels.max().item()
    if low < 0 or high > 1:
        raise ValueError(f"image: float values must lie in [0, 1], got range [{low:.4g}, {high:.4g}]")
    return pixels
