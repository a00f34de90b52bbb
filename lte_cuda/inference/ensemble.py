"""Self-ensemble (the "+" of EDSR+): the output averaged over the eight flips and transposes
of the input."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .writing import Writer, copy_in_blocks, writer

# The eight flips and transposes of the image plane, (transpose, flip_y, flip_x); the first is
# the identity.
DIHEDRAL_TRANSFORMS = [
    (t, fy, fx) for t in (False, True) for fy in (False, True) for fx in (False, True)
]

# decode(source, out_size, write): the whole output of ``source`` at ``out_size``.
Decode = Callable[[torch.Tensor, tuple[int, int], Writer], None]


def self_ensemble(
    decode: Decode,
    source: torch.Tensor,
    out_size: tuple[int, int],
    write: Writer,
    device: torch.device,
) -> None:
    """``write`` the mean of ``decode``'s outputs over the transforms of ``source (3, h, w)``,
    holding two float32 images of ``out_size`` on ``device``."""
    total = torch.zeros((3, *out_size), dtype=torch.float32, device=device)
    for n, transform in enumerate(DIHEDRAL_TRANSFORMS):
        # The identity decodes in place; the others into a buffer turned back.
        size = out_size[::-1] if transform[0] else out_size
        target = total if n == 0 else total.new_empty((3, *size))
        decode(dihedral(source, *transform), size, writer(target))
        if n > 0:
            total += undo_dihedral(target, *transform)
    total /= len(DIHEDRAL_TRANSFORMS)
    copy_in_blocks(total, write)


def dihedral(image: torch.Tensor, transpose: bool, flip_y: bool, flip_x: bool) -> torch.Tensor:
    """``image (..., H, W)`` transposed, then flipped; :func:`undo_dihedral` inverts it."""
    return _flip(image.transpose(-1, -2) if transpose else image, flip_y, flip_x)


def undo_dihedral(image: torch.Tensor, transpose: bool, flip_y: bool, flip_x: bool) -> torch.Tensor:
    """The inverse of :func:`dihedral`."""
    image = _flip(image, flip_y, flip_x)
    return image.transpose(-1, -2) if transpose else image


def _flip(image: torch.Tensor, flip_y: bool, flip_x: bool) -> torch.Tensor:
    dims = [dim for dim, flip in ((-2, flip_y), (-1, flip_x)) if flip]
    return image.flip(dims) if dims else image  # no copy for the identity
