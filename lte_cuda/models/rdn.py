"""RDN (residual dense network) feature extractor without upsampling, published keys."""

from __future__ import annotations

import torch
from torch import nn

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


class RDN(nn.Module):
    """RDN body without the upsampling tail: ``(B, 3, h, w) -> (B, G0, h, w)``."""

    def __init__(self, g0: int, kernel_size: int, n_blocks: int, n_convs: int, growth: int) -> None:
        super().__init__()
        pad = (kernel_size - 1) // 2
        self.SFENet1 = nn.Conv2d(3, g0, kernel_size, padding=pad)
        self.SFENet2 = nn.Conv2d(g0, g0, kernel_size, padding=pad)
        self.RDBs = nn.ModuleList([RDB(g0, growth, n_convs, kernel_size) for _ in range(n_blocks)])
        self.GFF = nn.Sequential(
            nn.Conv2d(n_blocks * g0, g0, 1),
            nn.Conv2d(g0, g0, kernel_size, padding=pad),
        )
        self.out_dim = g0

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


def make_rdn(
    G0: int = 64,
    RDNkSize: int = 3,
    RDNconfig: str = "B",
    scale: int = 2,
    no_upsampling: bool = True,
    D: int | None = None,
    C: int | None = None,
    G: int | None = None,
) -> RDN:
    """The published ``rdn`` constructor (argument names as published).

    ``D``, ``C``, ``G`` (blocks, convolutions per block, growth) override the values of
    ``RDNconfig`` so that small models can be built; ``scale`` only sizes the unused
    upsampling tail, so ``no_upsampling`` must be true.
    """
    del scale
    if not no_upsampling:
        raise ValueError("rdn is only an LTE encoder here: no_upsampling must be True")
    if RDNconfig not in RDN_CONFIGS:
        raise ValueError(f"RDNconfig must be one of {sorted(RDN_CONFIGS)}, got {RDNconfig!r}")
    n_blocks, n_convs, growth = RDN_CONFIGS[RDNconfig]
    return RDN(
        G0,
        RDNkSize,
        n_blocks if D is None else D,
        n_convs if C is None else C,
        growth if G is None else G,
    )
