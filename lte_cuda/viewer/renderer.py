"""Renders the tiles of one image: LTE through the project's inference path (features
computed once, each tile decoded from them) and PIL bicubic for comparison."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import torch
from PIL import Image

from ..models import LTE
from ..inference import decode_region, encode_image
from .tiles import TileGrid, TileKey


class TileRenderer:
    """The image, the model and its features; :meth:`render_png` makes a tile's PNG.

    The features are computed by :meth:`encode` (the server runs it in the background right
    after it starts, so the page can show the photo meanwhile); LTE tiles wait for them.
    """

    def __init__(self, image: Image.Image, model: LTE, device: torch.device) -> None:
        self.image = image.convert("RGB")
        self.model = model
        self.device = device
        self.grid = TileGrid(self.image.height, self.image.width)
        self.encode_seconds: float | None = None
        self.encode_error: str | None = None
        self._features = None
        self._done = threading.Event()

    @property
    def state(self) -> str:
        """"encoding", "ready" or "failed"."""
        if not self._done.is_set():
            return "encoding"
        return "failed" if self.encode_error else "ready"

    def encode(self) -> None:
        """Compute the image's features once; a failure is kept and reported by tiles."""
        start = time.perf_counter()
        try:
            rgb = torch.from_numpy(np.asarray(self.image, dtype=np.float32) / 255.0)
            self._features = encode_image(self.model, rgb.permute(2, 0, 1).unsqueeze(0), device=self.device)
            self.encode_seconds = time.perf_counter() - start
        except (RuntimeError, ValueError, MemoryError) as error:
            self.encode_error = f"computing the image's features failed: {error}"
        finally:
            self._done.set()

    def render(self, key: TileKey) -> np.ndarray:
        """The tile ``key`` as uint8 ``(rows, columns, 3)``."""
        top, left, bottom, right = self.grid.box(key)
        out_h, out_w = self.grid.sizes[key.level]
        if key.kind == "bicubic":
            # PIL resamples only the box, with the same filter positions as a full resize.
            box = (left * self.image.width / out_w, top * self.image.height / out_h,
                   right * self.image.width / out_w, bottom * self.image.height / out_h)
            tile = self.image.resize((right - left, bottom - top), Image.Resampling.BICUBIC, box=box)
            return np.asarray(tile)
        self._done.wait()
        if self.encode_error:
            raise RuntimeError(self.encode_error)
        image_size = (self.image.height, self.image.width)
        pixels = decode_region(self.model, self._features, image_size, (out_h, out_w), (top, left, bottom, right))
        # Rounded as lte_cuda.upscale rounds its uint8 output.
        return (pixels.permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)

    def render_png(self, key: TileKey) -> bytes:
        """The tile ``key`` as PNG bytes (lossless, so the page shows the model's values)."""
        buffer = io.BytesIO()
        Image.fromarray(self.render(key)).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
