"""RDN (residual dense network) feature extractor without upsampling, published keys."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .bounds import BOOL, SCALE, Bound, conv_numbers, int_bound
from .traits import EncoderTraits, conv_radius

# (D blocks, C convolutions per block, G growth rate) of the published configurations.
RDN_CONFIGS = {"A": (20, 6, 32), "B": (16, 8, 64)}


class DenseConv(nn.Module):
    """conv + ReLU whose output is concatenated to its input (published ``RDB_Conv``)."""

    def __init__(self, in_channels: int, growth: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, growth, kernel_size, padding=(kernel_size - 1) // 2),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.conv(x)), dim=1)


class RDB(nn.Module):
    """Residual dense block: C dense convolutions, 1x1 local fusion, identity skip."""

    def __init__(self, g0: int, growth: int, n_convs: int, kernel_size: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            *[DenseConv(g0 + c * growth, growth, kernel_size) for c in range(n_convs)]
        )
        self.LFF = nn.Conv2d(g0 + n_convs * growth, g0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LFF(self.convs(x)) + x


def rdn_shape(config: str, D: int | None, C: int | None, G: int | None) -> tuple[int, int, int]:
    """(blocks, convolutions per block, growth) of ``config`` with ``D``, ``C``, ``G`` over it."""
    blocks, convs, growth = RDN_CONFIGS[config]
    return (
        blocks if D is None else D,
        convs if C is None else C,
        growth if G is None else G,
    )


class RDN(nn.Module):
    """RDN body without the upsampling tail: ``(B, 3, h, w) -> (B, G0, h, w)``; the published
    ``rdn`` constructor (argument names as published).

    ``D``, ``C``, ``G`` (blocks, convolutions per block, growth) override the values of
    ``RDNconfig`` so that small models can be built; ``scale`` only sizes the unused
    upsampling tail, so ``no_upsampling`` must be true.
    """

    arg_bounds: ClassVar[dict[str, Bound]] = {
        "G0": int_bound(1, 4096),
        "RDNkSize": int_bound(1, 15),
        "RDNconfig": Bound("choice", choices=tuple(RDN_CONFIGS)),
        "scale": SCALE,
        "no_upsampling": BOOL,
        "D": int_bound(1, 1024, True),
        "C": int_bound(1, 1024, True),
        "G": int_bound(1, 4096, True),
    }

    def __init__(
        self,
        G0: int = 64,
        RDNkSize: int = 3,
        RDNconfig: str = "B",
        scale: int = 2,
        no_upsampling: bool = True,
        D: int | None = None,
        C: int | None = None,
        G: int | None = None,
    ) -> None:
        del scale
        if not no_upsampling:
            raise ValueError("rdn is only an LTE encoder here: no_upsampling must be True")
        if RDNconfig not in RDN_CONFIGS:
            raise ValueError(f"RDNconfig must be one of {sorted(RDN_CONFIGS)}, got {RDNconfig!r}")
        super().__init__()
        n_blocks, n_convs, growth = rdn_shape(RDNconfig, D, C, G)
        g0, kernel_size = G0, RDNkSize
        pad = (kernel_size - 1) // 2
        self.SFENet1 = nn.Conv2d(3, g0, kernel_size, padding=pad)
        self.SFENet2 = nn.Conv2d(g0, g0, kernel_size, padding=pad)
        self.RDBs = nn.ModuleList([RDB(g0, growth, n_convs, kernel_size) for _ in range(n_blocks)])
        self.GFF = nn.Sequential(
            nn.Conv2d(n_blocks * g0, g0, 1),
            nn.Conv2d(g0, g0, kernel_size, padding=pad),
        )
        self.out_dim = g0

    @staticmethod
    def out_dim_of(args: dict) -> int:
        """``out_dim`` of the encoder built from ``args`` (defaults filled in)."""
        return args["G0"]

    @staticmethod
    def count_numbers(args: dict, where: str) -> int:
        """Parameters and buffers of the encoder built from ``args`` (bounds checked)."""
        g0, k = args["G0"], args["RDNkSize"]
        if k % 2 == 0:
            raise ValueError(f"{where}.RDNkSize must be odd (same-size convolutions), got {k}")
        blocks, convs, growth = rdn_shape(args["RDNconfig"], args["D"], args["C"], args["G"])
        block = sum(conv_numbers(g0 + c * growth, growth, k) for c in range(convs))
        block += conv_numbers(g0 + convs * growth, g0, 1)
        shallow = conv_numbers(3, g0, k) + conv_numbers(g0, g0, k)
        fusion = conv_numbers(blocks * g0, g0, 1) + conv_numbers(g0, g0, k)
        return shallow + blocks * block + fusion

    @property
    def traits(self) -> EncoderTraits:
        """Stride-1 convolutions only: tiles grown by their reach are exact."""
        return EncoderTraits(local=True, radius=conv_radius(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shallow = self.SFENet1(x)
        x = self.SFENet2(shallow)
        block_outputs = []
        for block in self.RDBs:
            x = block(x)
            block_outputs.append(x)
        return self.GFF(torch.cat(block_outputs, dim=1)) + shallow


make_rdn = RDN  # the published constructor's name
