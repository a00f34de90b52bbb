"""``lte-sr test``: evaluate a checkpoint with the published test protocol (PSNR)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .. import distributed
from ..config import TestConfig, dataset_paths, load_config, read_test_config
from ..evaluate import NonFiniteResultError, check_finite, run_test
from ..image_io.files import atomic_output, is_image_path
from ..inference import resolve_device
from ..models import BACKENDS, DEFAULT_BACKEND
from ..output_guard import refuse_overwriting_inputs
from ..precision import autocast, resolve_precision
from .args import add_precision_argument


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``test`` subcommand to the ``lte-sr`` parser."""
    parser = subparsers.add_parser(
        "test",
        help="evaluate a checkpoint on a published test config (PSNR)",
        description="Evaluate a checkpoint with the published protocol and print the mean PSNR.",
    )
    parser.add_argument(
        "--config", required=True, help="test config (YAML), e.g. configs/test/test-div2k-4.yaml"
    )
    parser.add_argument("--model", required=True, help="checkpoint (.pth) in the published format")
    parser.add_argument("--out", help="write the results (mean and per-image PSNR) as JSON here")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--backend", choices=BACKENDS, default=DEFAULT_BACKEND, help="query implementation"
    )
    parser.add_argument(
        "--eval-bsize", type=int, help="queries decoded per chunk (overrides the config)"
    )
    parser.add_argument("--num-workers", type=int, default=0, help="data loader workers")
    parser.add_argument("--quiet", action="store_true", help="print only the mean PSNR")
    # Evaluation protocols are float32: auto (bf16 on CPUs with native bf16) is opt-in here.
    add_precision_argument(parser, default="fp32")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``lte-sr test``; returns the exit status (1, with no JSON written, when any PSNR
    is not finite)."""
    from ..checkpoint import load_model

    config = read_test_config(load_config(args.config), args.config)
    if args.out:
        _refuse_overwriting_inputs(Path(args.out), config, args)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    model = load_model(args.model, map_location=device, backend=args.backend).to(device)
    with autocast(precision.name, device):
        result = run_test(
            config,
            model,
            eval_bsize=args.eval_bsize,
            num_workers=args.num_workers,
            verbose=not args.quiet,
        )
    result["precision"] = precision.name
    try:
        check_finite(result)
    except NonFiniteResultError as err:
        raise NonFiniteResultError(
            f"{args.model}: {err}" + ("; no JSON written" if args.out else "")
        ) from None
    print(
        f"result: {result['mean_psnr']:.4f} dB ({result['eval_type'] or 'rgb'}, "
        f"{len(result['images'])} images, {result['seconds']:.1f} s, {precision})"
    )
    if args.out and distributed.is_main():  # under torchrun every process has the result
        result.update(config=os.path.abspath(args.config), model=os.path.abspath(args.model))
        text = json.dumps(result, indent=2, allow_nan=False)  # strict JSON: no NaN/Infinity
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with atomic_output(args.out) as stream:
            stream.write(text.encode())
    return 0


def _refuse_overwriting_inputs(out: Path, config: TestConfig, args: argparse.Namespace) -> None:
    """``--out`` is none of the files the run reads: the config, the checkpoint, and (for an
    image-named output) an image of the test set's folders."""
    inputs = [Path(args.config), Path(args.model)]
    for path in map(Path, dataset_paths(config.test_dataset)):
        inputs.append(path)
        if is_image_path(out):
            inputs.append(path / out.name)
    refuse_overwriting_inputs(out, inputs, "--out")
