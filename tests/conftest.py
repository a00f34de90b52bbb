"""Shared test setup: CUDA tests are marked `cuda` and skipped without a GPU; the fused op must
really be compiled (no silent fallback to the reference it is compared with)."""

import os

import pytest
import torch

os.environ.setdefault("LTE_CUDA_REQUIRE_LIBRARY", "1")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
