"""Pixel-centre coordinates in LTE's [-1, 1] convention (component 0 = row, 1 = column)."""

from __future__ import annotations

import torch

Box = tuple[int, int, int, int]  # (top, left, bottom, right) in pixels, bottom/right exclusive


def make_coord(
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    flatten: bool = False,
) -> torch.Tensor:
    """Pixel-centre coordinates of a grid of ``shape``, in [-1, 1].

    Along an axis of ``n`` pixels the i-th centre is ``-1 + (2i + 1) / n``, computed as the
    published code does (``(-1 + r) + (2r) * i`` with ``r = 1 / n``) so float32 results are
    bit-identical to it. Returns ``(*shape, len(shape))``, or ``(prod(shape), len(shape))``
    when ``flatten``.
    """
    axes = []
    for n in shape:
        r = 1.0 / n
        axes.append((-1.0 + r) + (2.0 * r) * torch.arange(n, device=device).to(dtype))
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return grid.reshape(-1, grid.shape[-1]) if flatten else grid


def to_pixel_samples(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split an image ``(3, H, W)`` into coordinates ``(H*W, 2)`` and values ``(H*W, 3)``,
    row-major."""
    coord = make_coord(img.shape[-2:], dtype=img.dtype, device=img.device, flatten=True)
    rgb = img.reshape(img.shape[0], -1).t()
    return coord, rgb


def make_cell(coord: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The cell ``(2 / height, 2 / width)`` of every query in ``coord (..., 2)``."""
    cell = torch.empty_like(coord)
    cell[..., 0] = 2.0 / height
    cell[..., 1] = 2.0 / width
    return cell
