"""EDSR-baseline feature extractor (no upsampling tail), with the published state_dict keys."""

from __future__ import annotations

import torch
from torch import nn

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
    """EDSR body without the upsampling tail: ``(B, 3, h, w) -> (B, n_feats, h, w)``."""

    def __init__(
        self, n_resblocks: int, n_feats: int, res_scale: float, rgb_range: float = 1.0
    ) -> None:
        super().__init__()
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.add_mean = MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(nn.Conv2d(3, n_feats, 3, padding=1))
        blocks: list[nn.Module] = [ResBlock(n_feats, res_scale) for _ in range(n_resblocks)]
        blocks.append(nn.Conv2d(n_feats, n_feats, 3, padding=1))
        self.body = nn.Sequential(*blocks)
        self.out_dim = n_feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        return self.body(x) + x


def make_edsr_baseline(
    n_resblocks: int = 16,
    n_feats: int = 64,
    res_scale: float = 1.0,
    scale: int = 2,
    no_upsampling: bool = True,
    rgb_range: float = 1.0,
) -> EDSR:
    """The published ``edsr-baseline`` constructor.

    ``scale`` is accepted because published configs may carry it; it only sizes the
    upsampling tail, which LTE does not use, so ``no_upsampling`` must be true.
    """
    del scale
    if not no_upsampling:
        raise ValueError("edsr-baseline is only an LTE encoder here: no_upsampling must be True")
    return EDSR(n_resblocks, n_feats, res_scale, rgb_range)
