"""The input/output normalisation travels with the model: whatever norm a model was trained
with, `upscale`, the viewer's tiles and `lte-sr test`'s prediction agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from lte_cuda import upscale
from lte_cuda.checkpoint import load_model, save_model
from lte_cuda.coords import make_cell, make_coord
from lte_cuda.evaluate import evaluate
from lte_cuda.metrics import psnr
from lte_cuda.models import build_preset
from lte_cuda.models.norm import IDENTITY_NORM, PUBLISHED_NORM
from lte_cuda.train import train
from lte_cuda.viewer.features import ImageFeatures

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
# Per-channel means and one spread, as some SR codes normalise.
OTHER_NORM = {
    "inp": {"sub": [0.45, 0.5, 0.4], "div": [0.25]},
    "gt": {"sub": [0.45, 0.5, 0.4], "div": [0.3, 0.2, 0.25]},
}


def trained_model(tmp_path: Path, data_norm: dict | None):
    """A tiny model trained two steps from configs/tiny.yaml with ``data_norm`` (None:
    the key absent), loaded back from its checkpoint."""
    config = yaml.safe_load(TINY.read_text())
    config.pop("data_norm")
    if data_norm is not None:
        config["data_norm"] = data_norm
    train({**config, "max_steps": 2, "epoch_val": None}, str(tmp_path / "run"))
    return load_model(tmp_path / "run" / "epoch-last.pth")


@pytest.mark.parametrize("data_norm", [None, OTHER_NORM], ids=["absent", "other"])
def test_upscale_viewer_and_test_agree_whatever_the_norm(tmp_path, data_norm) -> None:
    model = trained_model(tmp_path, data_norm)
    assert model.data_norm == (data_norm or IDENTITY_NORM)  # stored in the checkpoint
    torch.manual_seed(0)
    image = torch.rand(3, 9, 11)
    out_h, out_w = 20, 25
    upscaled = upscale(image, size=(out_w, out_h), model=model, device="cpu")

    tile = ImageFeatures(model, image, torch.device("cpu")).decode((out_h, out_w), (0, 0, 20, 25))
    torch.testing.assert_close(tile, upscaled, atol=1e-6, rtol=0)

    # `lte-sr test`'s evaluation of the same queries scores the same prediction.
    coord = make_coord((out_h, out_w), flatten=True)
    gt = torch.rand(out_h * out_w, 3)
    sample = {"inp": image, "coord": coord, "cell": make_cell(coord, out_h, out_w), "gt": gt}
    (score,) = evaluate(DataLoader([sample], batch_size=1), model, eval_bsize=100)
    expected = psnr(upscaled.reshape(3, -1).t()[None], gt[None], None).item()
    assert score == pytest.approx(expected, abs=1e-4)

    # The norm matters: read with the published norm, the same weights give another image.
    model.set_data_norm(None)
    assert model.data_norm == PUBLISHED_NORM
    assert (
        upscale(image, size=(out_w, out_h), model=model, device="cpu") - upscaled
    ).abs().max() > 1e-2


def test_published_checkpoints_load_with_the_published_norm(tmp_path) -> None:
    model = build_preset("edsr-baseline-lte", {"n_resblocks": 1, "n_feats": 4}, hidden_dim=8)
    assert "data_norm" not in model.spec["args"]  # as the published checkpoints store it
    save_model(model, tmp_path / "published.pth")
    loaded = load_model(tmp_path / "published.pth")
    assert loaded.data_norm == PUBLISHED_NORM and "data_norm" not in loaded.spec["args"]
    pixels = torch.rand(1, 3, 4, 5)
    torch.testing.assert_close(loaded.encode(pixels).inp, (pixels - 0.5) / 0.5)


def test_a_malformed_norm_is_one_clear_error() -> None:
    model = build_preset("edsr-baseline-lte", {"n_resblocks": 1, "n_feats": 4}, hidden_dim=8)
    with pytest.raises(ValueError, match=r"data_norm.inp.div must be a list of 1 or 3 finite"):
        model.set_data_norm({"inp": {"sub": [0.5], "div": [0.5, 0.5]}, "gt": PUBLISHED_NORM["gt"]})
