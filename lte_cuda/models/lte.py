"""LTE: Local Texture Estimator (Lee & Jin, CVPR 2022) on top of a feature encoder."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops, reference
from .edsr import make_edsr_baseline
from .mlp import MLP
from .rdn import make_rdn
from .swinir import make_swinir

ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "edsr-baseline": make_edsr_baseline,
    "rdn": make_rdn,
    "swinir": make_swinir,
}
IMNETS: dict[str, Callable[..., nn.Module]] = {"mlp": MLP}
BACKENDS = ("fused", "reference")
DEFAULT_BACKEND = BACKENDS[0]
# Rows (query-neighbour pairs) per MLP block at inference: 8 MiB per hidden layer of 256,
# small beside x (4 KiB per query) and still large enough for efficient matrix products.
MLP_ROWS_PER_BLOCK = 8192


def make_part(
    registry: dict[str, Callable[..., nn.Module]], spec: dict, **extra_args: Any
) -> nn.Module:
    """Build ``spec = {'name': ..., 'args': {...}}`` from ``registry``; ``extra_args`` are
    added to (and override) ``spec['args']``, as the published ``models.make`` does."""
    name = spec.get("name")
    if name not in registry:
        raise ValueError(f"unknown model name {name!r}; known: {sorted(registry)}")
    args = copy.deepcopy(spec.get("args", {}))
    args.update(extra_args)
    return registry[name](**args)


@dataclass(frozen=True)
class LTEFeatures:
    """What queries need from one encoded image (all on the model's device)."""

    inp: torch.Tensor  # the normalised input (B, 3, h, w) the encoder saw (padded for SwinIR)
    coef: torch.Tensor  # (B, C, h', w') amplitude maps, channels_last
    freq: torch.Tensor  # (B, C, h', w') frequency maps, channels_last


class LTE(nn.Module):
    """Encoder + local texture estimator + MLP decoder, evaluated at arbitrary coordinates.

    Inputs are normalised images ``(x - 0.5) / 0.5`` (the caller normalises, as in the
    published code) and outputs are in the same normalised units: de-normalise with
    ``y * 0.5 + 0.5`` and clamp to [0, 1].

    ``backend`` picks the implementation of the query step: ``"fused"``
    (:func:`lte_cuda.ops.lte_basis`) or ``"reference"`` (the published grid_sample path).
    It can be changed at any time; the weights are the same.
    """

    def __init__(
        self,
        encoder_spec: dict,
        imnet_spec: dict,
        hidden_dim: int = 256,
        backend: str = DEFAULT_BACKEND,
    ) -> None:
        super().__init__()
        if hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even (cos/sin pairs), got {hidden_dim}")
        self.encoder = make_part(ENCODERS, encoder_spec)
        feat_dim = self.encoder.out_dim
        self.coef = nn.Conv2d(feat_dim, hidden_dim, 3, padding=1)
        self.freq = nn.Conv2d(feat_dim, hidden_dim, 3, padding=1)
        self.phase = nn.Linear(2, hidden_dim // 2, bias=False)
        self.imnet = make_part(IMNETS, imnet_spec, in_dim=hidden_dim)
        self.backend = backend
        # The published model spec, stored in checkpoints; the backend is a runtime choice.
        self.spec = {
            "name": "lte",
            "args": {
                "encoder_spec": copy.deepcopy(encoder_spec),
                "imnet_spec": copy.deepcopy(imnet_spec),
                "hidden_dim": hidden_dim,
            },
        }

    @property
    def backend(self) -> str:
        """``"fused"`` or ``"reference"``."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {value!r}")
        self._backend = value

    def encode(self, inp: torch.Tensor) -> LTEFeatures:
        """Encode a normalised image ``inp (B, 3, h, w)`` into what queries need.

        The maps may be larger than ``inp`` (SwinIR pads to a multiple of its window);
        queries use the maps' own grid, so they stay aligned with the image.
        """
        # Channels-last features give channels-last coef/freq maps: the layout the fused op
        # reads, so it needs no transposing copy of them.
        feat = self.encoder(inp).contiguous(memory_format=torch.channels_last)
        return LTEFeatures(inp=inp, coef=self.coef(feat), freq=self.freq(feat))

    def query(self, features: LTEFeatures, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Predict normalised RGB at ``coord (B, Q, 2)`` for output pixels of size
        ``cell (B, Q, 2)``, both (row, col) in [-1, 1] units of the features' grid, from
        ``features`` (see :meth:`encode`). Returns ``(B, Q, 3)``."""
        maps = (features.coef, features.freq, self.phase.weight, coord, cell)
        # The four neighbours of every query go through the MLP together, one matrix product
        # per layer.
        if self.backend == "fused" and torch.is_grad_enabled():
            # Training: the op and the MLP's first layer in one call that recomputes x in
            # backward instead of keeping it (x is the step's largest tensor).
            first = self.imnet.first_layer
            hidden, weights = ops.lte_basis_linear(*maps, first.weight, first.bias)
            b, q, n = weights.shape
            preds = self.imnet.forward_after_first_layer(hidden)
        else:
            basis = ops.lte_basis if self.backend == "fused" else reference.lte_basis
            x, weights = basis(*maps)
            b, q, n, c = x.shape
            rows = x.reshape(b * q * n, c)
            if torch.is_grad_enabled():
                preds = self.imnet(rows)
            else:
                # Rows in blocks, so the hidden activations stay small beside x.
                preds = torch.cat([self.imnet(block) for block in rows.split(MLP_ROWS_PER_BLOCK)])
        preds = preds.view(b, q, n, -1)
        rgb = (preds * weights.unsqueeze(-1)).sum(dim=2)
        grid = coord.to(features.inp.dtype).flip(-1).unsqueeze(1)
        bilinear = F.grid_sample(
            features.inp, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        return rgb + bilinear[:, :, 0, :].permute(0, 2, 1)

    def forward(self, inp: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """``query(encode(inp), coord, cell)``: ``(B, 3, h, w)``, ``(B, Q, 2)`` x 2 ->
        ``(B, Q, 3)``, all normalised."""
        return self.query(self.encode(inp), coord, cell)
