"""Temporary stand-in for the feature API of ``lte_cuda.inference`` (encode_image,
decode_region, resolve_device) until that module lands; removed when it does."""

from __future__ import annotations

import torch

from ..coords import make_coord
from ..models import LTE
from ..upscale import TRAINED_MAX_SCALE, resolve_device  # noqa: F401  (re-exported)


def encode_image(model: LTE, rgb: torch.Tensor, *, device=None, precision: str = "fp32"):
    dev = resolve_device(device)
    model.to(dev).eval()
    with torch.inference_mode():
        model.gen_feat(((rgb.to(dev) - 0.5) / 0.5))
    return model


def decode_region(model, features, image_size, out_size, box, *, chunk_size=None) -> torch.Tensor:
    top, left, bottom, right = box
    (h, w), (out_h, out_w) = image_size, out_size
    dev = model.coef_map.device
    rows = make_coord((out_h,), device=dev)[top:bottom, 0]
    cols = make_coord((out_w,), device=dev)[left:right, 0]
    coord = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).view(1, -1, 2)
    cell = torch.tensor(
        [2.0 / out_h * max(out_h / h / TRAINED_MAX_SCALE, 1.0),
         2.0 / out_w * max(out_w / w / TRAINED_MAX_SCALE, 1.0)], device=dev
    ).expand_as(coord).contiguous()
    with torch.inference_mode():
        pred = model.query_rgb(coord, cell)
    out = (pred[0].float() * 0.5 + 0.5).clamp_(0, 1).t()
    return out.reshape(3, bottom - top, right - left)
