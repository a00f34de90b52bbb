"""Shared test setup: CUDA tests are marked `cuda` and skipped without a GPU; the fused op must
really be compiled (no silent fallback to the reference it is compared with); precision
"auto" is pinned to fp32, since the suite checks the pipeline's values against float32
references (tests/test_precision.py checks auto itself); a tiny model checkpoint for the
command-line tests."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("LTE_CUDA_REQUIRE_LIBRARY", "1")
os.environ.setdefault("LTE_CUDA_NO_NATIVE_BF16", "1")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny EDSR-baseline-LTE saved in the published format (seeded)."""
    from lte_cuda import save_model  # imported here, after the environment above is set
    from lte_cuda.models import build_preset

    torch.manual_seed(0)
    model = build_preset(
        "edsr-baseline-lte",
        {"n_resblocks": 1, "n_feats": 8},
        hidden_dim=16,
        imnet_spec={"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16]}},
    )
    path = tmp_path_factory.mktemp("models") / "tiny.pth"
    save_model(model, path)
    return path
