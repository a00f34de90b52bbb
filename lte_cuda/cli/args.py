"""Command-line arguments that several ``lte-sr`` subcommands share."""

from __future__ import annotations

import argparse


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` and ``--device``, as :func:`lte_cuda.upscale.resolve_model` and
    :func:`lte_cuda.inference.resolve_device` take them."""
    parser.add_argument(
        "--model",
        help="checkpoint (.pth) or preset name with bundled weights (default: the bundled default model)",
    )
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)"
    )


def add_precision_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--precision``: ``auto`` (the rule of :mod:`lte_cuda.precision`) or a named one."""
    from ..precision import CHOICES

    parser.add_argument(
        "--precision",
        choices=CHOICES,
        default=default,
        help=f"auto: bf16 on a CPU that computes bf16 natively, else fp32 (default: {default})",
    )
