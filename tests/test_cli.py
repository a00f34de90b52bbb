"""Tests of the ``lte-sr`` command line (``upscale`` subcommand and error handling)."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from lte_cuda import save_model, upscale
from lte_cuda.cli import main
from lte_cuda.image_io import files
from lte_cuda.models import build_preset

# `lte_cuda.upscale` is the function; the module is needed to patch its weight paths.
upscale_module = importlib.import_module("lte_cuda.upscale")
upscale_command = importlib.import_module("lte_cuda.cli.upscale")
ICC_RGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def write_image(path: Path, width: int = 17, height: int = 13, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode).save(
        path
    )
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
def test_upscale_file(
    tmp_path: Path, checkpoint: Path, capsys, target: list, expected: tuple
) -> None:
    source = write_image(tmp_path / "in.png")
    status, err = run(
        capsys,
        "upscale",
        source,
        tmp_path / "out.png",
        *target,
        "--model",
        checkpoint,
        "--device",
        "cpu",
        "--chunk",
        "100",
        "--tile",
        "8",
    )
    assert status == 0, err
    with Image.open(tmp_path / "out.png") as out:
        assert out.size == expected and out.mode == "RGB"
    # Written through a temporary file that is gone afterwards.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png"]


def test_output_file_in_a_folder_that_does_not_exist_yet(
    tmp_path: Path, checkpoint: Path, capsys
) -> None:
    source = write_image(tmp_path / "in.png")
    status, err = run(
        capsys,
        "upscale",
        source,
        tmp_path / "new" / "deeper" / "out.png",
        "--scale",
        "2",
        "--model",
        checkpoint,
    )
    assert status == 0, err
    with Image.open(tmp_path / "new" / "deeper" / "out.png") as out:
        assert out.size == (34, 26)


def test_output_into_existing_folder_and_jpeg_drops_alpha(
    tmp_path: Path, checkpoint: Path, capsys
) -> None:
    source = write_image(tmp_path / "in.png", mode="RGBA")
    (tmp_path / "out").mkdir()
    assert (
        run(capsys, "upscale", source, tmp_path / "out", "--scale", "2", "--model", checkpoint)[0]
        == 0
    )
    with Image.open(tmp_path / "out" / "in.png") as out:
        assert out.size == (34, 26) and out.mode == "RGBA"
    assert (
        run(capsys, "upscale", source, tmp_path / "out.jpg", "--scale", "2", "--model", checkpoint)[
            0
        ]
        == 0
    )
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.mode == "RGB"


def test_folder_run(tmp_path: Path, checkpoint: Path, capsys) -> None:
    source = tmp_path / "in"
    source.mkdir()
    write_image(source / "a.png")
    write_image(source / "b.JPG", width=9, height=7, mode="L")
    write_image(source / "c.webp", width=5, height=6)
    (source / "notes.txt").write_text("not an image")
    status, err = run(
        capsys, "upscale", source, tmp_path / "out" / "x2", "--scale", "2", "--model", checkpoint
    )
    assert status == 0, err
    outputs = {}
    for path in (tmp_path / "out" / "x2").iterdir():
        with Image.open(path) as out:
            outputs[path.name] = out.size
    assert outputs == {"a.png": (34, 26), "b.JPG": (18, 14), "c.webp": (10, 12)}
    # Not a terminal: no bars, one line per file (its place in the folder, sizes, precision).
    assert "[3/3] " in err and "17x13 -> 34x26 in " in err and "fp32 (auto: " in err
    assert "\r" not in err


def test_quiet_prints_nothing_but_errors(tmp_path: Path, checkpoint: Path, capsys) -> None:
    source = write_image(tmp_path / "in.png")
    argv = ["upscale", source, tmp_path / "out.png", "--scale", "2", "--model", checkpoint]
    status, err = run(capsys, *argv, "--quiet")
    assert (status, err) == (0, "")
    status, err = run(capsys, *argv, "--precision", "fp32")
    assert status == 0 and err.startswith("lte-sr: ") and "fp32 (asked for)" in err


def test_output_never_overwrites_input(tmp_path: Path, checkpoint: Path, capsys) -> None:
    source = write_image(tmp_path / "in.png")
    (tmp_path / "link.png").symlink_to(source)
    os.link(source, tmp_path / "hard.png")
    model_link = tmp_path / "model.png"  # an image name that is the checkpoint
    model_link.symlink_to(checkpoint)
    before, model_before = source.read_bytes(), checkpoint.read_bytes()
    for out, what in [
        (tmp_path / "." / "in.png", "input file"),
        (tmp_path, "input file"),  # OUT a folder: OUT/in.png
        (tmp_path / "link.png", "input file"),
        (tmp_path / "hard.png", "input file"),
        (model_link, f"input file {checkpoint}"),
    ]:
        status, err = run(capsys, "upscale", source, out, "--scale", "2", "--model", checkpoint)
        assert status == 1
        assert_one_line_error(err, f"OUT: {out / 'in.png' if out.is_dir() else out} is the {what}")
    status, err = run(capsys, "upscale", tmp_path, tmp_path, "--scale", "2", "--model", checkpoint)
    assert status == 1
    assert_one_line_error(err, "is the input folder")
    assert source.read_bytes() == before and checkpoint.read_bytes() == model_before


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
        (
            ["--scale", "2", "--precision", "fp64"],
            2,
            "argument --precision: invalid choice: 'fp64'",
        ),
        (
            ["--scale", "2", "--device", "tpu"],
            1,
            "device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got 'tpu'",
        ),
    ],
)
def test_bad_arguments(
    tmp_path: Path, checkpoint: Path, capsys, args: list, status: int, match: str
) -> None:
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
        (
            [tmp_path / "missing.png", out, "--model", checkpoint],
            "missing.png: no such file or folder",
        ),
        ([fake, out, "--model", checkpoint], "fake.png: not a readable image"),
        ([tmp_path / "empty", tmp_path / "o", "--model", checkpoint], "empty: no images"),
        (
            [source, tmp_path / "out.xyz", "--model", checkpoint],
            "cannot tell the image format to write",
        ),
        ([source, source / "out.png", "--model", checkpoint], "cannot create its folder"),
        ([source, out, "--model", tmp_path / "missing.pth"], "missing.pth: no such file"),
        (
            [source, out, "--model", corrupt],
            "corrupt.pth: cannot be read as a weights-only PyTorch checkpoint",
        ),
        ([source, out, "--model", not_lte], "other.pth: not an LTE checkpoint"),
    ]
    for argv, match in cases:
        status, err = run(capsys, "upscale", *argv, "--scale", "2")
        assert status == 1
        assert_one_line_error(err, match)


def test_no_model_and_no_bundled_default(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upscale_module, "DEFAULT_WEIGHTS", tmp_path / "default.pth")
    source = write_image(tmp_path / "in.png")
    status, err = run(capsys, "upscale", source, tmp_path / "out.png", "--scale", "2")
    assert status == 1
    assert_one_line_error(err, "no model given and no default model is bundled yet")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_asked_but_absent(tmp_path: Path, checkpoint: Path, capsys) -> None:
    source = write_image(tmp_path / "in.png")
    status, err = run(
        capsys,
        "upscale",
        source,
        tmp_path / "out.png",
        "--scale",
        "2",
        "--model",
        checkpoint,
        "--device",
        "cuda",
    )
    assert status == 1
    assert_one_line_error(err, "device='cuda' was asked for but CUDA is not available")


def test_help_and_python_dash_m(tmp_path: Path, capsys) -> None:
    assert main(["upscale", "--help"]) == 0
    assert "--scale" in capsys.readouterr().out
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lte_cuda",
            "upscale",
            str(tmp_path / "missing.png"),
            str(tmp_path / "o.png"),
            "--scale",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert_one_line_error(done.stderr, "missing.png: no such file or folder")


# Files: metadata, bit depth, quality, permissions, animations.


def test_exif_orientation_applied_and_metadata_kept(
    tmp_path: Path, checkpoint: Path, capsys
) -> None:
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "TestCam"  # orientation, make
    source = tmp_path / "in.jpg"
    write_image(tmp_path / "in.png", width=20, height=10)
    Image.open(tmp_path / "in.png").save(
        source, exif=exif.tobytes(), icc_profile=ICC_RGB, dpi=(300, 100)
    )
    status, err = run(
        capsys, "upscale", source, tmp_path / "out.jpg", "--scale", "2", "--model", checkpoint
    )
    assert status == 0, err
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (20, 40)  # upright: 10x20, then x2
        assert out.getexif()[0x0112] == 1 and out.getexif()[0x010F] == "TestCam"
        assert out.info["icc_profile"] == ICC_RGB
        assert out.info["dpi"] == (200, 600)  # swapped with the rows and columns, then x2


def nearest_x2(image: np.ndarray, **_: object) -> np.ndarray:
    """A stand-in for the model: pixel doubling, so that exact values can be checked."""
    return image.repeat(2, axis=0).repeat(2, axis=1)


@pytest.mark.parametrize(
    "name, shape", [("gray16.png", (7, 5)), ("rgb16.tif", (7, 5, 3)), ("rgba16.png", (7, 5, 4))]
)
def test_16bit_in_16bit_out(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, name: str, shape: tuple
) -> None:
    monkeypatch.setattr(upscale_command, "upscale", nearest_x2)
    pixels = np.random.default_rng(0).integers(0, 65536, shape, dtype=np.uint16)
    files.write_image(pixels, tmp_path / name)
    status, err = run(capsys, "upscale", tmp_path / name, tmp_path / f"out-{name}", "--scale", "2")
    assert status == 0, err
    out = files.read_image(tmp_path / f"out-{name}")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, nearest_x2(pixels))


@pytest.mark.parametrize("name, shape", [("gray16.png", (7, 5)), ("rgb16.tif", (7, 5, 3))])
def test_16bit_through_the_model(
    tmp_path: Path, checkpoint: Path, capsys, name: str, shape: tuple
) -> None:
    # Smooth content, so that the model's output is not clipped to 0 or 65535.
    ramp = np.linspace(10000, 50000, num=int(np.prod(shape))).reshape(shape).astype(np.uint16)
    files.write_image(ramp, tmp_path / name)
    status, err = run(
        capsys,
        "upscale",
        tmp_path / name,
        tmp_path / f"out-{name}",
        "--scale",
        "2",
        "--model",
        checkpoint,
        "--device",
        "cpu",
    )
    assert status == 0, err
    out = files.read_image(tmp_path / f"out-{name}")
    assert out.dtype == np.uint16 and out.shape[:2] == (14, 10)
    np.testing.assert_array_equal(out, upscale(ramp, scale=2, model=str(checkpoint), device="cpu"))
    assert np.any(out % 257 != 0)  # not 8-bit values widened


def quantization(path: Path) -> dict:
    with Image.open(path) as jpeg:
        return jpeg.quantization


def test_jpeg_quality(tmp_path: Path, checkpoint: Path, capsys) -> None:
    source = write_image(tmp_path / "in.png")
    for quality in (95, 75, 40):
        Image.open(source).resize((34, 26)).save(tmp_path / f"pillow{quality}.jpg", quality=quality)
    assert (
        run(
            capsys,
            "upscale",
            source,
            tmp_path / "default.jpg",
            "--scale",
            "2",
            "--model",
            checkpoint,
        )[0]
        == 0
    )
    assert (
        run(
            capsys,
            "upscale",
            source,
            tmp_path / "q40.jpg",
            "--scale",
            "2",
            "--model",
            checkpoint,
            "--quality",
            "40",
        )[0]
        == 0
    )
    assert quantization(tmp_path / "default.jpg") == quantization(tmp_path / "pillow95.jpg")
    assert quantization(tmp_path / "default.jpg") != quantization(tmp_path / "pillow75.jpg")
    assert quantization(tmp_path / "q40.jpg") == quantization(tmp_path / "pillow40.jpg")
    status, err = run(
        capsys, "upscale", source, tmp_path / "bad.jpg", "--scale", "2", "--quality", "0"
    )
    assert status == 2
    assert_one_line_error(err, "argument --quality: expected an integer in 1..100, got '0'")


def test_output_permissions_follow_umask(tmp_path: Path, checkpoint: Path, capsys) -> None:
    source = write_image(tmp_path / "in.png")
    previous = os.umask(0o027)
    try:
        status, err = run(
            capsys, "upscale", source, tmp_path / "out.png", "--scale", "2", "--model", checkpoint
        )
    finally:
        os.umask(previous)
    assert status == 0, err
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o640


def test_animated_gif_every_frame_upscaled(tmp_path: Path, checkpoint: Path, capsys) -> None:
    frames = [Image.new("RGB", (9, 7), colour) for colour in ("red", "green", "blue")]
    source = tmp_path / "anim.gif"
    frames[0].save(source, save_all=True, append_images=frames[1:], duration=[40, 60, 200], loop=0)
    status, err = run(
        capsys, "upscale", source, tmp_path / "out.gif", "--scale", "2", "--model", checkpoint
    )
    assert status == 0, err
    with Image.open(tmp_path / "out.gif") as out:
        assert out.n_frames == 3 and out.size == (18, 14) and out.info["loop"] == 0
        durations = []
        for index in range(3):
            out.seek(index)
            durations.append(out.info["duration"])
        assert durations == [40, 60, 200]
    status, err = run(
        capsys, "upscale", source, tmp_path / "out.jpg", "--scale", "2", "--model", checkpoint
    )
    assert status == 1
    assert_one_line_error(err, "out.jpg: JPEG cannot hold the 3 frames of an animation")
    assert not (tmp_path / "out.jpg").exists()


# Folders that finish.


def folder_of_images(folder: Path, count: int, size: int = 9) -> list[str]:
    folder.mkdir()
    return [
        write_image(folder / f"img{i:02d}.png", width=size, height=size).name for i in range(count)
    ]


def test_folder_run_skips_a_corrupt_file_and_fails_at_the_end(
    tmp_path: Path, checkpoint: Path, capsys
) -> None:
    names = folder_of_images(tmp_path / "in", 2)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    status, err = run(
        capsys, "upscale", tmp_path / "in", tmp_path / "out", "--scale", "2", "--model", checkpoint
    )
    assert status == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names
    lines = [line for line in err.splitlines() if line.startswith("lte-sr:")]
    errors = [line for line in lines if line.startswith("lte-sr: error:")]
    assert (
        len(errors) == 1
        and "broken.png: not a readable image" in errors[0]
        and "(skipped)" in errors[0]
    )
    assert sum(" -> " in line for line in lines) == 2  # one line per file written
    assert lines[-1] == "lte-sr: 2 written, 0 skipped, 1 failed"
    assert "Traceback" not in err


def test_folder_run_stops_on_errors_that_concern_every_file(
    tmp_path: Path, checkpoint: Path, capsys
) -> None:
    folder_of_images(tmp_path / "in", 2)
    model = build_preset(
        "edsr-baseline-lte",
        {"n_resblocks": 1, "n_feats": 8},
        hidden_dim=16,
        imnet_spec={"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16]}},
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    save_model(model, tmp_path / "nan.pth")
    cases = [
        (["--model", tmp_path / "nan.pth"], "nan.pth"),
        (["--model", checkpoint, "--device", "tpu"], "tpu"),
    ]
    for argv, match in cases:
        status, err = run(
            capsys, "upscale", tmp_path / "in", tmp_path / "out", "--scale", "2", *argv
        )
        assert status == 1
        assert_one_line_error(
            "\n".join(line for line in err.splitlines() if "lte-sr" in line), match
        )
        assert list((tmp_path / "out").iterdir()) == []


def test_skip_existing_continues_a_stopped_run(tmp_path: Path, checkpoint: Path, capsys) -> None:
    names = folder_of_images(tmp_path / "in", 3)
    argv = ["upscale", tmp_path / "in", tmp_path / "out", "--scale", "2", "--model", checkpoint]
    assert run(capsys, *argv)[0] == 0
    (tmp_path / "out" / names[0]).write_bytes(b"kept")
    (tmp_path / "out" / names[1]).unlink()
    status, err = run(capsys, *argv, "--skip-existing")
    assert status == 0, err
    assert "lte-sr: 1 written, 2 skipped, 0 failed" in err
    assert (tmp_path / "out" / names[0]).read_bytes() == b"kept"
    with Image.open(tmp_path / "out" / names[1]) as out:
        assert out.size == (18, 18)
    status, err = run(capsys, *argv)  # without the flag, every output is written again
    assert status == 0 and "3 written, 0 skipped, 0 failed" in err


def test_partial_file_of_a_killed_run_is_not_taken_as_input(
    tmp_path: Path, checkpoint: Path, capsys
) -> None:
    names = folder_of_images(tmp_path / "in", 1)
    # What `kill -9` during a write leaves: a partial file beside its target.
    (tmp_path / "in" / f".old.png{files.PARTIAL_TAG}0123abcd").write_bytes(b"\x89PNG half")
    status, err = run(
        capsys, "upscale", tmp_path / "in", tmp_path / "out", "--scale", "2", "--model", checkpoint
    )
    assert status == 0, err
    assert [p.name for p in (tmp_path / "out").iterdir()] == names
    assert "1 written, 0 skipped, 0 failed" in err


def test_sigterm_during_a_folder_run_leaves_no_partial_file(
    tmp_path: Path, checkpoint: Path, capsys
) -> None:
    count = 8
    folder_of_images(
        tmp_path / "in", count, size=32
    )  # each image long enough to stop the run midway
    out = tmp_path / "out"
    argv = [
        "upscale",
        tmp_path / "in",
        out,
        "--scale",
        "4",
        "--model",
        checkpoint,
        "--device",
        "cpu",
    ]
    child = subprocess.Popen(
        [sys.executable, "-m", "lte_cuda", *map(str, argv)], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while not (out.exists() and any(files.is_image_path(p) for p in out.iterdir())):
            assert child.poll() is None and time.monotonic() < deadline, "no output appeared"
            time.sleep(0.02)
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=120)
    finally:
        child.kill()
        child.communicate()
    assert child.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM)
    written = sorted(out.iterdir())
    assert all(files.is_image_path(p) for p in written) and 0 < len(written) < count
    for path in written:
        with Image.open(path) as image:
            image.load()
    status, err = run(capsys, *argv, "--skip-existing")
    assert status == 0, err
    assert f"{count - len(written)} written, {len(written)} skipped, 0 failed" in err


# inspect writes like upscale.


def test_inspect_refuses_to_write_over_its_input(tmp_path: Path, checkpoint: Path, capsys) -> None:
    source = write_image(tmp_path / "in.png")
    (tmp_path / "link.png").symlink_to(source)
    before = source.read_bytes()
    for out in (source, tmp_path / "." / "in.png", tmp_path / "link.png"):
        status, err = run(capsys, "inspect", source, out, "--model", checkpoint)
        assert status == 1
        assert_one_line_error(err, f"OUT: {out} is the input file {source}")
    model_before = checkpoint.read_bytes()
    status, err = run(capsys, "inspect", source, checkpoint, "--model", checkpoint)
    assert status == 1
    assert_one_line_error(err, f"OUT: {checkpoint} is the input file {checkpoint}")
    assert source.read_bytes() == before and checkpoint.read_bytes() == model_before


def test_inspect_writes_atomically(tmp_path: Path, checkpoint: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    source = tmp_path / "in.png"
    files.write_image(
        np.random.default_rng(0).integers(0, 65536, (13, 17, 3), dtype=np.uint16), source
    )  # 16-bit
    status, err = run(
        capsys,
        "inspect",
        source,
        tmp_path / "textures.png",
        "--model",
        checkpoint,
        "--device",
        "cpu",
    )
    assert status == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "textures.png"]
    with Image.open(tmp_path / "textures.png") as figure:
        assert figure.size == (1200, 800)


def test_an_ico_output_too_large_for_the_format_is_refused_before_the_work(
    tmp_path: Path, checkpoint: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("upscaled although the output cannot be written")

    monkeypatch.setattr(upscale_command, "upscale", no_work)
    source = write_image(tmp_path / "in.png", width=100, height=60)
    status, err = run(
        capsys, "upscale", source, tmp_path / "out.ico", "--scale", "3", "--model", checkpoint
    )
    assert status == 1
    assert_one_line_error(err, "out.ico: ICO holds images up to 256 pixels a side, the output")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]
