"""Starting the viewer: the model, the renderer and the server for one image."""

from __future__ import annotations

import threading
from pathlib import Path

from PIL import Image

from ..inference import resolve_device
from ..upscale import resolve_model
from .features import DEFAULT_FEATURE_BYTES
from .renderer import TileRenderer
from .server import ViewerServer


def start_viewer(
    image: Image.Image,
    model_source: str | None,
    device: str,
    host: str,
    port: int,
    *,
    feature_bytes: int = DEFAULT_FEATURE_BYTES,
    precision: str = "auto",
    **server_options,
) -> ViewerServer:
    """A :class:`ViewerServer` for ``image`` listening at ``host:port``, its features being
    prepared in the background; ``server_options`` go to ViewerServer (workers, cache_bytes).
    ``ValueError``/``OSError`` for bad arguments."""
    if not 0 <= port <= 65535:
        raise ValueError(f"argument --port: expected 0-65535, got {port}")
    model = resolve_model(model_source)
    renderer = TileRenderer(image, model, resolve_device(device), feature_bytes, precision)
    model_name = Path(model_source).name if model_source else "bundled default.pth"
    try:
        server = ViewerServer(renderer, (host, port), model_name=model_name, **server_options)
    except OSError as error:
        raise OSError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None
    threading.Thread(target=renderer.prepare, name="prepare-features", daemon=True).start()
    return server
