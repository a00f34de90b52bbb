"""Benchmark of ``lte-sr view``: how soon the page shows LTE, how fast further tiles come,
and whether the server's memory stays bounded whatever the zoom.

The server runs in this process (as ``lte-sr view`` runs it) on a photo of about
``--megapixels`` (the bundled photo lte_cuda/assets/chelsea.png, resized with PIL bicubic;
the pixels do not change the timing) with the bundled model. A client does what the page does over HTTP:

1. First view: from the moment the server would print its URL (model loaded, socket bound,
   features starting in the background) it loads the page, /info and /image, then asks for
   the tiles of the fit-to-window view of a ``--viewport`` window, six at a time as a
   browser does. Printed: time to the first LTE tile and to all of them (features included).
2. Further tiles: ``--tiles`` tiles near the centre of deeper levels (2x .. 32x), one at a
   time, none cached: the time of each request (decode + PNG + HTTP) and the server's own
   decode time (X-Render-Ms).
3. Memory: rounds of tiles over many levels with a ``--cache-mb`` cache; after each round the
   process's resident memory (VmRSS) and the cache's bytes. Bounded means VmRSS stops
   growing once the cache is full, however many levels were visited.

    python benchmarks/bench_viewer.py                      # 1 MP, CPU
    python benchmarks/bench_viewer.py --device cuda        # the same on a GPU
    python benchmarks/bench_viewer.py --megapixels 0.1     # a quick smoke run
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from lte_cuda.demo import DEMO_PHOTO
from lte_cuda.viewer import start_viewer
from lte_cuda.viewer.tiles import LEVELS_PER_OCTAVE, TILE_SIZE

if not __package__:
    # Run as a file: the repository root holds the benchmarks package.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.machine import cpu_line, require_fused  # noqa: E402

TARGET_FIRST_VIEW_S = 1.5
TARGET_TILE_S = 0.25
BROWSER_CONNECTIONS = 6  # Chromium's parallel connections per host
PAGE_BARS_PX = 60  # the page's toolbar and status line
DEEPER_SCALES = (2, 4, 8, 16, 32)
MIB = 1 << 20


def make_photo(megapixels: float) -> Image.Image:
    """The bundled photo (160x150) resized to about ``megapixels`` (the model's work per
    pixel does not depend on the pixels)."""
    with Image.open(DEMO_PHOTO) as photo:
        photo = photo.convert("RGB")
    factor = math.sqrt(megapixels * 1e6 / (photo.width * photo.height))
    return photo.resize(
        (round(photo.width * factor), round(photo.height * factor)), Image.Resampling.BICUBIC
    )


def fetch(port: int, path: str) -> tuple[int, bytes, float]:
    """Status, body and the server's X-Render-Ms header (nan if absent) of GET ``path``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        return response.status, body, float(response.getheader("X-Render-Ms") or "nan")
    finally:
        connection.close()


def first_view_tiles(info: dict, viewport: tuple[int, int]) -> tuple[int, list[tuple[int, int]]]:
    """The level and tiles (centre first) of the page's fit-to-window view, as viewer.js picks them."""
    width, height = viewport[0], viewport[1] - PAGE_BARS_PX
    zoom = min(width / info["width"], height / info["height"])
    level = min(max(round(LEVELS_PER_OCTAVE * math.log2(zoom)), 0), len(info["levels"]) - 1)
    out_w, out_h = info["levels"][level]
    # At fit the whole photo is visible: every tile of the level.
    tiles = [(x, y) for y in range(-(-out_h // TILE_SIZE)) for x in range(-(-out_w // TILE_SIZE))]
    centre = (out_w / TILE_SIZE / 2, out_h / TILE_SIZE / 2)
    tiles.sort(key=lambda t: math.hypot(t[0] + 0.5 - centre[0], t[1] + 0.5 - centre[1]))
    return level, tiles


def measure_first_view(port: int, started: float, viewport: tuple[int, int]) -> dict:
    """Seconds from ``started`` to the first LTE tile and to the whole first view."""
    for path in ("/", "/viewer.js", "/viewer.css", "/image"):
        assert fetch(port, path)[0] == 200, path
    info = json.loads(fetch(port, "/info")[1])
    level, tiles = first_view_tiles(info, viewport)
    arrivals: list[float] = []
    lock = threading.Lock()

    def get_tile(tile: tuple[int, int]) -> None:
        status, body, _ = fetch(port, f"/tile?kind=lte&level={level}&x={tile[0]}&y={tile[1]}")
        assert status == 200, body
        with lock:
            arrivals.append(time.perf_counter() - started)

    with ThreadPoolExecutor(BROWSER_CONNECTIONS) as pool:
        list(pool.map(get_tile, tiles))
    return {
        "level": level,
        "scale": info["levels"][level][0] / info["width"],
        "tiles": len(tiles),
        "first": min(arrivals),
        "all": max(arrivals),
    }


def measure_further_tiles(port: int, info: dict, count: int) -> tuple[list[float], list[float]]:
    """Request and server decode times (s) of ``count`` uncached tiles at deeper levels."""
    requests, decodes = [], []
    for n in range(count):
        scale = DEEPER_SCALES[n % len(DEEPER_SCALES)]
        level = min(round(LEVELS_PER_OCTAVE * math.log2(scale)), len(info["levels"]) - 1)
        out_w, out_h = info["levels"][level]
        x = out_w // TILE_SIZE // 2 + n // len(DEEPER_SCALES)
        y = out_h // TILE_SIZE // 2
        start = time.perf_counter()
        status, body, render_ms = fetch(port, f"/tile?kind=lte&level={level}&x={x}&y={y}")
        assert status == 200, body
        requests.append(time.perf_counter() - start)
        decodes.append(render_ms / 1000.0)
    return requests, decodes


def resident_mib() -> float:
    """This process's resident memory (VmRSS), MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure_memory(
    server, info: dict, rounds: int, tiles_per_round: int
) -> list[tuple[float, int, int]]:
    """(VmRSS MiB, tile cache bytes, feature bytes) after each round of uncached tiles spread over all levels."""
    port = server.server_address[1]
    levels = len(info["levels"])
    samples = []
    for r in range(rounds):
        for n in range(tiles_per_round):
            level = (n * 37 + r * 11) % levels  # a spread of levels, different every round
            out_w, out_h = info["levels"][level]
            x, y = (n * 7 + r) % -(-out_w // TILE_SIZE), (n * 3 + r) % -(-out_h // TILE_SIZE)
            status, body, _ = fetch(port, f"/tile?kind=lte&level={level}&x={x}&y={y}")
            assert status == 200, body
        samples.append((resident_mib(), server.cache.bytes, server.renderer.features.bytes))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megapixels", type=float, default=1.0, help="photo size (default 1.0)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument(
        "--viewport", default="1920x1080", help="browser window WxH (default 1920x1080)"
    )
    parser.add_argument("--tiles", type=int, default=10, help="further tiles timed (default 10)")
    parser.add_argument(
        "--cache-mb",
        type=float,
        default=2.0,
        help="tile cache size; small, so the memory rounds overflow it (default 2)",
    )
    parser.add_argument(
        "--feature-mb", type=float, default=2048, help="feature block memory (default 2048)"
    )
    parser.add_argument("--rounds", type=int, default=4, help="memory rounds (default 4)")
    args = parser.parse_args()
    require_fused("bench_viewer")
    print(cpu_line())
    viewport = tuple(int(v) for v in args.viewport.lower().split("x"))

    photo = make_photo(args.megapixels)
    print(
        f"photo {photo.width}x{photo.height} ({photo.width * photo.height / 1e6:.2f} MP), "
        f"bundled model, device {args.device}, viewport {viewport[0]}x{viewport[1]}"
    )
    server = start_viewer(
        photo,
        None,
        args.device,
        "127.0.0.1",
        0,
        cache_bytes=int(args.cache_mb * MIB),
        feature_bytes=int(args.feature_mb * MIB),
    )
    started = time.perf_counter()  # where `lte-sr view` prints the URL
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        first = measure_first_view(port, started, viewport)
        features = server.renderer.features
        print(
            f"features: {'per block, by the tiles that need them' if features.blockwise else 'whole image'}; "
            f"{features.bytes / MIB:.0f} MiB held after the first view"
        )
        print(
            f"first view: level {first['level']} ({first['scale']:.3f}x), {first['tiles']} tiles; "
            f"first LTE tile {first['first']:.2f} s, all {first['all']:.2f} s after the URL "
            f"(target < {TARGET_FIRST_VIEW_S} s)"
        )
        info = json.loads(fetch(port, "/info")[1])
        requests, decodes = measure_further_tiles(port, info, args.tiles)
        print(
            f"further 256x256 LTE tiles at {', '.join(f'{s}x' for s in DEEPER_SCALES)} ({len(requests)}): "
            f"request median {statistics.median(requests):.3f} s, max {max(requests):.3f} s; "
            f"decode median {statistics.median(decodes):.3f} s (target <= {TARGET_TILE_S} s)"
        )
        for r, (rss, cached, feature_bytes) in enumerate(
            measure_memory(server, info, args.rounds, 12)
        ):
            print(
                f"memory after round {r + 1} ({12 * (r + 1)} more tiles over all levels): "
                f"VmRSS {rss:.0f} MiB, tile cache {cached / MIB:.2f} MiB of {args.cache_mb:g}, "
                f"features {feature_bytes / MIB:.0f} MiB of {args.feature_mb:g}"
            )
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
