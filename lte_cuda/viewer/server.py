"""The viewer's HTTP server (standard library ``http.server``): the page, the photo, and
its tiles, for one image only.

Routes (GET and HEAD only; nothing a request sends is written anywhere):
    /            the page (static/index.html); /viewer.js and /viewer.css beside it
    /info        JSON: image size, tile size, the output size of every level, model,
                 device, and whether the features are ready
    /image       the photo itself (PNG), drawn by the page as the stand-in while tiles render
    /tile?kind=lte|bicubic&level=K&x=X&y=Y[&session=S&gen=G]
                 one 256x256 tile (PNG); 400 with a message for a malformed or out-of-range
                 request, 409 when the page moved to a newer view before it was started
"""

from __future__ import annotations

import io
import ipaddress
import json
import socket
import time
from concurrent.futures import Future
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import urlsplit

from .renderer import TileRenderer
from .scheduler import DecodeScheduler, QueueFull, StaleRequest
from .tiles import LEVELS_PER_OCTAVE, TILE_SIZE, BadTileRequest, TileCache, TileRequest

STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/viewer.js": ("viewer.js", "text/javascript; charset=utf-8"),
    "/viewer.css": ("viewer.css", "text/css; charset=utf-8"),
}
DEFAULT_CACHE_BYTES = 64 << 20
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'",
    "Referrer-Policy": "no-referrer",
}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or "localhost") only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ViewerServer(ThreadingHTTPServer):
    """Serves one :class:`TileRenderer`'s image, tiles and page at ``(host, port)``."""

    daemon_threads = True

    def __init__(
        self,
        renderer: TileRenderer,
        address: tuple[str, int],
        *,
        model_name: str,
        workers: int = 1,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.renderer = renderer
        self.model_name = model_name
        self.cache = TileCache(cache_bytes)
        self.scheduler = DecodeScheduler(workers)
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, ViewerHandler)  # closes itself (server_close) if binding fails
        self.last_render_ms: float | None = None
        self.static = {
            route: ((resources.files(__package__) / "static" / name).read_bytes(), kind)
            for route, (name, kind) in STATIC_FILES.items()
        }
        buffer = io.BytesIO()
        renderer.image.save(buffer, format="PNG")
        self.photo_png = buffer.getvalue()
        host, port = self.server_address[:2]
        # Loopback only: refuse other Host names, so a web page cannot reach the viewer
        # through a DNS name it rebinds to 127.0.0.1.
        self.allowed_hosts = (
            {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]", host)}
            if is_loopback(host)
            else None
        )

    @property
    def url(self) -> str:
        """The page's address."""
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def info(self) -> dict:
        """What the page needs to lay out the tiles, and the status line."""
        renderer = self.renderer
        return {
            "width": renderer.image.width,
            "height": renderer.image.height,
            "tile": TILE_SIZE,
            "levelsPerOctave": LEVELS_PER_OCTAVE,
            "levels": [[w, h] for h, w in renderer.grid.sizes],
            "model": self.model_name,
            "device": str(renderer.device),
            "state": renderer.state,
            "error": renderer.prepare_error,
            "featureBytes": renderer.features.bytes,
            "lastRenderMs": self.last_render_ms,
        }

    def tile_png(self, request: TileRequest) -> Future:
        """A future of the tile's PNG: from the cache; for bicubic tiles (milliseconds)
        made at once; for LTE tiles decoded by the scheduler."""
        cached = self.cache.get(request.key)
        if cached is not None or request.key.kind == "bicubic":
            future: Future = Future()
            future.set_result(cached if cached is not None else self._render(request))
            return future
        return self.scheduler.submit(
            request.key, request.session, request.gen, lambda: self._render(request)
        )

    def _render(self, request: TileRequest) -> bytes:
        start = time.perf_counter()
        data = self.renderer.render_png(request.key)
        if request.key.kind == "lte":
            self.last_render_ms = (time.perf_counter() - start) * 1000.0
        self.cache.put(request.key, data)
        return data

    def server_close(self) -> None:
        """Close the socket and stop the decode workers."""
        self.scheduler.close()
        super().server_close()


class ViewerHandler(BaseHTTPRequestHandler):
    """Answers GET/HEAD for the routes in the module docstring; every other method gets 501."""

    server: ViewerServer
    server_version = "lte-sr-view"

    def do_HEAD(self) -> None:  # noqa: N802 (the name http.server calls)
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        if (
            self.server.allowed_hosts is not None
            and self.headers.get("Host") not in self.server.allowed_hosts
        ):
            self._send_text(HTTPStatus.FORBIDDEN, "unexpected Host header")
            return
        url = urlsplit(self.path)
        if url.path in self.server.static:
            body, kind = self.server.static[url.path]
            self._send(HTTPStatus.OK, body, kind)
        elif url.path == "/info":
            self._send(HTTPStatus.OK, json.dumps(self.server.info()).encode(), "application/json")
        elif url.path == "/image":
            self._send(HTTPStatus.OK, self.server.photo_png, "image/png")
        elif url.path == "/tile":
            self._send_tile(url.query)
        elif url.path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        else:
            self._send_text(HTTPStatus.NOT_FOUND, "not found; this server serves one image only")

    def _send_tile(self, query: str) -> None:
        try:
            request = self.server.renderer.grid.parse(query)
        except BadTileRequest as error:
            self._send_text(HTTPStatus.BAD_REQUEST, str(error))
            return
        try:
            data = self.server.tile_png(request).result()
        except StaleRequest as error:
            self._send_text(HTTPStatus.CONFLICT, str(error))
        except QueueFull as error:
            self._send_text(HTTPStatus.SERVICE_UNAVAILABLE, str(error))
        except (RuntimeError, ValueError, MemoryError) as error:
            self._send_text(HTTPStatus.INTERNAL_SERVER_ERROR, str(error))
        else:
            last = self.server.last_render_ms
            extra = {"X-Render-Ms": f"{last:.1f}"} if last is not None else {}
            self._send(HTTPStatus.OK, data, "image/png", extra)

    def _send_text(self, status: HTTPStatus, message: str) -> None:
        self._send(status, (message + "\n").encode(), "text/plain; charset=utf-8")

    def _send(self, status: HTTPStatus, body: bytes, kind: str, extra: dict | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")  # another image may be served here next
            for name, value in {**SECURITY_HEADERS, **(extra or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page cancelled the request (it moved on); nothing to answer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        """Quiet: a viewer session makes hundreds of requests."""
