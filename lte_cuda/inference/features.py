"""One source of features for an image: encode any box of it with the context the encoder
needs, and assemble the maps of a frame from parts. The streamer and the viewer both take
their :class:`~lte_cuda.models.lte.LTEFeatures` from here."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from ..coords import Box
from ..image_io.convert import pixel_scale
from ..models.lte import LTEFeatures
from .executor import Executor
from .geometry import reflect_pad_to_window

# A part of a frame: the box it covers and its (coef, freq, inp) maps over exactly that box.
Part = tuple[Box, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
# coef and freq channels-last: the layout the fused op reads, so no chunk has to copy them.
MAP_LAYOUTS = (torch.channels_last, torch.channels_last, torch.contiguous_format)


def unit_float(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``pixels (3, h, w)`` (uint8/uint16, or float in [0, 1]) -> ``(1, 3, h, w)`` float32 in
    [0, 1] on ``device``."""
    image = pixels.to(device)
    image = (
        image.float() if image.is_floating_point() else image.float() / pixel_scale(pixels.dtype)
    )
    return image.unsqueeze(0)


class FeatureSource:
    """The encoder's view of ``pixels (3, h, w)`` (uint8/uint16, or float in [0, 1]) for
    ``executor``: the image itself, or for an encoder with a window the image in float
    mirrored out to it, as the published test pads it. Boxes are in that source's pixels
    (the padding lies bottom/right, so they are the image's pixels where both exist)."""

    def __init__(self, executor: Executor, pixels: torch.Tensor) -> None:
        self.executor = executor
        self.image_size = tuple(pixels.shape[-2:])
        window = executor.traits.window
        if window:
            pixels = reflect_pad_to_window(unit_float(pixels, pixels.device)[0], window)
        self.pixels = pixels
        self.size = tuple(pixels.shape[-2:])

    def encode(self, frame: Box, tile: int, overlap: int) -> LTEFeatures:
        """Features of the pixels ``frame``, the encoder running on tiles of ``tile`` pixels
        grown by ``overlap`` (clipped to the source), each keeping only its own pixels."""
        return self.assemble(frame, self._encoded_tiles(frame, tile, overlap))

    def _encoded_tiles(self, frame: Box, tile: int, overlap: int) -> Iterator[Part]:
        top, left, bottom, right = frame
        h, w = self.size
        for y0 in range(top, bottom, tile):
            for x0 in range(left, right, tile):
                y1, x1 = min(y0 + tile, bottom), min(x0 + tile, right)
                ya, xa = max(y0 - overlap, 0), max(x0 - overlap, 0)
                yb, xb = min(y1 + overlap, h), min(x1 + overlap, w)
                pixels = unit_float(self.pixels[:, ya:yb, xa:xb], self.executor.device)
                maps = self.executor.encode_tile(pixels)
                core = (slice(None), slice(None), slice(y0 - ya, y1 - ya), slice(x0 - xa, x1 - xa))
                yield (y0, x0, y1, x1), tuple(m[core] for m in maps)

    def assemble(self, frame: Box, parts: Iterable[Part]) -> LTEFeatures:
        """The features of ``frame`` from ``parts`` that tile it, each copied into place."""
        top, left, bottom, right = frame
        maps: list[torch.Tensor] = []
        for (y0, x0, y1, x1), part in parts:
            if not maps:
                maps = [
                    torch.empty(
                        (1, m.shape[1], bottom - top, right - left),
                        dtype=m.dtype,
                        device=m.device,
                        memory_format=layout,
                    )
                    for m, layout in zip(part, MAP_LAYOUTS)
                ]
            place = (
                slice(None),
                slice(None),
                slice(y0 - top, y1 - top),
                slice(x0 - left, x1 - left),
            )
            for whole, m in zip(maps, part):
                whole[place] = m
        coef, freq, inp = maps
        return LTEFeatures(inp, coef, freq, frame, self.image_size)
