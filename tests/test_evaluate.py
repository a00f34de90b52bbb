"""PSNR and the published test protocol, against independent numpy computations."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import yaml
from PIL import Image
from torch import nn

from lte_cuda.checkpoint import save_model
from lte_cuda.cli import main
from lte_cuda.config import read_test_config
from lte_cuda.data import DATASETS
from lte_cuda.evaluate import NonFiniteResultError, check_finite, run_test
from lte_cuda.metrics import parse_eval_type, psnr
from lte_cuda.models import make_model
from lte_cuda.models.traits import EncoderTraits

NORM = {"inp": {"sub": [0.5], "div": [0.5]}, "gt": {"sub": [0.5], "div": [0.5]}}
Y = np.array([65.738, 129.057, 25.064]) / 256


def np_psnr(sr: np.ndarray, hr: np.ndarray, kind: str | None = None, scale: int = 0) -> float:
    """Reference PSNR of one (H, W, 3) image pair in [0, 1]."""
    diff = sr.astype(np.float64) - hr.astype(np.float64)
    if kind == "benchmark":
        diff = (diff * Y).sum(axis=-1)
        diff = diff[scale:-scale, scale:-scale]
    elif kind == "div2k":
        diff = diff[scale + 6 : -(scale + 6), scale + 6 : -(scale + 6)]
    return -10 * math.log10(np.mean(diff**2))


def centres(n: int) -> np.ndarray:
    return -1 + (2 * np.arange(n) + 1) / n


def coord_image(rows: int, cols: int) -> np.ndarray:
    """What :class:`CoordModel` predicts on a rows x cols grid, de-normalised, (H, W, 3)."""
    r, c = np.meshgrid(centres(rows), centres(cols), indexing="ij")
    return np.stack([r, c, r * c], axis=-1) * 0.5 + 0.5


class CoordModel(nn.Module):
    """A stand-in for LTE whose prediction depends only on the query coordinates, so the
    expected image is known; it records what the evaluation passes it."""

    def __init__(self, encoder: str = "edsr-baseline") -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # gives evaluate() a device
        self.spec = {"name": "lte", "args": {"encoder_spec": {"name": encoder, "args": {}}}}
        # As published SwinIR: a window of 8.
        self.traits = EncoderTraits(
            local=encoder != "swinir", radius=0, window=8 * (encoder == "swinir")
        )
        self.trained_max_scale = 4.0
        self.inputs: list[torch.Size] = []
        self.chunks: list[int] = []
        self.cells: list[torch.Tensor] = []

    def encode(self, inp: torch.Tensor) -> None:
        self.inputs.append(inp.shape)

    def query(self, features: None, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """The coordinates, read as normalised values and de-normalised as LTE.query does."""
        self.chunks.append(coord.shape[1])
        self.cells.append(cell)
        r, c = coord[..., 0], coord[..., 1]
        return torch.stack([r, c, r * c], dim=-1) * 0.5 + 0.5

    def forward(self, inp, coord, cell):
        return self.query(self.encode(inp), coord, cell)


@pytest.fixture(scope="module")
def div2k(tmp_path_factory):
    """A miniature DIV2K layout: HR photos and their x2 / x3 bicubic LR files."""
    root = tmp_path_factory.mktemp("div2k")
    photos = {
        "a.png": skimage.data.astronaut()[100:196, 180:270],  # 96 x 90
        "b.png": skimage.data.coffee()[50:122, 300:402],  # 72 x 102
    }
    for sub in ("HR", "X2", "X3"):
        (root / sub).mkdir()
    for name, array in photos.items():
        h, w = array.shape[:2]
        Image.fromarray(array).save(root / "HR" / name)
        for s in (2, 3):
            lr = Image.fromarray(array).resize((w // s, h // s), Image.BICUBIC)
            lr.save(root / f"X{s}" / name)
    return root


def hr_images(root) -> list[np.ndarray]:
    return [np.asarray(Image.open(root / "HR" / n)) / 255.0 for n in ("a.png", "b.png")]


def paired_config(root, scale: int, eval_type: str, eval_bsize: int | None = 1000) -> dict:
    return {
        "test_dataset": {
            "dataset": {
                "name": "paired-image-folders",
                "args": {"root_path_1": str(root / f"X{scale}"), "root_path_2": str(root / "HR")},
            },
            "wrapper": {"name": "sr-implicit-paired", "args": {}},
            "batch_size": 1,
        },
        "eval_type": eval_type,
        "eval_bsize": eval_bsize,
        "data_norm": NORM,
    }


def test_psnr_matches_numpy_on_a_photo():
    hr = skimage.data.astronaut()[:64, :80] / 255.0
    sr = np.clip(hr + np.random.default_rng(0).normal(0, 0.05, hr.shape), 0, 1)
    to_t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float()  # noqa: E731
    hr32, sr32 = to_t(hr), to_t(sr)
    hr64, sr64 = (
        hr32[0].permute(1, 2, 0).double().numpy(),
        sr32[0].permute(1, 2, 0).double().numpy(),
    )
    for eval_type, kind, scale in (
        (None, None, 0),
        ("div2k-4", "div2k", 4),
        ("benchmark-3", "benchmark", 3),
    ):
        got = psnr(sr32, hr32, eval_type)
        assert got.shape == (1,)
        assert got.item() == pytest.approx(np_psnr(sr64, hr64, kind, scale), abs=1e-9)


def test_psnr_is_per_image_and_checks_input():
    a, b = torch.rand(2, 10, 3), torch.rand(2, 10, 3)
    got = psnr(a, b)
    for i in range(2):
        assert got[i].item() == pytest.approx(np_psnr(a[i].numpy(), b[i].numpy()), abs=1e-9)
    with pytest.raises(ValueError, match="eval_type"):
        psnr(a, b, "set5-2")
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(a, b[:, :5])


@pytest.mark.parametrize("eval_type", ["div2k-2", "benchmark-2"])
def test_paired_protocol_rebuilds_images_in_chunks(div2k, eval_type):
    model = CoordModel()
    result = run_test(paired_config(div2k, 2, eval_type, eval_bsize=1000), model, verbose=False)
    kind = eval_type.split("-")[0]
    expected = [np_psnr(coord_image(*hr.shape[:2]), hr, kind, 2) for hr in hr_images(div2k)]
    got = [r["psnr"] for r in result["images"]]
    assert [r["name"] for r in result["images"]] == ["a.png", "b.png"]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert result["mean_psnr"] == pytest.approx(np.mean(got))
    assert max(model.chunks) == 1000
    assert sum(model.chunks) == sum(h.shape[0] * h.shape[1] for h in hr_images(div2k))
    # x2 is inside the training range: cells are the plain 2 / H.
    assert torch.allclose(model.cells[0][0, 0], torch.tensor([2 / 96, 2 / 90]))


def test_large_scale_downsamples_and_enlarges_the_cell(div2k):
    config = paired_config(div2k, 2, "div2k-6")
    config["test_dataset"]["dataset"] = {
        "name": "image-folder",
        "args": {"root_path": str(div2k / "HR")},
    }
    config["test_dataset"]["wrapper"] = {
        "name": "sr-implicit-downsampled",
        "args": {"scale_min": 6},
    }
    model = CoordModel()
    result = run_test(config, model, verbose=False)
    expected = []
    for hr in hr_images(div2k):
        h, w = math.floor(hr.shape[0] / 6 + 1e-9) * 6, math.floor(hr.shape[1] / 6 + 1e-9) * 6
        expected.append(np_psnr(coord_image(h, w), hr[:h, :w], "div2k", 6))
    np.testing.assert_allclose([r["psnr"] for r in result["images"]], expected, atol=1e-4)
    assert model.inputs[0] == (1, 3, 16, 15)
    # Above x4 the cell is enlarged by 6 / 4.
    assert torch.allclose(model.cells[0][0, 0], torch.tensor([2 / 96 * 1.5, 2 / 90 * 1.5]))


def test_swinir_input_is_reflection_padded_and_prediction_cropped(div2k):
    model = CoordModel(encoder="swinir")
    result = run_test(paired_config(div2k, 3, "benchmark-3", eval_bsize=None), model, verbose=False)
    expected = []
    for hr, lr_shape in zip(hr_images(div2k), [(32, 30), (24, 34)]):
        # Padded to (h // 8 + 1) * 8: 1 to 8 rows and columns are always added.
        ph, pw = (lr_shape[0] // 8 + 1) * 8, (lr_shape[1] // 8 + 1) * 8
        pred = coord_image(3 * ph, 3 * pw)[: hr.shape[0], : hr.shape[1]]
        expected.append(np_psnr(pred, hr, "benchmark", 3))
    np.testing.assert_allclose([r["psnr"] for r in result["images"]], expected, atol=1e-4)
    assert model.inputs == [(1, 3, 40, 32), (1, 3, 32, 40)]
    assert torch.allclose(model.cells[0][0, 0], torch.tensor([2 / 40 / 3, 2 / 32 / 3]))


def _reflect_pad_np(img: np.ndarray, rows: int, cols: int) -> np.ndarray:
    img = np.concatenate([img, img[::-1]], axis=0)[:rows]
    return np.concatenate([img, img[:, ::-1]], axis=1)[:, :cols]


def test_swinir_padding_content(div2k):
    model = CoordModel(encoder="swinir")
    seen = []
    model.encode = seen.append  # keep the padded input itself
    run_test(paired_config(div2k, 2, "div2k-2"), model, verbose=False)
    lr = np.asarray(Image.open(div2k / "X2" / "a.png")) / 255.0  # pixels in [0, 1], 48 x 45
    expected = _reflect_pad_np(lr, 56, 48)
    np.testing.assert_allclose(seen[0][0].permute(1, 2, 0).numpy(), expected, atol=1e-6)


def tiny_lte() -> nn.Module:
    torch.manual_seed(0)
    return make_model(
        {
            "name": "lte",
            "args": {
                "encoder_spec": {
                    "name": "edsr-baseline",
                    "args": {"n_resblocks": 1, "n_feats": 8, "no_upsampling": True},
                },
                "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16]}},
                "hidden_dim": 16,
            },
        }
    )


def test_real_model_chunked_equals_whole(div2k):
    model = tiny_lte()
    whole = run_test(paired_config(div2k, 3, "div2k-3", eval_bsize=None), model, verbose=False)
    chunked = run_test(paired_config(div2k, 3, "div2k-3", eval_bsize=777), model, verbose=False)
    np.testing.assert_allclose(
        [r["psnr"] for r in whole["images"]], [r["psnr"] for r in chunked["images"]], atol=1e-5
    )


def test_cli_writes_json(div2k, tmp_path, capsys):
    ckpt = tmp_path / "tiny.pth"
    save_model(tiny_lte(), ckpt)
    config = tmp_path / "test.yaml"
    config.write_text(yaml.safe_dump(paired_config(div2k, 2, "benchmark-2")))
    out = tmp_path / "res" / "results.json"
    assert main(["test", "--config", str(config), "--model", str(ckpt), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[1/2] a.png" in printed and "[2/2] b.png" in printed
    result = json.loads(out.read_text())
    assert len(result["images"]) == 2 and result["eval_type"] == "benchmark-2"
    assert result["mean_psnr"] == pytest.approx(np.mean([r["psnr"] for r in result["images"]]))
    assert f"{result['mean_psnr']:.4f}" in printed
    # Evaluation is fp32 unless asked: the protocols are float32.
    assert result["precision"] == "fp32" and "fp32 (asked for)" in printed


def test_cli_takes_bf16_as_an_option(div2k, tmp_path, capsys):
    ckpt = tmp_path / "tiny.pth"
    save_model(tiny_lte(), ckpt)
    config = tmp_path / "test.yaml"
    config.write_text(yaml.safe_dump(paired_config(div2k, 2, "benchmark-2")))
    out = tmp_path / "results.json"
    argv = ["test", "--config", str(config), "--model", str(ckpt), "--out", str(out)]
    assert main([*argv, "--precision", "bf16"]) == 0
    bf16 = json.loads(out.read_text())
    assert main(argv) == 0
    fp32 = json.loads(out.read_text())
    assert (bf16["precision"], fp32["precision"]) == ("bf16", "fp32")
    assert bf16["mean_psnr"] == pytest.approx(fp32["mean_psnr"], abs=0.1)
    assert "bf16 (asked for" in capsys.readouterr().out


def test_bundled_test_configs_follow_the_protocol(capsys):
    paths = sorted((Path(__file__).resolve().parents[1] / "configs" / "test").glob("*.yaml"))
    assert len(paths) == 8 + 4 * 3
    for path in paths:
        config = yaml.safe_load(path.read_text())
        kind, scale = parse_eval_type(config["eval_type"])
        assert path.stem.endswith(f"-{scale}") and config["data_norm"] == NORM
        spec = config["test_dataset"]
        assert spec["batch_size"] == 1 and spec["wrapper"]["name"] in DATASETS
        # x2-x4 read the bicubic LR files; larger scales down-sample the HR themselves.
        paired = spec["wrapper"]["name"] == "sr-implicit-paired"
        assert paired == (scale <= 4)
        assert kind == ("div2k" if "div2k" in path.stem else "benchmark")
        read_test_config(config, str(path))  # the schema takes it, without warnings
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- command-line errors


def run_test_cli(capsys, *argv: str) -> tuple[int, list[str]]:
    status = main(["test", *argv])
    return status, capsys.readouterr().err.strip().splitlines()


def assert_one_line(status: int, lines: list[str], pattern: str) -> None:
    assert status == 1 and len(lines) == 1, lines
    assert re.match(rf"lte-sr: error: .*{pattern}", lines[0]), lines[0]


@pytest.fixture
def test_files(div2k, tmp_path) -> tuple[Path, Path]:
    ckpt = tmp_path / "tiny.pth"
    save_model(tiny_lte(), ckpt)
    config = tmp_path / "test.yaml"
    config.write_text(yaml.safe_dump(paired_config(div2k, 2, "benchmark-2")))
    return config, ckpt


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"", r"bad\.pth: cannot be read as a weights-only PyTorch checkpoint"),
        (bytes(range(256)) * 8, r"bad\.pth: cannot be read as a weights-only PyTorch checkpoint"),
        ("truncated", r"bad\.pth: cannot be read as a weights-only PyTorch checkpoint"),
        (
            "crafted",
            r"bad\.pth: model args cannot build an LTE: .*n_resblocks must be .* got 200000",
        ),
    ],
    ids=["empty", "random", "truncated", "crafted"],
)
def test_a_bad_model_file_is_one_line(test_files, tmp_path, capsys, content, pattern):
    config, ckpt = test_files
    bad = tmp_path / "bad.pth"
    if content == "truncated":
        content = ckpt.read_bytes()[: ckpt.stat().st_size // 2]
    elif content == "crafted":
        raw = torch.load(ckpt, weights_only=True)
        raw["model"]["args"]["encoder_spec"]["args"]["n_resblocks"] = 200000
        torch.save(raw, bad)
        content = bad.read_bytes()
    bad.write_bytes(content)
    assert_one_line(*run_test_cli(capsys, "--config", str(config), "--model", str(bad)), pattern)


def test_a_bad_config_is_one_line(test_files, tmp_path, capsys):
    _, ckpt = test_files
    broken = tmp_path / "broken.yaml"
    broken.write_text("test_dataset: {dataset: [1,\n")
    assert_one_line(
        *run_test_cli(capsys, "--config", str(broken), "--model", str(ckpt)),
        r"broken\.yaml: not valid YAML at line \d+, column \d+",
    )
    empty = tmp_path / "empty.yaml"
    empty.write_text("eval_type: div2k-4\n")
    assert_one_line(
        *run_test_cli(capsys, "--config", str(empty), "--model", str(ckpt)),
        r"empty\.yaml: missing key 'test_dataset'",
    )
    empty.write_text(
        yaml.safe_dump({**yaml.safe_load(test_files[0].read_text()), "eval_type": "set5-4"})
    )
    assert_one_line(
        *run_test_cli(capsys, "--config", str(empty), "--model", str(ckpt)),
        r"empty\.yaml: eval_type must be 'div2k-N' or 'benchmark-N', got 'set5-4'",
    )


def test_a_bad_device_is_one_line(test_files, capsys):
    config, ckpt = test_files
    assert_one_line(
        *run_test_cli(capsys, "--config", str(config), "--model", str(ckpt), "--device", "bogus"),
        r"device must be .* got 'bogus'",
    )
    if not torch.cuda.is_available():
        assert_one_line(
            *run_test_cli(
                capsys, "--config", str(config), "--model", str(ckpt), "--device", "cuda"
            ),
            r"device='cuda' was asked for but CUDA is not available",
        )


# ----------------------------------------------------------------------------- reliability


def test_out_never_overwrites_what_the_run_reads(test_files, div2k, tmp_path, capsys):
    config, ckpt = test_files
    (tmp_path / "link.yaml").symlink_to(config)
    os.link(ckpt, tmp_path / "hard.pth")
    hr_image = div2k / "HR" / "a.png"
    before = {path: path.read_bytes() for path in (config, ckpt, hr_image)}
    for out, source in [
        (config, config),
        (tmp_path / "link.yaml", config),
        (ckpt, ckpt),
        (tmp_path / "hard.pth", ckpt),
        (hr_image, hr_image),  # an image of the test set
        (div2k / "HR", div2k / "HR"),  # the test set's folder
    ]:
        status, lines = run_test_cli(
            capsys, "--config", str(config), "--model", str(ckpt), "--out", str(out)
        )
        assert_one_line(status, lines, rf"--out: {re.escape(str(out))} is the input \w+ ")
        assert re.escape(str(source)) in re.escape(lines[0])
    assert {path: path.read_bytes() for path in before} == before


def nan_checkpoint(path: Path) -> Path:
    model = tiny_lte()
    with torch.no_grad():
        model.coef.weight.fill_(math.nan)
    save_model(model, path)
    return path


def test_a_nan_model_fails_and_writes_no_json(test_files, tmp_path, capsys):
    config, _ = test_files
    bad = nan_checkpoint(tmp_path / "nan.pth")
    out = tmp_path / "result.json"
    status, lines = run_test_cli(
        capsys, "--config", str(config), "--model", str(bad), "--out", str(out), "--quiet"
    )
    assert_one_line(
        status,
        lines,
        r"nan\.pth: a\.png: PSNR is nan: the model's output is not finite .*; no JSON written",
    )
    assert not out.exists()


def test_a_shave_larger_than_the_image_fails(div2k, test_files, tmp_path, capsys):
    _, ckpt = test_files
    shaved = tmp_path / "shaved.yaml"
    # x40: a 2x2 LR of each image and an 80x80 HR, of which div2k-40 would shave 46 pixels
    # from each border.
    config = {
        "test_dataset": {
            "dataset": {"name": "image-folder", "args": {"root_path": str(div2k / "HR")}},
            "wrapper": {"name": "sr-implicit-downsampled", "args": {"scale_min": 40}},
        },
        "eval_type": "div2k-40",
    }
    shaved.write_text(yaml.safe_dump(config))
    status, lines = run_test_cli(capsys, "--config", str(shaved), "--model", str(ckpt), "--quiet")
    assert_one_line(
        status, lines, r"div2k-40 shaves 46 pixels from each border, .* of a 80x80 image"
    )


def test_an_infinite_psnr_is_a_failure_too():
    result = {"images": [{"name": "a.png", "psnr": 30.0}, {"name": "b.png", "psnr": math.inf}]}
    with pytest.raises(NonFiniteResultError, match=r"b\.png: PSNR is inf: .*equals the ground"):
        check_finite(result)
    check_finite({"images": [{"name": "a.png", "psnr": 30.0}]})


def test_the_json_is_strict(test_files, tmp_path, capsys):
    config, ckpt = test_files
    out = tmp_path / "result.json"
    assert main(["test", "--config", str(config), "--model", str(ckpt), "--out", str(out)]) == 0

    def refuse(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    result = json.loads(out.read_text(), parse_constant=refuse)
    assert all(math.isfinite(r["psnr"]) for r in result["images"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "test.yaml", "tiny.pth"]


@pytest.mark.parametrize(
    "lr_size, eval_type, pattern",
    [
        ((40, 40), "benchmark-2", r"LR size 40x40 is not the size of .*HR.a\.png \(90x96\) "),
        ((45, 48), "benchmark-3", r"LR size 45x48 .* by the scale 3, rounded down: expected 30x32"),
        ((44, 48), None, r"LR size 44x48 .* divided by the scale 2, rounded down: expected 45x48"),
    ],
    ids=["wrong-size", "wrong-scale", "wrong-width"],
)
def test_pairs_whose_sizes_do_not_fit_the_scale_are_refused(
    div2k, tmp_path, capsys, lr_size, eval_type, pattern
):
    lr = tmp_path / "LR"
    lr.mkdir()
    for name in ("a.png", "b.png"):
        with Image.open(div2k / "X2" / name) as image:
            image.resize(lr_size if name == "a.png" else image.size).save(lr / name)
    config = paired_config(div2k, 2, eval_type)
    config["test_dataset"]["dataset"]["args"]["root_path_1"] = str(lr)
    path = tmp_path / "pairs.yaml"
    path.write_text(yaml.safe_dump(config))
    ckpt = tmp_path / "tiny.pth"
    save_model(tiny_lte(), ckpt)
    status, lines = run_test_cli(capsys, "--config", str(path), "--model", str(ckpt), "--quiet")
    assert_one_line(status, lines, rf"{re.escape(str(lr / 'a.png'))}: {pattern}")


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (
            lambda c: c.update(eval_bsize=2**31 - 1),
            r"eval_bsize: a chunk of 2147483647 queries needs .* GiB, more",
        ),
        (lambda c: c.update(eval_bsize="big"), r"eval_bsize must be an integer in \[1, "),
        (lambda c: c["data_norm"]["gt"].update(div=[0.5, 0]), r"data_norm\.gt\.div must be a list"),
        (
            lambda c: c["test_dataset"]["wrapper"]["args"].update(inp_sise=48),
            r"test_dataset\.wrapper\.args\.inp_sise: unknown key \(did you mean 'inp_size'\?\)",
        ),
        (lambda c: c.update(scale_max=0), r"scale_max must be a number in \[1, 1000\], got 0"),
    ],
    ids=["eval_bsize-memory", "eval_bsize-type", "data_norm", "wrapper-arg", "scale_max"],
)
def test_the_test_config_schema(test_files, tmp_path, capsys, edit, pattern):
    config, ckpt = test_files
    spec = yaml.safe_load(config.read_text())
    edit(spec)
    config.write_text(yaml.safe_dump(spec))
    status, lines = run_test_cli(capsys, "--config", str(config), "--model", str(ckpt))
    assert_one_line(status, lines, rf"test\.yaml: {pattern}")


def test_unknown_top_level_keys_are_warned_once_each(test_files, capsys):
    config, ckpt = test_files
    config.write_text(config.read_text() + "eval_typ: div2k-2\nnotes: x\n")
    assert main(["test", "--config", str(config), "--model", str(ckpt), "--quiet"]) == 0
    warnings = capsys.readouterr().err.strip().splitlines()
    assert warnings == [
        f"warning: {config}: unknown key 'eval_typ' is ignored (did you mean 'eval_type'?)",
        f"warning: {config}: unknown key 'notes' is ignored",
    ]
