"""Image files: the one place that reads and writes them.

Reading applies the EXIF orientation (pixels come out upright), keeps the EXIF block (its
orientation reset to 1), the ICC profile and the resolution (DPI) for writing, returns 16-bit
PNG/TIFF pixels as ``uint16`` numpy arrays (gray and RGB alike; Pillow alone keeps only the high
byte of 16-bit colour, see :func:`_read_16bit_colour`), and every frame of an animation.

Writing is atomic: a partial file beside the target, named so that no image glob matches it
(``.NAME.lte-partial-XXXXXXXX``), then a rename; SIGINT and SIGTERM while it exists remove it.
Outputs get the permissions a new file normally gets (``0666 & ~umask``). Metadata goes where
the format can hold it, with the DPI scaled by the upscaling factor so that the print size stays
the same; ``uint16`` pixels are written as 16-bit PNG/TIFF and rounded to 8 bits elsewhere.
Arrays go to PNG (and 16-bit arrays to TIFF) through :mod:`.array_formats`, a strip of rows at
a time with no PIL copy of the image; everything else through Pillow.

Pillow's decompression-bomb guard stays: files above 2 * ``Image.MAX_IMAGE_PIXELS`` (179 MP)
are refused in one line; its warning for files between 89 and 179 MP (a large scan) is not
shown, since the pixels are streamed through the model in bounded memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from . import array_formats
from .convert import array_from_pil

Pixels = Image.Image | np.ndarray

# Files a folder run picks up; partial files end in PARTIAL_TAG + random hex, never in these.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
PARTIAL_TAG = ".lte-partial-"
DEFAULT_QUALITY = 95

# What each output format can hold (Pillow's save options).
QUALITY_FORMATS = ("JPEG", "WEBP")
EXIF_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF")
ICC_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF")
DPI_FORMATS = ("JPEG", "PNG", "TIFF", "BMP")
# Formats that hold several frames (TIFF as pages, without durations).
MULTI_FRAME_FORMATS = ("GIF", "WEBP", "PNG", "TIFF")
# The longest side each format holds (Pillow would shrink a larger ICO silently, fail on the
# others after the work); formats not listed hold more than any output here.
MAX_SIDES = {"ICO": 256, "WEBP": 16383, "JPEG": 65500, "GIF": 65535, "TGA": 65535}
# Formats Pillow writes at sizes of their own (ICNS: square icons up to 1024 px).
FIXED_SIZE_FORMATS = ("ICNS",)
# The largest metadata blocks a JPEG holds (a segment is 65,535 bytes less its length field;
# the ICC profile is split over at most 255 segments, 14 bytes of each a header), by field of
# ImageFile: (what to call it, bytes, why).
JPEG_METADATA_LIMITS = {
    "exif": ("EXIF block", 65533, "one APP1 segment"),
    "icc_profile": ("ICC profile", 255 * (65533 - 14), "255 APP2 segments"),
}

ORIENTATION_TAG = 0x0112
EXIF_IFD_TAG, GPS_IFD_TAG = 0x8769, 0x8825
# ImageDescription, Make, Model, Software, DateTime, Artist, Copyright.
TIFF_DESCRIPTIVE_TAGS = (0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298)
PIXEL_X_DIMENSION, PIXEL_Y_DIMENSION = 0xA002, 0xA003
# Orientations 5-8 swap rows and columns.
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
# Pillow decodes 16-bit colour to 8 bits by keeping each sample's high byte; the same decode
# with the opposite byte order's raw mode keeps the low byte instead.
LOW_BYTE_RAWMODES = {
    "RGB;16B": "RGB;16L",
    "RGB;16L": "RGB;16B",
    "RGBA;16B": "RGBA;16L",
    "RGBA;16L": "RGBA;16B",
    "RGB;16N": "RGB;16B" if sys.byteorder == "little" else "RGB;16L",
    "RGBA;16N": "RGBA;16B" if sys.byteorder == "little" else "RGBA;16L",
}
GRAY16_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
# ICC header bytes 16:20 name the profile's colour space; it must match the pixels written.
ICC_SPACES = {b"RGB ": 3, b"GRAY": 1}


@dataclasses.dataclass(frozen=True)
class ImageFile:
    """The content of one image file: upright frames and what outputs should keep of it.

    ``frames`` are PIL images (8 bits per sample) or ``uint16`` numpy arrays ``(H, W)`` /
    ``(H, W, C)`` (16-bit files); more than one for an animation, with ``durations`` (ms per
    frame) and ``loop`` as the file gave them. ``exif`` has its orientation reset to 1.
    """

    frames: tuple[Pixels, ...]
    exif: bytes | None = None
    icc_profile: bytes | None = None
    dpi: tuple[float, float] | None = None
    durations: tuple[int, ...] | None = None
    loop: int | None = None

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the frames."""
        return pixel_size(self.frames[0])

    def as_arrays(self) -> ImageFile:
        """The same file with its frames as numpy arrays, as :func:`~lte_cuda.upscale` takes
        and returns them (see :func:`~lte_cuda.image_io.convert.array_from_pil`); writing
        arrays needs no PIL copy of the image."""
        frames = tuple(f if isinstance(f, np.ndarray) else array_from_pil(f) for f in self.frames)
        return dataclasses.replace(self, frames=frames)

    def with_frames(self, frames: Sequence[Pixels]) -> ImageFile:
        """The same file with new (e.g. upscaled) frames: the DPI is scaled by the change of
        size, so that the print size stays the same, and EXIF's pixel dimensions follow."""
        (old_w, old_h), (new_w, new_h) = self.size, pixel_size(frames[0])
        dpi = (
            None if self.dpi is None else (self.dpi[0] * new_w / old_w, self.dpi[1] * new_h / old_h)
        )
        exif = None if self.exif is None else _exif_with_size(self.exif, new_w, new_h)
        return dataclasses.replace(self, frames=tuple(frames), dpi=dpi, exif=exif)


def pixel_size(pixels: Pixels) -> tuple[int, int]:
    """``(width, height)`` of a PIL image or an ``(H, W[, C])`` array."""
    if isinstance(pixels, np.ndarray):
        return pixels.shape[1], pixels.shape[0]
    return pixels.size


def is_image_path(path: Path) -> bool:
    """Whether a folder run takes ``path`` as an input (partial files never match)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and PARTIAL_TAG not in path.name


def read_image(path: str | os.PathLike) -> Pixels:
    """The upright pixels of the image at ``path`` (the first frame of an animation): a PIL
    image, or a ``uint16`` array for 16-bit files. ``ValueError`` naming ``path`` if it is
    missing or unreadable."""
    return read_image_file(path).frames[0]


def read_image_file(path: str | os.PathLike) -> ImageFile:
    """Read the image at ``path`` with its metadata and every frame (see :class:`ImageFile`).

    Raises:
        ValueError: naming ``path``, if it is missing, unreadable or of an unsupported kind.
    """
    try:
        with _open(path) as image:
            if getattr(image, "n_frames", 1) > 1:
                frames, durations = _read_frames(image)
            else:
                frames, durations = (_read_pixels(image, path),), None
            return ImageFile(
                frames=frames,
                exif=_upright_exif(image),
                icc_profile=image.info.get("icc_profile") or None,
                dpi=_upright_dpi(image),
                durations=durations,
                loop=image.info.get("loop") if durations else None,
            )
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None


def _open(path: str | os.PathLike) -> Image.Image:
    """``Image.open`` without its warning for 89-179 MP files (see the module's docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def _read_pixels(image: Image.Image, path: str | os.PathLike) -> Pixels:
    """The upright pixels of a single-frame image; 16-bit files as ``uint16`` arrays."""
    low_rawmodes = [LOW_BYTE_RAWMODES.get(_rawmode(tile)) for tile in image.tile]
    upright = ImageOps.exif_transpose(image)
    if upright.mode in GRAY16_MODES:
        return np.asarray(upright).astype(np.uint16)
    if upright.mode == "I":
        values = np.asarray(upright)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"{path}: 32-bit integer pixels beyond 0..65535 are not supported")
        return values.astype(np.uint16)
    if upright.mode == "F":
        raise ValueError(f"{path}: 32-bit float images are not supported")
    if low_rawmodes and all(low_rawmodes):
        return _read_16bit_colour(path, upright, low_rawmodes)
    return upright


def _read_16bit_colour(
    path: str | os.PathLike, high: Image.Image, low_rawmodes: list
) -> np.ndarray:
    """16-bit RGB/RGBA as ``uint16 (H, W, C)``: ``high`` holds each sample's high byte (Pillow
    has no 16-bit colour mode); decoding the file again with the opposite byte order's raw
    modes gives the low bytes. Works for every decoder Pillow uses (PNG zip, TIFF raw and
    libtiff), compressed or not."""
    with _open(path) as image:
        image.tile = [
            tile._replace(args=_with_rawmode(tile, raw))
            for tile, raw in zip(image.tile, low_rawmodes)
        ]
        low = ImageOps.exif_transpose(image)
    return (np.asarray(high).astype(np.uint16) << 8) | np.asarray(low)


def _rawmode(tile) -> str | None:
    args = tile.args
    return (
        args if isinstance(args, str) else (args[0] if args and isinstance(args[0], str) else None)
    )


def _with_rawmode(tile, rawmode: str):
    return rawmode if isinstance(tile.args, str) else (rawmode, *tile.args[1:])


def _read_frames(image: Image.Image) -> tuple[tuple[Image.Image, ...], tuple[int, ...] | None]:
    """Every frame of an animation, composited (Pillow does that while seeking), upright, in
    one mode (RGBA if any frame is transparent, else RGB); and the frame durations in ms."""
    frames, durations, timed = [], [], False
    for index in range(image.n_frames):
        image.seek(index)
        transparent = "A" in image.getbands() or "transparency" in image.info
        frames.append(ImageOps.exif_transpose(image.convert("RGBA" if transparent else "RGB")))
        durations.append(int(image.info.get("duration", 0)))
        timed = timed or "duration" in image.info
    image.seek(0)
    if any(frame.mode == "RGBA" for frame in frames):
        frames = [frame.convert("RGBA") for frame in frames]
    return tuple(frames), tuple(durations) if timed else None


def _orientation(image: Image.Image) -> int:
    return int(image.getexif().get(ORIENTATION_TAG, 1) or 1)


def _upright_exif(image: Image.Image) -> bytes | None:
    """The file's EXIF block with orientation 1 (the pixels are made upright on reading).
    A TIFF keeps EXIF in its own tags, most of which describe the TIFF's layout: only the
    descriptive ones and the EXIF/GPS sub-directories are taken."""
    exif = Image.Exif()
    if image.info.get("exif"):
        exif.load(image.info["exif"])
    elif image.format == "TIFF":
        own = image.getexif()
        for tag in TIFF_DESCRIPTIVE_TAGS:
            if tag in own:
                exif[tag] = own[tag]
        for tag in (EXIF_IFD_TAG, GPS_IFD_TAG):
            if own.get_ifd(tag):
                exif[tag] = dict(own.get_ifd(tag))
    if not len(exif):
        return None
    if ORIENTATION_TAG in exif:
        exif[ORIENTATION_TAG] = 1
    return exif.tobytes()


def _upright_dpi(image: Image.Image) -> tuple[float, float] | None:
    dpi = image.info.get("dpi")
    if not dpi or not all(value > 0 for value in dpi):
        return None
    x, y = float(dpi[0]), float(dpi[1])
    return (y, x) if _orientation(image) in TRANSPOSING_ORIENTATIONS else (x, y)


def _exif_with_size(raw: bytes, width: int, height: int) -> bytes:
    """``raw`` EXIF with its pixel dimensions (if it states them) set to the new size."""
    exif = Image.Exif()
    exif.load(raw)
    details = exif.get_ifd(EXIF_IFD_TAG)
    if PIXEL_X_DIMENSION not in details and PIXEL_Y_DIMENSION not in details:
        return raw
    details[PIXEL_X_DIMENSION], details[PIXEL_Y_DIMENSION] = width, height
    return exif.tobytes()


def check_output(
    path: str | os.PathLike,
    frame_count: int = 1,
    height: int | None = None,
    width: int | None = None,
) -> str:
    """The Pillow format that writes ``path``'s extension, checked to hold ``frame_count``
    frames and, when given, a ``height x width`` image; ``ValueError`` naming ``path`` otherwise.
    Call it before the work: a format that cannot hold the output is refused, never shrunk."""
    suffix = Path(path).suffix
    fmt = Image.registered_extensions().get(suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(
            f"{path}: cannot tell the image format to write from the extension {suffix!r}"
        )
    if frame_count > 1 and fmt not in MULTI_FRAME_FORMATS:
        raise ValueError(
            f"{path}: {fmt} cannot hold the {frame_count} frames of an animation; "
            f"write {', '.join('.' + f.lower() for f in MULTI_FRAME_FORMATS)}"
        )
    if fmt in FIXED_SIZE_FORMATS:
        raise ValueError(f"{path}: {fmt} stores icons at sizes of its own; write a .png")
    if height is not None and width is not None and max(height, width) > MAX_SIDES.get(fmt, 2**31):
        raise ValueError(
            f"{path}: {fmt} holds images up to {MAX_SIDES[fmt]} pixels a side, the output is "
            f"{width}x{height}; write a .png or .tiff"
        )
    return fmt


def check_quality(quality: object) -> int:
    """``quality`` if it is an integer in 1..100 (JPEG/WebP), else ``ValueError``."""
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an integer in 1..100, got {quality!r}")
    return quality


def write_image(pixels: Pixels, path: str | os.PathLike, *, quality: int = DEFAULT_QUALITY) -> None:
    """Write one image without metadata to ``path``, atomically (see :func:`write_image_file`)."""
    write_image_file(ImageFile(frames=(pixels,)), path, quality=quality)


def write_image_file(
    image: ImageFile, path: str | os.PathLike, *, quality: int = DEFAULT_QUALITY
) -> None:
    """Write ``image`` to ``path`` (format from the extension), atomically.

    EXIF, ICC profile and DPI go where the format holds them; ``quality`` (1..100) applies to
    JPEG and WebP. ``uint16`` frames become 16-bit PNG/TIFF, 8-bit elsewhere. Animations need
    a GIF, WebP, PNG (APNG) or TIFF (pages) output.

    Raises:
        ValueError: an unknown extension, a bad ``quality``, or an animation for a format
            that cannot hold one. OSError: the file system's errors.
    """
    first = image.frames[0]
    fmt = check_output(path, len(image.frames), *reversed(pixel_size(first)))
    check_quality(quality)
    image = _fitting_metadata(image, fmt, path)
    with _errors_name(path, fmt):
        if len(image.frames) == 1 and _array_format(first, fmt):
            pixels = _checked_array(first)
            icc = image.icc_profile if _icc_fits(image.icc_profile, pixels) else None
            with atomic_output(path) as stream:
                if fmt == "PNG":
                    array_formats.write_png(stream, pixels, icc, image.dpi, image.exif)
                else:
                    array_formats.write_tiff(stream, pixels, icc, image.dpi)
            return
        frames = [_for_format(frame, fmt) for frame in image.frames]
        options = _save_options(image, fmt, frames, quality)
        with atomic_output(path) as stream:
            frames[0].save(stream, format=fmt, **options)


def _fitting_metadata(image: ImageFile, fmt: str, path: str | os.PathLike) -> ImageFile:
    """``image`` without the metadata ``fmt`` cannot hold, each drop told in one line."""
    dropped = {}
    for field, (label, limit, why) in (JPEG_METADATA_LIMITS if fmt == "JPEG" else {}).items():
        block = getattr(image, field)
        if block and len(block) > limit:
            print(
                f"warning: {path}: {label} of {len(block):,} bytes dropped: {fmt} holds at most "
                f"{limit:,} ({why})",
                file=sys.stderr,
            )
            dropped[field] = None
    return dataclasses.replace(image, **dropped) if dropped else image


@contextlib.contextmanager
def _errors_name(path: str | os.PathLike, fmt: str) -> Iterator[None]:
    """Errors raised while writing ``path`` name it (a partial file's name or an encoder's
    message alone does not say which output failed), keeping their type and errno."""
    try:
        yield
    except (OSError, ValueError, TypeError) as exc:
        if str(path) in str(exc):
            raise
        if isinstance(exc, OSError):
            named = OSError(f"{path}: cannot write {fmt}: {exc.strerror or exc}")
            named.errno = exc.errno
        else:  # ValueError and TypeError subclasses may need other arguments
            named = (ValueError if isinstance(exc, ValueError) else TypeError)(
                f"{path}: cannot write {fmt}: {exc}"
            )
        raise named from exc


def _save_options(image: ImageFile, fmt: str, frames: list[Image.Image], quality: int) -> dict:
    """Pillow's save options for what ``fmt`` can hold of ``image``."""
    options: dict = {}
    if fmt in QUALITY_FORMATS:
        options["quality"] = quality
    # Given even when empty: Pillow would otherwise take them from the frame's own ``info``.
    if fmt in EXIF_FORMATS:
        options["exif"] = image.exif or b""
    if fmt in ICC_FORMATS:
        options["icc_profile"] = (
            image.icc_profile if _icc_fits(image.icc_profile, frames[0]) else None
        )
    if fmt in DPI_FORMATS and image.dpi:
        options["dpi"] = image.dpi
    if fmt == "ICO":
        options["sizes"] = [frames[0].size]  # Pillow's default list would shrink the icon
    if len(frames) > 1:
        options.update(save_all=True, append_images=frames[1:])
        if image.durations:
            options["duration"] = list(image.durations)
        if image.loop is not None:
            options["loop"] = image.loop
        if fmt == "GIF" and frames[0].mode == "RGBA":
            options["disposal"] = 2  # frames are whole pictures: clear before drawing the next
    return options


def _icc_fits(profile: bytes | None, pixels: Pixels) -> bool:
    """Whether ``profile`` describes pixels with this many colour channels (a CMYK photo's
    profile does not fit its RGB output)."""
    if not profile:
        return False
    if isinstance(pixels, np.ndarray):
        colours = 1 if pixels.ndim == 2 or pixels.shape[2] <= 2 else 3
    else:
        colours = 1 if pixels.mode in ("L", "LA", "I;16") else 3
    return ICC_SPACES.get(bytes(profile[16:20])) == colours


def _array_format(pixels: Pixels, fmt: str) -> bool:
    """Whether ``pixels`` are written by :mod:`.array_formats` (without a PIL copy): arrays
    to PNG, 16-bit arrays to TIFF (Pillow writes 16-bit gray only)."""
    if not isinstance(pixels, np.ndarray):
        return False
    return fmt == "PNG" or (fmt == "TIFF" and pixels.dtype == np.uint16)


def to_8bit(pixels: Pixels) -> Image.Image:
    """``pixels`` as a PIL image with 8 bits per sample (16-bit arrays rounded)."""
    if not isinstance(pixels, np.ndarray):
        return pixels
    checked = _checked_array(pixels)
    if checked.dtype == np.uint16:
        checked = np.rint(checked / 257.0).astype(np.uint8)
    return Image.fromarray(checked[:, :, 0] if checked.shape[2] == 1 else checked)


def to_8bit_rgb(pixels: Pixels) -> Image.Image:
    """``pixels`` as an 8-bit RGB image, as models and the viewer read them: 16-bit arrays
    rounded to 8 bits, gray repeated into three channels, alpha dropped."""
    return to_8bit(pixels).convert("RGB")


def _for_format(frame: Pixels, fmt: str) -> Image.Image:
    """``frame`` as a PIL image ``fmt`` can store: 8 bits per sample, no alpha for JPEG."""
    frame = to_8bit(frame)
    if fmt == "JPEG" and frame.mode in ("LA", "RGBA"):
        frame = frame.convert(frame.mode[:-1])
    return frame


def _checked_array(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` as ``(H, W, C)``, checked to be a non-empty uint8 or uint16 image."""
    if (
        pixels.dtype not in (np.uint8, np.uint16)
        or not (pixels.ndim == 2 or (pixels.ndim == 3 and 1 <= pixels.shape[2] <= 4))
        or pixels.size == 0
    ):
        raise TypeError(
            "image arrays to write must be non-empty uint8 or uint16, (H, W) or (H, W, C) with C in 1..4, "
            f"got {pixels.dtype} {pixels.shape}"
        )
    return pixels if pixels.ndim == 3 else pixels[:, :, None]


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary stream whose content replaces ``path`` only once the block completes.

    The stream writes ``.NAME.lte-partial-XXXXXXXX`` beside ``path`` (no image glob matches
    it), created with ``0666 & ~umask`` like any new file; on an exception, SIGINT or SIGTERM
    it is removed. A process killed outright (SIGKILL) leaves it; folder runs ignore it.
    """
    path = Path(path)
    with _termination_raises():
        partial, fd = _create_partial(path)
        try:
            with os.fdopen(fd, "w+b") as stream:  # TIFF pages are appended by reading back
                yield stream
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise


def _create_partial(path: Path) -> tuple[Path, int]:
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        # Names stay under the usual 255-byte limit whatever the target's name.
        partial = path.with_name(f".{path.name[:200]}{PARTIAL_TAG}{secrets.token_hex(4)}")
        try:
            return partial, os.open(partial, flags, 0o666)
        except FileExistsError:
            continue


@contextlib.contextmanager
def _termination_raises() -> Iterator[None]:
    """While the block runs, SIGTERM (and SIGHUP) raise ``SystemExit(128 + signal)`` instead of
    killing the process at once, so that ``finally`` blocks run; SIGINT already raises
    KeyboardInterrupt. Handlers set by the application are left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {}
    for number in signals:
        if signal.getsignal(number) is signal.SIG_DFL:
            previous[number] = signal.signal(number, _exit_on_signal)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _exit_on_signal(number: int, frame) -> None:
    raise SystemExit(128 + number)
