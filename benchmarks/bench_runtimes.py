"""Torch fused path vs ONNX Runtime vs OpenVINO (float32 and int8) on the CPU.

Cases: x4 128x128 -> 512x512 and x2 512x512 -> 1024x1024, with the bundled default model and
with an EDSR-baseline-LTE of the published size (random weights: the time does not depend on
them). Every configuration runs through :func:`lte_cuda.upscale` (one pipeline: tiles, chunks,
the memory budget), ``runtime=None`` for torch (the fused op, float32) or the runtime's
executor over the parts exported beforehand (``lte-sr export --parts [--int8]``, as a user
deploys them). Each measurement is a fresh process: it loads the model or the graphs (reported
as setup), upscales a 32x32 crop once (the runtimes prepare their kernels), then times the case
once and reports the peak resident memory of the whole process (VmHWM) and how far the timed
run raised it above the resident size before it (the run's own working set). Configurations
alternate within every round; the table gives medians and the min-max spread over rounds, and
the speed against torch fp32 from the medians.

    nice -n 10 python benchmarks/bench_runtimes.py --rounds 3 --out benchmarks/results/runtimes.md

Stops if the compiled library did not load (the torch side would be the reference fallback).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

from benchmarks.bench_large import run_child

CASES = {"x4 128->512": (128, 512), "x2 512->1024": (512, 1024)}
MODELS = ("bundled", "published-size")
CONFIGS = (
    ("torch", "fp32"),
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("onnxruntime", "int8"),
    ("openvino", "int8"),
)

CHILD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np, torch
    from benchmarks.bench_large import textured_image
    from benchmarks.bench_runtimes import build_model
    from lte_cuda import ops, upscale
    from lte_cuda.upscale import resolve_runner

    model_name, side, out_side, runtime, precision, graphs = sys.argv[1:7]
    side, out_side = int(side), int(out_side)
    runtime = None if runtime == "torch" else runtime
    if runtime is None and not ops.library_available():
        raise SystemExit(f"the compiled library did not load: {ops.LIBRARY_ERROR}")

    def status(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

    image = textured_image(side, side)
    start = time.perf_counter()
    if runtime is None:
        model = build_model(model_name)
    else:
        model = resolve_runner(graphs, runtime, precision, torch.device("cpu"))
    run = dict(model=model, device="cpu", runtime=runtime, precision=precision)
    upscale(image[:32, :32], size=(128, 128), **run)  # the runtimes prepare their kernels
    setup = time.perf_counter() - start
    before = status("VmRSS")
    start = time.perf_counter()
    upscale(image, size=(out_side, out_side), **run)
    seconds = time.perf_counter() - start
    peak = status("VmHWM")
    print(json.dumps({"seconds": seconds, "setup": setup, "peak_rss": peak,
                      "run_rss": peak - before}))
    """
)


def build_model(name: str):
    """The bundled default model, or a seeded EDSR-baseline-LTE of the published size."""
    import torch

    from lte_cuda.models import build_preset
    from lte_cuda.upscale import resolve_model

    if name == "bundled":
        return resolve_model(None)
    torch.manual_seed(0)
    return build_preset("edsr-baseline-lte").eval()


def cpu_description() -> str:
    """``lscpu``'s model name and flags, recorded with every figure."""
    lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    fields = dict(line.split(":", 1) for line in lines.splitlines() if ":" in line)
    return f"{fields.get('Model name', '?').strip()}; flags: {fields.get('Flags', '?').strip()}"


def export_parts(models: list[str], folder: Path) -> dict:
    """``{(model, precision): OUT.onnx}``: each model's parts exported once, fp32 and int8."""
    from lte_cuda.export import to_onnx

    paths = {}
    for model in models:
        for precision in ("fp32", "int8"):
            path = folder / f"{model}-{precision}.onnx"
            to_onnx(build_model(model), path, parts=True, int8=precision == "int8")
            paths[model, precision] = path
    return paths


def measure(rounds: int, cases: list[str], models: list[str], configs: list) -> dict:
    """``{(case, model, runtime, precision): [child results]}``, configurations alternating."""
    results: dict = {}
    folder = Path(tempfile.mkdtemp(prefix="bench-runtimes-"))
    graphs = export_parts(models, folder)
    for _ in range(rounds):
        for case in cases:
            side, out_side = CASES[case]
            for model in models:
                for runtime, precision in configs:
                    path = str(graphs[model, precision])
                    args = [model, str(side), str(out_side), runtime, precision, path]
                    result = run_child(CHILD, args, exact_peak=False)
                    results.setdefault((case, model, runtime, precision), []).append(result)
    return results


def table(results: dict) -> str:
    """Markdown: median time (min-max), speed against torch fp32, setup, peak memory of the
    process and the timed run's rise above its resident size before."""
    lines = [
        "| case | model | runtime | precision | time s, median (min-max) | vs torch fp32 | setup s | peak MB | run's rise MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (case, model, runtime, precision), runs in results.items():
        times = [r["seconds"] for r in runs]
        base = statistics.median(r["seconds"] for r in results[case, model, "torch", "fp32"])
        median = statistics.median(times)
        lines.append(
            f"| {case} | {model} | {runtime} | {precision} | {median:.2f} ({min(times):.2f}-"
            f"{max(times):.2f}) | {base / median:.2f}x | "
            f"{statistics.median(r['setup'] for r in runs):.1f} | "
            f"{statistics.median(r['peak_rss'] for r in runs) / 2**20:.0f} | "
            f"{statistics.median(r['run_rss'] for r in runs) / 2**20:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--model", choices=MODELS, action="append")
    parser.add_argument("--out", help="also write the table and the CPU to this markdown file")
    args = parser.parse_args()
    from lte_cuda import ops

    if not ops.library_available():
        raise SystemExit(f"the compiled library did not load: {ops.LIBRARY_ERROR}")
    start = time.perf_counter()
    results = measure(args.rounds, args.case or list(CASES), args.model or list(MODELS), CONFIGS)
    report = (
        f"CPU: {cpu_description()}\n\n{args.rounds} rounds, fresh process per run, "
        f"{time.perf_counter() - start:.0f} s in all\n\n{table(results)}"
    )
    print(report, end="")
    if args.out:
        Path(args.out).write_text(report)
        Path(args.out).with_suffix(".json").write_text(
            json.dumps({" | ".join(k): v for k, v in results.items()}, indent=1)
        )


if __name__ == "__main__":
    main()
