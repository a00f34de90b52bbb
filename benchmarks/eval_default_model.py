"""The default model's card table: PSNR of an LTE model vs PIL bicubic on held-out photos.

For each photo (scikit-image's chelsea, coffee, camera; never trained on; camera is grey and
repeated to RGB) and each scale s:
  HR = the photo cropped (top-left) to a multiple of s in both sides;
  LR = PIL bicubic downscale of the 8-bit HR by s;
  LTE = lte_cuda.upscale(LR, size=HR size), rounded to 8 bits;
  bicubic = PIL bicubic upscale of LR to the HR size.
PSNR is RGB over [0, 1] values with a border of s pixels shaved (lte_cuda.metrics.psnr on the
shaved images). Prints a markdown table per photo and of the means, with the gain of LTE over
bicubic and the model card's targets.

    python benchmarks/eval_default_model.py                      # the bundled default model
    python benchmarks/eval_default_model.py --model save/run/epoch-last.pth --out card.md
    python benchmarks/eval_default_model.py --self-ensemble      # 8 flips/transposes averaged
    python benchmarks/eval_default_model.py --runtime onnxruntime --precision int8

with lte_cuda installed (or PYTHONPATH set to the project root) and scikit-image.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lte_cuda.metrics import psnr
from lte_cuda.upscale import DEFAULT_WEIGHTS, resolve_runner, upscale

if not __package__:
    # Run as a file: the repository root holds the benchmarks package.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.machine import cpu_line, require_fused  # noqa: E402

PHOTOS = ("chelsea", "coffee", "camera")
SCALES = (2, 3, 4, 6, 8)
# Mean gain over bicubic (dB) the bundled model must reach (issue 4).
TARGETS = {2: 1.9, 3: 1.6, 4: 1.4}


def load_photo(name: str) -> np.ndarray:
    """``skimage.data.<name>()`` as an ``(H, W, 3)`` uint8 array (grey repeated to RGB)."""
    import skimage.data

    array = np.asarray(getattr(skimage.data, name)())
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return array[:, :, :3]


def make_pair(photo: np.ndarray, scale: int) -> tuple[Image.Image, Image.Image]:
    """``(HR, LR)``: the photo cropped to a multiple of ``scale`` and its PIL bicubic downscale."""
    height, width = (photo.shape[0] // scale) * scale, (photo.shape[1] // scale) * scale
    hr = Image.fromarray(photo[:height, :width])
    lr = hr.resize((width // scale, height // scale), Image.Resampling.BICUBIC)
    return hr, lr


def shaved_psnr(sr: np.ndarray, hr: np.ndarray, shave: int) -> float:
    """RGB PSNR (dB) of two ``(H, W, 3)`` uint8 images over [0, 1] values, ignoring a border of
    ``shave`` pixels on every side."""
    if sr.shape != hr.shape:
        raise ValueError(f"images differ in shape: {sr.shape} vs {hr.shape}")
    if shave > 0:
        sr, hr = sr[shave:-shave, shave:-shave], hr[shave:-shave, shave:-shave]
    pair = [
        torch.from_numpy(np.ascontiguousarray(a)).double().div(255).unsqueeze(0) for a in (sr, hr)
    ]
    return float(psnr(*pair)[0])


def evaluate(
    model,
    photos=PHOTOS,
    scales=SCALES,
    self_ensemble: bool = False,
    runtime: str | None = None,
    precision: str = "fp32",
) -> dict[tuple[str, int], tuple[float, float]]:
    """``{(photo, scale): (bicubic PSNR, LTE PSNR)}`` for ``model`` (an LTE or a path), run by
    torch or by ``runtime`` at ``precision`` (as :func:`lte_cuda.upscale` takes them)."""
    device = torch.device("cpu") if runtime else None
    lte = resolve_runner(model, runtime, precision, device)
    results = {}
    for name in photos:
        photo = load_photo(name)
        for scale in scales:
            hr, lr = make_pair(photo, scale)
            bicubic = lr.resize(hr.size, Image.Resampling.BICUBIC)
            sr = upscale(
                lr,
                size=hr.size,
                model=lte,
                self_ensemble=self_ensemble,
                runtime=runtime,
                precision=precision,
            )
            target = np.asarray(hr)
            results[name, scale] = (
                shaved_psnr(np.asarray(bicubic), target, scale),
                shaved_psnr(np.asarray(sr), target, scale),
            )
    return results


def markdown_tables(results: dict[tuple[str, int], tuple[float, float]]) -> str:
    """The means table (with targets) and the per-photo table, in markdown."""
    photos = list(dict.fromkeys(name for name, _ in results))
    scales = list(dict.fromkeys(scale for _, scale in results))
    lines = [
        f"Mean over {', '.join(photos)} (RGB PSNR in dB, border of s pixels shaved):",
        "",
        "| scale | PIL bicubic | LTE | gain | target |",
        "|---|---|---|---|---|",
    ]
    for scale in scales:
        bicubic = np.mean([results[name, scale][0] for name in photos])
        lte = np.mean([results[name, scale][1] for name in photos])
        gain = lte - bicubic
        target = TARGETS.get(scale)
        verdict = (
            "-" if target is None else f">= +{target:.1f} {'met' if gain >= target else 'MISSED'}"
        )
        lines.append(f"| x{scale} | {bicubic:.2f} | {lte:.2f} | {gain:+.2f} | {verdict} |")
    lines += [
        "",
        "Per photo:",
        "",
        "| photo | scale | PIL bicubic | LTE | gain |",
        "|---|---|---|---|---|",
    ]
    for name in photos:
        for scale in scales:
            bicubic, lte = results[name, scale]
            lines.append(
                f"| {name} | x{scale} | {bicubic:.2f} | {lte:.2f} | {lte - bicubic:+.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help=f"checkpoint to evaluate (default: {DEFAULT_WEIGHTS})")
    parser.add_argument("--out", help="also write the tables to this markdown file")
    parser.add_argument(
        "--scales", type=int, nargs="+", default=list(SCALES), help="default: 2 3 4 6 8"
    )
    parser.add_argument(
        "--self-ensemble", action="store_true", help="upscale with self_ensemble=True"
    )
    parser.add_argument("--runtime", choices=("onnxruntime", "openvino"), help="default: torch")
    parser.add_argument("--precision", default="fp32", help="fp32 (default), or int8 on a runtime")
    args = parser.parse_args()
    require_fused("eval_default_model")
    print(cpu_line())

    start = time.perf_counter()
    results = evaluate(
        args.model,
        scales=args.scales,
        self_ensemble=args.self_ensemble,
        runtime=args.runtime,
        precision=args.precision,
    )
    tables = markdown_tables(results)
    ensemble = ", self-ensemble" if args.self_ensemble else ""
    ensemble += f", {args.runtime} {args.precision}" if args.runtime else ""
    print(
        f"model: {args.model or DEFAULT_WEIGHTS}{ensemble} ({time.perf_counter() - start:.0f} s)\n"
    )
    print(tables, end="")
    if args.out:
        Path(args.out).write_text(tables)
        print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
