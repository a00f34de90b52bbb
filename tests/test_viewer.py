"""Tests of ``lte-sr view``: the tile API over HTTP (no browser), the scheduler and cache, the
command (Ctrl-C, warnings, errors), and the page in a real headless Chromium when one is
installed (Debian: ``apt-get install chromium chromium-driver``; ``pip install selenium``)."""

from __future__ import annotations

import concurrent.futures
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lte_cuda import upscale
from lte_cuda.cli import main
from lte_cuda.image_io.files import to_8bit_rgb
from lte_cuda.models import build_preset
from lte_cuda.upscale import resolve_model
from lte_cuda.viewer import server as server_module
from lte_cuda.viewer import start_viewer
from lte_cuda.viewer.features import BLOCK
from lte_cuda.viewer.renderer import TileRenderer
from lte_cuda.viewer.scheduler import DecodeScheduler, StaleRequest
from lte_cuda.viewer.tiles import TILE_SIZE, TileCache, TileGrid, TileKey

PHOTO = Path(__file__).resolve().parents[1] / "lte_cuda" / "assets" / "chelsea.png"


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A 40x30 crop of the bundled photo: a few tiles at every level, quick to upscale whole."""
    return Image.open(PHOTO).convert("RGB").crop((60, 50, 100, 80))


@pytest.fixture(scope="module")
def server(photo: Image.Image, checkpoint: Path):
    viewer = start_viewer(photo, str(checkpoint), "cpu", "127.0.0.1", 0, cache_bytes=1 << 20)
    thread = threading.Thread(target=viewer.serve_forever, daemon=True)
    thread.start()
    yield viewer
    viewer.shutdown()
    viewer.server_close()


def get(server, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, bytes]:
    """Status and body of a raw request for ``path`` (sent as written, nothing normalised)."""
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=120)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def tile(server, kind: str, level: int, x: int, y: int) -> np.ndarray:
    status, body = get(server, f"/tile?kind={kind}&level={level}&x={x}&y={y}")
    assert status == 200, body
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB")).astype(int)


@pytest.mark.parametrize("level, x, y", [(0, 0, 0), (64, 0, 0), (150, 1, 2), (150, 3, 3)])
def test_lte_tile_equals_the_crop_of_upscale(server, photo, checkpoint, level, x, y) -> None:
    out_w, out_h = get_info(server)["levels"][level]
    expected = np.asarray(
        upscale(photo, size=(out_w, out_h), model=str(checkpoint), device="cpu")
    ).astype(int)
    top, left = y * TILE_SIZE, x * TILE_SIZE
    got = tile(server, "lte", level, x, y)
    assert got.shape == expected[top : top + TILE_SIZE, left : left + TILE_SIZE].shape
    assert np.abs(got - expected[top : top + TILE_SIZE, left : left + TILE_SIZE]).max() <= 1


def test_blockwise_features_give_the_whole_images_tiles() -> None:
    """Tiles across feature blocks equal upscale's crop, also when every block but the
    last is evicted at once (then memory holds one block). The bundled model: a random
    one's features hardly change its output."""
    # 200x130. At 4x the first tile needs only the blocks of input columns 0:128, the second
    # those of 128:200 too, encoded alone: their context must come from the first ones' pixels.
    image = Image.open(PHOTO).convert("RGB").resize((200, 130), Image.Resampling.BICUBIC)
    tiles = [
        TileKey("lte", 64, 0, 0),
        TileKey("lte", 64, 2, 0),
        TileKey("lte", 64, 2, 1),
        TileKey("lte", 32, 1, 1),
    ]
    model = resolve_model(None)
    grid = TileGrid(image.height, image.width)
    expected = {
        level: np.asarray(
            upscale(image, size=grid.sizes[level][::-1], model=model, device="cpu")
        ).astype(int)
        for level in {key.level for key in tiles}
    }
    one_block = 2 * 128 * BLOCK * BLOCK * 4  # coef and freq, 128 channels, float32
    whole_image = 2 * 128 * image.width * image.height * 4
    for feature_bytes, bound in ((1 << 30, whole_image), (1, one_block)):
        renderer = TileRenderer(image, model, torch.device("cpu"), feature_bytes)
        renderer.prepare()
        for key in tiles:
            top, left, bottom, right = grid.box(key)
            got = renderer.render(key).astype(int)
            assert np.abs(got - expected[key.level][top:bottom, left:right]).max() <= 1, (
                feature_bytes,
                key,
            )
        assert renderer.features.bytes <= bound


def test_bf16_features_take_half_the_memory_and_give_the_fp32_tiles_within_2() -> None:
    """The viewer runs in the resolved precision: bf16 blocks (half the bytes), tiles within
    2/255 of fp32's (the rule "auto" is held to)."""
    image = Image.open(PHOTO).convert("RGB").resize((96, 64), Image.Resampling.BICUBIC)
    model = resolve_model(None)
    key = TileKey("lte", 32, 0, 0)
    renders = {}
    for precision in ("fp32", "bf16"):
        renderer = TileRenderer(image, model, torch.device("cpu"), precision=precision)
        renderer.prepare()
        renders[precision] = (renderer.render(key).astype(int), renderer.features.bytes)
    (fp32, fp32_bytes), (bf16, bf16_bytes) = renders["fp32"], renders["bf16"]
    # coef and freq in bf16; the blocks' normalised input (3 channels beside 2 x 128) stays fp32.
    assert bf16_bytes < 0.51 * fp32_bytes
    assert np.abs(bf16 - fp32).max() <= 2


def test_swinir_tiles_come_from_whole_image_features(photo) -> None:
    """SwinIR attends across the image: its features are not cut into blocks."""
    torch.manual_seed(0)
    swinir = {"img_size": 16, "embed_dim": 12, "depths": [2], "num_heads": [2], "window_size": 4}
    model = build_preset(
        "swinir-lte",
        swinir,
        hidden_dim=16,
        imnet_spec={"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16]}},
    ).eval()
    renderer = TileRenderer(photo, model, torch.device("cpu"))
    renderer.prepare()
    assert renderer.state == "ready" and not renderer.features.blockwise
    out_h, out_w = renderer.grid.sizes[40]
    expected = np.asarray(upscale(photo, size=(out_w, out_h), model=model, device="cpu")).astype(
        int
    )
    got = renderer.render(TileKey("lte", 40, 0, 0)).astype(int)
    assert np.abs(got - expected[:TILE_SIZE, :TILE_SIZE]).max() <= 1


def test_bicubic_tile_equals_the_crop_of_pil_bicubic(server, photo) -> None:
    out_w, out_h = get_info(server)["levels"][100]
    expected = np.asarray(photo.resize((out_w, out_h), Image.Resampling.BICUBIC)).astype(int)
    got = tile(server, "bicubic", 100, 1, 0)
    assert np.abs(got - expected[:TILE_SIZE, TILE_SIZE : 2 * TILE_SIZE]).max() <= 1


def get_info(server) -> dict:
    status, body = get(server, "/info")
    assert status == 200
    return json.loads(body)


def test_info_describes_the_image(server, photo) -> None:
    info = get_info(server)
    assert (info["width"], info["height"]) == photo.size
    assert info["levels"][0] == list(photo.size)
    assert info["levels"][32] == [2 * photo.width, 2 * photo.height]
    assert info["device"] == "cpu" and info["model"] == "tiny.pth"


@pytest.mark.parametrize(
    "query, message",
    [
        ("kind=lte&level=0&x=0", "missing parameter(s): y"),
        ("kind=nope&level=0&x=0&y=0", "kind must be one of"),
        ("kind=lte&level=-1&x=0&y=0", "level must be a non-negative integer, got '-1'"),
        ("kind=lte&level=1.5&x=0&y=0", "level must be a non-negative integer"),
        ("kind=lte&level=99999&x=0&y=0", "level must be at most"),
        ("kind=lte&level=0&x=1&y=0", "x must be at most 0 here, got 1"),
        ("kind=lte&level=0&x=0&y=0&path=/etc/passwd", "unknown parameter 'path'"),
        ("kind=lte&level=0&x=0&y=0&x=1", "parameter 'x' given twice"),
        ("kind=lte&level=0&x=0&y=0&session=../x", "session must be"),
        ("kind=lte&level=0&x=0&y=0&gen=abc", "gen must be a non-negative integer"),
        ("kind=lte&&level", "malformed query string"),
    ],
)
def test_bad_tile_requests_get_400_with_a_message(server, query, message) -> None:
    status, body = get(server, f"/tile?{query}")
    assert status == 400
    assert message in body.decode()


@pytest.mark.parametrize(
    "path",
    [
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/static/../../setup.py",
        "/lte_cuda/cli/__init__.py",
        "//etc/passwd",
        "/viewer.js/../../../etc/passwd",
    ],
)
def test_no_file_outside_the_page_is_served(server, path) -> None:
    status, body = get(server, path)
    assert status == 404 and b"root:" not in body


def test_the_image_route_serves_only_the_photo(server, photo) -> None:
    status, body = get(server, "/image?path=/etc/passwd")
    assert status == 200
    assert Image.open(io.BytesIO(body)).size == photo.size


def test_writes_and_foreign_hosts_are_refused(server, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for method in ("POST", "PUT", "DELETE"):
        assert get(server, "/tile?kind=lte&level=0&x=0&y=0", method)[0] == 501
    assert list(tmp_path.iterdir()) == []
    # A page on another site reaching the viewer through a rebound DNS name.
    assert get(server, "/info", headers={"Host": "attacker.example:80"})[0] == 403


def test_tile_cache_stays_within_its_bound(server) -> None:
    for x in range(4):
        for y in range(4):
            tile(server, "bicubic", 150, x, y)
    assert 0 < server.cache.bytes <= server.cache.max_bytes


def test_tile_cache_evicts_the_least_recently_used() -> None:
    cache = TileCache(max_bytes=30)
    keys = [TileKey("lte", 0, x, 0) for x in range(4)]
    for key in keys[:3]:
        cache.put(key, b"x" * 10)
    assert cache.get(keys[0]) is not None  # now the most recent
    cache.put(keys[3], b"x" * 10)
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is not None
    assert cache.bytes == 30 and len(cache) == 3
    cache.put(TileKey("lte", 0, 9, 9), b"x" * 31)  # larger than the whole cache: not kept
    assert cache.bytes == 30


def test_stale_requests_are_dropped_and_the_newest_view_goes_first() -> None:
    scheduler = DecodeScheduler(workers=1)
    release, ran = threading.Event(), []
    scheduler.submit("busy", "page", 1, release.wait)  # occupies the only worker
    while scheduler.queued():
        threading.Event().wait(0.01)
    stale = [
        scheduler.submit(("old", i), "page", 1, lambda i=i: ran.append(("old", i)))
        for i in range(3)
    ]
    kept = scheduler.submit(
        ("old", 0), "page", 2, lambda: ran.append("never: joins the queued job")
    )
    new = [
        scheduler.submit(("new", i), "page", 2, lambda i=i: ran.append(("new", i)))
        for i in range(2)
    ]
    other = scheduler.submit("other page", "other", 1, lambda: ran.append("other page"))
    release.set()
    for future in new + [kept, other]:
        future.result(timeout=30)
    for future in stale[1:]:
        with pytest.raises(StaleRequest):
            future.result(timeout=30)
    assert kept is stale[0]  # the same tile asked again by the newer view is decoded once
    assert ran == [("old", 0), ("new", 0), ("new", 1), "other page"]
    assert scheduler.dropped == 2
    scheduler.close()


def test_stale_tile_request_gets_409(server) -> None:
    release = threading.Event()
    server.scheduler.submit("blocker", "s1", 5, release.wait)  # occupies the only worker
    while server.scheduler.queued():
        threading.Event().wait(0.01)
    answers: dict[int, tuple[int, bytes]] = {}

    def ask(gen: int) -> None:
        answers[gen] = get(server, f"/tile?kind=lte&level={gen}&x=0&y=0&session=s1&gen={gen}")

    threads = [threading.Thread(target=ask, args=(5,))]
    threads[0].start()
    while server.scheduler.queued() < 1:
        threading.Event().wait(0.01)
    threads.append(threading.Thread(target=ask, args=(6,)))  # the page moved on
    threads[1].start()
    while server.scheduler.queued() < 2:
        threading.Event().wait(0.01)
    release.set()
    for thread in threads:
        thread.join(timeout=60)
    assert answers[5][0] == 409 and b"newer view" in answers[5][1]
    assert answers[6][0] == 200


def test_tile_grid_levels_and_edges() -> None:
    grid = TileGrid(300, 451)
    assert grid.sizes[0] == (300, 451) and grid.sizes[32] == (600, 902)
    assert grid.scale(grid.max_level) <= 128
    rows, columns = grid.tile_counts(32)
    assert (rows, columns) == (3, 4)
    assert grid.box(TileKey("lte", 32, 3, 2)) == (512, 768, 600, 902)


@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_view_command_serves_until_ctrl_c(tmp_path, photo, checkpoint, host, warned) -> None:
    image = tmp_path / "photo.png"
    photo.save(image)
    command = [
        sys.executable,
        "-m",
        "lte_cuda",
        "view",
        str(image),
        "--model",
        str(checkpoint),
        "--device",
        "cpu",
        "--host",
        host,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        match = re.search(r"http://[^:]+:(\d+)/", line)
        assert match, line + process.stderr.read()
        connection = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=60)
        connection.request("GET", "/tile?kind=lte&level=3&x=0&y=0")
        assert connection.getresponse().status == 200
        connection.close()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0 and "stopped" in out
    assert "Traceback" not in err
    assert ("warning: listening on 0.0.0.0" in err) == warned


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing.png"], "missing.png: no such file"),
        (["PHOTO", "--port", "70000"], "argument --port: expected 0-65535, got 70000"),
        (["PHOTO", "--device", "tpu"], "device must be"),
        (["PHOTO", "--host", "no.such.host.invalid"], "cannot listen on no.such.host.invalid"),
    ],
)
def test_view_command_errors_are_one_line(
    tmp_path, checkpoint, capsys, monkeypatch, argv, message
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = [str(PHOTO) if a == "PHOTO" else a for a in argv]
    assert main(["view", *argv, "--model", str(checkpoint)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lte-sr: error: ") and message in err[0], err


def test_16_bit_and_gray_images_are_shown_as_8_bit_rgb() -> None:
    deep = np.array([[0, 257, 65535]], dtype=np.uint16)
    assert np.asarray(to_8bit_rgb(deep)).tolist() == [[[0, 0, 0], [1, 1, 1], [255, 255, 255]]]
    colour = np.zeros((1, 1, 4), dtype=np.uint16) + np.array(
        [65535, 0, 514, 65535], dtype=np.uint16
    )
    assert np.asarray(to_8bit_rgb(colour)).tolist() == [[[255, 0, 2]]]
    assert to_8bit_rgb(Image.new("LA", (2, 1), (7, 100))).getpixel((0, 0)) == (7, 7, 7)


# --- the page in a real browser ----------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
except ImportError:
    webdriver = None
BROWSER_MISSING = (
    "needs selenium (pip install selenium)"
    if webdriver is None
    else "needs Chromium and its driver (apt-get install chromium chromium-driver)"
    if not (CHROMIUM and CHROMEDRIVER)
    else None
)
needs_browser = pytest.mark.skipif(BROWSER_MISSING is not None, reason=str(BROWSER_MISSING))
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--force-color-profile=srgb",
)


def open_browser(profile: Path, device_pixel_ratio: int, window: str):
    """Headless Chromium with a fresh profile; downloads go to ``profile / "downloads"``."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + (
        f"--user-data-dir={profile}",
        f"--window-size={window}",
        f"--force-device-scale-factor={device_pixel_ratio}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    downloads = {"behavior": "allow", "downloadPath": str(profile / "downloads")}
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", downloads)
    return driver


@pytest.fixture
def serve(tmp_path: Path):
    """Starts viewers of given photos (bundled model, CPU) and a browser; stops them after."""
    opened = []

    def start(image: Image.Image, device_pixel_ratio: int = 1, window: str = "1000,700"):
        viewer = start_viewer(image, None, "cpu", "127.0.0.1", 0)
        threading.Thread(target=viewer.serve_forever, daemon=True).start()
        opened.append(viewer)
        browser = open_browser(tmp_path / "profile", device_pixel_ratio, window)
        opened.append(browser)
        browser.get(viewer.url)
        return browser

    yield start
    for thing in reversed(opened):
        if hasattr(thing, "quit"):
            thing.quit()
        else:
            thing.shutdown()
            thing.server_close()
    if os.environ.get("LTE_VIEWER_SCREENSHOTS"):  # to look at them
        shutil.copytree(
            tmp_path,
            os.environ["LTE_VIEWER_SCREENSHOTS"],
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("profile"),
        )


def wait_for_tiles(driver) -> dict:
    """The page's view state once it rests with every tile it asked for drawn."""
    for _ in range(3000):
        state = driver.execute_script("return window.lteViewer && window.lteViewer.state()")
        if state and state["resting"] and state["pending"] == 0 and state["features"] == "ready":
            return state
        threading.Event().wait(0.1)
    raise AssertionError(f"the page did not settle: {state}")


def screenshot(driver, path: Path) -> np.ndarray:
    """The canvas as shown on screen, in device pixels (int RGB); the whole page saved to ``path``."""
    driver.save_screenshot(str(path))
    left, top, width, height, ratio = driver.execute_script(
        "const r = document.getElementById('view').getBoundingClientRect();"
        "return [r.left, r.top, r.width, r.height, window.devicePixelRatio];"
    )
    left, top, width, height = (round(v * ratio) for v in (left, top, width, height))
    return np.asarray(Image.open(path).convert("RGB"))[
        top : top + height, left : left + width
    ].astype(int)


def assert_shows_upscale(shown: np.ndarray, image: Image.Image, state: dict, filled: bool) -> None:
    """Where the photo is on screen, ``shown`` is lte_cuda.upscale at the page's level (where
    the view rests, screen pixel (row, col) is level pixel (oy + row, ox + col))."""
    out_w, out_h = state["size"]
    expected = np.asarray(upscale(image, size=(out_w, out_h), device="cpu")).astype(int)
    height, width = shown.shape[:2]
    rows = slice(max(-state["oy"], 0), min(out_h - state["oy"], height))
    cols = slice(max(-state["ox"], 0), min(out_w - state["ox"], width))
    assert (rows.stop - rows.start, cols.stop - cols.start) == (
        (height, width) if filled else (min(out_h, height), min(out_w, width))
    )
    on_screen = shown[rows, cols]
    oy, ox = state["oy"], state["ox"]
    region = expected[rows.start + oy : rows.stop + oy, cols.start + ox : cols.stop + ox]
    assert np.abs(on_screen - region).max() <= 1


@pytest.mark.slow
@needs_browser
def test_page_in_a_real_browser(serve, photo, tmp_path) -> None:
    small = photo.crop((0, 0, 32, 24))  # small enough to upscale whole at a deep zoom
    browser = serve(small)
    wait_for_tiles(browser)
    assert screenshot(browser, tmp_path / "fit.png").std() > 20, "the canvas looks blank"

    canvas = browser.find_element("id", "view")
    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, -300).perform()
    state = wait_for_tiles(browser)
    assert state["zoom"] > 32 and state["f"] == 1
    shown = screenshot(browser, tmp_path / "deep.png")
    assert_shows_upscale(shown, small, state, filled=True)

    browser.find_element("id", "save").click()
    saved = tmp_path / "profile" / "downloads" / f"lte-view-{state['zoom']:.2f}x.png"
    for _ in range(300):
        if saved.exists():
            break
        threading.Event().wait(0.1)
    assert np.array_equal(np.asarray(Image.open(saved).convert("RGB")), shown), (
        "Save view != the screen"
    )

    ActionChains(browser).drag_and_drop_by_offset(canvas, 60, 40).perform()
    dragged = wait_for_tiles(browser)
    assert (state["ox"] - dragged["ox"], state["oy"] - dragged["oy"]) == (60, 40)

    browser.find_element("id", "zoom-in").click()
    deeper = wait_for_tiles(browser)
    assert deeper["zoom"] > state["zoom"] * 1.4
    lte_view = screenshot(browser, tmp_path / "deeper.png")
    assert lte_view.std() > 10

    browser.find_element("id", "compare").click()
    wait_for_tiles(browser)
    compared = screenshot(browser, tmp_path / "compare.png")
    half, below_labels = compared.shape[1] // 2, 40
    right, left = np.s_[below_labels:, half + 5 :], np.s_[below_labels:, : half - 5]
    assert np.abs(compared[right] - lte_view[right]).mean() > 1, "the bicubic side looks like LTE"
    assert np.abs(compared[left] - lte_view[left]).max() == 0, "the LTE side changed"

    status = browser.execute_async_script(
        "const done = arguments[0];"
        "fetch('tile?kind=lte&level=100000&x=0&y=0').then(r => r.text().then(t => done([r.status, t])));"
    )
    assert status[0] == 400 and "level must be at most" in status[1]


@pytest.mark.slow
@needs_browser
def test_page_renders_at_the_screen_pixel_density(serve, photo, tmp_path) -> None:
    small = photo.crop((0, 0, 32, 24))
    browser = serve(small, device_pixel_ratio=2, window="500,400")
    state = wait_for_tiles(browser)
    shown = screenshot(browser, tmp_path / "fit-dpr2.png")
    canvas_css_width = browser.execute_script("return document.getElementById('view').clientWidth")
    assert shown.shape[1] == 2 * canvas_css_width
    # Two LTE pixels per CSS pixel: the level is twice the CSS zoom.
    assert state["size"][0] / small.width == pytest.approx(2 * state["zoom"], rel=1e-6)
    assert_shows_upscale(shown, small, state, filled=False)


# ----------------------------------------------------------------------------- slow clients


def rss_bytes() -> int:
    """This process's resident memory now (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def connect(server, count: int, send: bytes = b"") -> list[socket.socket]:
    clients = [socket.create_connection(server.server_address[:2], timeout=5) for _ in range(count)]
    for client in clients:
        client.sendall(send)
    return clients


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc for memory")
def test_many_silent_clients_hold_no_threads_and_the_page_still_loads(server) -> None:
    get(server, "/info")  # the server's own threads are running
    threads, memory = threading.active_count(), rss_bytes()
    clients = connect(server, 200)  # connected, sending nothing (a slow-loris attack)
    try:
        threading.Event().wait(0.5)
        assert threading.active_count() <= threads + 1  # no thread per silent connection
        assert get(server, "/info")[0] == 200
        assert get(server, "/tile?kind=bicubic&level=0&x=0&y=0")[0] == 200
        assert rss_bytes() - memory < 20 * 2**20
    finally:
        for client in clients:
            client.close()


def test_stalled_requests_are_capped_and_time_out(server, monkeypatch) -> None:
    monkeypatch.setattr(server_module, "IDLE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(server_module.ViewerHandler, "timeout", 1.0)
    threads = threading.active_count()
    # Requests that start and stall: each holds a handler thread, up to the cap.
    stalled = connect(server, server_module.MAX_HANDLER_THREADS + 20, b"GET /info HTTP/1.0\r\n")
    try:
        threading.Event().wait(0.5)
        assert threading.active_count() <= threads + server_module.MAX_HANDLER_THREADS
        # A page's six connections at once: they wait for slots as the stalled ones time out.
        paths = [f"/tile?kind=bicubic&level={level}&x=0&y=0" for level in range(5)] + ["/info"]
        with concurrent.futures.ThreadPoolExecutor(len(paths)) as pool:
            assert [status for status, _ in pool.map(lambda p: get(server, p), paths)] == [200] * 6
        for client in stalled:
            assert client.recv(100) == b""  # closed by the server, no answer
    finally:
        for client in stalled:
            client.close()


def test_a_flood_of_silent_clients_cannot_lock_a_page_out(server, monkeypatch) -> None:
    monkeypatch.setattr(server_module, "MAX_WAITING_CONNECTIONS", 10)
    silent = connect(server, 10)
    try:
        threading.Event().wait(0.3)
        silent += connect(server, 1)
        # The longest silent connection made room for the new one.
        assert silent[0].recv(200).startswith(b"HTTP/1.0 503 Service Unavailable\r\n")
        assert get(server, "/info")[0] == 200  # a page's request gets in, the room full
    finally:
        for client in silent:
            client.close()
