"use strict";
// lte-sr view: the photo, zoomable from fit-to-window to MAX_ZOOM. The view is held in the
// pixels of one level (the photo upscaled by 2^(level/32), sizes from /info):
//     screen pixel = (level pixel - offset) * f
// While the user zooms, f drifts from 1 and the photo (scaled by the browser) and the
// level's tiles are stretched; once the view rests, f snaps to 1 and the offset to whole
// pixels, so each tile pixel lands on exactly one screen pixel. PIL bicubic tiles (fast)
// stand in until the LTE tiles arrive; with "Compare" they stay right of the divider.
(() => {
  const REST_MS = 150;        // the view "rests" this long after the last input
  const MAX_ZOOM = 64;        // CSS pixels per photo pixel
  const BUTTON_STEP = 2;      // zoom factor of the + and - buttons
  const KEPT_TILES = 400;     // decoded tiles kept in the page (least recently drawn go first)
  const INFO_POLL_MS = 300;   // how often the page asks whether the features are ready

  const canvas = document.getElementById("view");
  const ctx = canvas.getContext("2d");
  const statusLine = document.getElementById("status");
  const compareBox = document.getElementById("compare");
  const splitSlider = document.getElementById("split");
  const session = Math.random().toString(36).slice(2, 12);

  let info = null;            // /info
  let photo = null;           // the photo itself, the stand-in while tiles render
  let view = { level: 0, f: 1, ox: 0, oy: 0 };
  let gen = 0;                // view generation, raised each time the view rests
  let resting = false;
  let restTimer = null;
  let lastRenderMs = null;
  const tiles = new Map();    // "kind/level/x/y" -> ImageBitmap
  const inflight = new Map(); // same key -> AbortController

  const clamp = (v, lo, hi) => Math.min(Math.max(v, lo), hi);
  const dpr = () => window.devicePixelRatio || 1;
  const levelSize = (k) => info.levels[k];                      // [width, height]
  const levelScaleX = (k) => info.levels[k][0] / info.width;
  const levelScaleY = (k) => info.levels[k][1] / info.height;
  const zoom = () => (view.f * levelScaleX(view.level)) / dpr(); // CSS px per photo px
  const fitZoom = () => Math.min(canvas.clientWidth / info.width, canvas.clientHeight / info.height);
  // Below one screen pixel per photo pixel there is nothing to super-resolve: the photo shows.
  const showsTiles = () => view.level > 0 || view.f >= 2 ** (-0.5 / info.levelsPerOctave);

  function photoAt(px, py) {
    return [(px / view.f + view.ox) / levelScaleX(view.level),
            (py / view.f + view.oy) / levelScaleY(view.level)];
  }

  // Show photo point (ix, iy) at screen pixel (px, py) at `cssZoom`, on the nearest level.
  function setView(cssZoom, ix, iy, px, py) {
    const scale = clamp(cssZoom, Math.min(fitZoom(), 1), MAX_ZOOM) * dpr();
    const level = clamp(Math.round(info.levelsPerOctave * Math.log2(scale)), 0, info.levels.length - 1);
    const f = scale / levelScaleX(level);
    view = { level, f, ox: ix * levelScaleX(level) - px / f, oy: iy * levelScaleY(level) - py / f };
    keepPhotoInView();
    moved();
  }

  function zoomBy(factor, px = canvas.width / 2, py = canvas.height / 2) {
    const [ix, iy] = photoAt(px, py);
    setView(zoom() * factor, ix, iy, px, py);
  }

  function fit() {
    setView(fitZoom(), info.width / 2, info.height / 2, canvas.width / 2, canvas.height / 2);
  }

  // A photo smaller than the window is centred; a larger one cannot be dragged off it.
  function keepPhotoInView() {
    const [lw, lh] = levelSize(view.level);
    const vw = canvas.width / view.f, vh = canvas.height / view.f;
    view.ox = vw >= lw ? (lw - vw) / 2 : clamp(view.ox, 0, lw - vw);
    view.oy = vh >= lh ? (lh - vh) / 2 : clamp(view.oy, 0, lh - vh);
  }

  function moved() {
    resting = false;
    clearTimeout(restTimer);
    restTimer = setTimeout(rest, REST_MS);
    draw();
  }

  function rest() {
    if (showsTiles()) {
      const cx = view.ox + canvas.width / (2 * view.f), cy = view.oy + canvas.height / (2 * view.f);
      view.f = 1;
      view.ox = cx - canvas.width / 2;
      view.oy = cy - canvas.height / 2;
      keepPhotoInView();
      view.ox = Math.round(view.ox);
      view.oy = Math.round(view.oy);
    }
    resting = true;
    gen += 1;
    requestVisibleTiles();
    draw();
  }

  function visibleTiles() {
    const T = info.tile, [lw, lh] = levelSize(view.level);
    const x0 = Math.max(0, Math.floor(view.ox / T)), y0 = Math.max(0, Math.floor(view.oy / T));
    const x1 = Math.min(Math.ceil(lw / T), Math.ceil((view.ox + canvas.width / view.f) / T));
    const y1 = Math.min(Math.ceil(lh / T), Math.ceil((view.oy + canvas.height / view.f) / T));
    const cx = (view.ox + canvas.width / (2 * view.f)) / T, cy = (view.oy + canvas.height / (2 * view.f)) / T;
    const list = [];
    for (let y = y0; y < y1; y++) {
      for (let x = x0; x < x1; x++) list.push({ x, y, d: Math.hypot(x + 0.5 - cx, y + 0.5 - cy) });
    }
    return list.sort((a, b) => a.d - b.d); // the centre first
  }

  // Ask for the tiles of this view; requests of earlier views are cancelled (the server
  // also drops their queued work, see scheduler.py).
  function requestVisibleTiles() {
    for (const controller of inflight.values()) controller.abort();
    inflight.clear();
    if (!showsTiles() || info.state === "failed") return updateStatus();
    // Bicubic tiles first: they take milliseconds and stand in while LTE tiles render.
    for (const kind of ["bicubic", "lte"]) {
      for (const { x, y } of visibleTiles()) {
        const key = `${kind}/${view.level}/${x}/${y}`;
        if (!tiles.has(key)) fetchTile(key, kind, view.level, x, y);
      }
    }
    updateStatus();
  }

  async function fetchTile(key, kind, level, x, y) {
    const controller = new AbortController();
    inflight.set(key, controller);
    const url = `tile?kind=${kind}&level=${level}&x=${x}&y=${y}&session=${session}&gen=${gen}`;
    try {
      const response = await fetch(url, { signal: controller.signal });
      if (!response.ok) throw new Error(`${response.status} ${await response.text()}`);
      if (kind === "lte" && response.headers.has("X-Render-Ms")) {
        lastRenderMs = Number(response.headers.get("X-Render-Ms"));
      }
      const bitmap = await createImageBitmap(await response.blob(),
        { colorSpaceConversion: "none", premultiplyAlpha: "none" });
      keepTile(key, bitmap);
      draw();
    } catch (error) {
      if (error.name !== "AbortError" && !String(error.message).startsWith("409")) {
        console.warn(`tile ${key}: ${error.message}`);
      }
    } finally {
      if (inflight.get(key) === controller) inflight.delete(key);
      updateStatus();
    }
  }

  function keepTile(key, bitmap) {
    tiles.delete(key);
    tiles.set(key, bitmap);
    for (const [old, oldBitmap] of tiles) {
      if (tiles.size <= KEPT_TILES) break;
      tiles.delete(old);
      oldBitmap.close();
    }
  }

  function draw() {
    if (!info || !photo) return;
    ctx.fillStyle = "#1e1e1e";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const splitX = compareBox.checked ? Math.round(canvas.width * splitSlider.value / 100) : canvas.width;
    drawLayer(["bicubic", "lte"], 0, splitX);
    if (splitX < canvas.width) drawLayer(["bicubic"], splitX, canvas.width);
    placeOverlays(splitX);
    updateStatus();
  }

  // The photo scaled by the browser, then whatever tiles of `kinds` have arrived (later
  // kinds on top), in the columns xa..xb of the canvas.
  function drawLayer(kinds, xa, xb) {
    const { level, f, ox, oy } = view, [lw, lh] = levelSize(level), T = info.tile;
    ctx.save();
    ctx.beginPath();
    ctx.rect(xa, 0, xb - xa, canvas.height);
    ctx.clip();
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(photo, -ox * f, -oy * f, lw * f, lh * f);
    if (showsTiles()) {
      ctx.imageSmoothingEnabled = f !== 1; // at rest: a plain copy, pixel for pixel
      for (const kind of kinds) {
        for (const { x, y } of visibleTiles()) {
          const key = `${kind}/${level}/${x}/${y}`, bitmap = tiles.get(key);
          if (!bitmap) continue;
          tiles.delete(key); // most recently drawn last, so it is evicted last
          tiles.set(key, bitmap);
          ctx.drawImage(bitmap, (x * T - ox) * f, (y * T - oy) * f, bitmap.width * f, bitmap.height * f);
        }
      }
    }
    ctx.restore();
  }

  function placeOverlays(splitX) {
    const comparing = compareBox.checked;
    const divider = document.getElementById("divider");
    divider.hidden = !comparing;
    divider.style.left = `${splitX / dpr()}px`;
    document.getElementById("label-lte").hidden = !comparing;
    document.getElementById("label-bicubic").hidden = !comparing;
  }

  function updateStatus() {
    if (!info) return;
    const [lw, lh] = levelSize(view.level);
    const parts = [`zoom ${zoom().toFixed(2)}x`];
    if (showsTiles()) parts.push(`LTE ${levelScaleX(view.level).toFixed(3)}x (${lw}x${lh} px)`);
    else parts.push("photo's own pixels (below 1x)");
    parts.push(`model ${info.model}`, `device ${info.device}`);
    if (info.state === "encoding") parts.push("computing features...");
    if (info.state === "failed") parts.push(info.error);
    if (lastRenderMs !== null) parts.push(`last tile ${lastRenderMs.toFixed(0)} ms`);
    parts.push(`${inflight.size} tile(s) pending`);
    statusLine.textContent = parts.join(" \u00b7 ");
  }

  function resize() {
    const centre = info ? photoAt(canvas.width / 2, canvas.height / 2) : null;
    canvas.width = Math.round(canvas.clientWidth * dpr());
    canvas.height = Math.round(canvas.clientHeight * dpr());
    if (centre) setView(zoom(), centre[0], centre[1], canvas.width / 2, canvas.height / 2);
  }

  function saveView() {
    canvas.toBlob((blob) => {
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = `lte-view-${zoom().toFixed(2)}x.png`;
      link.click();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    }, "image/png");
  }

  function listen() {
    canvas.addEventListener("wheel", (event) => {
      event.preventDefault();
      // Trackpad pinches arrive as wheel events with ctrlKey set, in smaller steps.
      const lines = event.deltaMode === 1 ? 33 : 1;
      zoomBy(Math.exp(-event.deltaY * lines * (event.ctrlKey ? 0.01 : 0.002)),
             event.offsetX * dpr(), event.offsetY * dpr());
    }, { passive: false });
    listenPointers();
    document.getElementById("zoom-in").onclick = () => zoomBy(BUTTON_STEP);
    document.getElementById("zoom-out").onclick = () => zoomBy(1 / BUTTON_STEP);
    document.getElementById("fit").onclick = fit;
    document.getElementById("actual").onclick = () => zoomBy(1 / zoom());
    document.getElementById("save").onclick = saveView;
    compareBox.onchange = () => { splitSlider.disabled = !compareBox.checked; draw(); };
    splitSlider.oninput = draw;
    window.addEventListener("keydown", (event) => {
      const actions = { "+": () => zoomBy(BUTTON_STEP), "=": () => zoomBy(BUTTON_STEP),
                        "-": () => zoomBy(1 / BUTTON_STEP), "0": fit, "1": () => zoomBy(1 / zoom()) };
      if (actions[event.key] && event.target === document.body) actions[event.key]();
    });
    window.addEventListener("resize", resize);
  }

  // One pointer drags; two pointers pinch (touch screens).
  function listenPointers() {
    const pointers = new Map();
    canvas.addEventListener("pointerdown", (event) => {
      canvas.setPointerCapture(event.pointerId);
      pointers.set(event.pointerId, [event.offsetX * dpr(), event.offsetY * dpr()]);
      canvas.classList.add("dragging");
    });
    canvas.addEventListener("pointermove", (event) => {
      if (!pointers.has(event.pointerId)) return;
      const before = [...pointers.values()];
      pointers.set(event.pointerId, [event.offsetX * dpr(), event.offsetY * dpr()]);
      const after = [...pointers.values()];
      if (after.length === 1) {
        view.ox -= (after[0][0] - before[0][0]) / view.f;
        view.oy -= (after[0][1] - before[0][1]) / view.f;
        keepPhotoInView();
        moved();
      } else if (after.length === 2) {
        const spread = (p) => Math.hypot(p[0][0] - p[1][0], p[0][1] - p[1][1]);
        zoomBy(spread(after) / Math.max(spread(before), 1),
               (after[0][0] + after[1][0]) / 2, (after[0][1] + after[1][1]) / 2);
      }
    });
    const release = (event) => {
      pointers.delete(event.pointerId);
      if (pointers.size === 0) canvas.classList.remove("dragging");
    };
    canvas.addEventListener("pointerup", release);
    canvas.addEventListener("pointercancel", release);
  }

  // Until the features are ready, LTE tile requests wait on the server; the status says so.
  async function pollInfo() {
    const state = info.state;
    info = await (await fetch("info")).json();
    if (state !== info.state) updateStatus();
    if (info.state === "encoding") setTimeout(pollInfo, INFO_POLL_MS);
  }

  async function start() {
    info = await (await fetch("info")).json();
    photo = new Image();
    photo.src = "image";
    await photo.decode();
    canvas.width = Math.round(canvas.clientWidth * dpr());
    canvas.height = Math.round(canvas.clientHeight * dpr());
    listen();
    fit();
    if (info.state === "encoding") setTimeout(pollInfo, INFO_POLL_MS);
  }

  // For tests and the curious: the view in level pixels and what is still loading.
  window.lteViewer = {
    state: () => ({ ...view, size: info && levelSize(view.level), zoom: info && zoom(), resting,
                    gen, pending: inflight.size, lastRenderMs, features: info && info.state,
                    tilesShown: info ? showsTiles() : false }),
    zoomBy, fit,
    // Centre photo point (x, y) at `cssZoom` CSS pixels per photo pixel.
    show: (cssZoom, x, y) => setView(cssZoom, x, y, canvas.width / 2, canvas.height / 2),
  };

  start().catch((error) => { statusLine.textContent = `could not start: ${error.message}`; });
})();
