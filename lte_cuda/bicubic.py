"""Bicubic resizing in bounded memory: ``F.interpolate(mode="bicubic", align_corners=False)``
computed a strip of output rows at a time, for channels (alpha) that do not go through the model.

The taps and weights are torch's (A = -0.75, source ``(dst + 0.5) * in / out - 0.5``, indices
clamped to the image), applied along x for the input rows a strip needs and then along y, as
torch nests them; results match ``F.interpolate`` to float rounding. A strip holds about
:data:`STRIP_VALUES` float32 values, so a large image costs a few MB, not a float copy of itself.
"""

from __future__ import annotations

import torch

from .image_io.convert import pixel_scale

CUBIC_A = -0.75  # torch's (and OpenCV's) bicubic constant
STRIP_VALUES = 1 << 20  # float32 values of one strip's output rows (4 MiB)


def bicubic_into(source: torch.Tensor, out: torch.Tensor) -> None:
    """``source (h, w)`` resized bicubically into ``out (H, W)``, clamped to [0, 1] of full
    intensity (rounded for integer dtypes); either may be uint8, uint16 or float in [0, 1]."""
    out_h, out_w = out.shape
    rows, row_weights = _taps(source.shape[0], out_h, out.device)
    cols, col_weights = _taps(source.shape[1], out_w, out.device)
    unit = 1.0 / pixel_scale(source.dtype)
    full = None if out.is_floating_point() else pixel_scale(out.dtype)
    step = max(1, STRIP_VALUES // out_w)
    for top in range(0, out_h, step):
        taps, weights = rows[top : top + step], row_weights[top : top + step]
        first, last = int(taps.min()), int(taps.max())
        band = source[first : last + 1].to(out.device, torch.float32) * unit
        across = _along_rows(band, cols, col_weights)  # (band rows, W)
        taps = taps - first
        strip = across[taps[:, 0]] * weights[:, 0:1]
        for k in range(1, 4):
            strip += across[taps[:, k]] * weights[:, k : k + 1]
        strip.clamp_(0, 1)
        if full is not None:
            strip = (strip * full).round_()
        out[top : top + step].copy_(strip)


def _taps(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of ``n_out`` outputs along one axis: its 4 input indices (clamped) and weights."""
    scale = torch.tensor(n_in / n_out, dtype=torch.float32)
    source = scale * (torch.arange(n_out, dtype=torch.float32) + 0.5) - 0.5
    start = source.floor()
    t = source - start
    weights = torch.stack(
        [_far(t + 1.0), _near(t), _near(1.0 - t), _far(2.0 - t)], dim=1
    )  # (n_out, 4)
    offsets = torch.arange(-1, 3)
    index = (start.long()[:, None] + offsets).clamp_(0, n_in - 1)
    return index.to(device), weights.to(device)


def _near(x: torch.Tensor) -> torch.Tensor:
    """The cubic kernel for |x| <= 1."""
    return ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1


def _far(x: torch.Tensor) -> torch.Tensor:
    """The cubic kernel for 1 < |x| < 2."""
    return ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A


def _along_rows(values: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``values (R, n_in)`` resampled along its rows to ``(R, n_out)``: the sum, in tap
    order, of each tap's weight times the value it picks."""
    total = values[:, index[:, 0]] * weights[:, 0]
    for k in range(1, 4):
        total += values[:, index[:, k]] * weights[:, k]
    return total
