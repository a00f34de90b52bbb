"""The published LTE query step, run as the published code runs it: the end-to-end baseline.

The published decoder (models/lte.py of jaewon-lee-b/lte) visits the four neighbours of a
query one at a time: gather coef, freq and the LR pixel centre with ``grid_sample`` (nearest),
relative coordinates and cell, the basis, the MLP on that neighbour's rows, the area; then the
area weighting with the diagonal swap of the areas and the bilinear residual. At test time it
decodes the queries in chunks of 30,000 (``batched_predict``), under ``torch.no_grad``, with
the whole coordinate and cell grids built first and the chunks' predictions concatenated.

Only one neighbour's MLP activations are alive at a time there, where
:func:`lte_cuda.reference.lte_basis` builds all four neighbours' MLP inputs at once: so this,
not the ``reference`` backend, is what end-to-end time and memory are compared against (the
op-level benchmarks keep ``reference``, the published query step's math as one op).

:class:`PublishedLTE` shares an :class:`~lte_cuda.models.LTE`'s modules (same parameters,
no copy). Its one departure from the published code is the pixel-centre grid, built from the
feature map's size rather than the input's (they differ only for SwinIR, which pads).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from lte_cuda.coords import make_coord
from lte_cuda.inference import cell_enlargement
from lte_cuda.models import LTE

# The published test and demo decode this many queries per model call.
PUBLISHED_CHUNK = 30000
EPS_SHIFT = 1e-6
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def _gather_nearest(maps: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``maps (B, K, h, w)`` at the nearest pixel of ``grid (B, 1, Q, 2)`` (x, y) -> (B, Q, K)."""
    return F.grid_sample(maps, grid, mode="nearest", align_corners=False)[:, :, 0, :].permute(
        0, 2, 1
    )


class PublishedInterface(nn.Module):
    """The published models' interface (``gen_feat`` on a normalised image, ``query_rgb``)
    with ``source``'s norm and scale rule, and ``forward`` as :meth:`LTE.forward`'s."""

    def __init__(self, source: LTE) -> None:
        super().__init__()
        # The published code reads these from its config; here they are the LTE's own.
        self.normalise_input, self.denormalise = source.normalise_input, source.denormalise
        self.trained_max_scale = source.trained_max_scale

    def forward(
        self,
        pixels: torch.Tensor,
        coord: torch.Tensor,
        cell: torch.Tensor,
        *,
        normalised: bool = False,
    ) -> torch.Tensor:
        """Pixels in [0, 1] -> RGB (in the normalised units if asked)."""
        self.gen_feat(self.normalise_input(pixels))
        pred = self.query_rgb(coord, cell)
        return pred if normalised else self.denormalise_output(pred)

    def denormalise_output(self, pred: torch.Tensor) -> torch.Tensor:
        """``query_rgb``'s output in RGB units."""
        return self.denormalise(pred)


class PublishedLTE(PublishedInterface):
    """An LTE decoded the published way; ``forward(inp, coord, cell)`` as :class:`LTE`'s.

    The MLP is the LTE's own Linear layers with out-of-place ReLUs between them, as published.
    """

    def __init__(self, model: LTE) -> None:
        super().__init__(model)
        self.encoder, self.coef, self.freq, self.phase = (
            model.encoder,
            model.coef,
            model.freq,
            model.phase,
        )
        layers: list[nn.Module] = []
        for layer in model.imnet.layers:
            layers.append(layer if isinstance(layer, nn.Linear) else nn.ReLU())
        self.imnet = nn.Sequential(*layers)
        self.inp: torch.Tensor | None = None
        self.coef_map: torch.Tensor | None = None
        self.freq_map: torch.Tensor | None = None

    def gen_feat(self, inp: torch.Tensor) -> None:
        """Encode the normalised image ``inp (B, 3, h, w)`` and keep the coef/freq maps."""
        self.inp = inp
        feat = self.encoder(inp)
        self.coef_map, self.freq_map = self.coef(feat), self.freq(feat)

    def query_rgb(self, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Normalised RGB ``(B, Q, 3)`` at ``coord (B, Q, 2)`` with ``cell (B, Q, 2)``."""
        coef, freq = self.coef_map, self.freq_map
        batch, _, h, w = coef.shape
        queries = coord.shape[1]
        centres = (
            make_coord((h, w), device=coef.device)
            .permute(2, 0, 1)
            .unsqueeze(0)
            .expand(batch, 2, h, w)
        )
        preds, areas = [], []
        for v_row in (-1, 1):
            for v_col in (-1, 1):
                shifted = coord.clone()
                shifted[:, :, 0] += v_row / h + EPS_SHIFT
                shifted[:, :, 1] += v_col / w + EPS_SHIFT
                shifted.clamp_(-1 + 1e-6, 1 - 1e-6)
                grid = shifted.flip(-1).unsqueeze(1)
                q_coef = _gather_nearest(coef, grid)
                q_freq = _gather_nearest(freq, grid)
                rel = coord - _gather_nearest(centres, grid)
                rel[:, :, 0] *= h
                rel[:, :, 1] *= w
                rel_cell = cell.clone()
                rel_cell[:, :, 0] *= h
                rel_cell[:, :, 1] *= w
                # Frequency channels in interleaved (row, col) pairs.
                q_freq = torch.stack(torch.split(q_freq, 2, dim=-1), dim=-1)
                phi = (q_freq * rel.unsqueeze(-1)).sum(dim=-2)
                phi = phi + self.phase(rel_cell.view(batch * queries, -1)).view(batch, queries, -1)
                basis = torch.cat((torch.cos(math.pi * phi), torch.sin(math.pi * phi)), dim=-1)
                x = q_coef * basis
                preds.append(
                    self.imnet(x.contiguous().view(batch * queries, -1)).view(batch, queries, -1)
                )
                areas.append(torch.abs(rel[:, :, 0] * rel[:, :, 1]) + 1e-9)
        total = torch.stack(areas).sum(dim=0)
        rgb = 0
        # Each neighbour weighted by the area of the diagonally opposite one (the swap).
        for pred, area in zip(preds, reversed(areas)):
            rgb = rgb + pred * (area / total).unsqueeze(-1)
        bilinear = F.grid_sample(
            self.inp,
            coord.flip(-1).unsqueeze(1),
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        return rgb + bilinear[:, :, 0, :].permute(0, 2, 1)


@torch.no_grad()
def batched_predict(
    model: PublishedLTE,
    pixels: torch.Tensor,
    coord: torch.Tensor,
    cell: torch.Tensor,
    chunk: int = PUBLISHED_CHUNK,
) -> torch.Tensor:
    """The published test's decode: features once, queries in chunks, predictions
    concatenated and de-normalised (RGB in [0, 1] units, unclamped)."""
    model.gen_feat(model.normalise_input(pixels))
    preds = [
        model.query_rgb(coord[:, i : i + chunk], cell[:, i : i + chunk])
        for i in range(0, coord.shape[1], chunk)
    ]
    return model.denormalise(torch.cat(preds, dim=1))


def upscale(
    model: PublishedLTE,
    rgb: torch.Tensor,
    out_size: tuple[int, int],
    *,
    precision: str = "fp32",
    chunk: int = PUBLISHED_CHUNK,
) -> torch.Tensor:
    """``rgb (1, 3, h, w)`` in [0, 1] on the model's device -> ``(1, 3, H, W)`` in [0, 1], as
    the published demo does it (whole coordinate grid, cell enlarged beyond the trained
    scales per axis as :func:`lte_cuda.upscale.upscale` enlarges it, chunks of 30,000).

    ``precision`` ``"fp16"``/``"bf16"`` runs it under ``torch.autocast``, as a user would.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    (out_h, out_w), (in_h, in_w) = out_size, rgb.shape[-2:]
    coord = make_coord((out_h, out_w), device=rgb.device, flatten=True).unsqueeze(0)
    cell = torch.ones_like(coord)
    cell[:, :, 0] *= 2 / out_h * cell_enlargement(out_h / in_h, model.trained_max_scale)
    cell[:, :, 1] *= 2 / out_w * cell_enlargement(out_w / in_w, model.trained_max_scale)
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(rgb.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with autocast:
        pred = batched_predict(model, rgb, coord, cell, chunk)
    pred = pred.float().clamp(0, 1)
    return pred.view(1, out_h, out_w, 3).permute(0, 3, 1, 2)
