"""Large images in bounded memory, and the small case's time against an older checkout.

Cases (the bundled default model, CPU, uint8 RGB images made by tiling and mirroring a
scikit-image photo, so they are textured everywhere):

- ``photo``: 4000x3000 to x2 (8000x6000);
- ``scan``: 10000x10000 to x1.5 (15000x15000);
- ``small``: 128x128 to x4 (512x512), timed here and, with ``--baseline DIR``, in a checkout
  of an older commit (imported from DIR with PYTHONPATH; it needs the built extension and
  _build_info.py copied in: the C++ sources must be the same), alternating runs.

Every run is a fresh subprocess. A large case runs, by default, what :func:`lte_cuda.upscale`
runs for a uint8 RGB array (:func:`lte_cuda.inference.upscale_into`) into an output array
allocated and touched before the run, so the peak resident memory (VmHWM) minus the output's
size is the working set: Python, torch, the model, the input image and the tiles.
``--regions N`` stops it after N regions (tiles) of the input (the peak is reached in the first
few; the time is extrapolated). With ``--cli`` the case is a PNG file instead, upscaled by
``python -m lte_cuda upscale IN OUT --scale S`` (the ``lte-sr`` command) as a user runs it:
its peak is the command's whole peak resident size (reading, decoding, the model, writing the
PNG) minus the output image's size; the output's top-left corner is then checked against
:func:`lte_cuda.upscale` of the input's corner. Prints one line per case.

    nice -n 10 python benchmarks/bench_large.py --case photo --regions 24
    nice -n 10 python benchmarks/bench_large.py --case scan --cli
    nice -n 10 python benchmarks/bench_large.py --case small --repeats 5 --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

if not __package__:
    # Run as a file: the repository root holds the benchmarks package.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.machine import cpu_line, require_fused  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

CASES = {"photo": ((3000, 4000), 2.0), "scan": ((10000, 10000), 1.5)}

# The child for a large case: argv = height width scale max_regions.
LARGE_CHILD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np, torch
    from benchmarks.bench_large import textured_image
    from lte_cuda.image_io.convert import to_pixels
    from lte_cuda.inference import settings_for, upscale_into
    from lte_cuda.upscale import output_size, resolve_model, upscale

    def status(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

    class Stop(Exception):
        pass

    height, width, scale, max_regions = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    image = textured_image(height, width)
    model = resolve_model(None)
    # Correctness first: a crop streamed in a tiny budget equals the crop decoded whole.
    crop = image[:96, :96]
    whole = upscale(crop, scale, model=model, device="cpu")
    streamed = upscale(crop, scale, model=model, device="cpu", tile_size=40, memory_budget=1000)
    assert np.abs(whole.astype(int) - streamed).max() <= 1, "streaming differs from the whole image"

    out_h, out_w = output_size(height, width, scale)
    out = np.full((out_h, out_w, 3), 1, dtype=np.uint8)  # touched: resident before the run
    dest = torch.from_numpy(out).permute(2, 0, 1)
    source = to_pixels(image).tensor[0]
    done = {"regions": 0, "total": 0}

    def progress(regions, total):
        done.update(regions=regions, total=total)
        if regions >= max_regions > 0:
            raise Stop

    settings = settings_for("cpu", progress=progress)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    start = time.perf_counter()
    cpu = time.process_time()
    try:
        upscale_into(model, source, dest, settings)
    except Stop:
        pass
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({
        "input": [height, width], "output": [out_h, out_w], "budget": settings.budget,
        "regions": done["regions"], "total_regions": done["total"],
        "seconds": seconds, "cpu_seconds": cpu_seconds,
        "peak_rss": status("VmHWM"), "rss_before": before, "output_bytes": out.nbytes,
        "input_bytes": image.nbytes,
    }))
    """
)

# Writes a case's input as a PNG file: argv = height width path.
INPUT_FILE_CHILD = textwrap.dedent(
    """
    import sys
    from benchmarks.bench_large import textured_image
    from lte_cuda.image_io.files import write_image

    write_image(textured_image(int(sys.argv[1]), int(sys.argv[2])), sys.argv[3])
    """
)

# Compares the output file's top-left corner with lte_cuda.upscale of the input's corner:
# argv = input output scale. Both grids put output pixel i at input (i + 0.5) / scale.
CORNER_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from PIL import Image
    from lte_cuda import upscale

    Image.MAX_IMAGE_PIXELS = None  # the output is ours, and larger than Pillow's guard
    scale, side = float(sys.argv[3]), 200
    with Image.open(sys.argv[1]) as image:
        corner = np.asarray(image.crop((0, 0, side, side)))
    expected = upscale(corner, scale, device="cpu")
    keep = int((side - 64) * scale)  # beyond the crop's own borders' reach
    with Image.open(sys.argv[2]) as out:
        size = out.size
        got = np.asarray(out.crop((0, 0, keep, keep)))
    diff = np.abs(got.astype(int) - expected[:keep, :keep]).max()
    print(json.dumps({"size": size, "corner": keep, "max_diff": int(diff)}))
    """
)

SMALL_CHILD = textwrap.dedent(
    """
    import json, sys, time
    import torch
    import lte_cuda
    assert lte_cuda.__file__.startswith(sys.argv[1]), lte_cuda.__file__  # the checkout asked for
    from lte_cuda.upscale import resolve_model

    model = resolve_model(None).eval()
    torch.manual_seed(0)
    rgb = torch.rand(1, 3, 128, 128)
    lte_cuda.upscale(rgb, size=(512, 512), model=model, device="cpu")  # warm up
    start, cpu = time.perf_counter(), time.process_time()
    lte_cuda.upscale(rgb, size=(512, 512), model=model, device="cpu")
    print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}))
    """
)


def textured_image(height: int, width: int) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 image of mirrored scikit-image photos: no seams,
    texture everywhere."""
    import skimage.data

    photo = skimage.data.astronaut()  # 512 x 512 x 3
    cell = np.concatenate([photo, photo[:, ::-1]], 1)
    cell = np.concatenate([cell, cell[::-1]], 0)
    reps = (-(-height // cell.shape[0]), -(-width // cell.shape[1]), 1)
    return np.ascontiguousarray(np.tile(cell, reps)[:height, :width])


def run_child(
    code: str, args: list[str], pythonpath: str | None = None, exact_peak: bool = True
) -> dict | None:
    """Run ``code`` in a fresh interpreter (in ``pythonpath``, which it imports from, if
    given) and return the JSON it prints last."""
    env = dict(os.environ)
    if exact_peak:  # freed blocks go back to the system at once: the peak is what was live
        env["MALLOC_MMAP_THRESHOLD_"] = str(64 << 10)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=pythonpath or REPO,
    )
    if result.returncode:
        raise SystemExit(f"benchmark child failed:\n{result.stderr[-3000:]}")
    lines = result.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else None


def large_case(name: str, max_regions: int) -> None:
    (height, width), scale = CASES[name]
    r = run_child(LARGE_CHILD, [str(height), str(width), str(scale), str(max_regions)])
    gib = 1 << 30
    per_region = r["seconds"] / max(r["regions"], 1)
    print(
        f"{name}: {width}x{height} -> {r['output'][1]}x{r['output'][0]} (x{scale}), budget "
        f"{r['budget'] / gib:.2f} GiB, {r['regions']}/{r['total_regions']} regions in "
        f"{r['seconds']:.1f} s ({r['cpu_seconds']:.1f} s CPU; whole run ~{per_region * r['total_regions'] / 60:.0f} min "
        f"at this rate); peak RSS {r['peak_rss'] / gib:.2f} GiB, minus the output "
        f"({r['output_bytes'] / gib:.2f} GiB): {(r['peak_rss'] - r['output_bytes']) / gib:.2f} GiB "
        f"(input image {r['input_bytes'] / gib:.2f} GiB of it; peak above the state before the "
        f"run {(r['peak_rss'] - r['rss_before']) / gib:.2f} GiB)",
        flush=True,
    )


def cli_case(name: str) -> None:
    """The case as a PNG file through ``python -m lte_cuda upscale``; its peak from wait4."""
    (height, width), scale = CASES[name]
    gib = 1 << 30
    with tempfile.TemporaryDirectory(prefix="bench-large-") as folder:
        source, target = Path(folder) / "in.png", Path(folder) / "out.png"
        run_child(INPUT_FILE_CHILD, [str(height), str(width), str(source)])
        command = [sys.executable, "-m", "lte_cuda", "upscale", str(source), str(target)]
        command += ["--scale", str(scale), "--device", "cpu"]
        start = time.perf_counter()
        with open(Path(folder) / "stderr", "w+") as errors:
            child = subprocess.Popen(command, stderr=errors, cwd=REPO)
            _, status, usage = os.wait4(child.pid, 0)
            seconds = time.perf_counter() - start
            errors.seek(0)
            if os.waitstatus_to_exitcode(status):
                raise SystemExit(f"lte-sr upscale failed:\n{errors.read()[-3000:]}")
        check = run_child(CORNER_CHILD, [str(source), str(target), str(scale)])
        out_w, out_h = check["size"]
        peak, output = usage.ru_maxrss * 1024, out_h * out_w * 3
        print(
            f"{name} via lte-sr upscale: {width}x{height} PNG ({source.stat().st_size / 1e6:.0f} MB)"
            f" -> {out_w}x{out_h} PNG ({target.stat().st_size / 1e6:.0f} MB), x{scale}: "
            f"{seconds:.0f} s ({usage.ru_utime + usage.ru_stime:.0f} s CPU); peak RSS "
            f"{peak / gib:.2f} GiB, minus the output ({output / gib:.2f} GiB): "
            f"{(peak - output) / gib:.2f} GiB; top-left {check['corner']}x{check['corner']} "
            f"equal to lte_cuda.upscale of the corner within {check['max_diff']}/255",
            flush=True,
        )


def small_case(repeats: int, baseline: str | None) -> None:
    """Alternating runs of this checkout and the baseline; median and spread of each."""
    here = str(REPO)
    runs: dict[str, list[dict]] = {"this": [], "baseline": []}
    for _ in range(repeats):
        # Timed with the allocator's defaults, as users run it.
        runs["this"].append(run_child(SMALL_CHILD, [here], here, exact_peak=False))
        if baseline:
            runs["baseline"].append(run_child(SMALL_CHILD, [baseline], baseline, exact_peak=False))
    for label, results in runs.items():
        if not results:
            continue
        for key in ("seconds", "cpu_seconds"):
            values = [r[key] for r in results]
            print(
                f"small x4 128->512 ({label}) {key}: median {statistics.median(values):.3f}, "
                f"min {min(values):.3f}, max {max(values):.3f} over {len(values)} runs",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=("photo", "scan", "small", "all"), default="all")
    parser.add_argument(
        "--regions", type=int, default=0, help="stop a large case after N regions (0: all)"
    )
    parser.add_argument(
        "--cli", action="store_true", help="run the large cases as files through lte-sr upscale"
    )
    parser.add_argument("--repeats", type=int, default=5, help="runs of the small case")
    parser.add_argument(
        "--baseline", help="a checkout of an older commit to time the small case against"
    )
    args = parser.parse_args()
    require_fused("bench_large")
    print(cpu_line())
    for name in ("photo", "scan"):
        if args.case in (name, "all"):
            if args.cli:
                cli_case(name)
            else:
                large_case(name, args.regions)
    if args.case in ("small", "all"):
        small_case(args.repeats, args.baseline)


if __name__ == "__main__":
    main()
