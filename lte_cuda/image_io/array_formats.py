"""PNG and TIFF written straight from numpy arrays, a strip of rows at a time.

Pillow needs a PIL copy of an array before it can encode it (four bytes per RGB pixel: a
15000x15000 output would cost 0.9 GB more), and writes 16-bit samples for gray images only.
These writers read ``(H, W, C)`` uint8/uint16 arrays in strips of about :data:`STRIP_BYTES`,
so a file costs a few MB beyond the array, whatever its size.

PNG rows are filtered as libpng and Pillow do by default: per row, the filter (None, Sub, Up,
Average, Paeth) whose bytes, read as signed, have the smallest absolute sum.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import numpy as np

STRIP_BYTES = 1 << 18  # raw bytes filtered and compressed (or written) at a time
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> gray, gray+alpha, RGB, RGBA
# Pillow's defaults for PNG: level 6, memory level 9, the strategy for filtered rows.
PNG_COMPRESS_LEVEL, PNG_MEMORY_LEVEL, PNG_STRATEGY = 6, 9, zlib.Z_FILTERED
TIFF_MAX_BYTES = 2**32 - 2**20  # offsets are 32-bit


def write_png(
    stream: BinaryIO,
    pixels: np.ndarray,
    icc: bytes | None = None,
    dpi: tuple[float, float] | None = None,
    exif: bytes | None = None,
) -> None:
    """A PNG of ``pixels`` ``(H, W, C)`` (uint8 or uint16, C in 1..4) with an ICC profile,
    a resolution in dots per inch and an EXIF block, each if given."""
    height, width, channels = pixels.shape
    depth = 8 * pixels.dtype.itemsize
    stream.write(PNG_SIGNATURE)
    header = struct.pack(">IIBBBBB", width, height, depth, PNG_COLOUR_TYPES[channels], 0, 0, 0)
    _png_chunk(stream, b"IHDR", header)
    if icc:
        _png_chunk(stream, b"iCCP", b"ICC profile\0\0" + zlib.compress(icc))
    if dpi:
        metres = struct.pack(">IIB", round(dpi[0] / 0.0254), round(dpi[1] / 0.0254), 1)
        _png_chunk(stream, b"pHYs", metres)
    if exif:
        _png_chunk(stream, b"eXIf", exif[6:] if exif.startswith(b"Exif\0\0") else exif)
    compressor = zlib.compressobj(
        PNG_COMPRESS_LEVEL, zlib.DEFLATED, zlib.MAX_WBITS, PNG_MEMORY_LEVEL, PNG_STRATEGY
    )
    sample = pixels.dtype.newbyteorder(">")  # PNG samples are big-endian
    previous = np.zeros(width * channels * pixels.dtype.itemsize, np.uint8)
    for strip in _strips(pixels):
        rows = strip.astype(sample).reshape(len(strip), -1).view(np.uint8)
        data = compressor.compress(_filtered(rows, previous, channels * pixels.dtype.itemsize))
        previous = rows[-1]
        if data:
            _png_chunk(stream, b"IDAT", data)
    _png_chunk(stream, b"IDAT", compressor.flush())
    _png_chunk(stream, b"IEND", b"")


def _png_chunk(stream: BinaryIO, kind: bytes, data: bytes) -> None:
    stream.write(struct.pack(">I", len(data)) + kind)
    stream.write(data)
    stream.write(struct.pack(">I", zlib.crc32(data, zlib.crc32(kind))))


def _filtered(rows: np.ndarray, previous: np.ndarray, bpp: int) -> bytes:
    """``rows`` ``(R, N)`` as PNG's filtered scanlines: each row's filter type, then its bytes
    under that filter; ``previous`` is the row above the first, ``bpp`` bytes per pixel."""
    up = np.concatenate([previous[None], rows[:-1]])
    left = np.zeros_like(rows)
    left[:, bpp:] = rows[:, :-bpp]
    up_left = np.zeros_like(rows)
    up_left[:, bpp:] = up[:, :-bpp]
    a, b, c = (x.astype(np.int16) for x in (left, up, up_left))
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c)).astype(np.uint8)
    average = ((a + b) >> 1).astype(np.uint8)
    candidates = (rows, rows - left, rows - up, rows - average, rows - paeth)
    costs = np.stack([_signed_magnitude(x).sum(1) for x in candidates])
    best = costs.argmin(0)
    out = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    out[:, 0] = best
    for kind, candidate in enumerate(candidates):
        chosen = best == kind
        out[chosen, 1:] = candidate[chosen]
    return out.tobytes()


def _signed_magnitude(values: np.ndarray) -> np.ndarray:
    """``|v|`` of bytes read as signed (int8), as int16."""
    wide = values.astype(np.int16)
    return np.minimum(wide, 256 - wide)


def write_tiff(
    stream: BinaryIO,
    pixels: np.ndarray,
    icc: bytes | None = None,
    dpi: tuple[float, float] | None = None,
) -> None:
    """An uncompressed little-endian TIFF of ``pixels`` ``(H, W, C)`` (uint8 or uint16), one
    strip. ``ValueError`` if it would exceed TIFF's 4 GiB (write a PNG then)."""
    height, width, channels = pixels.shape
    size = pixels.nbytes
    if size >= TIFF_MAX_BYTES:
        raise ValueError(f"a {width}x{height} TIFF would exceed 4 GiB; write a PNG")
    bits = 8 * pixels.dtype.itemsize
    tags = {
        256: _tiff_long(width),
        257: _tiff_long(height),
        258: _tiff_short(*[bits] * channels),
        259: _tiff_short(1),
        262: _tiff_short(2 if channels >= 3 else 1),
        273: _tiff_long(0),
        277: _tiff_short(channels),
        278: _tiff_long(height),
        279: _tiff_long(size),
        284: _tiff_short(1),
    }
    if dpi:
        tags.update({282: _tiff_rational(dpi[0]), 283: _tiff_rational(dpi[1]), 296: _tiff_short(2)})
    if channels in (2, 4):
        tags[338] = _tiff_short(2)  # unassociated alpha
    if icc:
        tags[34675] = (7, bytes(icc), len(icc))
    stream.write(_tiff_header(tags))
    sample = pixels.dtype.newbyteorder("<")
    for strip in _strips(pixels):
        stream.write(strip.astype(sample).tobytes())


def _tiff_short(*values: int) -> tuple[int, bytes, int]:
    return 3, struct.pack(f"<{len(values)}H", *values), len(values)


def _tiff_long(*values: int) -> tuple[int, bytes, int]:
    return 4, struct.pack(f"<{len(values)}I", *values), len(values)


def _tiff_rational(value: float) -> tuple[int, bytes, int]:
    return 5, struct.pack("<II", round(value * 1000), 1000), 1


def _tiff_header(tags: dict) -> bytes:
    """Header, one IFD of ``tags`` (tag -> (type, payload, count)) and the values too long to
    sit in the IFD; the pixel strip follows (its offset, tag 273, is filled in here)."""
    values_at = 8 + 2 + 12 * len(tags) + 4
    out_of_line = sum(
        len(payload) + len(payload) % 2 for _, payload, _ in tags.values() if len(payload) > 4
    )
    tags[273] = _tiff_long(values_at + out_of_line)
    entries, values = [], b""
    for tag in sorted(tags):
        kind, payload, count = tags[tag]
        if len(payload) > 4:
            inline = struct.pack("<I", values_at + len(values))
            values += payload + b"\0" * (len(payload) % 2)
        else:
            inline = payload.ljust(4, b"\0")
        entries.append(struct.pack("<HHI", tag, kind, count) + inline)
    ifd = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", 8) + ifd + values


def _strips(pixels: np.ndarray):
    """``pixels`` in consecutive row blocks of about :data:`STRIP_BYTES`."""
    row_bytes = max(1, pixels[0].nbytes)
    step = max(1, STRIP_BYTES // row_bytes)
    for top in range(0, pixels.shape[0], step):
        yield pixels[top : top + step]
