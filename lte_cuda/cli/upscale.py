"""``lte-sr upscale``: an image, or every image of a folder, to any size."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from .. import distributed
from ..export.runtimes import RUNTIMES
from ..image_io.files import (
    DEFAULT_QUALITY,
    IMAGE_SUFFIXES,
    check_output,
    check_quality,
    is_image_path,
    read_image_file,
    write_image_file,
)
from ..inference import NonFiniteOutputError, resolve_device
from ..output_guard import refuse_overwriting_inputs
from ..precision import CHOICES as PRECISION_CHOICES
from ..precision import Precision, resolve_precision
from ..progress import RunProgress
from ..upscale import output_size, resolve_runner, upscale
from .args import add_model_arguments
from .errors import PROG, CLIError, UsageError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``upscale`` subcommand to the ``lte-sr`` parser."""
    parser = subparsers.add_parser(
        "upscale",
        help="upscale an image, or every image of a folder, to any size",
        description=(
            "Upscale IN to OUT with an LTE model. IN may be a folder: then OUT is a folder "
            f"(created) and every {'/'.join(e[1:] for e in IMAGE_SUFFIXES)} image in IN is done; "
            "a file that fails is reported and skipped, and the exit status is 1 if any failed. "
            "The EXIF orientation is applied; EXIF, ICC profile and DPI (scaled) are kept where "
            "OUT's format holds them; 16-bit PNG/TIFF stay 16-bit; every frame of an animated "
            "GIF/WebP/PNG is upscaled."
        ),
    )
    parser.add_argument("input", metavar="IN", help="input image or folder")
    parser.add_argument("output", metavar="OUT", help="output image, or folder when IN is one")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--scale",
        help="factor, e.g. 2.7, or SY,SX for different height and width factors, e.g. 1.5,3.2",
    )
    target.add_argument("--size", help="exact output size WIDTHxHEIGHT, e.g. 1920x1080")
    add_model_arguments(parser)
    parser.add_argument(
        "--precision",
        choices=[*PRECISION_CHOICES, "int8"],
        default="auto",
        help="auto: bf16 on a CPU that computes bf16 natively, else fp32 (default: auto); "
        "with --runtime: fp32 (also for auto) or int8",
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        help="run the model's exported ONNX graphs on this runtime (CPU; needs the runtime "
        "extra); --model may then also be an lte-sr export --parts OUT.onnx",
    )
    parser.add_argument(
        "--tile", type=int, help="encoder tile side in input pixels (default: from free memory)"
    )
    parser.add_argument(
        "--chunk", type=int, help="output pixels decoded per step (default: from free memory)"
    )
    parser.add_argument(
        "--self-ensemble",
        action="store_true",
        help="average over the 8 flips/transposes of the input (8x slower, slightly sharper)",
    )
    parser.add_argument(
        "--quality",
        type=_quality,
        default=DEFAULT_QUALITY,
        help=f"JPEG/WebP output quality, 1..100 (default: {DEFAULT_QUALITY})",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars or per-file lines, only errors"
    )
    parser.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave outputs that already exist as they are (continues a stopped folder run)",
    )
    parser.set_defaults(func=run)
    return parser


def _quality(text: str) -> int:
    try:
        return check_quality(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in 1..100, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    """Run ``lte-sr upscale``; returns the exit status."""
    scale, size = _parse_scale(args.scale), _parse_size(args.size)
    source = Path(args.input)
    # Under torchrun: this process's files.
    pairs = distributed.shard(_plan(source, Path(args.output), model_file=args.model))
    todo = [(src, dst) for src, dst in pairs if not (args.skip_existing and dst.exists())]
    skipped = len(pairs) - len(todo)
    if not todo:
        if skipped:
            print(f"{PROG}: {skipped} skipped (outputs exist)", file=sys.stderr)
        return 0
    # A device or model error concerns every file: stop before the first.
    device = resolve_device("cpu" if args.runtime and args.device == "auto" else args.device)
    model = resolve_runner(args.model, args.runtime, args.precision, device)
    if args.runtime:
        graphs = "fp32" if args.precision == "auto" else args.precision
        precision = Precision(graphs, None, f"the {args.runtime} graphs")
    else:
        precision = resolve_precision(args.precision, device)
    progress = RunProgress(len(todo), quiet=args.quiet)

    def upscale_one(src: Path, dst: Path) -> None:
        # Arrays in and out: the file is then written without a PIL copy of the output.
        image = read_image_file(src).as_arrays()
        width, height = image.size
        out_h, out_w = output_size(height, width, scale, size)
        check_output(dst, len(image.frames), out_h, out_w)
        shown = progress.file(src, dst, (width, height), (out_w, out_h), precision)
        try:
            frames = [
                upscale(
                    frame,
                    scale=scale,
                    size=size,
                    model=model,
                    device=args.device,
                    precision=args.precision if args.runtime else precision.name,
                    runtime=args.runtime,
                    chunk_size=args.chunk,
                    tile_size=args.tile,
                    self_ensemble=args.self_ensemble,
                    progress=_frame_progress(shown.update, index, len(image.frames)),
                )
                for index, frame in enumerate(image.frames)
            ]
        except NonFiniteOutputError as err:  # name the file the model came from
            raise NonFiniteOutputError(
                f"{args.model or 'the bundled default model'}: {err}"
            ) from None
        image = image.with_frames(frames)  # the input frames are let go before writing
        write_image_file(image, dst, quality=args.quality)
        shown.done()

    try:
        if not source.is_dir():
            upscale_one(*todo[0])  # one file: its error is the command's error
            return 0
        failed = _run_folder(todo, upscale_one)
    finally:
        progress.close()
    progress.say(f"{len(todo) - failed} written, {skipped} skipped, {failed} failed")
    return 1 if failed else 0


def _frame_progress(
    update: Callable[[int, int], None], index: int, frames: int
) -> Callable[[int, int], None]:
    """Frame ``index``'s ``progress(done, total)`` as progress over all ``frames`` frames."""
    return lambda done, total: update(index * total + done, frames * total)


def _run_folder(pairs: list[tuple[Path, Path]], upscale_one: Callable[[Path, Path], None]) -> int:
    """Run ``upscale_one`` on every pair; a file that fails is reported in one line and the
    run goes on. Returns the number of failures."""
    failed = 0
    for src, dst in pairs:
        try:
            upscale_one(src, dst)
        except NonFiniteOutputError:
            raise  # the model is broken: every file would fail the same way
        except (ValueError, TypeError, OSError) as err:
            failed += 1
            message = " ".join(str(err).split())
            named = message if str(src) in message else f"{src}: {message}"
            tqdm.write(f"{PROG}: error: {named} (skipped)", file=sys.stderr)
    return failed


def _parse_scale(text: str | None) -> float | tuple[float, float] | None:
    """``"2.7"`` -> 2.7, ``"1.5,3.2"`` -> (1.5, 3.2); range checks are :func:`upscale`'s."""
    if text is None:
        return None
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise UsageError(
            f"argument --scale: expected a number or SY,SX (e.g. 2.7 or 1.5,3.2), got {text!r}"
        )
    return values[0] if len(values) == 1 else (values[0], values[1])


def _parse_size(text: str | None) -> tuple[int, int] | None:
    """``"1920x1080"`` -> (1920, 1080) as (width, height)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise UsageError(f"argument --size: expected WIDTHxHEIGHT (e.g. 1920x1080), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _plan(source: Path, target: Path, model_file: str | None) -> list[tuple[Path, Path]]:
    """The (input, output) file pairs to process; refuses to write over an input image, the
    input folder or the ``--model`` file."""
    if not source.exists():
        raise CLIError(f"{source}: no such file or folder")
    if source.is_dir():
        if target.exists() and not target.is_dir():
            raise CLIError(f"{target}: IN is a folder, so OUT must be a folder, but it is a file")
        refuse_overwriting_inputs(target, [source], "OUT")
        images = sorted(p for p in source.iterdir() if p.is_file() and is_image_path(p))
        if not images:
            raise CLIError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        pairs = [(p, target / p.name) for p in images]
    else:
        pairs = [(source, target / source.name if target.is_dir() else target)]
    for src, dst in pairs:
        check_output(dst)
        refuse_overwriting_inputs(dst, [src, model_file], "OUT")
    # OUT's folder (OUT itself when IN is a folder) is made now: a bad path fails before any work.
    output_folder = pairs[0][1].parent
    try:
        output_folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = (
            "a file of that name exists" if isinstance(error, FileExistsError) else error.strerror
        )
        raise CLIError(
            f"{pairs[0][1]}: cannot create its folder {output_folder} ({reason})"
        ) from None
    return pairs
