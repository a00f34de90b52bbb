"""Tiny seeded LTE models of every encoder, for tests that run whole images through them."""

from __future__ import annotations

import torch

from lte_cuda.models import LTE, build_preset

TINY_IMNET = {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16]}}
TINY_ENCODER_ARGS = {
    "edsr-baseline-lte": {"n_resblocks": 2, "n_feats": 8},
    "rdn-lte": {"G0": 8, "D": 2, "C": 2, "G": 4},
    "swinir-lte": {
        "img_size": 16,
        "embed_dim": 12,
        "depths": [2],
        "num_heads": [2],
        "window_size": 4,
    },
}


def tiny_model(preset: str = "edsr-baseline-lte") -> LTE:
    """A seeded ``preset`` model (hidden_dim 16, one hidden layer of 16) in eval mode."""
    torch.manual_seed(0)
    return build_preset(
        preset, TINY_ENCODER_ARGS[preset], hidden_dim=16, imnet_spec=TINY_IMNET
    ).eval()
