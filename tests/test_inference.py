"""Tests of lte_cuda.inference: streaming in a memory budget, regions, window padding,
integer images and non-finite outputs. Models are tiny, so the file runs in seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lte_cuda import save_model, upscale
from lte_cuda.coords import make_cell, make_coord
from lte_cuda.evaluate import evaluate
from lte_cuda.inference import (
    NonFiniteOutputError,
    TorchExecutor,
    decode_region,
    encode_image,
    settings_for,
    upscale_into,
)
from lte_cuda.models import LTE

from tiny_models import tiny_model

# A budget far below what one tile's estimate asks for: every tile is as small as allowed.
TINY_BUDGET = 1000
# Scales whose output centres never fall exactly on the last input pixel's centre: there the
# published neighbour weights are 0/0-like and depend on float rounding (odd integer scales).
SCALES = [2.3, (1.5, 2.6), (0.7, 5.5)]


def encoder_inputs(model: LTE) -> list[tuple[int, ...]]:
    """A list that collects the shape of every input the model's encoder sees."""
    shapes: list[tuple[int, ...]] = []
    model.encoder.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape)))
    return shapes


@pytest.mark.parametrize("preset", ["edsr-baseline-lte", "rdn-lte"])
@pytest.mark.parametrize("scale", SCALES)
def test_streaming_in_a_small_budget_equals_the_whole_image(preset: str, scale) -> None:
    model = tiny_model(preset)
    torch.manual_seed(2)
    image = torch.rand(3, 30, 26)
    whole = upscale(image, scale, model=model, device="cpu")
    shapes = encoder_inputs(model)
    streamed = upscale(
        image, scale, model=model, device="cpu", tile_size=6, memory_budget=TINY_BUDGET
    )
    torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=0)
    # 5 x 5 tiles, each encoded once with its overlap; never the whole image.
    assert len(shapes) == 25
    assert all(shape[-2:] != (30, 26) for shape in shapes)


def test_progress_counts_every_region_of_every_pass() -> None:
    model = tiny_model()
    image = torch.rand(3, 20, 13)
    for ensemble, passes in ((False, 1), (True, 8)):
        calls: list[tuple[int, int]] = []
        settings = settings_for(
            "cpu",
            tile_size=6,
            budget=TINY_BUDGET,
            self_ensemble=ensemble,
            progress=lambda done, total: calls.append((done, total)),
        )
        upscale_into(model, image, torch.empty(3, 40, 26), settings)
        # 4 x 3 tiles per pass, or one region when the maps fit.
        assert calls == [(k, 12 * passes) for k in range(1, 12 * passes + 1)]
    calls = []
    upscale_into(
        model,
        image,
        torch.empty(3, 40, 26),
        settings_for("cpu", progress=lambda *a: calls.append(a)),
    )
    assert calls == [(1, 1)]


def test_streaming_without_overlap_shows_seams() -> None:
    model = tiny_model()
    torch.manual_seed(2)
    image = torch.rand(3, 30, 26)
    whole = upscale(image, 2.3, model=model, device="cpu")
    seams = upscale(
        image,
        2.3,
        model=model,
        device="cpu",
        tile_size=6,
        tile_overlap=0,
        memory_budget=TINY_BUDGET,
    )
    assert (seams - whole).abs().max() > 1e-3


def test_streaming_writes_integer_outputs_directly() -> None:
    model = tiny_model()
    rng = np.random.default_rng(3)
    for dtype, top in ((np.uint8, 255), (np.uint16, 65535)):
        for shape in ((21, 19, 3), (21, 19)):
            array = rng.integers(0, top + 1, shape).astype(dtype)
            whole = upscale(array, 2.3, model=model, device="cpu")
            streamed = upscale(
                array, 2.3, model=model, device="cpu", memory_budget=TINY_BUDGET, tile_size=5
            )
            assert streamed.dtype == dtype and streamed.shape == (48, 44, *shape[2:])
            # Rounding the same floats (to float rounding) may differ by one step.
            assert np.abs(streamed.astype(np.int64) - whole.astype(np.int64)).max() <= 1


def test_uint16_is_computed_in_float() -> None:
    model = tiny_model()
    rng = np.random.default_rng(4)
    array = rng.integers(0, 65536, (11, 13, 3)).astype(np.uint16)
    as_float = upscale(array.astype(np.float64) / 65535, 2, model=model, device="cpu")
    out = upscale(array, 2, model=model, device="cpu")
    assert out.dtype == np.uint16 and out.shape == (22, 26, 3)
    expected = np.rint(as_float * 65535)
    assert np.abs(out - expected).max() <= 1
    gray = upscale(array[:, :, 0], 2, model=model, device="cpu")
    assert gray.dtype == np.uint16 and gray.shape == (22, 26)


def test_self_ensemble_streams_too() -> None:
    model = tiny_model()
    torch.manual_seed(5)
    image = torch.rand(3, 17, 14)
    whole = upscale(image, 2.3, model=model, device="cpu", self_ensemble=True)
    streamed = upscale(
        image,
        2.3,
        model=model,
        device="cpu",
        self_ensemble=True,
        tile_size=5,
        memory_budget=TINY_BUDGET,
    )
    torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset", ["edsr-baseline-lte", "swinir-lte"])
def test_decode_region_equals_the_crop_of_upscale(preset: str) -> None:
    model = tiny_model(preset)
    torch.manual_seed(6)
    image = torch.rand(3, 19, 23)
    out_size = (45, 61)
    full = upscale(image, size=out_size[::-1], model=model, device="cpu")
    features = encode_image(model, image[None], device="cpu")
    box = (7, 11, 40, 30)
    region = decode_region(model, features, out_size, box, chunk_size=100)
    assert region.shape == (3, 33, 19) and region.dtype == torch.float32
    torch.testing.assert_close(region, full[:, 7:40, 11:30], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"box must lie inside the output \(45, 61\)"):
        decode_region(model, features, out_size, (0, 0, 46, 5))


def test_swinir_padding_uses_the_models_own_window() -> None:
    """`lte-sr test`'s evaluation pads a SwinIR input to the encoder's window (4 here)."""
    model = tiny_model("swinir-lte")
    assert model.traits.window == 4 and tiny_model().traits.window == 0
    shapes = encoder_inputs(model)
    hr_h, hr_w = 20, 18
    coord = make_coord((hr_h, hr_w), flatten=True)
    sample = {
        "inp": torch.rand(3, 10, 9),
        "coord": coord,
        "cell": make_cell(coord, hr_h, hr_w),
        "gt": torch.rand(hr_h * hr_w, 3),
    }
    loader = DataLoader([sample], batch_size=1)
    evaluate(loader, model, eval_type="benchmark-2", window_size=model.traits.window)
    # (10 // 4 + 1) * 4 = 12 rows, (9 // 4 + 1) * 4 = 12 columns (a window of 8 would give 16).
    assert shapes == [(1, 3, 12, 12)]


def test_non_finite_model_output_names_the_model_file(tmp_path) -> None:
    model = tiny_model()
    with torch.no_grad():
        model.imnet.layers[0].weight[0, 0] = float("nan")
    path = tmp_path / "broken.pth"
    save_model(model, path)
    with pytest.raises(NonFiniteOutputError, match=r"model .*broken\.pth: the model produced NaN"):
        upscale(torch.rand(3, 6, 7), 2, model=path, device="cpu")
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        upscale(torch.rand(3, 6, 7), 2, model=model, device="cpu")


PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from lte_cuda import upscale
    from lte_cuda.models import build_preset

    def status(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

    torch.manual_seed(0)
    model = build_preset("edsr-baseline-lte", {"n_resblocks": 1, "n_feats": 8}, hidden_dim=128,
                         imnet_spec={"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16]}}).eval()
    image = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    upscale(image[:40, :40], 2, model=model, device="cpu")  # warm up: allocator, kernels
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak to the current resident size
    before = status("VmRSS")
    out = upscale(image, 1, model=model, device="cpu", tile_size=50, memory_budget=int(sys.argv[1]))
    print(json.dumps({"peak": status("VmHWM") - before, "output": out.nbytes}))
    """
)


def test_peak_memory_follows_the_budget_not_the_image() -> None:
    """A 400x400 uint8 image whose coef/freq maps alone would take 164 MB stays within a few
    tens of MB beyond its output when the budget is 8 MB (tiles of 50 pixels); with the whole
    maps it peaks at about 250 MB."""
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(8 << 20)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 << 10)},
    )
    numbers = json.loads(result.stdout)
    maps = 400 * 400 * 2 * 128 * 4
    assert numbers["peak"] - numbers["output"] < maps / 4, numbers


class CountingExecutor:
    """Another executor, as ONNX Runtime or a reduced-precision runtime would plug in: here
    the torch one behind a counter of its calls."""

    def __init__(self, model: LTE) -> None:
        self.inner = TorchExecutor(model.eval(), torch.device("cpu"))
        self.device, self.traits = self.inner.device, self.inner.traits
        self.channels, self.trained_max_scale = self.inner.channels, self.inner.trained_max_scale
        self.calls = {"encode_tile": 0, "query": 0}

    def encode_tile(self, pixels: torch.Tensor):
        self.calls["encode_tile"] += 1
        return self.inner.encode_tile(pixels)

    def query(self, features, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        self.calls["query"] += 1
        return self.inner.query(features, coord, cell)


def test_the_pipeline_runs_any_executor() -> None:
    model = tiny_model("rdn-lte")
    torch.manual_seed(7)
    image = torch.rand(3, 20, 13)
    executor = CountingExecutor(model)
    settings = settings_for("cpu", tile_size=6, budget=TINY_BUDGET, chunk_size=50)
    out = torch.empty(3, 45, 29)
    upscale_into(executor, image, out, settings)
    expected = upscale(image, size=(29, 45), model=model, device="cpu")
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    # 4 x 3 tiles, each encoded once; every region decoded in chunks of 50 queries.
    assert executor.calls["encode_tile"] == 12 and executor.calls["query"] >= 45 * 29 / 50
