"""In-memory image conversions: PIL images, numpy arrays and torch tensors to pixel tensors
and back (modes, bit depth, alpha, layout).

Integer images stay in their dtype (uint8, uint16) so that large inputs are converted to
float a tile at a time; results are computed in float and written back in the caller's dtype.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

ImageLike = Image.Image | np.ndarray | torch.Tensor

PIL_MODES = ("L", "LA", "RGB", "RGBA")
# The value of full intensity for each integer pixel dtype.
INTEGER_SCALES = {torch.uint8: 255.0, torch.uint16: 65535.0}


class TensorRoundTrip(NamedTuple):
    """An image as a pixel tensor, and the way back: a result in the image's own kind (PIL
    image, numpy array or tensor, dtype and layout)."""

    tensor: torch.Tensor  # (B, C, H, W): uint8/uint16 as given, else float32 in [0, 1]
    new_output: Callable[
        [int, int], torch.Tensor
    ]  # (B, C, H', W') like ``tensor``, laid out for restore
    restore: Callable[[torch.Tensor], ImageLike]  # a ``new_output`` tensor -> the caller's kind


def pixel_scale(dtype: torch.dtype) -> float:
    """Full intensity of a pixel of ``dtype``: 255 (uint8), 65535 (uint16), 1 (float)."""
    if dtype.is_floating_point:
        return 1.0
    if dtype not in INTEGER_SCALES:
        raise TypeError(f"pixels must be uint8, uint16 or float, got {dtype}")
    return INTEGER_SCALES[dtype]


def to_pixels(image: ImageLike) -> TensorRoundTrip:
    """``image`` (PIL image, numpy array (H, W) / (H, W, C), tensor (C, H, W) / (B, C, H, W),
    C in 1..4) as :class:`TensorRoundTrip`; ``TypeError``/``ValueError`` naming what is wrong."""
    if isinstance(image, Image.Image):
        return _from_pil(image)
    if isinstance(image, np.ndarray):
        return _from_numpy(image)
    if isinstance(image, torch.Tensor):
        return _from_tensor(image)
    raise TypeError(
        f"image must be a PIL.Image, a numpy array or a torch tensor, got {type(image).__name__}"
    )


def array_from_pil(image: Image.Image) -> np.ndarray:
    """The pixels of ``image`` as a uint8 array ``(H, W)`` (L) or ``(H, W, C)`` (LA, RGB,
    RGBA); other modes are converted to RGB (RGBA if they carry transparency) first.
    ``TypeError`` for modes with more than 8 bits per sample."""
    if image.mode not in PIL_MODES:
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            # PIL's own conversion clips these to 8 bits; scaling them is the caller's call.
            raise TypeError(
                f"image: PIL mode {image.mode!r} is not supported; convert it to L, RGB or RGBA first"
            )
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    return np.asarray(image)


def _from_pil(image: Image.Image) -> TensorRoundTrip:
    tensor, new_output, restore = _from_numpy(array_from_pil(image))
    return TensorRoundTrip(tensor, new_output, lambda result: Image.fromarray(restore(result)))


def _from_numpy(array: np.ndarray) -> TensorRoundTrip:
    if array.ndim not in (2, 3) or (array.ndim == 3 and not 1 <= array.shape[2] <= 4):
        raise ValueError(
            f"image: numpy arrays must be (H, W) or (H, W, C) with C in 1..4, got shape {array.shape}"
        )
    if array.dtype in (np.uint8, np.uint16):
        with warnings.catch_warnings():
            # Read-only arrays (PIL's among them) are only read here.
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            hwc = torch.from_numpy(np.ascontiguousarray(array))
    elif np.issubdtype(array.dtype, np.floating):
        hwc = torch.from_numpy(array.astype(np.float32))
    else:
        raise TypeError(
            f"image: numpy arrays must be uint8, uint16 or float in [0, 1], got dtype {array.dtype}"
        )
    hwc = hwc if array.ndim == 3 else hwc.unsqueeze(-1)
    tensor = _checked(hwc.permute(2, 0, 1).unsqueeze(0))

    def new_output(height: int, width: int) -> torch.Tensor:
        # (H, W, C) storage: the array handed back is then contiguous, with no copy.
        return torch.empty((1, height, width, tensor.shape[1]), dtype=tensor.dtype).permute(
            0, 3, 1, 2
        )

    def restore(result: torch.Tensor) -> np.ndarray:
        out = result[0].permute(1, 2, 0).numpy()
        if array.ndim == 2:
            out = out[:, :, 0]
        return out if out.dtype == array.dtype else out.astype(array.dtype)

    return TensorRoundTrip(tensor, new_output, restore)


def _from_tensor(tensor: torch.Tensor) -> TensorRoundTrip:
    if tensor.is_meta or tensor.layout != torch.strided:
        kind = "a meta tensor (no values)" if tensor.is_meta else f"a {tensor.layout} tensor"
        raise ValueError(f"image: tensors must hold dense pixel values, got {kind}")
    if tensor.dim() not in (3, 4) or not 1 <= tensor.shape[-3] <= 4:
        raise ValueError(
            f"image: tensors must be (C, H, W) or (B, C, H, W) with C in 1..4, got shape {tuple(tensor.shape)}"
        )
    if not tensor.is_floating_point():
        raise TypeError(f"image: tensors must be float in [0, 1], got dtype {tensor.dtype}")
    batched = tensor.dim() == 4
    pixels = _checked((tensor if batched else tensor.unsqueeze(0)).detach().float())

    def new_output(height: int, width: int) -> torch.Tensor:
        return pixels.new_empty((*pixels.shape[:2], height, width))

    def restore(result: torch.Tensor) -> torch.Tensor:
        result = result.to(tensor.dtype)
        return result if batched else result[0]

    return TensorRoundTrip(pixels, new_output, restore)


def _checked(pixels: torch.Tensor) -> torch.Tensor:
    """``pixels`` after checking it is non-empty and, for floats, finite and within [0, 1]."""
    if pixels.numel() == 0:
        raise ValueError(f"image is empty (shape {tuple(pixels.shape)})")
    if not pixels.is_floating_point():
        return pixels
    if not torch.isfinite(pixels).all():
        raise ValueError("image contains NaN or infinite values")
    low, high = pixels.min().item(), pixels.max().item()
    if low < 0 or high > 1:
        raise ValueError(
            f"image: float values must lie in [0, 1], got range [{low:.4g}, {high:.4g}]"
        )
    return pixels
