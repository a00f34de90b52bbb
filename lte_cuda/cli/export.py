"""``lte-sr export``: write a model as ONNX graphs that run without PyTorch."""

from __future__ import annotations

import argparse
import sys

from ..export.graphs import DEFAULT_OPSET, OPSETS, output_paths, to_onnx
from ..output_guard import refuse_overwriting_inputs
from ..upscale import model_file, resolve_model


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to the ``lte-sr`` parser."""
    parser = subparsers.add_parser(
        "export",
        help="write the model as an ONNX graph for ONNX Runtime, OpenVINO or TensorRT",
        description=(
            "Write OUT.onnx: one graph with inputs image (1, 3, H, W) float in [0, 1] and size "
            "(int64 [out height, out width]) and output (1, 3, out height, out width) in [0, 1], "
            "all sizes dynamic. With --parts, OUT.encode.onnx and OUT.query.onnx, the two graphs "
            "a host program streams tiles through. Needs the runtime extra."
        ),
    )
    parser.add_argument("output", metavar="OUT", help="the .onnx file to write")
    parser.add_argument(
        "--model",
        help="checkpoint (.pth) or preset name with bundled weights (default: the bundled default model)",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        choices=OPSETS,
        metavar="N",
        help=f"ONNX opset, {OPSETS.start}..{OPSETS.stop - 1} (default: {DEFAULT_OPSET}, the newest TensorRT 8.6 reads)",
    )
    parser.add_argument(
        "--parts", action="store_true", help="write the encode and query graphs instead"
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="the MLP's matrix products in int8 (ONNX Runtime's dynamic quantisation)",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``lte-sr export``; returns the exit status."""
    targets = output_paths(args.output, args.parts)
    for target in targets.values():
        refuse_overwriting_inputs(target, [model_file(args.model)], "OUT")
        if not target.parent.is_dir():
            raise ValueError(f"OUT {target}: its folder {target.parent} does not exist")
    model = resolve_model(args.model)
    written = to_onnx(model, args.output, opset=args.opset, parts=args.parts, int8=args.int8)
    for path in written:
        print(path, file=sys.stderr)
    return 0
