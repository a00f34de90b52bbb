"""``lte-sr view IMAGE``: zoom into a photo in the browser, every pixel rendered by LTE."""

from __future__ import annotations

import argparse
import sys
import webbrowser

from ..image_io.files import read_image, to_8bit_rgb
from ..viewer import start_viewer
from ..viewer.server import is_loopback
from .args import add_model_arguments, add_precision_argument

DEFAULT_HOST = "127.0.0.1"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``view`` subcommand to the ``lte-sr`` parser."""
    parser = subparsers.add_parser(
        "view",
        help="zoom into an image in the browser, rendered by LTE at any scale",
        description=(
            "Serve IMAGE on a local web page that zooms continuously from fit-to-window to 64x; "
            "what is on screen is rendered by LTE at the screen's pixel density, with PIL "
            "bicubic beside it for comparison. Ctrl-C stops the server."
        ),
    )
    parser.add_argument("image", metavar="IMAGE", help="the image to view")
    add_model_arguments(parser)
    add_precision_argument(parser)
    parser.add_argument(
        "--port", type=int, default=0, help="port to listen on (default: a free one)"
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default: {DEFAULT_HOST}, this machine only)",
    )
    parser.add_argument("--open", action="store_true", help="open the page in the default browser")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``lte-sr view``; returns the exit status (0 after Ctrl-C)."""
    image = to_8bit_rgb(read_image(args.image))
    server = start_viewer(
        image, args.model, args.device, args.host, args.port, precision=args.precision
    )
    if not is_loopback(args.host):
        print(
            f"lte-sr view: warning: listening on {args.host}, so other machines can reach this "
            "viewer and the image; use --host 127.0.0.1 to keep it on this machine",
            file=sys.stderr,
        )
    precision = server.renderer.features.precision
    print(
        f"lte-sr view: serving {args.image} at {server.url} in {precision} (Ctrl-C stops)",
        flush=True,
    )
    if args.open:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("lte-sr view: stopped", flush=True)
    finally:
        server.server_close()
    return 0
