"""``lte-sr demo``: upscale the bundled photo and compare LTE with bicubic."""

from __future__ import annotations

import argparse
import time

from ..demo import DEFAULT_SCALE, DEMO_PHOTO, run_demo
from ..inference import resolve_device
from ..precision import resolve_precision
from .args import add_precision_argument


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand to the ``lte-sr`` parser."""
    parser = subparsers.add_parser(
        "demo",
        help="upscale a bundled photo and compare LTE with bicubic",
        description=(
            "Upscale the bundled photo (a crop of scikit-image's chelsea, CC0) with the bundled "
            "default model and write the result and a side-by-side comparison with PIL bicubic."
        ),
    )
    parser.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    parser.add_argument(
        "--scale",
        type=float,
        default=DEFAULT_SCALE,
        help=f"upscaling factor (default: {DEFAULT_SCALE})",
    )
    parser.add_argument(
        "--model", help="checkpoint (.pth) to use instead of the bundled default model"
    )
    add_precision_argument(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``lte-sr demo``; returns the exit status."""
    start = time.perf_counter()
    paths = run_demo(args.out, scale=args.scale, model=args.model, precision=args.precision)
    precision = resolve_precision(args.precision, resolve_device(None))
    print(
        f"upscaled {DEMO_PHOTO.name} x{args.scale:g} with "
        f"{args.model or 'the bundled default model'} in {time.perf_counter() - start:.1f} s, "
        f"{precision}:"
    )
    for path in paths:
        print(path)
    return 0
