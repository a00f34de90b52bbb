"""The published LTE query step (grid_sample path) in plain PyTorch.

This is the test oracle for the fused op, the benchmark baseline, and the fallback when the
compiled extension is missing. It follows the published code step by step; the only
departure is that the pixel-centre grid is built from the feature map's own size and in the
features' dtype (float64 stays float64, so gradcheck can compare at 1e-10).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .coords import make_coord

# Neighbour offsets over (row, col), in the order the published code visits them.
NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 1), (1, -1), (1, 1))
EPS_SHIFT = 1e-6


def _gather_nearest(maps: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
    """Values of ``maps (B, K, h, w)`` at the nearest pixel of ``coord (B, Q, 2)`` -> (B, Q, K)."""
    grid = coord.flip(-1).unsqueeze(1)
    sampled = F.grid_sample(maps, grid, mode="nearest", align_corners=False)
    return sampled[:, :, 0, :].permute(0, 2, 1)


def check_map_size(coef: torch.Tensor) -> None:
    """``ValueError`` unless ``coef (B, C, h, w)`` has a row and a column: queries are placed
    relative to the map's pixel size, ``2 / h`` by ``2 / w``."""
    if coef.dim() == 4 and (coef.shape[2] == 0 or coef.shape[3] == 0):
        raise ValueError(
            f"lte_basis: coef must have h >= 1 and w >= 1, got shape {tuple(coef.shape)}"
        )


def lte_basis(
    coef: torch.Tensor,
    freq: torch.Tensor,
    phase_weight: torch.Tensor,
    coord: torch.Tensor,
    cell: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for :func:`lte_cuda.ops.lte_basis`; same arguments and results.

    float16 and bfloat16 inputs are computed in float32 and the results cast back.
    Differentiable in every input through plain autograd (the fused op is not in coord/cell).
    """
    check_map_size(coef)
    out_dtype = coef.dtype
    if out_dtype in (torch.float16, torch.bfloat16):
        coef, freq, phase_weight = coef.float(), freq.float(), phase_weight.float()
    coord = coord.to(coef.dtype)
    cell = cell.to(coef.dtype)
    batch, channels, h, w = coef.shape
    num_queries = coord.shape[1]

    centres = make_coord((h, w), dtype=coef.dtype, device=coef.device)
    centres = centres.permute(2, 0, 1).unsqueeze(0).expand(batch, 2, h, w)
    rel_cell = cell.clone()
    rel_cell[:, :, 0] *= h
    rel_cell[:, :, 1] *= w
    # Sizes spelled out, not -1: a view of zero elements (B = 0 or Q = 0) cannot infer one.
    phase = rel_cell.reshape(-1, 2) @ phase_weight.t()
    phase = phase.view(batch, num_queries, phase_weight.shape[0])

    xs, areas = [], []
    for v_row, v_col in NEIGHBOUR_OFFSETS:
        shifted = coord.clone()
        shifted[:, :, 0] += v_row / h + EPS_SHIFT
        shifted[:, :, 1] += v_col / w + EPS_SHIFT
        shifted.clamp_(-1 + 1e-6, 1 - 1e-6)

        q_coef = _gather_nearest(coef, shifted)
        q_freq = _gather_nearest(freq, shifted)
        q_centre = _gather_nearest(centres, shifted)
        rel = coord - q_centre
        rel[:, :, 0] *= h
        rel[:, :, 1] *= w

        # Frequency channels come in interleaved (row, col) pairs.
        q_freq = torch.stack(torch.split(q_freq, 2, dim=-1), dim=-1)
        phi = (q_freq * rel.unsqueeze(-1)).sum(dim=-2) + phase
        basis = torch.cat((torch.cos(math.pi * phi), torch.sin(math.pi * phi)), dim=-1)
        xs.append(q_coef * basis)
        areas.append(torch.abs(rel[:, :, 0] * rel[:, :, 1]) + 1e-9)

    total = areas[0] + areas[1] + areas[2] + areas[3]
    # Each neighbour is weighted by the area of the diagonally opposite one.
    weights = torch.stack([areas[3], areas[2], areas[1], areas[0]], dim=-1) / total.unsqueeze(-1)
    x = torch.stack(xs, dim=2)
    return x.to(out_dtype), weights.to(out_dtype)
