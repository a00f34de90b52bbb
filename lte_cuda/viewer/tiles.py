"""The tile pyramid of one image: levels, tile boxes, tile-URL parsing, and a byte-bounded
LRU cache of encoded tiles.

A level ``k`` (0, 1, 2, ...) is the image upscaled by ``2 ** (k / LEVELS_PER_OCTAVE)``, with
the output size :func:`lte_cuda.upscale.output_size` gives for that scale; it is cut into
``TILE_SIZE`` squares (smaller at the right and bottom edges). Steps of 1/32 octave (2.2 %)
let the page snap its zoom to a level without a visible jump, so the tiles it shows are
drawn one output pixel per screen pixel.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import parse_qsl

from ..upscale import MAX_PIXELS, MAX_SIDE, output_size

TILE_SIZE = 256
LEVELS_PER_OCTAVE = 32
# Zoom stops here even on a 3x high-density screen at 32 photo pixels per CSS pixel.
MAX_LEVEL_SCALE = 128.0
KINDS = ("lte", "bicubic")
# Query parameters of /tile; session and gen are optional (see DecodeScheduler).
REQUIRED_TILE_PARAMS = ("kind", "level", "x", "y")
OPTIONAL_TILE_PARAMS = ("session", "gen")
_INTEGER = re.compile(r"\d{1,9}")
_SESSION = re.compile(r"[A-Za-z0-9_-]{1,32}")


class BadTileRequest(ValueError):
    """A malformed or out-of-range tile request (answered with HTTP 400 and this message)."""


@dataclass(frozen=True)
class TileKey:
    """One tile: ``kind`` ("lte" or "bicubic"), ``level``, column ``x`` and row ``y``."""

    kind: str
    level: int
    x: int
    y: int


@dataclass(frozen=True)
class TileRequest:
    """A parsed /tile query: the tile, and the page's ``session`` and view generation ``gen``."""

    key: TileKey
    session: str
    gen: int


class TileGrid:
    """The levels and tiles of an image of ``height x width`` input pixels."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        # Levels stop at MAX_LEVEL_SCALE or where the output would exceed upscale's limits.
        limit = min(
            MAX_LEVEL_SCALE, MAX_SIDE / max(height, width), math.sqrt(MAX_PIXELS / (height * width))
        )
        self.max_level = max(math.floor(LEVELS_PER_OCTAVE * math.log2(limit)), 0)
        self.sizes: list[tuple[int, int]] = []
        for level in range(self.max_level + 1):
            try:
                self.sizes.append(self._size(level))
            except ValueError:  # output_size rounds: the level at the limit may be a pixel over
                break
        self.max_level = len(self.sizes) - 1

    @staticmethod
    def scale(level: int) -> float:
        """The upscaling factor of ``level``."""
        return 2.0 ** (level / LEVELS_PER_OCTAVE)

    def _size(self, level: int) -> tuple[int, int]:
        return output_size(self.height, self.width, scale=self.scale(level))

    def tile_counts(self, level: int) -> tuple[int, int]:
        """``(rows, columns)`` of tiles at ``level``."""
        out_h, out_w = self.sizes[level]
        return -(-out_h // TILE_SIZE), -(-out_w // TILE_SIZE)

    def box(self, key: TileKey) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` of ``key`` in its level's output pixels."""
        out_h, out_w = self.sizes[key.level]
        top, left = key.y * TILE_SIZE, key.x * TILE_SIZE
        return top, left, min(top + TILE_SIZE, out_h), min(left + TILE_SIZE, out_w)

    def parse(self, query: str) -> TileRequest:
        """The tile a /tile query string asks for; :class:`BadTileRequest` naming the bad
        parameter and what was received otherwise."""
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True, max_num_fields=10)
        except ValueError:
            raise BadTileRequest(f"malformed query string {query[:100]!r}") from None
        params: dict[str, str] = {}
        for name, value in pairs:
            if name not in REQUIRED_TILE_PARAMS + OPTIONAL_TILE_PARAMS:
                raise BadTileRequest(f"unknown parameter {name[:40]!r}")
            if name in params:
                raise BadTileRequest(f"parameter {name!r} given twice")
            params[name] = value
        missing = [name for name in REQUIRED_TILE_PARAMS if name not in params]
        if missing:
            raise BadTileRequest(f"missing parameter(s): {', '.join(missing)}")
        kind = params["kind"]
        if kind not in KINDS:
            raise BadTileRequest(f"kind must be one of {', '.join(KINDS)}, got {kind[:40]!r}")
        level = _integer(params, "level", self.max_level)
        rows, columns = self.tile_counts(level)
        key = TileKey(
            kind, level, _integer(params, "x", columns - 1), _integer(params, "y", rows - 1)
        )
        session = params.get("session", "")
        if session and not _SESSION.fullmatch(session):
            raise BadTileRequest(
                f"session must be 1-32 letters, digits, - or _, got {session[:40]!r}"
            )
        return TileRequest(key, session, _integer(params, "gen", 10**9) if "gen" in params else 0)


def _integer(params: dict[str, str], name: str, largest: int) -> int:
    text = params[name]
    if not _INTEGER.fullmatch(text):
        raise BadTileRequest(f"{name} must be a non-negative integer, got {text[:40]!r}")
    value = int(text)
    if value > largest:
        raise BadTileRequest(f"{name} must be at most {largest} here, got {value}")
    return value


class TileCache:
    """A thread-safe LRU map of tile -> encoded bytes, holding at most ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[TileKey, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: TileKey) -> bytes | None:
        """The cached bytes of ``key`` (marked recently used), or None."""
        with self._lock:
            data = self._entries.get(key)
            if data is not None:
                self._entries.move_to_end(key)
            return data

    def put(self, key: TileKey, data: bytes) -> None:
        """Store ``data`` for ``key``, evicting the least recently used tiles beyond the bound."""
        with self._lock:
            old = self._entries.pop(key, None)
            self.bytes -= len(old) if old is not None else 0
            if len(data) > self.max_bytes:
                return
            self._entries[key] = data
            self.bytes += len(data)
            while self.bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= len(evicted)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
