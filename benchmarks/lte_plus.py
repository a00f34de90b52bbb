"""LTE+ ("lte-fast"), the published fast variant of LTE, written here as a benchmark baseline.

LTE+ evaluates a whole grid of queries at once, ``coord (B, H, W, 2)`` with one ``cell (B, 2)``
per image, and keeps everything in ``(B, C, H, W)`` layout: for each of the four neighbours it
samples coef, freq and the LR pixel centres over the whole grid with
``grid_sample(mode='nearest')``, builds the basis as maps, and runs the MLP as 1x1
convolutions (C -> 256 -> 256 -> 256 -> 3, ReLU between); then the same area-weighted
ensemble and bilinear residual as LTE. Its coef and freq convolutions run inside the query
step, and its test decodes the whole output grid in one call. It trades memory for speed:
every intermediate is a full ``(B, C, H, W)`` map.

Frequency layout: LTE+ splits its frequency channels in halves (channel ``k`` multiplies the
row offset, channel ``C/2 + k`` the column offset) where LTE interleaves them (``2k`` row,
``2k + 1`` column), so a trained LTE+ is not an LTE and LTE weights loaded as they are give a
different function. :meth:`LTEPlus.from_lte` permutes LTE's frequency channels into the split
layout, so the LTE+ built from an LTE computes LTE's function (to float rounding): the
benchmark then compares the two paths at equal weights, equal work and equal results.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lte_cuda.coords import make_coord
from lte_cuda.inference import query_cell
from lte_cuda.models import LTE
from lte_cuda.reference import EPS_SHIFT, NEIGHBOUR_OFFSETS

from .published_path import PublishedInterface


def split_permutation(channels: int) -> torch.Tensor:
    """The index that turns LTE's interleaved frequency channels (row 0, col 0, row 1, col 1,
    ...) into LTE+'s split layout (rows 0..C/2-1, then cols): ``freq_split = freq[:, perm]``."""
    return torch.cat((torch.arange(0, channels, 2), torch.arange(1, channels, 2)))


def _neighbours(
    coef: torch.Tensor,
    freq: torch.Tensor,
    phase_weight: torch.Tensor,
    coord: torch.Tensor,
    cell: torch.Tensor,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per neighbour, in LTE's order: the MLP input map ``(B, C, H, W)`` and the area map
    ``(B, H, W)`` of the grid ``coord (B, H, W, 2)``; ``freq`` in the split layout."""
    batch, channels, h, w = coef.shape
    half = channels // 2
    centres = make_coord((h, w), dtype=coef.dtype, device=coef.device)
    centres = centres.permute(2, 0, 1).unsqueeze(0).expand(batch, 2, h, w)
    lr_size = coord.new_tensor([h, w])
    # One phase per image: the cell is the same for the whole grid.
    phase = F.linear(cell * lr_size, phase_weight)[:, :, None, None]
    coord_map = coord.permute(0, 3, 1, 2)
    for v_row, v_col in NEIGHBOUR_OFFSETS:
        shift = coord.new_tensor([v_row / h + EPS_SHIFT, v_col / w + EPS_SHIFT])
        grid = (coord + shift).clamp(-1 + 1e-6, 1 - 1e-6).flip(-1)
        q_coef = F.grid_sample(coef, grid, mode="nearest", align_corners=False)
        q_freq = F.grid_sample(freq, grid, mode="nearest", align_corners=False)
        q_centre = F.grid_sample(centres, grid, mode="nearest", align_corners=False)
        rel = (coord_map - q_centre) * lr_size[None, :, None, None]  # in LR pixels
        phi = q_freq[:, :half] * rel[:, :1] + q_freq[:, half:] * rel[:, 1:] + phase
        basis = torch.cat((torch.cos(math.pi * phi), torch.sin(math.pi * phi)), dim=1)
        yield q_coef * basis, torch.abs(rel[:, 0] * rel[:, 1]) + 1e-9


def _ensemble_weights(areas: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each neighbour weighted by the area of the diagonally opposite one, normalised."""
    total = areas[0] + areas[1] + areas[2] + areas[3]
    return [areas[3 - n] / total for n in range(4)]


def lte_plus_basis(
    coef: torch.Tensor,
    freq: torch.Tensor,
    phase_weight: torch.Tensor,
    coord: torch.Tensor,
    cell: torch.Tensor,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The part of LTE+'s query step that :func:`lte_cuda.ops.lte_basis` replaces.

    Args:
        coef, freq: ``(B, C, h, w)`` maps; ``freq`` in LTE+'s split layout.
        phase_weight: ``(C/2, 2)``.
        coord: the query grid ``(B, H, W, 2)``, (row, col).
        cell: one output-pixel size ``(B, 2)`` per image.

    Returns:
        Four MLP input maps ``(B, C, H, W)`` and four weight maps ``(B, H, W)``, neighbours in
        LTE's order. LTE+ never holds the four maps together (each goes through the MLP as it
        is made), so they are not stacked into one tensor.
    """
    xs, areas = zip(*_neighbours(coef, freq, phase_weight, coord, cell))
    return list(xs), _ensemble_weights(list(areas))


class LTEPlus(PublishedInterface):
    """LTE+ around an encoder: ``forward(inp (B, 3, h, w), coord (B, H, W, 2), cell (B, 2))
    -> (B, 3, H, W)``, pixels in and RGB out as in :class:`~lte_cuda.models.LTE`."""

    def __init__(
        self,
        encoder: nn.Module,
        coef: nn.Conv2d,
        freq: nn.Conv2d,
        phase: nn.Linear,
        layers: nn.Sequential,
        source: LTE,
    ) -> None:
        super().__init__(source)
        self.encoder = encoder
        self.coef = coef
        self.freq = freq
        self.phase = phase
        self.layers = layers
        self.inp: torch.Tensor | None = None
        self.feat: torch.Tensor | None = None

    @classmethod
    def from_lte(cls, model: LTE, split_frequencies: bool = True) -> LTEPlus:
        """An LTE+ with copies of ``model``'s weights, its MLP's linear layers as 1x1
        convolutions. With ``split_frequencies`` the freq conv's output channels are permuted
        into the split layout, so the result computes ``model``'s function; without it, LTE's
        weights are read in LTE+'s layout, a different function at the same cost."""
        freq = copy.deepcopy(model.freq)
        if split_frequencies:
            perm = split_permutation(freq.out_channels)
            with torch.no_grad():
                freq.weight.copy_(freq.weight[perm])
                freq.bias.copy_(freq.bias[perm])
        layers = []
        for layer in model.imnet.layers:
            if isinstance(layer, nn.Linear):
                conv = nn.Conv2d(layer.in_features, layer.out_features, 1)
                with torch.no_grad():
                    conv.weight.copy_(layer.weight[:, :, None, None])
                    conv.bias.copy_(layer.bias)
                layers.append(conv)
            else:
                layers.append(nn.ReLU())  # not in place, as published
        return cls(
            copy.deepcopy(model.encoder),
            copy.deepcopy(model.coef),
            freq,
            copy.deepcopy(model.phase),
            nn.Sequential(*layers),
            model,
        ).to(model.phase.weight.device)

    def gen_feat(self, inp: torch.Tensor) -> torch.Tensor:
        """Encode a normalised image ``inp (B, 3, h, w)``; keeps ``inp`` and the features."""
        self.inp = inp
        self.feat = self.encoder(inp)
        return self.feat

    def query_rgb(self, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Normalised RGB ``(B, 3, H, W)`` at the grid ``coord (B, H, W, 2)`` with output
        pixels of ``cell (B, 2)``, from the features of the last :meth:`gen_feat`."""
        coef, freq = self.coef(self.feat), self.freq(self.feat)
        preds, areas = [], []
        for x, area in _neighbours(coef, freq, self.phase.weight, coord, cell):
            preds.append(self.layers(x))
            areas.append(area)
        rgb = sum(
            pred * weight.unsqueeze(1) for pred, weight in zip(preds, _ensemble_weights(areas))
        )
        bilinear = F.grid_sample(
            self.inp, coord.flip(-1), mode="bilinear", padding_mode="border", align_corners=False
        )
        return rgb + bilinear

    def denormalise_output(self, pred: torch.Tensor) -> torch.Tensor:
        """The LTE's de-normalisation on channel-first ``(B, 3, H, W)``."""
        return self.denormalise(pred.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@torch.inference_mode()
def super_resolve(model: LTEPlus, rgb: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """Upscale ``rgb (B, 3, h, w)`` in [0, 1] to ``out_size = (H, W)`` as the published LTE+
    test does: the whole output grid in one query step. The cell is enlarged beyond the
    trained scales as :func:`lte_cuda.upscale.upscale` enlarges it, so the two agree."""
    (out_h, out_w), (in_h, in_w), batch = out_size, rgb.shape[-2:], rgb.shape[0]
    coord = make_coord((out_h, out_w), device=rgb.device).unsqueeze(0).expand(batch, -1, -1, -1)
    trained = model.trained_max_scale
    cell = rgb.new_tensor(
        [query_cell(out_h, in_h, in_h, trained), query_cell(out_w, in_w, in_w, trained)]
    )
    return model(rgb, coord, cell.expand(batch, 2)).clamp_(0, 1)
