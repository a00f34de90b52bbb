"""LTE: Local Texture Estimator (Lee & Jin, CVPR 2022) on top of a feature encoder."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops, reference
from ..coords import Box
from .bounds import Bound, int_bound
from .edsr import EDSR
from .mlp import MLP
from .norm import PUBLISHED_NORM, check_data_norm, norm_buffers
from .rdn import RDN
from .swinir import SwinIR
from .traits import EncoderTraits, conv_radius

# The registry: a name -> a class whose constructor takes the published arguments and which
# declares ``arg_bounds``, ``count_numbers``, ``out_dim_of`` and (encoders) ``traits``.
ENCODERS: dict[str, type[nn.Module]] = {"edsr-baseline": EDSR, "rdn": RDN, "swinir": SwinIR}
IMNETS: dict[str, type[nn.Module]] = {"mlp": MLP}
BACKENDS = ("fused", "reference")
DEFAULT_BACKEND = BACKENDS[0]
# Rows (query-neighbour pairs) per MLP block at inference: 2 MiB per float32 hidden layer of
# 256, so layer after layer reads from the caches more than from memory. x4 128->512, one
# thread, float32 (AMD EPYC, AVX-512): 2.39 s with 2,048 rows, 2.58 s with 8,192; bf16 1.32 s
# either way.
MLP_ROWS_PER_BLOCK = 2048
TRAINED_MAX_SCALE = 4.0


def make_part(registry: dict[str, type[nn.Module]], spec: dict, **extra_args: Any) -> nn.Module:
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
    """What queries need from one encoded box of an image (all on the model's device).

    ``frame`` is the box ``(top, left, bottom, right)`` of the encoder's source image (the
    image, window-padded at the bottom/right for SwinIR) that ``inp``, ``coef`` and ``freq``
    cover; ``image_size`` is the ``(h, w)`` of the image itself. Queries are placed in the
    frame's [-1, 1] units.
    """

    inp: torch.Tensor  # the normalised input (B, 3, h, w) under the frame
    coef: torch.Tensor  # (B, C, h', w') amplitude maps
    freq: torch.Tensor  # (B, C, h', w') frequency maps
    frame: Box
    image_size: tuple[int, int]


class LTE(nn.Module):
    """Encoder + local texture estimator + MLP decoder, evaluated at arbitrary coordinates.

    Inputs are pixels in [0, 1]; the model normalises them with the ``data_norm`` it was
    trained with (:mod:`.norm`; published checkpoints carry none and get the published
    ``(x - 0.5) / 0.5``), and :meth:`query` returns RGB de-normalised to [0, 1] units
    (unclamped), so no caller needs to know the norm.

    ``backend`` picks the implementation of the query step: ``"fused"``
    (:func:`lte_cuda.ops.lte_basis`) or ``"reference"`` (the published grid_sample path).
    It can be changed at any time; the weights are the same.
    """

    # The published models were trained on scales up to 4; above it the cell is enlarged.
    trained_max_scale = TRAINED_MAX_SCALE
    arg_bounds: ClassVar[dict[str, Bound]] = {
        "hidden_dim": int_bound(2, 8192),
        "backend": Bound("choice", choices=BACKENDS),
        "data_norm": Bound("data-norm", optional=True),
    }

    def __init__(
        self,
        encoder_spec: dict,
        imnet_spec: dict,
        hidden_dim: int = 256,
        backend: str = DEFAULT_BACKEND,
        data_norm: dict | None = None,
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
        # The model spec, stored in checkpoints; the backend is a runtime choice.
        self.spec = {
            "name": "lte",
            "args": {
                "encoder_spec": copy.deepcopy(encoder_spec),
                "imnet_spec": copy.deepcopy(imnet_spec),
                "hidden_dim": hidden_dim,
            },
        }
        self.set_data_norm(data_norm)

    def set_data_norm(self, data_norm: dict | None) -> None:
        """Normalise with ``data_norm`` (the published format, see :mod:`.norm`; ``None``:
        the published norm) from now on. The spec stores it unless it is the published norm,
        which a spec without one means: such checkpoints stay loadable by the published code."""
        if data_norm is not None:
            check_data_norm(data_norm, "data_norm")
        if data_norm is None or data_norm == PUBLISHED_NORM:
            self.spec["args"].pop("data_norm", None)
        else:
            self.spec["args"]["data_norm"] = copy.deepcopy(data_norm)
        self.data_norm = copy.deepcopy(data_norm or PUBLISHED_NORM)
        device = self.phase.weight.device
        # Not in the state dict: published checkpoints have no such entries.
        for name, value in norm_buffers(self.data_norm).items():
            self.register_buffer(name, value.to(device), persistent=False)

    @property
    def backend(self) -> str:
        """``"fused"`` or ``"reference"``."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {value!r}")
        self._backend = value

    @property
    def traits(self) -> EncoderTraits:
        """The encoder's traits, its radius grown by the coef/freq convolutions' reach."""
        encoder = self.encoder.traits
        convs = max(conv_radius(self.coef), conv_radius(self.freq))
        return replace(encoder, radius=encoder.radius + convs)

    def normalise_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``(B, 3, h, w)`` in [0, 1] -> what the encoder reads."""
        return (pixels - self.inp_sub) / self.inp_div

    def normalise_target(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB ``(B, Q, 3)`` in [0, 1] -> the units :meth:`query` predicts in with
        ``normalised=True`` (what the training loss compares)."""
        return (rgb - self.gt_sub) / self.gt_div

    def denormalise(self, pred: torch.Tensor) -> torch.Tensor:
        """Predictions ``(..., 3)`` in the normalised units -> RGB in [0, 1] units."""
        return pred * self.gt_div + self.gt_sub

    def encode(self, pixels: torch.Tensor) -> LTEFeatures:
        """Encode an image ``pixels (B, 3, h, w)`` in [0, 1] into what queries need.

        The maps may be larger than the image (SwinIR pads to a multiple of its window);
        queries use the maps' own grid, so they stay aligned with the image.
        """
        inp = self.normalise_input(pixels)
        # Channels-last features give channels-last coef/freq maps: the layout the fused op
        # reads, so it needs no transposing copy of them.
        feat = self.encoder(inp).contiguous(memory_format=torch.channels_last)
        size = tuple(inp.shape[-2:])
        return LTEFeatures(inp, self.coef(feat), self.freq(feat), (0, 0, *size), size)

    def encode_tile(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(coef, freq, inp)`` of one tile ``pixels (1, 3, h, w)`` in [0, 1]: the maps
        cropped to the tile's own pixels (an encoder that pads keeps its padding out of the
        coef/freq convolutions) and the normalised input. The pipeline places tile cores into
        the maps of a frame (:mod:`lte_cuda.inference`)."""
        inp = self.normalise_input(pixels)
        feat = self.encoder(inp)[:, :, : inp.shape[-2], : inp.shape[-1]]
        return self.coef(feat), self.freq(feat), inp

    def query(
        self,
        features: LTEFeatures,
        coord: torch.Tensor,
        cell: torch.Tensor,
        *,
        normalised: bool = False,
    ) -> torch.Tensor:
        """Predict RGB at ``coord (B, Q, 2)`` for output pixels of size ``cell (B, Q, 2)``,
        both (row, col) in [-1, 1] units of the features' grid, from ``features`` (see
        :meth:`encode`). Returns ``(B, Q, 3)`` in [0, 1] units (unclamped), or with
        ``normalised`` in the normalised units the model was trained in.

        In training mode (``model.train()``) the fused backend recomputes the op's output in
        backward instead of keeping it; in eval mode the MLP runs in blocks of rows.
        """
        maps = (features.coef, features.freq, self.phase.weight, coord, cell)
        # The four neighbours of every query go through the MLP together, one matrix product
        # per layer.
        if self.backend == "fused" and self.training:
            # The op and the MLP's first layer in one call that recomputes x in backward
            # instead of keeping it (x is the step's largest tensor).
            first = self.imnet.first_layer
            hidden, weights = ops.lte_basis_linear(*maps, first.weight, first.bias)
            b, q, n = weights.shape
            preds = self.imnet.forward_after_first_layer(hidden)
        else:
            basis = ops.lte_basis if self.backend == "fused" else reference.lte_basis
            x, weights = basis(*maps)
            b, q, n, c = x.shape
            rows = x.reshape(b * q * n, c)
            if self.training:
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
        pred = rgb + bilinear[:, :, 0, :].permute(0, 2, 1)
        return pred if normalised else self.denormalise(pred)

    def forward(
        self,
        pixels: torch.Tensor,
        coord: torch.Tensor,
        cell: torch.Tensor,
        *,
        normalised: bool = False,
    ) -> torch.Tensor:
        """``query(encode(pixels), coord, cell)``: ``(B, 3, h, w)``, ``(B, Q, 2)`` x 2 ->
        ``(B, Q, 3)``."""
        return self.query(self.encode(pixels), coord, cell, normalised=normalised)
