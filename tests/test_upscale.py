"""Tests of lte_cuda.upscale: sizes, tiling, chunking, image kinds and argument errors.

Models are tiny (a few channels, one or two blocks) so the file runs in seconds on two cores.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lte_cuda import CheckpointError, save_model, upscale
from lte_cuda.coords import make_coord
from lte_cuda.models import LTE, build_preset
from lte_cuda.models.edsr import make_edsr_baseline
from lte_cuda.models.rdn import make_rdn
from lte_cuda.models.traits import conv_radius
from lte_cuda.upscale import output_size

from tiny_models import tiny_model

# `lte_cuda.upscale` is the function; the module is needed to patch its weight paths.
upscale_module = importlib.import_module("lte_cuda.upscale")


@pytest.fixture(scope="module")
def model() -> LTE:
    return tiny_model()


@pytest.fixture()
def image() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(3, 13, 17)


def model_prediction(model: LTE, image: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """The model's own forward over the whole output grid, with the published cell rule."""
    h, w = image.shape[-2:]
    coord = make_coord((out_h, out_w), flatten=True).unsqueeze(0)
    cell = torch.empty_like(coord)
    cell[..., 0] = 2 / out_h * max(out_h / h / 4, 1)
    cell[..., 1] = 2 / out_w * max(out_w / w / 4, 1)
    with torch.no_grad():
        pred = model(image.unsqueeze(0), coord, cell)  # pixels in, RGB out: the model's own norm
    return pred.clamp(0, 1)[0].t().reshape(3, out_h, out_w)


# ----------------------------------------------------------------------------- sizes and values


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"scale": 2.7}, (35, 46)),  # 35.1, 45.9
        ({"scale": (1.5, 3.2)}, (20, 54)),  # 19.5 rounds up, 54.4
        ({"size": (61, 29)}, (29, 61)),  # size is (width, height)
        ({"scale": 0.5}, (7, 9)),  # 6.5, 8.5 round up
    ],
)
def test_output_size_is_exact(
    model: LTE, image: torch.Tensor, kwargs: dict, expected: tuple
) -> None:
    assert output_size(13, 17, **kwargs) == expected
    assert upscale(image, model=model, device="cpu", **kwargs).shape == (3, *expected)


@pytest.mark.parametrize("scale", [2.0, (1.5, 6.5)])
def test_matches_model_forward_with_cell_enlargement(
    model: LTE, image: torch.Tensor, scale
) -> None:
    result = upscale(image, scale, model=model, device="cpu")
    expected = model_prediction(model, image, *result.shape[-2:])
    torch.testing.assert_close(result, expected, atol=1e-6, rtol=0)


def test_chunked_equals_one_chunk(model: LTE, image: torch.Tensor) -> None:
    whole = upscale(image, 2.7, model=model, device="cpu", chunk_size=10**6)
    chunked = upscale(image, 2.7, model=model, device="cpu", chunk_size=37)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize("scale", [2.7, (1.5, 3.2)])
def test_self_ensemble_averages_over_flips_and_transposes(
    model: LTE, image: torch.Tensor, scale
) -> None:
    result = upscale(image, scale, model=model, device="cpu", self_ensemble=True)
    out_h, out_w = result.shape[-2:]
    outputs = []
    for transpose in (False, True):
        seen = image.transpose(-1, -2) if transpose else image
        size = (out_w, out_h) if transpose else (out_h, out_w)
        for flips in ([], [-2], [-1], [-2, -1]):
            prediction = model_prediction(model, seen.flip(flips), *size).flip(flips)
            outputs.append(prediction.transpose(-1, -2) if transpose else prediction)
    torch.testing.assert_close(result, torch.stack(outputs).mean(0), atol=1e-6, rtol=0)
    # A random model is far from flip-equivariant, so the ensemble differs from one pass.
    assert (result - upscale(image, scale, model=model, device="cpu")).abs().max() > 1e-3


def test_receptive_radius_of_published_encoders() -> None:
    # head 1 + 16 blocks x 2 convs + body tail 1; SFENet 1 + 1, 16 blocks x 8 convs, GFF 1.
    assert conv_radius(make_edsr_baseline()) == 34
    assert conv_radius(make_rdn()) == 131
    assert make_edsr_baseline().traits.radius == 34 and make_rdn().traits.local


@pytest.mark.parametrize("preset", ["edsr-baseline-lte", "rdn-lte"])
def test_tiled_equals_untiled_for_conv_encoders(preset: str) -> None:
    model = tiny_model(preset)
    torch.manual_seed(2)
    image = torch.rand(3, 30, 26)
    whole = upscale(image, 2.3, model=model, device="cpu")
    tiled = upscale(image, 2.3, model=model, device="cpu", tile_size=7)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    # Without the overlap the tiles' borders differ: tiling really happened.
    seams = upscale(image, 2.3, model=model, device="cpu", tile_size=7, tile_overlap=0)
    assert (seams - whole).abs().max() > 1e-3


def test_swinir_follows_published_padding_and_tiles_approximately() -> None:
    model = tiny_model("swinir-lte")
    torch.manual_seed(3)
    image = torch.rand(3, 18, 21)
    whole = upscale(image, 2, model=model, device="cpu")
    # Published test: mirror-pad to (h // ws + 1) * ws, decode scale x padded grid, crop.
    inp = torch.cat([image, image.flip(1)], 1)[:, :20]
    inp = torch.cat([inp, inp.flip(2)], 2)[:, :, :24]
    expected = model_prediction(model, inp, 40, 48)[:, :36, :42]
    torch.testing.assert_close(whole, expected, atol=1e-5, rtol=0)

    # Window attention is not local: tiles only approximate the whole image.
    torch.manual_seed(4)
    image = torch.rand(3, 30, 37)
    whole = upscale(image, 2, model=model, device="cpu")
    tiled = upscale(image, 2, model=model, device="cpu", tile_size=8, tile_overlap=4)
    assert 0 < (tiled - whole).abs().mean() < 1e-3
    # Tile and overlap are rounded up to the window (4): 6 and 1 act as 8 and 4.
    rounded = upscale(image, 2, model=model, device="cpu", tile_size=6, tile_overlap=1)
    torch.testing.assert_close(rounded, tiled, atol=0, rtol=0)


def test_swinir_pads_images_smaller_than_half_a_window() -> None:
    image = torch.rand(3, 1, 2)
    assert upscale(image, 3, model=tiny_model("swinir-lte"), device="cpu").shape == (3, 3, 6)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_is_close(model: LTE, image: torch.Tensor, precision: str) -> None:
    full = upscale(image, 2, model=model, device="cpu")
    low = upscale(image, 2, model=model, device="cpu", precision=precision)
    assert low.dtype == torch.float32
    assert (low - full).abs().max() < 0.02


def test_model_mode_restored(image: torch.Tensor) -> None:
    model = tiny_model().train()
    upscale(image, 2, model=model, device="cpu")
    assert model.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(image: torch.Tensor) -> None:
    cpu = upscale(image, 2.5, model=tiny_model(), device="cpu")
    cuda = upscale(image, 2.5, model=tiny_model(), device="cuda")
    torch.testing.assert_close(cuda, cpu, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- image kinds


def test_tensor_uint8_float_and_pil_agree(model: LTE, image: torch.Tensor) -> None:
    as_uint8 = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    from_float = upscale(
        torch.from_numpy(as_uint8).permute(2, 0, 1) / 255.0, 2, model=model, device="cpu"
    )
    expected = np.rint(from_float.permute(1, 2, 0).numpy() * 255).astype(np.uint8)

    out_uint8 = upscale(as_uint8, 2, model=model, device="cpu")
    assert out_uint8.dtype == np.uint8 and out_uint8.shape == (26, 34, 3)
    np.testing.assert_array_equal(out_uint8, expected)

    out_pil = upscale(Image.fromarray(as_uint8), 2, model=model, device="cpu")
    assert isinstance(out_pil, Image.Image) and out_pil.mode == "RGB" and out_pil.size == (34, 26)
    np.testing.assert_array_equal(np.asarray(out_pil), expected)

    for dtype in (np.float32, np.float64):
        out = upscale(as_uint8.astype(dtype) / 255.0, 2, model=model, device="cpu")
        assert out.dtype == dtype and out.shape == (26, 34, 3)
        np.testing.assert_allclose(out, from_float.permute(1, 2, 0).numpy(), atol=1e-6)


def test_batched_tensor_keeps_dtype_and_layout(model: LTE) -> None:
    batch = torch.rand(2, 3, 9, 11, dtype=torch.float64)
    out = upscale(batch, 1.5, model=model, device="cpu")
    assert out.shape == (2, 3, 14, 17) and out.dtype == torch.float64
    torch.testing.assert_close(
        out[1].float(), upscale(batch[1].float(), 1.5, model=model, device="cpu")
    )


def test_rgba_colour_through_model_alpha_bicubic(model: LTE, image: torch.Tensor) -> None:
    alpha = torch.rand(1, 13, 17)
    out = upscale(torch.cat([image, alpha]), 2, model=model, device="cpu")
    assert out.shape == (4, 26, 34)
    torch.testing.assert_close(out[:3], upscale(image, 2, model=model, device="cpu"))
    bicubic = F.interpolate(alpha[None], size=(26, 34), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out[3], bicubic[0, 0].clamp(0, 1))


def test_gray_is_mean_of_the_replicated_rgb_prediction(model: LTE, image: torch.Tensor) -> None:
    gray = image[:1]
    out = upscale(gray, 2, model=model, device="cpu")
    assert out.shape == (1, 26, 34)
    rgb = upscale(gray.expand(3, -1, -1), 2, model=model, device="cpu")
    torch.testing.assert_close(out[0], rgb.mean(dim=0))

    array = upscale(gray[0].numpy(), 2, model=model, device="cpu")
    assert array.shape == (26, 34)


@pytest.mark.parametrize(
    "mode, out_mode", [("L", "L"), ("LA", "LA"), ("RGBA", "RGBA"), ("P", "RGB"), ("CMYK", "RGB")]
)
def test_pil_modes(model: LTE, mode: str, out_mode: str) -> None:
    image = Image.new("RGB", (17, 13), (200, 30, 90)).convert(mode)
    out = upscale(image, size=(20, 15), model=model, device="cpu")
    assert out.mode == out_mode and out.size == (20, 15)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"scale": 0}, ValueError, r"scale must be positive and finite, got 0"),
        ({"scale": -2.0}, ValueError, r"scale must be positive and finite, got -2.0"),
        ({"scale": math.nan}, ValueError, r"scale must be positive and finite, got nan"),
        ({"scale": math.inf}, ValueError, r"scale must be positive and finite, got inf"),
        ({"scale": (2.0, 0.0)}, ValueError, r"scale must be positive and finite"),
        (
            {"scale": 1e300},
            ValueError,
            r"scale=1e\+300 on a 17x13 image exceeds the maximum output side",
        ),
        ({"scale": 0.01}, ValueError, r"gives an empty output"),
        ({"scale": "2"}, TypeError, r"scale must be a number or \(scale_y, scale_x\), got '2'"),
        ({"scale": True}, TypeError, r"scale must be a number"),
        ({"scale": (1, 2, 3)}, TypeError, r"scale must be a number"),
        ({"scale": 2, "size": (4, 4)}, ValueError, r"exactly one of scale= and size= \(got both\)"),
        ({}, ValueError, r"exactly one of scale= and size= \(got neither\)"),
        ({"size": (0, 5)}, ValueError, r"size must be positive, got \(0, 5\)"),
        ({"size": (20.0, 5)}, TypeError, r"size must be \(width, height\) as two integers"),
        ({"size": "20x5"}, TypeError, r"size must be \(width, height\)"),
        ({"size": (5,)}, TypeError, r"size must be \(width, height\)"),
        ({"size": (70000, 5)}, ValueError, r"output 70000x5 is too large"),
        ({"size": (60000, 60000)}, ValueError, r"output 60000x60000 is too large"),
        (
            {"scale": 2, "device": "tpu"},
            ValueError,
            r"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got 'tpu'",
        ),
        ({"scale": 2, "device": "banana"}, ValueError, r"device must be .* got 'banana'"),
        (
            {"scale": 2, "precision": "fp64"},
            ValueError,
            r"precision must be one of auto, fp32, fp16, bf16, got 'fp64'",
        ),
        (
            {"scale": 2, "chunk_size": 0},
            ValueError,
            r"chunk_size must be a positive integer, got 0",
        ),
        (
            {"scale": 2, "tile_size": -1},
            ValueError,
            r"tile_size must be a positive integer, got -1",
        ),
        (
            {"scale": 2, "tile_size": 2.5},
            ValueError,
            r"tile_size must be a positive integer, got 2.5",
        ),
        (
            {"scale": 2, "tile_overlap": -1},
            ValueError,
            r"tile_overlap must be a non-negative integer",
        ),
        (
            {"scale": 2, "self_ensemble": 1},
            TypeError,
            r"self_ensemble must be True or False, got 1",
        ),
    ],
)
def test_bad_arguments(
    model: LTE, image: torch.Tensor, kwargs: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        upscale(image, model=model, **{"device": "cpu", **kwargs})


@pytest.mark.parametrize(
    "bad_image, error, match",
    [
        (
            [[0.5]],
            TypeError,
            r"image must be a PIL.Image, a numpy array or a torch tensor, got list",
        ),
        (
            np.zeros((4, 4, 3), np.int32),
            TypeError,
            r"numpy arrays must be uint8, uint16 or float in \[0, 1\], got dtype int32",
        ),
        (
            np.zeros((4, 4, 5), np.uint8),
            ValueError,
            r"\(H, W\) or \(H, W, C\) with C in 1..4, got shape \(4, 4, 5\)",
        ),
        (np.zeros((2, 4, 4, 3), np.uint8), ValueError, r"got shape \(2, 4, 4, 3\)"),
        (np.zeros((0, 4, 3), np.uint8), ValueError, r"image is empty"),
        (
            np.full((4, 4), 2.0),
            ValueError,
            r"float values must lie in \[0, 1\], got range \[2, 2\]",
        ),
        (np.full((4, 4), np.nan), ValueError, r"image contains NaN or infinite values"),
        (
            torch.zeros(3, 4, 4, dtype=torch.uint8),
            TypeError,
            r"tensors must be float in \[0, 1\], got dtype torch.uint8",
        ),
        (
            torch.zeros(4, 4),
            ValueError,
            r"tensors must be \(C, H, W\) or \(B, C, H, W\) with C in 1..4, got shape \(4, 4\)",
        ),
        (torch.full((3, 4, 4), -0.5), ValueError, r"got range \[-0.5, -0.5\]"),
        (
            torch.zeros(3, 4, 4, device="meta"),
            ValueError,
            r"image: tensors must hold dense pixel values, got a meta tensor \(no values\)",
        ),
        (
            torch.zeros(3, 4, 4).to_sparse(),
            ValueError,
            r"image: tensors must hold dense pixel values, got a torch.sparse_coo tensor",
        ),
        (Image.new("I;16", (4, 4)), TypeError, r"PIL mode 'I;16' is not supported"),
    ],
)
def test_bad_images(model: LTE, bad_image, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        upscale(bad_image, 2, model=model, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_asked_but_absent(model: LTE, image: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"device='cuda' was asked for but CUDA is not available"):
        upscale(image, 2, model=model, device="cuda")


def test_models_by_path_preset_and_default(
    model: LTE, image: torch.Tensor, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = upscale(image, 2, model=model, device="cpu")
    save_model(model, tmp_path / "tiny.pth")
    torch.testing.assert_close(
        upscale(image, 2, model=tmp_path / "tiny.pth", device="cpu"), expected
    )

    monkeypatch.setattr(upscale_module, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(upscale_module, "DEFAULT_WEIGHTS", tmp_path / "default.pth")
    with pytest.raises(ValueError, match=r"no model given and no default model is bundled yet"):
        upscale(image, 2, device="cpu")
    with pytest.raises(ValueError, match=r"'rdn-lte' is a preset name but no weights are bundled"):
        upscale(image, 2, model="rdn-lte", device="cpu")

    save_model(model, tmp_path / "default.pth")
    torch.testing.assert_close(upscale(image, 2, device="cpu"), expected)
    save_model(model, tmp_path / "edsr-baseline-lte.pth")
    torch.testing.assert_close(upscale(image, 2, model="edsr-baseline-lte", device="cpu"), expected)


def test_bad_models(image: torch.Tensor, tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"missing\.pth: no such file"):
        upscale(image, 2, model=str(tmp_path / "missing.pth"), device="cpu")
    with pytest.raises(
        TypeError,
        match=r"model must be an LTE module, a checkpoint path or a preset name, got Conv2d",
    ):
        upscale(image, 2, model=nn.Conv2d(3, 3, 1), device="cpu")
    with pytest.raises(TypeError, match=r"model must be an LTE module, .* got int"):
        upscale(image, 2, model=42, device="cpu")


def test_an_output_beyond_free_memory_is_refused_before_allocating(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lte_cuda import inference

    monkeypatch.setattr(inference.device, "available_ram", lambda: 1 << 30)
    tiny = build_preset("edsr-baseline-lte", {"n_resblocks": 1, "n_feats": 8}, hidden_dim=16)
    # 20000 x 20000 float32 RGB: 4.47 GiB; as uint8: 1.12 GiB; both above the 1 GiB "free".
    with pytest.raises(ValueError, match=r"the 20000x20000 output needs 4\.47 GiB, more than"):
        upscale(torch.rand(3, 8, 8), size=(20000, 20000), model=tiny, device="cpu")
    with pytest.raises(ValueError, match=r"needs 1\.12 GiB, more than the 1\.00 GiB free on cpu"):
        upscale(np.zeros((8, 8, 3), np.uint8), size=(20000, 20000), model=tiny, device="cpu")
    # A self-ensemble also holds two float32 images of the output.
    with pytest.raises(ValueError, match=r"the 10000x10000 output needs 2\.51 GiB"):
        upscale(
            np.zeros((8, 8, 3), np.uint8),
            size=(10000, 10000),
            model=tiny,
            device="cpu",
            self_ensemble=True,
        )
