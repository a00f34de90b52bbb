"""PSNR as the published evaluation computes it."""

from __future__ import annotations

import torch

# ITU-R BT.601 luma weights of the published benchmark PSNR (Y of YCbCr, without the offset).
Y_WEIGHTS = (65.738 / 256, 129.057 / 256, 25.064 / 256)


def parse_eval_type(eval_type: str | None) -> tuple[str | None, int]:
    """``'div2k-4'`` -> ``('div2k', 4)``, ``'benchmark-2'`` -> ``('benchmark', 2)``, None -> (None, 0)."""
    if eval_type is None:
        return None, 0
    kind, _, scale = eval_type.partition("-")
    if kind not in ("div2k", "benchmark") or not scale.isdigit():
        raise ValueError(f"eval_type must be 'div2k-N' or 'benchmark-N', got {eval_type!r}")
    return kind, int(scale)


def psnr(sr: torch.Tensor, hr: torch.Tensor, eval_type: str | None = None) -> torch.Tensor:
    """PSNR in dB of each image of a batch, values in [0, 1]; returns shape (B,).

    - ``eval_type=None``: RGB over every value of each batch item (any layout, e.g. the
      (B, Q, 3) query samples of training validation).
    - ``'div2k-N'``: images (B, 3, H, W), RGB, border of N + 6 pixels shaved.
    - ``'benchmark-N'``: images (B, 3, H, W), the difference weighted by
      [65.738, 129.057, 25.064] / 256 and summed over channels (Y), border of N shaved.

    PSNR = -10 log10(mean(diff^2)); the mean is taken in float64. ``ValueError`` when the
    shave leaves no pixel.
    """
    if sr.shape != hr.shape:
        raise ValueError(f"sr and hr differ in shape: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    diff = sr.double() - hr.double()
    kind, scale = parse_eval_type(eval_type)
    if kind is not None:
        if diff.dim() != 4 or diff.shape[1] != 3:
            raise ValueError(f"{eval_type} needs images (B, 3, H, W), got {tuple(diff.shape)}")
        if kind == "benchmark":
            shave = scale
            diff = (diff * diff.new_tensor(Y_WEIGHTS).view(1, 3, 1, 1)).sum(dim=1)
        else:
            shave = scale + 6
        height, width = diff.shape[-2:]
        if min(height, width) <= 2 * shave:
            raise ValueError(
                f"{eval_type} shaves {shave} pixels from each border, which leaves nothing of "
                f"a {width}x{height} image to compare; the images must be larger than "
                f"{2 * shave}x{2 * shave}"
            )
        if shave > 0:
            diff = diff[..., shave:-shave, shave:-shave]
    mse = diff.pow(2).flatten(1).mean(dim=1)
    return -10 * torch.log10(mse)
