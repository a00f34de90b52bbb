"""``lte-sr demo``: upscale the bundled photo with the bundled model and compare with bicubic.

Writes ``demo_lte_x<S>.png`` (the LTE result) and ``demo_compare.png``: PIL bicubic and LTE
at the same size side by side, each with a nearest-neighbour enlarged crop of the most
textured region, so the difference can be seen pixel by pixel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .image_io.files import read_image, to_8bit_rgb, write_image
from .models import LTE
from .output_guard import refuse_overwriting_inputs
from .upscale import DEFAULT_WEIGHTS, resolve_model, upscale

DEMO_PHOTO = Path(__file__).resolve().parent / "assets" / "chelsea.png"
DEFAULT_SCALE = 3.3
ZOOM = 4  # enlargement of the inset; its crop is 1/ZOOM of the image per side
MARGIN = 12
FONT_SIZE = 18
BOX_COLOUR = (230, 30, 30)


def load_demo_model(model: str | None = None) -> LTE:
    """The model the demo uses: the checkpoint ``model``, or the bundled default model.

    Raises ``ValueError`` with a one-line hint when no default model is bundled yet.
    """
    if model is None and not DEFAULT_WEIGHTS.is_file():
        raise ValueError(
            f"no default model is bundled yet ({DEFAULT_WEIGHTS} is missing); train one with "
            "`lte-sr train --config configs/default-model.yaml` and copy it there, "
            "or pass --model CHECKPOINT"
        )
    return resolve_model(model)


def run_demo(
    out_dir: str | Path,
    scale: float = DEFAULT_SCALE,
    model: str | None = None,
    precision: str = "auto",
) -> tuple[Path, Path]:
    """Upscale the bundled photo by ``scale`` and write the result and the comparison.

    Args:
        out_dir: folder for the two PNGs (created); each is written whole or not at all.
        scale: the upscaling factor; any positive number, e.g. 3.3.
        model: a checkpoint path; ``None`` uses the bundled default model.
        precision: as :func:`lte_cuda.upscale` takes it (default ``"auto"``).

    Returns:
        The paths of ``demo_lte_x<scale>.png`` and ``demo_compare.png``, written atomically;
        ``ValueError`` before any work if one of them is the model file or the photo.
    """
    out = Path(out_dir)
    result_path = out / f"demo_lte_x{scale:g}.png"
    compare_path = out / "demo_compare.png"
    for path in (result_path, compare_path):
        refuse_overwriting_inputs(path, [DEMO_PHOTO, model], "--out")
    lte = load_demo_model(model)
    photo = to_8bit_rgb(read_image(DEMO_PHOTO))
    result = upscale(photo, scale=scale, model=lte, precision=precision)
    bicubic = photo.resize(result.size, Image.Resampling.BICUBIC)
    title = (
        f"{DEMO_PHOTO.name} {photo.width}x{photo.height} -> {result.width}x{result.height} "
        f"(x{scale:g})"
    )
    compare = comparison_image(bicubic, result, title)

    out.mkdir(parents=True, exist_ok=True)
    write_image(result, result_path)
    write_image(compare, compare_path)
    return result_path, compare_path


def comparison_image(bicubic: Image.Image, lte: Image.Image, title: str) -> Image.Image:
    """Bicubic and LTE side by side, each above a ``ZOOM``x nearest-neighbour enlargement
    of the same crop (the most textured region), with labels. Both inputs have one size."""
    if bicubic.size != lte.size:
        raise ValueError(f"images differ in size: {bicubic.size} vs {lte.size}")
    width, height = lte.size
    box = textured_box(bicubic, (max(width // ZOOM, 1), max(height // ZOOM, 1)))
    zoom_size = ((box[2] - box[0]) * ZOOM, (box[3] - box[1]) * ZOOM)
    font = _font()
    line = FONT_SIZE + 8

    canvas = Image.new(
        "RGB",
        (3 * MARGIN + 2 * width, line + 2 * (line + MARGIN) + height + zoom_size[1] + MARGIN),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, 4), title, fill="black", font=font)
    for column, (label, image) in enumerate((("PIL bicubic", bicubic), ("LTE", lte))):
        x = MARGIN + column * (width + MARGIN)
        y = line
        draw.text((x, y + 4), label, fill="black", font=font)
        y += line
        canvas.paste(image, (x, y))
        draw.rectangle(
            (x + box[0] - 1, y + box[1] - 1, x + box[2], y + box[3]), outline=BOX_COLOUR, width=2
        )
        y += height + MARGIN
        draw.text(
            (x, y + 4), f"{label}, red box enlarged {ZOOM}x (nearest)", fill="black", font=font
        )
        y += line
        canvas.paste(image.crop(box).resize(zoom_size, Image.Resampling.NEAREST), (x, y))
    return canvas


def textured_box(image: Image.Image, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The ``(left, top, right, bottom)`` window of ``size = (width, height)`` pixels with
    the largest sum of gradient magnitudes in ``image``: where an upscaler's texture shows
    best. (Magnitudes, not squares: squares favour a few strong edges over dense texture.)"""
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    d_col, d_row = np.zeros_like(grey), np.zeros_like(grey)
    d_col[:, 1:] = np.diff(grey, axis=1)
    d_row[1:, :] = np.diff(grey, axis=0)
    energy = np.hypot(d_col, d_row)
    # Window sums for every top-left corner at once, from an integral image.
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    w, h = min(size[0], grey.shape[1]), min(size[1], grey.shape[0])
    sums = integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w]
    top, left = np.unravel_index(np.argmax(sums), sums.shape)
    return int(left), int(top), int(left) + w, int(top) + h


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow < 10.1 has only the small fixed-size bitmap font
        return ImageFont.load_default()
