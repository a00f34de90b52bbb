"""Tests of the ``lte-sr`` command line (``upscale`` subcommand and error handling)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lte_cuda import save_model
from lte_cuda.cli import main
from lte_cuda.models import build_preset

# `lte_cuda.upscale` is the function; the module is needed to patch its weight paths.
upscale_module = importlib.import_module("lte_cuda.upscale")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
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


def write_image(path: Path, width: int = 17, height: int = 13, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode).save(path)
    return path


def run(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str]:
    """Exit status and stderr of ``lte-sr argv``."""
    status = main([str(a) for a in argv])
    return status, capsys.readouterr().err


def assert_one_line_error(err: str, match: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lte-sr: error: ") and match in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "target, expected",
    [
        (["--scale", "2"], (34, 26)),
        (["--scale", "1.5,3.2"], (54, 20)),
        (["--size", "61x29"], (61, 29)),
        (["--scale", "1.5,3.2", "--self-ensemble"], (54, 20)),
    ],
)
def test_upscale_file(tmp_path: Path, checkpoint: Path, capsys, target: list, expected: tuple) -> None:
    source = write_image(tmp_path / "in.png")
    status, err = run(capsys, "upscale", source, tmp_path / "out.png", *target, "--model", checkpoint,
                      "--device", "cpu", "--chunk", "100", "--tile", "8")
    assert status == 0, err
    with Image.open(tmp_path / "out.png") as out:
        assert out.size == expected and out.mode == "RGB"
    # Written through a temporary file that is gone afterwards.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png"]


def test_output_file_in_a_folder_that_does_not_exist_yet(tmp_path: Path, checkpoint: Path, capsys) -> None:
    source = write_image(tmp_path / "in.png")
    status, err = run(capsys, "upscale", source, tmp_path / "new" / "deeper" / "out.png", "--scale", "2",
                      "--model", checkpoint)
    assert status == 0, err
    with Image.open(tmp_path / "new" / "deeper" / "out.png") as out:
        assert out.size == (34, 26)


def test_output_into_existing_folder_and_jpeg_drops_alpha(tmp_path: Path, checkpoint: Path, capsys) -> None:
    source = write_image(tmp_path / "in.png", mode="RGBA")
    (tmp_path / "out").mkdir()
    assert run(capsys, "upscale", source, tmp_path / "out", "--scale", "2", "--model", checkpoint)[0] == 0
    with Image.open(tmp_path / "out" / "in.png") as out:
        assert out.size == (34, 26) and out.mode == "RGBA"
    assert run(capsys, "upscale", source, tmp_path / "out.jpg", "--scale", "2", "--model", checkpoint)[0] == 0
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.mode == "RGB"


def test_folder_run(tmp_path: Path, checkpoint: Path, capsys) -> None:
    source = tmp_path / "in"
    source.mkdir()
    write_image(source / "a.png")
    write_image(source / "b.JPG", width=9, height=7, mode="L")
    write_image(source / "c.webp", width=5, height=6)
    (source / "notes.txt").write_text("not an image")
    status, err = run(capsys, "upscale", source, tmp_path / "out" / "x2", "--scale", "2", "--model", checkpoint)
    assert status == 0, err
    outputs = {}
    for path in (tmp_path / "out" / "x2").iterdir():
        with Image.open(path) as out:
            outputs[path.name] = out.size
    assert outputs == {"a.png": (34, 26), "b.JPG": (18, 14), "c.webp": (10, 12)}
    assert "3/3" in err  # the progress bar


def test_output_never_overwrites_input(tmp_path: Path, checkpoint: Path, capsys) -> None:
    source = write_image(tmp_path / "in.png")
    before = source.read_bytes()
    status, err = run(capsys, "upscale", source, tmp_path / "." / "in.png", "--scale", "2", "--model", checkpoint)
    assert status == 1
    assert_one_line_error(err, "OUT is the input file")
    status, err = run(capsys, "upscale", source, tmp_path, "--scale", "2", "--model", checkpoint)
    assert status == 1
    assert_one_line_error(err, "OUT is the input file")
    status, err = run(capsys, "upscale", tmp_path, tmp_path, "--scale", "2", "--model", checkpoint)
    assert status == 1
    assert_one_line_error(err, "OUT is the input folder")
    assert source.read_bytes() == before


@pytest.mark.parametrize(
    "args, status, match",
    [
        (["--scale", "0"], 1, "scale must be positive and finite, got 0.0"),
        (["--scale", "-2"], 1, "scale must be positive and finite, got -2.0"),
        (["--scale", "nan"], 1, "scale must be positive and finite, got nan"),
        (["--scale", "1e9"], 1, "exceeds the maximum output side 65536"),
        (["--scale", "2,3,4"], 2, "argument --scale: expected a number or SY,SX"),
        (["--scale", "two"], 2, "argument --scale: expected a number or SY,SX"),
        (["--size", "640"], 2, "argument --size: expected WIDTHxHEIGHT"),
        (["--size", "0x10"], 1, "size must be positive, got (0, 10)"),
        (["--size", "100000x10"], 1, "output 100000x10 is too large"),
        (["--scale", "2", "--size", "4x4"], 2, "not allowed with argument"),
        ([], 2, "one of the arguments --scale --size is required"),
        (["--scale", "2", "--tile", "big"], 2, "argument --tile: invalid int value: 'big'"),
        (["--scale", "2", "--chunk", "0"], 1, "chunk_size must be a positive integer, got 0"),
        (["--scale", "2", "--precision", "fp64"], 2, "argument --precision: invalid choice: 'fp64'"),
        (["--scale", "2", "--device", "tpu"], 1, "device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got 'tpu'"),
    ],
)
def test_bad_arguments(tmp_path: Path, checkpoint: Path, capsys, args: list, status: int, match: str) -> None:
    source = write_image(tmp_path / "in.png")
    got, err = run(capsys, "upscale", source, tmp_path / "out.png", "--model", checkpoint, *args)
    assert got == status
    assert_one_line_error(err, match)
    assert not (tmp_path / "out.png").exists()


def test_bad_files(tmp_path: Path, checkpoint: Path, capsys) -> None:
    source = write_image(tmp_path / "in.png")
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00garbage" * 10)
    not_lte = tmp_path / "other.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, not_lte)
    out = tmp_path / "out.png"
    cases = [
        ([tmp_path / "missing.png", out, "--model", checkpoint], "missing.png: no such file or folder"),
        ([fake, out, "--model", checkpoint], "fake.png: not a readable image"),
        ([tmp_path / "empty", tmp_path / "o", "--model", checkpoint], "empty: no images"),
        ([source, tmp_path / "out.xyz", "--model", checkpoint], "cannot tell the image format to write"),
        ([source, source / "out.png", "--model", checkpoint], "cannot create its folder"),
        ([source, out, "--model", tmp_path / "missing.pth"], "missing.pth: no such file"),
        ([source, out, "--model", corrupt], "corrupt.pth: cannot be read as a weights-only PyTorch checkpoint"),
        ([source, out, "--model", not_lte], "other.pth: not an LTE checkpoint"),
    ]
    for argv, match in cases:
        status, err = run(capsys, "upscale", *argv, "--scale", "2")
        assert status == 1
        assert_one_line_error(err, match)


def test_no_model_and_no_bundled_default(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upscale_module, "DEFAULT_WEIGHTS", tmp_path / "default.pth")
    source = write_image(tmp_path / "in.png")
    status, err = run(capsys, "upscale", source, tmp_path / "out.png", "--scale", "2")
    assert status == 1
    assert_one_line_error(err, "no model given and no default model is bundled yet")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_asked_but_absent(tmp_path: Path, checkpoint: Path, capsys) -> None:
    source = write_image(tmp_path / "in.png")
    status, err = run(capsys, "upscale", source, tmp_path / "out.png", "--scale", "2", "--model", checkpoint,
                      "--device", "cuda")
    assert status == 1
    assert_one_line_error(err, "device='cuda' was asked for but CUDA is not available")


def test_help_and_python_dash_m(tmp_path: Path, capsys) -> None:
    assert main(["upscale", "--help"]) == 0
    assert "--scale" in capsys.readouterr().out
    done = subprocess.run(
        [sys.executable, "-m", "lte_cuda", "upscale", str(tmp_path / "missing.png"), str(tmp_path / "o.png"),
         "--scale", "2"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert_one_line_error(done.stderr, "missing.png: no such file or folder")
