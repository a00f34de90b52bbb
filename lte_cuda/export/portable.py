"""LTE's query step in plain tensor ops that export to any ONNX runtime.

The fused op (:func:`lte_cuda.ops.lte_basis`) and the grid_sample reference cannot leave
PyTorch portably: grid_sample is missing or broken in several runtimes and the op is custom.
The step needs neither. ``grid_sample(mode='nearest', align_corners=False)`` is an integer
index (the unnormalised position rounded half to even, clamped into the map) and a gather, and
the bilinear skip with border padding is four gathers and their weights. Everything here is
written with ops that trace to plain ONNX (Gather, Round, Floor, Min/Max, arithmetic, Cos/Sin,
MatMul); docs/query-step.md is the specification it follows, step by step.

Maps are channels-last tables ``(h, w, C)`` (one image), coordinates and cells ``(Q, 2)``
(row, col) in [-1, 1] units of the maps' grid.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..coords import make_coord
from ..reference import EPS_SHIFT, NEIGHBOUR_OFFSETS

# The published code clamps shifted coordinates this far inside [-1, 1].
EDGE = 1 - 1e-6


def map_size(maps: torch.Tensor) -> torch.Tensor:
    """``(rows, cols)`` of channels-last ``maps (h, w, C)`` as an int64 tensor ``(2,)``;
    traced, it stays a function of the input's shape."""
    return torch._shape_as_tensor(maps)[:2]


def nearest_index(position: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """grid_sample's nearest pixel: ``position`` (unnormalised, in pixels) rounded half to
    even (ONNX Round, torch.round and nearbyint agree), clamped into ``[0, size - 1]``."""
    return torch.minimum(torch.clamp(torch.round(position), min=0.0), size - 1)


def unnormalise(coord: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """[-1, 1] coordinates -> pixel positions, as grid_sample with ``align_corners=False``."""
    return ((coord + 1) * size - 1) / 2


def neighbours(coord: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The four neighbours of every query ``coord (Q, 2)`` on a grid of ``size`` (int64
    ``(2,)``): pixel indices ``(4, Q, 2)`` (int64) and relative coordinates ``(4, Q, 2)`` in
    pixel units, neighbours in :data:`NEIGHBOUR_OFFSETS` order."""
    fsize = size.to(coord.dtype)
    offsets = torch.tensor(NEIGHBOUR_OFFSETS, dtype=coord.dtype).unsqueeze(1)  # (4, 1, 2)
    shifted = torch.clamp(coord + (offsets / fsize + EPS_SHIFT), -EDGE, EDGE)
    index = nearest_index(unnormalise(shifted, fsize), fsize).to(torch.int64)
    # The centres of the picked pixels, from the one formula for pixel centres.
    rows, cols = (make_coord((size[axis],))[:, 0] for axis in (0, 1))
    centre = torch.stack((rows[index[..., 0]], cols[index[..., 1]]), dim=-1)
    return index, (coord - centre) * fsize


def area_weights(rel: torch.Tensor) -> torch.Tensor:
    """Each neighbour's weight ``(4, Q)``: the area of the diagonally opposite one over the
    total, from relative coordinates ``(4, Q, 2)``."""
    areas = torch.abs(rel[..., 0] * rel[..., 1]) + 1e-9
    return areas.flip(0) / areas.sum(dim=0, keepdim=True)


def flat_index(index: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Row-major pixel number ``(...,)`` of ``index (..., 2)`` on a grid of ``size`` (int64)."""
    index = index.to(torch.int64)
    return index[..., 0] * size[1] + index[..., 1]


def pairs_split(freq: torch.Tensor, dim: int) -> torch.Tensor:
    """Frequency maps with their interleaved (row, col) pairs along ``dim`` split into the row
    frequencies of every pair, then the column frequencies. The query then reads a pixel's two
    halves as two rows of a table, and no op broadcasts over pairs of two values."""
    index = [slice(None)] * freq.dim()
    halves = []
    for start in (0, 1):
        index[dim] = slice(start, None, 2)
        halves.append(freq[tuple(index)])
    return torch.cat(halves, dim)


def texture_basis(
    coef: torch.Tensor,
    row_freq: torch.Tensor,
    col_freq: torch.Tensor,
    rel: torch.Tensor,
    phase: torch.Tensor,
) -> torch.Tensor:
    """The MLP input ``(Q, C)`` of one neighbour from ``coef (Q, C)``, the row and column
    frequencies ``(Q, C/2)`` at its pixel, ``rel (Q, 2)`` and ``phase (Q, C/2)``."""
    angle = math.pi * (row_freq * rel[:, :1] + col_freq * rel[:, 1:] + phase)
    return coef * torch.cat((torch.cos(angle), torch.sin(angle)), dim=-1)


def bilinear_border(image: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
    """``grid_sample(image, coord, 'bilinear', padding_mode='border', align_corners=False)``
    of ``image (K, h, w)`` at ``coord (Q, 2)`` -> ``(Q, K)``, as four gathers."""
    size = torch._shape_as_tensor(image)[1:]
    fsize = size.to(coord.dtype)
    position = torch.minimum(torch.clamp(unnormalise(coord, fsize), min=0.0), fsize - 1)
    low = torch.floor(position)
    high = torch.minimum(low + 1, fsize - 1)
    frac = position - low
    table = image.reshape(image.shape[0], -1)
    value = 0
    for row, row_weight in ((low[:, 0], 1 - frac[:, 0]), (high[:, 0], frac[:, 0])):
        for col, col_weight in ((low[:, 1], 1 - frac[:, 1]), (high[:, 1], frac[:, 1])):
            tap = table[:, flat_index(torch.stack((row, col), dim=-1), size)]
            value = value + tap * (row_weight * col_weight)
    return value.t()


def query_rgb(
    coef: torch.Tensor,
    freq: torch.Tensor,
    phase_weight: torch.Tensor,
    imnet: nn.Module,
    inp: torch.Tensor,
    coord: torch.Tensor,
    cell: torch.Tensor,
) -> torch.Tensor:
    """:meth:`lte_cuda.models.LTE.query` for one image: channels-last maps ``(h, w, C)`` (the
    frequencies split by :func:`pairs_split`), the normalised input ``inp (3, h, w)``,
    ``coord`` and ``cell (Q, 2)`` -> normalised RGB ``(Q, 3)``. The MLP runs one neighbour at a
    time (a quarter of the working set)."""
    size = map_size(coef)
    index, rel = neighbours(coord, size)
    weights = area_weights(rel)
    phase = (cell * size.to(cell.dtype)) @ phase_weight.t()
    pixels = flat_index(index, size)
    coef_table = coef.reshape(-1, coef.shape[-1])
    # Row 2p holds pixel p's row frequencies, row 2p + 1 its column frequencies.
    freq_table = freq.reshape(-1, phase_weight.shape[0])
    rgb = bilinear_border(inp, coord)
    for n in range(len(NEIGHBOUR_OFFSETS)):
        row_freq, col_freq = freq_table[2 * pixels[n]], freq_table[2 * pixels[n] + 1]
        basis = texture_basis(coef_table[pixels[n]], row_freq, col_freq, rel[n], phase)
        # Rows as (1, Q, C): Linear then exports as MatMul, which int8 quantisation handles.
        rgb = rgb + imnet(basis.unsqueeze(0))[0] * weights[n].unsqueeze(-1)
    return rgb
