"""What the pipeline needs to know about an encoder, declared by the encoder class itself."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class EncoderTraits:
    """How an encoder may be run on parts of an image.

    ``local``: built only from stride-1 convolutions and pointwise ops, so tiles grown by
    ``radius`` reproduce the untiled features (EDSR-baseline, RDN); otherwise (SwinIR's
    attention) tiling is approximate and ``radius`` is an overlap that shrinks seams.
    ``radius``: the tile overlap in input pixels. ``window``: the multiple the input is
    reflect-padded to before encoding (SwinIR's window), 0 for none.
    """

    local: bool
    radius: int
    window: int = 0


def conv_radius(module: nn.Module) -> int:
    """How far (in pixels) an output of ``module`` can see through its convolutions, if it
    chains stride-1 convolutions and pointwise ops: the sum of every conv's reach. It is an
    upper bound, exact when all convolutions lie on one path (EDSR-baseline: 1 + 16*2 + 1 =
    34; RDN config B: 1 + 1 + 16*8 + 1 = 131)."""
    radius = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            if m.stride != (1, 1):
                raise ValueError(f"cannot tile through a strided convolution {m}")
            radius += max(d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size))
    return radius
