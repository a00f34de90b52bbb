"""Where decoded pixels go: writers into an output tensor, in bounded pieces."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..image_io.convert import pixel_scale

# Output rows converted at a time when a float result is written into its final dtype.
WRITE_BLOCK_PIXELS = 1 << 22

Writer = Callable[[int, int, torch.Tensor], None]  # (row, col, values (3, rows, cols) in [0, 1])


def writer(dest: torch.Tensor, origin: tuple[int, int] = (0, 0)) -> Writer:
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


def write_run(
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


def copy_in_blocks(values: torch.Tensor, write: Writer) -> None:
    """``write`` all of ``values (3, H, W)`` a few rows at a time (bounded temporaries)."""
    rows = max(WRITE_BLOCK_PIXELS // values.shape[-1], 1)
    for top in range(0, values.shape[1], rows):
        write(top, 0, values[:, top : top + rows])
