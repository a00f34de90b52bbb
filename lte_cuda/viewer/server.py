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

Connections cost no thread until their request starts arriving (:class:`_ConnectionGate`):
at most :data:`MAX_HANDLER_THREADS` requests are served at once, the others wait their turn;
a connection silent for :data:`IDLE_TIMEOUT_S` is closed, and beyond
:data:`MAX_WAITING_CONNECTIONS` waiting ones the longest silent gets 503 and is closed.
"""

from __future__ import annotations

import io
import ipaddress
import json
import selectors
import socket
import threading
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
# A browser opens about six connections per host; a few pages at once stay under these.
MAX_HANDLER_THREADS = 32  # requests served at once, a thread each
MAX_WAITING_CONNECTIONS = 256  # connections whose request has not arrived (a socket each)
IDLE_TIMEOUT_S = 10.0  # a connection silent this long, before or within a request, is closed
BUSY_BODY = b"too many connections; retry\n"
BUSY_RESPONSE = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(BUSY_BODY), BUSY_BODY)
)
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
    request_queue_size = 128  # listen backlog: a burst of connections is accepted, not retried

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
        self.handler_slots = threading.BoundedSemaphore(MAX_HANDLER_THREADS)
        self.gate = _ConnectionGate(self)
        try:
            # Closes its socket (server_close) if binding fails.
            super().__init__(address, ViewerHandler)
        except BaseException:
            self.gate.close()
            raise
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

    def process_request(self, request: socket.socket, client_address: tuple) -> None:
        """Called for each accepted connection: it waits, without a thread, for its request."""
        self.gate.admit(request, client_address)

    def start_handler(self, request: socket.socket, client_address: tuple) -> None:
        """Serve one connection on a thread of its own (holding one of the handler slots)."""
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address: tuple) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.handler_slots.release()

    def server_close(self) -> None:
        """Close the socket and the waiting connections, and stop the decode workers."""
        self.gate.close()
        self.scheduler.close()
        super().server_close()


class _ConnectionGate:
    """Accepted connections wait here, watched by one thread, until their request starts
    arriving; then they get a handler thread once one of the server's handler slots is free.
    Silent ones are closed after :data:`IDLE_TIMEOUT_S`; beyond
    :data:`MAX_WAITING_CONNECTIONS` the longest silent one gets 503 and is closed."""

    def __init__(self, server: ViewerServer) -> None:
        self.server = server
        self.selector = selectors.DefaultSelector()
        self.wake_reader, self.wake_writer = socket.socketpair()
        self.wake_reader.setblocking(False)
        self.selector.register(self.wake_reader, selectors.EVENT_READ)
        self.lock = threading.Lock()
        self.arrived: list[tuple[socket.socket, tuple]] = []  # admitted, not yet watched
        self.deadlines: dict[socket.socket, tuple[tuple, float]] = {}  # watched: address, end
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="viewer-gate", daemon=True)
        self.thread.start()

    def admit(self, sock: socket.socket, address: tuple) -> None:
        """Take a new connection (from the accepting thread)."""
        with self.lock:
            full = self.closed or len(self.arrived) >= MAX_WAITING_CONNECTIONS
            if not full:
                self.arrived.append((sock, address))
        if full:
            _refuse(sock)
        else:
            self.wake_writer.send(b"\0")

    def close(self) -> None:
        """Stop watching and close every waiting connection."""
        with self.lock:
            self.closed = True
        self.wake_writer.send(b"\0")
        if self.thread is not threading.current_thread():
            self.thread.join()
        for sock in [s for s, _ in self.arrived] + list(self.deadlines):
            sock.close()
        self.selector.close()
        self.wake_reader.close()
        self.wake_writer.close()

    def _run(self) -> None:
        while not self.closed:
            soonest = min((end for _, end in self.deadlines.values()), default=None)
            wait = None if soonest is None else max(0.0, soonest - time.monotonic())
            for key, _ in self.selector.select(wait):
                if key.fileobj is self.wake_reader:
                    self._watch_arrivals()
                elif not self.closed:
                    self._hand_over(key.fileobj)
            now = time.monotonic()
            for sock in [s for s, (_, end) in self.deadlines.items() if end <= now]:
                self.selector.unregister(sock)
                del self.deadlines[sock]
                sock.close()

    def _watch_arrivals(self) -> None:
        while True:
            try:
                if not self.wake_reader.recv(4096):
                    break
            except BlockingIOError:
                break
        with self.lock:
            arrived, self.arrived = self.arrived, []
        for sock, address in arrived:
            if len(self.deadlines) >= MAX_WAITING_CONNECTIONS:
                # The longest silent one makes room (a flood of silent clients cannot lock a
                # page out): deadlines are in arrival order.
                oldest = next(iter(self.deadlines))
                self.selector.unregister(oldest)
                del self.deadlines[oldest]
                _refuse(oldest)
            self.deadlines[sock] = (address, time.monotonic() + IDLE_TIMEOUT_S)
            self.selector.register(sock, selectors.EVENT_READ)

    def _hand_over(self, sock: socket.socket) -> None:
        """A waiting connection sent something: serve it once a handler slot is free (the
        other waiting connections wait meanwhile)."""
        self.selector.unregister(sock)
        address, _ = self.deadlines.pop(sock)
        while not self.server.handler_slots.acquire(timeout=0.2):
            if self.closed:
                sock.close()
                return
        try:
            self.server.start_handler(sock, address)
        except BaseException:
            self.server.handler_slots.release()
            sock.close()
            raise


def _refuse(sock: socket.socket) -> None:
    """Answer 503 to a connection there is no room for, and close it."""
    try:
        sock.settimeout(0.5)
        sock.sendall(BUSY_RESPONSE)
    except OSError:
        pass  # it went away; nothing to answer
    finally:
        sock.close()


class ViewerHandler(BaseHTTPRequestHandler):
    """Answers GET/HEAD for the routes in the module docstring; every other method gets 501."""

    server: ViewerServer
    server_version = "lte-sr-view"
    timeout = IDLE_TIMEOUT_S  # a client that stalls within its request is dropped

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
