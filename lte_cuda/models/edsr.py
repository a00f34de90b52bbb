"""EDSR-baseline feature extractor (no upsampling tail), with the published state_dict keys."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .bounds import BOOL, SCALE, Bound, conv_numbers, int_bound, real_bound
from .traits import EncoderTraits, conv_radius

# DIV2K RGB mean used by the published mean-shift layers.
RGB_MEAN = (0.4488, 0.4371, 0.4040)


class MeanShift(nn.Conv2d):
    """Frozen 1x1 convolution that adds ``sign * rgb_range * mean`` to each channel.

    The published EDSR keeps two of these (``sub_mean``, ``add_mean``) but LTE never calls
    them; they exist so that published checkpoints load with their 85 keys.
    """

    def __init__(self, rgb_range: float, sign: int) -> None:
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3, device="cpu").view(3, 3, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(RGB_MEAN, device="cpu"))
        self.requires_grad_(False)


class ResBlock(nn.Module):
    """conv-ReLU-conv with an identity skip; the branch is scaled by ``res_scale``."""

    def __init__(self, n_feats: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.add(x, self.body(x), alpha=self.res_scale)


class EDSR(nn.Module):
    """EDSR body without the upsampling tail: ``(B, 3, h, w) -> (B, n_feats, h, w)``; the
    published ``edsr-baseline`` constructor and its defaults.

    ``scale`` is accepted because published configs may carry it; it only sizes the
    upsampling tail, which LTE does not use, so ``no_upsampling`` must be true.
    """

    arg_bounds: ClassVar[dict[str, Bound]] = {
        "n_resblocks": int_bound(0, 1024),
        "n_feats": int_bound(1, 4096),
        "res_scale": real_bound(0, 100),
        "scale": SCALE,
        "no_upsampling": BOOL,
        "rgb_range": real_bound(1e-6, 1e6),
    }

    def __init__(
        self,
        n_resblocks: int = 16,
        n_feats: int = 64,
        res_scale: float = 1.0,
        scale: int = 2,
        no_upsampling: bool = True,
        rgb_range: float = 1.0,
    ) -> None:
        del scale
        if not no_upsampling:
            raise ValueError(
                "edsr-baseline is only an LTE encoder here: no_upsampling must be True"
            )
        super().__init__()
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.add_mean = MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(nn.Conv2d(3, n_feats, 3, padding=1))
        blocks: list[nn.Module] = [ResBlock(n_feats, res_scale) for _ in range(n_resblocks)]
        blocks.append(nn.Conv2d(n_feats, n_feats, 3, padding=1))
        self.body = nn.Sequential(*blocks)
        self.out_dim = n_feats

    @staticmethod
    def out_dim_of(args: dict) -> int:
        """``out_dim`` of the encoder built from ``args`` (defaults filled in)."""
        return args["n_feats"]

    @staticmethod
    def count_numbers(args: dict, where: str) -> int:
        """Parameters and buffers of the encoder built from ``args`` (bounds checked)."""
        feats = args["n_feats"]
        mean_shifts = 2 * conv_numbers(3, 3, 1)
        blocks = args["n_resblocks"] * 2 * conv_numbers(feats, feats)
        return mean_shifts + conv_numbers(3, feats) + blocks + conv_numbers(feats, feats)

    @property
    def traits(self) -> EncoderTraits:
        """Stride-1 convolutions only: tiles grown by their reach are exact."""
        return EncoderTraits(local=True, radius=conv_radius(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        return self.body(x) + x


make_edsr_baseline = EDSR  # the published constructor's name
