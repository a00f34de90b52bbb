"""The ``lte-sr`` command line (also ``python -m lte_cuda``).

Each subcommand is one module here holding ``add_parser(subparsers) -> ArgumentParser``,
which adds its parser and sets ``func``, and ``run(args) -> exit status``, which parses what
argparse cannot and calls the library; :data:`SUBCOMMANDS` lists them, so a new subcommand
is one more module and one more entry there. Flags several subcommands share are in
:mod:`.args`. User errors (bad arguments, missing or unreadable files, bad checkpoints, CUDA
absent) are printed as one line ``lte-sr: error: ...`` with exit status 2 for usage errors
and 1 for the rest; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import distributed
from . import demo, export, inspect, test, train, upscale, view
from .errors import PROG, CLIError, UsageError

__all__ = ["PROG", "SUBCOMMANDS", "CLIError", "UsageError", "build_parser", "main"]


class _ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of printing usage and exiting, so that every
    error reaches the user as the same single line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


SUBCOMMANDS = (
    upscale.add_parser,
    train.add_parser,
    test.add_parser,
    demo.add_parser,
    inspect.add_parser,
    view.add_parser,
    export.add_parser,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``lte-sr`` parser with every subcommand of :data:`SUBCOMMANDS`."""
    parser = _ArgumentParser(prog=PROG, description="Arbitrary-scale super-resolution with LTE.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in SUBCOMMANDS:
        add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lte-sr`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        distributed.use_local_gpu()  # under torchrun: one GPU per process
        return args.func(args)
    except SystemExit as done:  # --help and --version exit through argparse
        return done.code if isinstance(done.code, int) else 0
    except UsageError as err:
        return _fail(str(err), 2)
    # CheckpointError is a ValueError; file-system errors are OSErrors; a runtime package
    # missing from the environment is an ImportError naming the extra that installs it.
    except (CLIError, ValueError, TypeError, OSError, ImportError) as err:
        return _fail(str(err), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _fail(message: str, status: int) -> int:
    one_line = " ".join(message.split())
    print(f"{PROG}: error: {one_line}", file=sys.stderr)
    return status
