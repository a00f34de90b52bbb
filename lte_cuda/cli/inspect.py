"""``lte-sr inspect``: draw what LTE's texture estimator sees in an image."""

from __future__ import annotations

import argparse

from ..texture_map import inspect_image
from .args import add_model_arguments


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``inspect`` subcommand to the ``lte-sr`` parser."""
    parser = subparsers.add_parser(
        "inspect",
        help="draw what the texture estimator sees in an image",
        description=(
            "Draw LTE's texture estimates for IMAGE into OUT: amplitude map, dominant frequency "
            "and direction, the estimated frequencies in Fourier space, and the image's spectrum."
        ),
    )
    parser.add_argument(
        "image", metavar="IMAGE", help="input image (at most 512x512 pixels' worth)"
    )
    parser.add_argument("output", metavar="OUT", help="output figure, e.g. textures.png")
    add_model_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``lte-sr inspect``; returns the exit status."""
    inspect_image(args.image, args.output, model=args.model, device=args.device)
    print(args.output)
    return 0
