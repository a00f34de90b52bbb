"""Renders the tiles of one image: LTE through the project's inference path (features
computed once per region and kept, each tile decoded from them) and PIL bicubic."""

from __future__ import annotations

import io
import threading

import numpy as np
import torch
from PIL import Image

from ..models import LTE
from .features import DEFAULT_FEATURE_BYTES, ImageFeatures
from .tiles import TileGrid, TileKey


class TileRenderer:
    """The image, the model and its features; :meth:`render_png` makes a tile's PNG.

    The server runs :meth:`prepare` in the background right after it starts (the page shows
    the photo meanwhile); LTE tiles wait for it. For block-wise encoders it only moves the
    model; the features of a region are computed by the first tile over it (see features.py).
    """

    def __init__(
        self,
        image: Image.Image,
        model: LTE,
        device: torch.device,
        feature_bytes: int = DEFAULT_FEATURE_BYTES,
        precision: str = "auto",
    ) -> None:
        self.image = image.convert("RGB")
        self.device = device
        self.grid = TileGrid(self.image.height, self.image.width)
        rgb = torch.from_numpy(np.array(self.image)).permute(2, 0, 1)  # uint8, (3, h, w)
        self.features = ImageFeatures(model, rgb, device, feature_bytes, precision)
        self.prepare_error: str | None = None
        self._done = threading.Event()

    @property
    def state(self) -> str:
        """ "encoding", "ready" or "failed"."""
        if not self._done.is_set():
            return "encoding"
        return "failed" if self.prepare_error else "ready"

    def prepare(self) -> None:
        """Get the features ready (once); a failure is kept and reported by tiles."""
        try:
            self.features.prepare()
        except (RuntimeError, ValueError, MemoryError) as error:
            self.prepare_error = f"computing the image's features failed: {error}"
        finally:
            self._done.set()

    def render(self, key: TileKey) -> np.ndarray:
        """The tile ``key`` as uint8 ``(rows, columns, 3)``."""
        top, left, bottom, right = self.grid.box(key)
        out_h, out_w = self.grid.sizes[key.level]
        if key.kind == "bicubic":
            # PIL resamples only the box, with the same filter positions as a full resize.
            box = (
                left * self.image.width / out_w,
                top * self.image.height / out_h,
                right * self.image.width / out_w,
                bottom * self.image.height / out_h,
            )
            tile = self.image.resize(
                (right - left, bottom - top), Image.Resampling.BICUBIC, box=box
            )
            return np.asarray(tile)
        self._done.wait()
        if self.prepare_error:
            raise RuntimeError(self.prepare_error)
        pixels = self.features.decode((out_h, out_w), (top, left, bottom, right))
        # Rounded as lte_cuda.upscale rounds its uint8 output.
        return (pixels.permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)

    def render_png(self, key: TileKey) -> bytes:
        """The tile ``key`` as PNG bytes (lossless, so the page shows the model's values)."""
        buffer = io.BytesIO()
        Image.fromarray(self.render(key)).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
