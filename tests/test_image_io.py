"""Tests of lte_cuda.image_io.files: reading and writing image files."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from lte_cuda.image_io import array_formats, files
from lte_cuda.image_io.files import (
    ImageFile,
    read_image,
    read_image_file,
    write_image,
    write_image_file,
)

ICC_RGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
MAKE_TAG = 0x010F


def exif_bytes(orientation: int | None = None, pixel_size: tuple[int, int] | None = None) -> bytes:
    exif = Image.Exif()
    exif[MAKE_TAG] = "TestCam"
    if orientation is not None:
        exif[files.ORIENTATION_TAG] = orientation
    if pixel_size is not None:
        details = exif.get_ifd(files.EXIF_IFD_TAG)
        details[files.PIXEL_X_DIMENSION], details[files.PIXEL_Y_DIMENSION] = pixel_size
    return exif.tobytes()


def left_red_right_blue(width: int = 20, height: int = 10) -> Image.Image:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2, 0] = 255
    pixels[:, width // 2 :, 2] = 255
    return Image.fromarray(pixels)


def random_uint16(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 65536, shape, dtype=np.uint16)


def test_exif_orientation_is_applied_and_reset(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    left_red_right_blue().save(path, exif=exif_bytes(orientation=6), dpi=(300, 100), quality=95)
    image = read_image_file(path)
    upright = np.asarray(image.frames[0])
    # Orientation 6: the stored image is shown turned 90 degrees clockwise; its left half (red) is on top.
    assert image.size == (10, 20)
    assert upright[:10, :, 0].mean() > 200 and upright[10:, :, 2].mean() > 200
    exif = Image.Exif()
    exif.load(image.exif)
    assert exif[files.ORIENTATION_TAG] == 1 and exif[MAKE_TAG] == "TestCam"
    assert image.dpi == (100, 300)  # rows and columns swapped with the pixels


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tif"])
def test_metadata_round_trip_with_scaled_dpi(tmp_path: Path, suffix: str) -> None:
    source = tmp_path / f"in{suffix}"
    options = {"exif": exif_bytes(pixel_size=(20, 10)), "icc_profile": ICC_RGB}
    if suffix != ".webp":
        options["dpi"] = (72, 96)
    left_red_right_blue().save(source, **options)
    image = read_image_file(source)
    assert image.icc_profile == ICC_RGB
    bigger = image.with_frames([image.frames[0].resize((40, 30))])
    write_image_file(bigger, tmp_path / f"out{suffix}")
    with Image.open(tmp_path / f"out{suffix}") as out:
        assert out.size == (40, 30)
        assert out.info.get("icc_profile") == ICC_RGB
        exif = out.getexif()
        assert exif[MAKE_TAG] == "TestCam"
        details = exif.get_ifd(files.EXIF_IFD_TAG)
        assert (details[files.PIXEL_X_DIMENSION], details[files.PIXEL_Y_DIMENSION]) == (40, 30)
        if suffix != ".webp":
            assert out.info["dpi"] == pytest.approx((144, 288), abs=0.05)


def test_array_frames_keep_the_metadata_too(tmp_path: Path) -> None:
    """Arrays go to PNG through the strip writer; it writes what Pillow's writer writes."""
    source = tmp_path / "in.png"
    options = {"exif": exif_bytes(pixel_size=(20, 10)), "icc_profile": ICC_RGB, "dpi": (72, 96)}
    left_red_right_blue().save(source, **options)
    image = read_image_file(source).as_arrays()
    assert isinstance(image.frames[0], np.ndarray)
    bigger = image.with_frames([np.repeat(np.repeat(image.frames[0], 3, 0), 2, 1)])
    write_image_file(bigger, tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as out:
        np.testing.assert_array_equal(np.asarray(out), bigger.frames[0])
        assert out.info.get("icc_profile") == ICC_RGB
        assert out.info["dpi"] == pytest.approx((144, 288), abs=0.05)
        details = out.getexif().get_ifd(files.EXIF_IFD_TAG)
        assert (details[files.PIXEL_X_DIMENSION], details[files.PIXEL_Y_DIMENSION]) == (40, 30)


def png_filter_types(data: bytes, row_bytes: int) -> set[int]:
    """The filter type of every row of a PNG file's pixels."""
    position, compressed = 8, b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        if data[position + 4 : position + 8] == b"IDAT":
            compressed += data[position + 8 : position + 8 + length]
        position += 12 + length
    return set(zlib.decompress(compressed)[:: row_bytes + 1])


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_from_arrays_in_many_strips_reads_back_exactly(
    tmp_path: Path, channels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A photo (smooth and textured rows) over strips of a few rows: the filters chosen row by
    row and the row carried from one strip to the next decode to the same pixels."""
    import skimage.data

    monkeypatch.setattr(array_formats, "STRIP_BYTES", 3000)
    pixels = np.ascontiguousarray(skimage.data.astronaut()[::4, ::4])  # 128 x 128 x 3
    pixels = np.concatenate([pixels, pixels[:, :, :1]], 2)[:, :, :channels]
    write_image(pixels, tmp_path / "photo.png")
    with Image.open(tmp_path / "photo.png") as out:
        read = np.asarray(out)
    np.testing.assert_array_equal(read.reshape(pixels.shape), pixels)
    types = png_filter_types((tmp_path / "photo.png").read_bytes(), 128 * channels)
    assert len(types) >= 3, types  # the adaptive choice is exercised, not one fixed filter


WRITE_PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from lte_cuda.image_io.files import write_image

    def status(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

    pixels = np.random.default_rng(0).integers(0, 256, (3000, 3000, 3), dtype=np.uint8)
    write_image(pixels[:64, :64], sys.argv[1])  # warm up: imports, zlib
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak to the current resident size
    before = status("VmRSS")
    write_image(pixels, sys.argv[1])
    print(json.dumps({"peak": status("VmHWM") - before, "image": pixels.nbytes}))
    """
)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_writing_an_array_holds_no_copy_of_it(tmp_path: Path, suffix: str) -> None:
    """A 27 MB array is written in strips: Pillow would first copy it (36 MB as RGBX)."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak")
    pixels_path = tmp_path / f"big{suffix}"
    script = WRITE_PEAK_SCRIPT
    if suffix == ".tif":  # 8-bit TIFF goes to Pillow (it keeps EXIF there): write 16 bits
        script = script.replace("dtype=np.uint8)", "dtype=np.uint8).astype(np.uint16)")
    result = subprocess.run(
        [sys.executable, "-c", script, str(pixels_path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 << 10)},
    )
    numbers = json.loads(result.stdout)
    # The strips' filters and buffers take a few MB; a copy of the image would exceed it.
    assert numbers["peak"] < numbers["image"] / 2, numbers


@pytest.mark.parametrize(
    "suffix, shape",
    [
        (".png", (9, 7)),
        (".png", (9, 7, 3)),
        (".png", (9, 7, 4)),
        (".tif", (9, 7)),
        (".tif", (9, 7, 3)),
        (".tif", (9, 7, 4)),
    ],
)
def test_16bit_round_trip_is_exact(tmp_path: Path, suffix: str, shape: tuple) -> None:
    pixels = random_uint16(shape)
    path = tmp_path / f"deep{suffix}"
    write_image_file(ImageFile(frames=(pixels,), icc_profile=ICC_RGB, dpi=(300.0, 300.0)), path)
    image = read_image_file(path)
    assert image.frames[0].dtype == np.uint16
    np.testing.assert_array_equal(image.frames[0], pixels)
    assert image.dpi == pytest.approx((300, 300), abs=0.05)
    # The sRGB profile goes with colour only.
    assert image.icc_profile == (ICC_RGB if len(shape) == 3 else None)


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_colour_tiff_from_another_writer(
    tmp_path: Path, compression: str | None, channels: int
) -> None:
    tifffile = pytest.importorskip("tifffile")
    pixels = random_uint16((11, 13, channels))
    path = tmp_path / "other.tif"
    extra = {"extrasamples": [2]} if channels == 4 else {}
    tifffile.imwrite(
        path, pixels, photometric="rgb", compression=compression, rowsperstrip=4, **extra
    )
    np.testing.assert_array_equal(read_image(path), pixels)
    # And the other way: our 16-bit TIFF as another reader sees it.
    write_image(pixels, tmp_path / "ours.tif")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "ours.tif"), pixels)


def test_16bit_gray_png_from_pillow(tmp_path: Path) -> None:
    pixels = random_uint16((6, 5))
    Image.fromarray(pixels).save(tmp_path / "gray16.png")
    np.testing.assert_array_equal(read_image(tmp_path / "gray16.png"), pixels)


def test_16bit_written_as_8bit_where_the_format_has_no_16bit(tmp_path: Path) -> None:
    pixels = np.array([[0, 257 * 10, 65535]], np.uint16)
    write_image(pixels, tmp_path / "gray.jpg")
    write_image(np.stack([pixels] * 3, axis=-1), tmp_path / "rgb.bmp")
    with Image.open(tmp_path / "rgb.bmp") as out:
        assert out.mode == "RGB" and np.asarray(out)[0, :, 0].tolist() == [0, 10, 255]
    with Image.open(tmp_path / "gray.jpg") as out:
        assert out.mode == "L"


def test_tiff_pages_are_frames(tmp_path: Path) -> None:
    pages = [Image.new("RGB", (5, 4), colour) for colour in ("red", "blue")]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    image = read_image_file(tmp_path / "pages.tif")
    assert len(image.frames) == 2 and image.durations is None
    write_image_file(
        image.with_frames([page.resize((10, 8)) for page in image.frames]), tmp_path / "out.tif"
    )
    with Image.open(tmp_path / "out.tif") as out:
        assert out.n_frames == 2 and out.size == (10, 8)
        out.seek(1)
        assert out.convert("RGB").getpixel((0, 0)) == (0, 0, 255)


@pytest.mark.parametrize("suffix", [".gif", ".webp", ".png"])
def test_animation_keeps_every_frame_and_its_duration(tmp_path: Path, suffix: str) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (8, 6), colour) for colour in colours]
    source = tmp_path / f"anim{suffix}"
    frames[0].save(source, save_all=True, append_images=frames[1:], duration=[50, 80, 120], loop=0)
    image = read_image_file(source)
    assert len(image.frames) == 3 and image.durations == (50, 80, 120) and image.loop == 0
    write_image_file(
        image.with_frames([f.resize((16, 12)) for f in image.frames]), tmp_path / f"out{suffix}"
    )
    with Image.open(tmp_path / f"out{suffix}") as out:
        assert out.n_frames == 3 and out.size == (16, 12) and out.info["loop"] == 0
        for index, colour in enumerate(colours):
            out.seek(index)
            pixel = np.asarray(out.convert("RGB"))[0, 0].astype(int)  # WebP sets info on decoding
            assert (
                np.abs(pixel - colour).max() <= 8 and out.info["duration"] == [50, 80, 120][index]
            )


def test_animation_into_a_single_frame_format_is_refused(tmp_path: Path) -> None:
    frames = (Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4), "white"))
    with pytest.raises(
        ValueError, match=r"out.jpg: JPEG cannot hold the 2 frames of an animation; write .gif"
    ):
        write_image_file(ImageFile(frames=frames, durations=(10, 10)), tmp_path / "out.jpg")
    assert list(tmp_path.iterdir()) == []


def test_jpeg_quality_default_95_and_chosen(tmp_path: Path) -> None:
    image = left_red_right_blue(64, 48)
    write_image(image, tmp_path / "default.jpg")
    write_image(image, tmp_path / "q50.jpg", quality=50)
    for quality in (95, 50, 75):
        image.save(tmp_path / f"pillow{quality}.jpg", quality=quality)

    def tables(name: str) -> dict:
        with Image.open(tmp_path / name) as jpeg:
            return jpeg.quantization

    assert tables("default.jpg") == tables("pillow95.jpg") != tables("pillow75.jpg")
    assert tables("q50.jpg") == tables("pillow50.jpg")
    with pytest.raises(ValueError, match="quality must be an integer in 1..100, got 0"):
        write_image(image, tmp_path / "bad.jpg", quality=0)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_permissions_follow_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        write_image(left_red_right_blue(), tmp_path / "out.png")
    finally:
        os.umask(previous)
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), files.atomic_output(target) as stream:
        stream.write(b"half")
        raise RuntimeError("disk trouble")
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]


def test_sigterm_while_writing_removes_the_partial_file(tmp_path: Path) -> None:
    # In a fresh process: the signal goes to a process that has loaded nothing else (OpenVINO,
    # once loaded, leaves the main thread an alternate signal stack that later handlers crash on).
    script = textwrap.dedent(
        """
        import os, signal, sys
        from pathlib import Path
        from lte_cuda.image_io import files
        target = Path(sys.argv[1]) / "out.png"
        try:
            with files.atomic_output(target) as stream:
                stream.write(b"half")
                print(*[p.name for p in target.parent.iterdir()])
                os.kill(os.getpid(), signal.SIGTERM)
                stream.write(b"never")  # the handler raises before this line
        except SystemExit as stopped:
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
            sys.exit(stopped.code)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    partials = result.stdout.split()
    assert len(partials) == 1 and partials[0].startswith(".out.png" + files.PARTIAL_TAG)
    assert list(tmp_path.iterdir()) == []


def test_partial_files_are_not_images(tmp_path: Path) -> None:
    assert files.is_image_path(tmp_path / "a.PNG") and files.is_image_path(tmp_path / ".hidden.jpg")
    assert not files.is_image_path(tmp_path / f".a.png{files.PARTIAL_TAG}0123abcd")
    assert not files.is_image_path(tmp_path / f".a.png{files.PARTIAL_TAG}0123abcd.png")


def test_unreadable_files_name_the_path(tmp_path: Path) -> None:
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(ValueError, match="fake.png: not a readable image"):
        read_image(tmp_path / "fake.png")
    with pytest.raises(ValueError, match="missing.png: no such file"):
        read_image(tmp_path / "missing.png")
    Image.fromarray(np.ones((2, 2), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match="float.tif: 32-bit float images are not supported"):
        read_image(tmp_path / "float.tif")


def test_a_profile_for_other_colours_is_not_written(tmp_path: Path) -> None:
    cmyk_profile = ICC_RGB[:16] + b"CMYK" + ICC_RGB[20:]  # only the header's colour space is read
    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(
        tmp_path / "cmyk.jpg", icc_profile=cmyk_profile
    )
    image = read_image_file(tmp_path / "cmyk.jpg")
    assert image.icc_profile == cmyk_profile
    write_image_file(image.with_frames([image.frames[0].convert("RGB")]), tmp_path / "rgb.png")
    with Image.open(tmp_path / "rgb.png") as out:
        assert "icc_profile" not in out.info


def test_large_files_read_quietly_and_bombs_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow's guard scaled down: 150 pixels is a 'large scan' (read without a warning, as a
    10000x10000 scan would be), 300 a decompression bomb (one line naming the file)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.new("RGB", (15, 10)).save(tmp_path / "large.png")
    Image.new("RGB", (30, 10)).save(tmp_path / "bomb.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path / "large.png").size == (15, 10)
    with pytest.raises(ValueError, match=r"bomb.png: not a readable image \(Image size"):
        read_image(tmp_path / "bomb.png")


@pytest.mark.parametrize(
    "pixels",
    [np.zeros((0, 5, 3), np.uint8), np.zeros((4, 5, 3), np.float32), np.zeros((4, 5, 6), np.uint8)],
)
def test_arrays_that_are_not_images_are_refused_before_writing(tmp_path: Path, pixels) -> None:
    with pytest.raises(TypeError, match="image arrays to write must be non-empty uint8 or uint16"):
        write_image(pixels, tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


def test_an_ico_larger_than_the_format_holds_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"big\.ico: ICO holds images up to 256 pixels a side, "):
        write_image(left_red_right_blue(300, 200), tmp_path / "big.ico")
    with pytest.raises(ValueError, match=r"the output is 1024x512; write a \.png"):
        files.check_output(tmp_path / "big.ico", height=512, width=1024)  # before the work
    assert list(tmp_path.iterdir()) == []


def test_an_ico_is_written_at_the_asked_size(tmp_path: Path) -> None:
    write_image(left_red_right_blue(200, 100), tmp_path / "icon.ico")
    with Image.open(tmp_path / "icon.ico") as icon:
        assert icon.size == (200, 100)  # Pillow's own sizes would have made it 64x32


def test_an_exif_block_a_jpeg_cannot_hold_is_dropped_with_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    exif = Image.Exif()
    exif[0x010E] = "x" * 100_000  # ImageDescription
    image = ImageFile(frames=(left_red_right_blue(),), exif=exif.tobytes())
    write_image_file(image, tmp_path / "out.jpg")
    warning = capsys.readouterr().err.splitlines()
    assert len(warning) == 1 and re.fullmatch(
        r"warning: .*out\.jpg: EXIF block of 100,034 bytes dropped: JPEG holds at most 65,533 "
        r"\(one APP1 segment\)",
        warning[0],
    )
    with Image.open(tmp_path / "out.jpg") as written:
        assert written.size == (20, 10) and "exif" not in written.info
    write_image_file(image, tmp_path / "out.png")  # PNG holds it: kept, no warning
    assert capsys.readouterr().err == ""
    assert read_image_file(tmp_path / "out.png").exif == image.exif


def test_an_icc_profile_a_jpeg_cannot_hold_is_dropped_with_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # 256 segments' worth: Pillow would write a wrapped segment count, a profile no reader takes.
    profile = ICC_RGB + bytes(256 * 65519 - len(ICC_RGB))
    image = ImageFile(frames=(left_red_right_blue(),), icc_profile=profile)
    write_image_file(image, tmp_path / "out.jpg")
    (warning,) = capsys.readouterr().err.splitlines()
    assert warning.endswith(
        "out.jpg: ICC profile of 16,772,864 bytes dropped: JPEG holds at most 16,707,345 "
        "(255 APP2 segments)"
    )
    with Image.open(tmp_path / "out.jpg") as written:
        assert written.info.get("icc_profile") is None


def test_write_errors_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(OSError, match=r"nowhere/out\.png: cannot write PNG: No such file"):
        write_image(np.zeros((4, 4, 3), np.uint8), tmp_path / "nowhere" / "out.png")

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(array_formats, "write_png", disk_full)
    with pytest.raises(OSError, match=r"out\.png: cannot write PNG: No space left") as info:
        write_image(np.zeros((4, 4, 3), np.uint8), tmp_path / "out.png")
    assert info.value.errno == 28

    def encoder_trouble(*args: object, **kwargs: object) -> None:
        raise ValueError("encoder error -2")

    monkeypatch.setattr(Image.Image, "save", encoder_trouble)
    with pytest.raises(ValueError, match=r"out\.webp: cannot write WEBP: encoder error -2"):
        write_image(left_red_right_blue(), tmp_path / "out.webp")
    assert list(tmp_path.iterdir()) == []
