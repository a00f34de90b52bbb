"""The viewed image's features, computed where the page looks and kept in bounded memory.

For encoders of stride-1 convolutions (EDSR-baseline, RDN) the input is cut into ``BLOCK``
square blocks. A block's features are computed the first time a tile needs them, with the
encoder's receptive radius of context around them, so they equal the whole image's features
(to float rounding); they are kept in an LRU bounded by ``max_bytes``. A tile decodes from
the blocks under it plus one pixel of margin (every neighbour and bilinear tap of its
pixels), through :func:`lte_cuda.inference.decode_region`, so the page's first tiles need only
the blocks they cover, and memory stays bounded whatever the photo's size.
Other encoders (SwinIR attends across the image) get the whole image's features once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from ..inference import (
    LOCAL_ENCODERS,
    decode_region,
    encode_box,
    encode_image,
    encoder_name,
    normalise,
    receptive_radius,
)
from ..models.lte import LTE, LTEFeatures
from ..precision import autocast, resolve_precision

# Input pixels per side of a feature block: small, so a tile encodes little beyond its own pixels.
BLOCK = 16
DEFAULT_FEATURE_BYTES = 2 << 30
DECODE_CHUNK = 1 << 16  # queries per model call: one 256x256 tile


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
        self.rgb = rgb
        self.device = device
        self.max_bytes = max_bytes
        self.bytes = 0
        self.blockwise = encoder_name(model) in LOCAL_ENCODERS
        # How far a feature pixel sees: the context a block needs around it to be exact.
        convs = max(receptive_radius(model.coef), receptive_radius(model.freq))
        self._overlap = receptive_radius(model.encoder) + convs
        self._blocks: OrderedDict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = (
            OrderedDict()
        )
        self._whole: LTEFeatures | None = None
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Encode the whole image now if the encoder cannot be run block by block."""
        if not self.blockwise:
            self._whole = encode_image(
                self.model, self.rgb.unsqueeze(0), device=self.device, precision=self.precision.name
            )
            self.bytes = sum(
                t.numel() * t.element_size() for t in (self._whole.coef, self._whole.freq)
            )

    def decode(self, out_size: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
        """Output pixels ``box`` (top, left, bottom, right) of the image upscaled to
        ``out_size`` (H, W): float32 ``(3, rows, cols)`` in [0, 1], as lte_cuda.upscale gives them."""
        image_size = tuple(self.rgb.shape[-2:])
        with torch.inference_mode(), autocast(self.precision.name, self.device):
            features, frame = self._features_for(self._frame(image_size, out_size, box))
            return decode_region(
                self.model,
                features,
                image_size,
                out_size,
                box,
                frame=frame,
                chunk_size=DECODE_CHUNK,
            )

    @staticmethod
    def _frame(image_size, out_size, box) -> tuple[int, int, int, int]:
        """The input pixels under output pixels ``box``, with one pixel of margin."""
        (h, w), (out_h, out_w), (top, left, bottom, right) = image_size, out_size, box
        return (
            max(top * h // out_h - 1, 0),
            max(left * w // out_w - 1, 0),
            min(-(-bottom * h // out_h) + 1, h),
            min(-(-right * w // out_w) + 1, w),
        )

    def _features_for(
        self, frame: tuple[int, int, int, int]
    ) -> tuple[LTEFeatures, tuple[int, int, int, int]]:
        if not self.blockwise:
            return self._whole, (0, 0, *self._whole.inp.shape[-2:])
        top, left, bottom, right = frame
        rows = range(top // BLOCK, (bottom - 1) // BLOCK + 1)
        cols = range(left // BLOCK, (right - 1) // BLOCK + 1)
        blocks = [(by, bx) for by in rows for bx in cols]
        with self._lock:
            self._encode_missing([key for key in blocks if key not in self._blocks])
            maps = self._assemble(blocks, frame)
            self._evict()
        inp = normalise(self.rgb[:, top:bottom, left:right], self.device)
        return LTEFeatures(inp=inp, coef=maps[0], freq=maps[1]), frame

    def _assemble(
        self, blocks: list[tuple[int, int]], frame: tuple[int, int, int, int]
    ) -> list[torch.Tensor]:
        """The coef and freq maps over ``frame``, copied once from the ``blocks`` under it."""
        top, left, bottom, right = frame
        maps = []
        for index in (0, 1):  # coef, then freq
            first = self._blocks[blocks[0]][index]
            out = torch.empty(
                (1, first.shape[1], bottom - top, right - left),
                dtype=first.dtype,
                device=first.device,
                memory_format=torch.channels_last,
            )
            for by, bx in blocks:
                y0, x0 = max(top, by * BLOCK), max(left, bx * BLOCK)
                y1, x1 = min(bottom, (by + 1) * BLOCK), min(right, (bx + 1) * BLOCK)
                block = self._use((by, bx))[index]
                out[:, :, y0 - top : y1 - top, x0 - left : x1 - left] = block[
                    :, :, y0 - by * BLOCK : y1 - by * BLOCK, x0 - bx * BLOCK : x1 - bx * BLOCK
                ]
            maps.append(out)
        return maps

    def _encode_missing(self, missing: list[tuple[int, int]]) -> None:
        """Encode the rectangle of blocks around ``missing`` in one pass and keep its blocks."""
        if not missing:
            return
        h, w = self.rgb.shape[-2:]
        by0, by1 = min(b[0] for b in missing), max(b[0] for b in missing)
        bx0, bx1 = min(b[1] for b in missing), max(b[1] for b in missing)
        box = (by0 * BLOCK, bx0 * BLOCK, min((by1 + 1) * BLOCK, h), min((bx1 + 1) * BLOCK, w))
        whole = max(box[2] - box[0], box[3] - box[1])  # one encoder pass over the rectangle
        features = encode_box(self.model, self.rgb, box, whole, self._overlap, self.device)
        for by in range(by0, by1 + 1):
            for bx in range(bx0, bx1 + 1):
                y, x = (by - by0) * BLOCK, (bx - bx0) * BLOCK
                part = (slice(None), slice(None), slice(y, y + BLOCK), slice(x, x + BLOCK))
                old = self._blocks.pop((by, bx), None)
                self.bytes -= _nbytes(old) if old else 0
                self._blocks[(by, bx)] = tuple(
                    m[part].clone(memory_format=torch.channels_last)
                    for m in (features.coef, features.freq)
                )
                self.bytes += _nbytes(self._blocks[(by, bx)])

    def _use(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        self._blocks.move_to_end(key)
        return self._blocks[key]

    def _evict(self) -> None:
        """Drop least recently used blocks beyond ``max_bytes`` (the tile just made keeps its own)."""
        while self.bytes > self.max_bytes and len(self._blocks) > 1:
            _, maps = self._blocks.popitem(last=False)
            self.bytes -= _nbytes(maps)


def _nbytes(maps: tuple[torch.Tensor, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in maps)
