"""The viewed image's features, computed where the page looks and kept in bounded memory.

For local encoders (EDSR-baseline, RDN: stride-1 convolutions) the input is cut into
``BLOCK`` square blocks. A block's features are computed the first time a tile needs them,
with the encoder's radius of context around them, so they equal the whole image's features
(to float rounding); they are kept (with their normalised input) in an LRU bounded by
``max_bytes``. A tile decodes from the blocks under it plus one pixel of margin (every
neighbour and bilinear tap of its pixels), assembled by the same
:class:`~lte_cuda.inference.FeatureSource` that feeds :func:`lte_cuda.upscale`, through
:func:`lte_cuda.inference.decode_region`, so the page's first tiles need only the blocks
they cover, and memory stays bounded whatever the photo's size. Other encoders (SwinIR
attends across the image) get the whole image's features once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from ..coords import Box
from ..inference import TorchExecutor, decode_region
from ..inference.features import FeatureSource, Part
from ..inference.geometry import inputs_under, with_margin
from ..models.lte import LTE, LTEFeatures
from ..precision import resolve_precision

# Input pixels per side of a feature block: small, so a tile encodes little beyond its own pixels.
BLOCK = 16
DEFAULT_FEATURE_BYTES = 2 << 30
DECODE_CHUNK = 1 << 16  # queries per model call: one 256x256 tile

Maps = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # coef, freq, normalised input


class ImageFeatures:
    """Features of ``rgb (3, h, w)`` (uint8, or float in [0, 1]) for ``model`` on ``device``."""

    def __init__(
        self,
        model: LTE,
        rgb: torch.Tensor,
        device: torch.device,
        max_bytes: int = DEFAULT_FEATURE_BYTES,
        precision: str = "auto",
    ):
        self.model = model.to(device).eval()
        # bf16 features (and tiles) where the rule picks it: half the memory per block.
        self.precision = resolve_precision(precision, device)
        self.executor = TorchExecutor(self.model, device, self.precision.name)
        self.source = FeatureSource(self.executor, rgb)
        self.device = device
        self.max_bytes = max_bytes
        self.bytes = 0
        self.blockwise = self.executor.traits.local
        self._blocks: OrderedDict[tuple[int, int], Maps] = OrderedDict()
        self._whole: LTEFeatures | None = None
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Encode the whole image now if the encoder cannot be run block by block."""
        if not self.blockwise:
            size = self.source.size
            self._whole = self.source.encode((0, 0, *size), max(size), self.executor.traits.radius)
            self.bytes = _nbytes(self._whole.coef, self._whole.freq)

    def decode(self, out_size: tuple[int, int], box: Box) -> torch.Tensor:
        """Output pixels ``box`` (top, left, bottom, right) of the image upscaled to
        ``out_size`` (H, W): float32 ``(3, rows, cols)`` in [0, 1], as lte_cuda.upscale gives them."""
        image_size = self.source.image_size
        with torch.inference_mode():
            frame = with_margin(inputs_under(box, image_size, out_size), image_size)
            features = self._features_for(frame)
            return decode_region(self.executor, features, out_size, box, chunk_size=DECODE_CHUNK)

    def _features_for(self, frame: Box) -> LTEFeatures:
        if not self.blockwise:
            return self._whole
        top, left, bottom, right = frame
        rows = range(top // BLOCK, (bottom - 1) // BLOCK + 1)
        cols = range(left // BLOCK, (right - 1) // BLOCK + 1)
        blocks = [(by, bx) for by in rows for bx in cols]
        with self._lock:
            self._encode_missing([key for key in blocks if key not in self._blocks])
            features = self.source.assemble(frame, self._parts(blocks, frame))
            self._evict()
        return features

    def _parts(self, blocks: list[tuple[int, int]], frame: Box) -> list[Part]:
        """The parts of ``blocks`` that lie in ``frame``, cropped from the kept maps."""
        top, left, bottom, right = frame
        parts = []
        for by, bx in blocks:
            y0, x0 = max(top, by * BLOCK), max(left, bx * BLOCK)
            y1, x1 = min(bottom, (by + 1) * BLOCK), min(right, (bx + 1) * BLOCK)
            crop = (
                slice(None),
                slice(None),
                slice(y0 - by * BLOCK, y1 - by * BLOCK),
                slice(x0 - bx * BLOCK, x1 - bx * BLOCK),
            )
            parts.append(((y0, x0, y1, x1), tuple(m[crop] for m in self._use((by, bx)))))
        return parts

    def _encode_missing(self, missing: list[tuple[int, int]]) -> None:
        """Encode the rectangle of blocks around ``missing`` in one pass and keep its blocks."""
        if not missing:
            return
        h, w = self.source.size
        by0, by1 = min(b[0] for b in missing), max(b[0] for b in missing)
        bx0, bx1 = min(b[1] for b in missing), max(b[1] for b in missing)
        box = (by0 * BLOCK, bx0 * BLOCK, min((by1 + 1) * BLOCK, h), min((bx1 + 1) * BLOCK, w))
        whole = max(box[2] - box[0], box[3] - box[1])  # one encoder pass over the rectangle
        features = self.source.encode(box, whole, self.executor.traits.radius)
        for by in range(by0, by1 + 1):
            for bx in range(bx0, bx1 + 1):
                y, x = (by - by0) * BLOCK, (bx - bx0) * BLOCK
                part = (slice(None), slice(None), slice(y, y + BLOCK), slice(x, x + BLOCK))
                old = self._blocks.pop((by, bx), None)
                self.bytes -= _nbytes(*old) if old else 0
                self._blocks[(by, bx)] = tuple(
                    m[part].clone(memory_format=torch.channels_last)
                    for m in (features.coef, features.freq, features.inp)
                )
                self.bytes += _nbytes(*self._blocks[(by, bx)])

    def _use(self, key: tuple[int, int]) -> Maps:
        self._blocks.move_to_end(key)
        return self._blocks[key]

    def _evict(self) -> None:
        """Drop least recently used blocks beyond ``max_bytes`` (the tile just made keeps its own)."""
        while self.bytes > self.max_bytes and len(self._blocks) > 1:
            _, maps = self._blocks.popitem(last=False)
            self.bytes -= _nbytes(*maps)


def _nbytes(*maps: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in maps)
