"""``lte-sr inspect``: a picture of what LTE's texture estimator sees in an image.

For every input pixel the estimator predicts C/2 sinusoids: a frequency pair
``(f_row, f_col)`` (freq channels 2k, 2k+1) with a cos amplitude (coef channel k) and a sin
amplitude (coef channel k + C/2). The decoder evaluates ``cos/sin(pi * f . rel)`` with ``rel``
the offset in [-1, 1] units times the map size, i.e. 2 per input pixel, so ``f`` is in cycles per
input pixel: 0.5 is the input's Nyquist frequency.
The figure shows the input, the total amplitude, the dominant sinusoid's frequency and
direction, the estimated frequencies of all pixels in Fourier space (as in the LTE paper's
figure), and the input's own Fourier spectrum for comparison.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .image_io.files import atomic_output, read_image, to_8bit_rgb
from .inference import encode_image
from .models import LTE
from .output_guard import refuse_overwriting_inputs
from .upscale import resolve_model

# One estimate per input pixel is drawn, and C maps of the image's size are held in memory.
MAX_PIXELS = 512 * 512
# Points drawn in Fourier space: the strongest ones (a scatter of millions is unreadable).
SCATTER_POINTS = 20000


def estimate_textures(
    model: LTE, rgb: torch.Tensor, device: str | torch.device | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Run the encoder and the texture estimator on ``rgb (3, h, w)`` in [0, 1].

    Returns:
        ``amplitude (h, w, C/2)``: each sinusoid's amplitude ``sqrt(cos_amp^2 + sin_amp^2)``;
        ``frequency (h, w, C/2, 2)``: its ``(f_row, f_col)`` in cycles per input pixel.
        Both float32 numpy arrays.
    """
    if rgb.dim() != 3 or rgb.shape[0] != 3:
        raise ValueError(f"rgb must have shape (3, h, w), got {tuple(rgb.shape)}")
    features = encode_image(model, rgb.unsqueeze(0), device=device)
    # An encoder with a window has its maps padded bottom/right: keep the image's own pixels.
    height, width = features.image_size
    coef = features.coef[0, :, :height, :width].float().cpu()
    freq = features.freq[0, :, :height, :width].float().cpu()
    pairs = coef.shape[0] // 2
    amplitude = torch.sqrt(coef[:pairs] ** 2 + coef[pairs:] ** 2).permute(1, 2, 0)
    frequency = freq.view(pairs, 2, height, width).permute(2, 3, 0, 1)
    return amplitude.numpy(), frequency.numpy()


def render_texture_figure(
    image: np.ndarray, amplitude: np.ndarray, frequency: np.ndarray, path: str | Path
) -> None:
    """Draw the figure for ``image (h, w, 3)`` uint8 and the outputs of
    :func:`estimate_textures`, and save it as ``path`` (format from the extension, PNG if
    none), atomically."""
    try:
        # Figure without pyplot: no GUI backend, no global state changed in the caller.
        from matplotlib.colors import hsv_to_rgb
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("inspect needs matplotlib: pip install matplotlib") from None

    height, width = image.shape[:2]
    total = np.sqrt((amplitude**2).sum(axis=-1))
    dominant = amplitude.argmax(axis=-1)
    f_dom = np.take_along_axis(frequency, dominant[..., None, None], axis=2)[:, :, 0]
    magnitude = np.hypot(f_dom[..., 0], f_dom[..., 1])
    # A sinusoid with f and with -f is the same wave: direction is an angle modulo 180 degrees.
    direction = np.mod(np.arctan2(f_dom[..., 0], f_dom[..., 1]), np.pi)
    dom_amp = amplitude.max(axis=-1)
    low, high = np.percentile(dom_amp, [1, 99])
    brightness = np.clip((dom_amp - low) / max(high - low, 1e-12), 0, 1)
    hue_map = hsv_to_rgb(np.stack([direction / np.pi, np.ones_like(direction), brightness], -1))

    fig = Figure(figsize=(15, 10), layout="tight")
    axes = fig.subplots(2, 3)
    ax = axes[0, 0]
    ax.imshow(image)
    ax.set_title(f"input ({width}x{height})")
    _show_map(fig, axes[0, 1], total, "amplitude: norm of all sinusoids", "viridis")
    _show_map(
        fig,
        axes[0, 2],
        magnitude,
        "dominant sinusoid: frequency |f|\n(cycles per input pixel)",
        "magma",
    )
    ax = axes[1, 0]
    ax.imshow(hue_map)
    ax.set_title("dominant sinusoid: direction of f (hue),\nits amplitude (brightness)")
    _direction_legend(ax)
    for ax in (axes[0, 0], axes[0, 1], axes[0, 2], axes[1, 0]):
        ax.set_xticks([])
        ax.set_yticks([])

    limit = _scatter_points(axes[1, 1], amplitude, frequency)
    _input_spectrum(axes[1, 2], image, limit)
    fig.suptitle("What LTE's texture estimator sees: one set of sinusoids per input pixel")
    with atomic_output(path) as stream:
        fig.savefig(stream, format=Path(path).suffix[1:].lower() or "png", dpi=80)


def _show_map(fig, ax, values: np.ndarray, title: str, cmap: str) -> None:
    """A per-pixel map with its colour bar, spread between the 1st and 99th percentiles."""
    low, high = np.percentile(values, [1, 99])
    shown = ax.imshow(values, cmap=cmap, vmin=low, vmax=max(high, low + 1e-12))
    ax.set_title(title)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)


def _direction_legend(ax) -> None:
    """A small disc in the corner whose hue at each angle is the hue of that direction."""
    from matplotlib.colors import hsv_to_rgb

    y, x = np.mgrid[-1:1:64j, -1:1:64j]
    hue = np.mod(np.arctan2(y, x), np.pi) / np.pi
    inside = (np.hypot(x, y) <= 1).astype(float)
    disc = np.concatenate(
        [hsv_to_rgb(np.stack([hue, np.ones_like(hue), np.ones_like(hue)], -1)), inside[..., None]],
        axis=-1,
    )
    inset = ax.inset_axes([0.78, 0.78, 0.2, 0.2])
    inset.imshow(disc)
    inset.set_axis_off()


def _scatter_points(ax, amplitude: np.ndarray, frequency: np.ndarray) -> float:
    """The strongest sinusoids of all pixels at ``(f_col, f_row)`` and their mirrors ``-f``,
    size and opacity by amplitude; rows point down as in the image. Returns the axis limit."""
    amp = amplitude.reshape(-1)
    freq = frequency.reshape(-1, 2)
    keep = np.argsort(amp)[-SCATTER_POINTS:]
    amp, freq = amp[keep], freq[keep]
    weight = amp / max(float(amp.max()), 1e-12)
    colours = np.zeros((len(amp), 4))
    colours[:, 2] = 0.6
    colours[:, 3] = 0.02 + 0.3 * weight
    for sign in (1, -1):
        ax.scatter(
            sign * freq[:, 1], sign * freq[:, 0], s=0.5 + 6 * weight, c=colours, linewidths=0
        )
    limit = max(0.6, float(np.percentile(np.abs(freq), 99.5)) * 1.1)
    _fourier_axes(ax, limit)
    ax.add_patch(_nyquist_square())
    ax.set_title(f"estimated frequencies in Fourier space\n({len(amp)} strongest and mirrors -f)")
    return limit


def _input_spectrum(ax, image: np.ndarray, limit: float) -> None:
    """The input's log Fourier magnitude on the same axes as the scatter; it reaches only the
    input's Nyquist frequency (the dashed square, 0.5 cycles per pixel), the estimates may
    go beyond."""
    grey = image.astype(np.float64).mean(axis=-1)
    height, width = grey.shape
    # A Hann window stops the image's borders from smearing lines across the spectrum.
    window = np.outer(np.hanning(height), np.hanning(width))
    spectrum = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2((grey - grey.mean()) * window))))
    # fftshift puts frequency 0 at index n // 2; bins are 1 / n cycles per pixel wide.
    extent = (
        -(width // 2 + 0.5) / width,
        (width - width // 2 - 0.5) / width,
        (height - height // 2 - 0.5) / height,
        -(height // 2 + 0.5) / height,
    )
    ax.imshow(spectrum, cmap="gray", extent=extent)
    _fourier_axes(ax, limit)
    ax.add_patch(_nyquist_square())
    ax.set_title("the input's own Fourier spectrum (log magnitude)")


def _fourier_axes(ax, limit: float) -> None:
    ax.set_xlim(-limit, limit)
    ax.set_ylim(limit, -limit)  # rows grow downwards, as in the image
    ax.set_aspect("equal")
    ax.set_xlabel("f_col (cycles per input pixel)")
    ax.set_ylabel("f_row")


def _nyquist_square():
    from matplotlib.patches import Rectangle

    return Rectangle(
        (-0.5, -0.5), 1, 1, fill=False, linestyle="--", edgecolor="tab:red", linewidth=1
    )


def inspect_image(
    image_path: str | Path,
    out_path: str | Path,
    model: LTE | str | None = None,
    device: str | torch.device | None = None,
) -> None:
    """Write the texture figure of the image ``image_path`` to ``out_path``.

    ``model`` is as in :func:`lte_cuda.upscale` (``None``: the bundled default model).
    Raises ``ValueError`` for an unreadable or too large image, an ``out_path`` that is the
    image or the model file, or without matplotlib.
    """
    model_file = model if isinstance(model, (str, os.PathLike)) else None
    refuse_overwriting_inputs(out_path, [image_path, model_file], "OUT")
    image = np.asarray(to_8bit_rgb(read_image(image_path)))
    height, width = image.shape[:2]
    if height * width > MAX_PIXELS:
        raise ValueError(
            f"{image_path}: {width}x{height} is too large to inspect ({MAX_PIXELS} pixels at most, "
            "one estimate is drawn per pixel); crop a region, e.g. 512x512"
        )
    lte = resolve_model(model)
    rgb = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255
    amplitude, frequency = estimate_textures(lte, rgb, device)
    render_texture_figure(image, amplitude, frequency, out_path)
