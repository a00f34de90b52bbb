"""Where output pixels fall on the input: boxes, coordinates, cells and window padding."""

from __future__ import annotations

import torch

from ..coords import Box, make_coord


def cell_enlargement(scale: float, trained_max_scale: float) -> float:
    """Factor on the cell for an upscaling ``scale`` beyond the training range (published)."""
    return max(scale / trained_max_scale, 1.0)


def query_cell(n_out: int, n_image: int, n_frame: int, trained_max_scale: float) -> float:
    """Cell of one output pixel along an axis, in [-1, 1] units of a feature frame of
    ``n_frame`` input pixels, for ``n_out`` output pixels spanning ``n_image`` input pixels,
    enlarged beyond the trained scales."""
    return 2.0 / n_out * n_image / n_frame * cell_enlargement(n_out / n_image, trained_max_scale)


def axis_coords(
    n_out: int, n_image: int, frame_start: int, n_frame: int, device: torch.device
) -> torch.Tensor:
    """Centres of ``n_out`` output pixels spanning ``n_image`` input pixels, in [-1, 1]
    units of the frame of input pixels ``frame_start : frame_start + n_frame``."""
    if frame_start == 0 and n_frame == n_image:
        return make_coord((n_out,), device=device)[:, 0]
    centres = (torch.arange(n_out, dtype=torch.float64, device=device) * 2 + 1) * (n_image / n_out)
    return ((centres - 2 * frame_start) / n_frame - 1).float()


def owned_outputs(start: int, stop: int, n_in: int, n_out: int) -> tuple[int, int]:
    """The output pixels ``[first, last)`` along an axis whose centres lie in input pixels
    ``[start, stop)``: ``start <= (i + 1/2) * n_in / n_out < stop``, in integers."""

    def first_at_or_after(position: int) -> int:
        return min(max(-((n_in - 2 * position * n_out) // (2 * n_in)), 0), n_out)

    return first_at_or_after(start), first_at_or_after(stop)


def inputs_under(box: Box, image_size: tuple[int, int], out_size: tuple[int, int]) -> Box:
    """The input pixels that output pixels ``box`` of an ``out_size`` output of an
    ``image_size`` input lie on."""
    (h, w), (out_h, out_w), (top, left, bottom, right) = image_size, out_size, box
    return (
        top * h // out_h,
        left * w // out_w,
        -(-bottom * h // out_h),
        -(-right * w // out_w),
    )


def with_margin(box: Box, size: tuple[int, int]) -> Box:
    """``box`` grown by one pixel on every side, clipped to ``size``: the frame that holds
    every neighbour and bilinear tap of the output pixels whose centres lie in ``box``."""
    top, left, bottom, right = box
    return max(top - 1, 0), max(left - 1, 0), min(bottom + 1, size[0]), min(right + 1, size[1])


def padded_side(n: int, window: int) -> int:
    """A side of ``n`` pixels after the published SwinIR padding (``window`` 0: unpadded)."""
    return (n // window + 1) * window if window else n


def reflect_pad_to_window(image: torch.Tensor, window: int) -> torch.Tensor:
    """Pad bottom/right by mirroring to ``(h // window + 1) * window`` rows (and columns), as
    the published SwinIR test does; images smaller than half a window are mirrored again.
    ``window`` 0 returns ``image`` as it is."""
    for dim in (-2, -1):
        target = padded_side(image.shape[dim], window)
        while image.shape[dim] < target:
            image = torch.cat([image, image.flip(dim)], dim)
        image = image.narrow(dim, 0, target)
    return image
