"""Benchmark of lte_cuda.upscale on CPU: fused vs reference query step, and peak memory.

1. x4 upscale of a 128x128 image to 512x512 with EDSR-baseline-LTE at its published size
   (random weights, seeded: timing does not depend on them), both backends at the same chunk
   size. Outputs are compared first. Wall time is torch.utils.benchmark.Timer's mean over
   ``--repeat`` runs after a warm-up; the split into phases comes from one more run with
   explicit perf_counter timing around them: forward hooks on the encoder and coef/freq
   convs ("encoder") and on the MLP ("MLP"), a wrapper around the lte_basis call ("basis");
   "rest" is the remainder (coordinates, weighted sum, bilinear residual, copies).
2. Peak memory: every measurement runs in a fresh subprocess that reports its peak
   resident memory during the run (VmHWM, reset just before it) minus its resident memory
   before it (after imports, model and input are set up): the extra memory the upscale
   needed at its peak. Linux only (/proc/self).
   Done for both backends at 512x512, and for x4 outputs of 512, 1024 and 2048 (fused).

Until the compiled extension is built, the fused backend falls back to the reference, so
the ratios are ~1; the script says which is in use.

    python benchmarks/bench_upscale.py            # full run (several minutes on few cores)
    python benchmarks/bench_upscale.py --quick    # smaller images, one repeat: a smoke run

with lte_cuda installed (or PYTHONPATH set to the project root).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import torch
from torch.utils.benchmark import Timer

from lte_cuda import ops, reference
from lte_cuda.models import LTE, build_preset
from lte_cuda.upscale import super_resolve
from memory import CHILD_ENV, peak_rss_above_current

SCALE = 4
MIB = 1 << 20
TARGET_SPEEDUP = 1.6  # reference time / fused time
TARGET_MEMORY_RATIO = 0.5  # fused peak / reference peak
TARGET_PEAK_MIB = 2048


def make_inputs(in_side: int, backend: str) -> tuple[LTE, torch.Tensor]:
    """Published-size EDSR-baseline-LTE (seeded random weights) and a seeded RGB image."""
    torch.manual_seed(0)
    model = build_preset("edsr-baseline-lte", backend=backend).eval()
    return model, torch.rand(1, 3, in_side, in_side)


def run_upscale(model: LTE, image: torch.Tensor, chunk: int) -> torch.Tensor:
    side = image.shape[-1] * SCALE
    return super_resolve(model, image, (side, side), device="cpu", chunk_size=chunk)


@contextlib.contextmanager
def phase_timers(model: LTE) -> Iterator[dict[str, float]]:
    """Seconds spent in the encoder (+ coef/freq convs), the lte_basis call and the MLP while
    the block runs; CPU work is synchronous, so perf_counter around each is exact."""
    totals = {"encoder": 0.0, "basis": 0.0, "MLP": 0.0}
    handles = []

    def time_module(module: torch.nn.Module, name: str) -> None:
        start = 0.0

        def before(*_) -> None:
            nonlocal start
            start = time.perf_counter()

        def after(*_) -> None:
            totals[name] += time.perf_counter() - start

        handles.extend((module.register_forward_pre_hook(before), module.register_forward_hook(after)))

    for module in (model.encoder, model.coef, model.freq):
        time_module(module, "encoder")
    time_module(model.imnet, "MLP")
    # LTE looks the function up on its module at each call, so patching the attribute is seen.
    owner = ops if model.backend == "fused" else reference
    original = owner.lte_basis

    def timed_basis(*args, **kwargs):
        start = time.perf_counter()
        result = original(*args, **kwargs)
        totals["basis"] += time.perf_counter() - start
        return result

    owner.lte_basis = timed_basis
    try:
        yield totals
    finally:
        owner.lte_basis = original
        for handle in handles:
            handle.remove()


def measure_time(backend: str, in_side: int, chunk: int, repeat: int) -> dict[str, float]:
    model, image = make_inputs(in_side, backend)
    run_upscale(model, image, chunk)  # warm-up
    total = Timer("run()", globals={"run": lambda: run_upscale(model, image, chunk)}).timeit(repeat).mean
    with phase_timers(model) as phases:
        start = time.perf_counter()
        run_upscale(model, image, chunk)
        phased_total = time.perf_counter() - start
    phases["rest"] = phased_total - sum(phases.values())
    return {"total": total, **{k: v / phased_total for k, v in phases.items()}}


def child_peak(backend: str, in_side: int, chunk: int) -> None:
    """In a fresh process: print the extra peak RSS (bytes) of one upscale as JSON."""
    model, image = make_inputs(in_side, backend)
    peak = peak_rss_above_current(lambda: run_upscale(model, image, chunk))
    print(json.dumps({"peak_bytes": peak}))

def measure_peak(backend: str, in_side: int, chunk: int) -> int:
    command = [sys.executable, __file__, "--child", backend, str(in_side), "--chunk", str(chunk)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=CHILD_ENV)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"]


def buffer_bytes(in_side: int, hidden_dim: int = 256) -> int:
    """Float32 buffers that grow with the image: output, normalised input, coef + freq maps."""
    out_side = in_side * SCALE
    return 4 * (3 * out_side**2 + 3 * in_side**2 + 2 * hidden_dim * in_side**2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunk", type=int, default=30000, help="queries per decode step (default 30000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per backend (default 3)")
    parser.add_argument("--quick", action="store_true", help="32x32 input, outputs 128-512, one repeat")
    parser.add_argument("--child", nargs=2, metavar=("BACKEND", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_peak(args.child[0], int(args.child[1]), args.chunk)
        return

    in_side, sizes, repeat = (32, (32, 64, 128), 1) if args.quick else (128, (128, 256, 512), args.repeat)
    out_side = in_side * SCALE
    fused_state = "compiled kernels" if ops.library_available() else f"REFERENCE FALLBACK ({ops.LIBRARY_ERROR})"
    print(f"x{SCALE}: {in_side}x{in_side} -> {out_side}x{out_side}, EDSR-baseline-LTE (published size, "
          f"random init, seed 0), CPU, {torch.get_num_threads()} threads, chunk {args.chunk}")
    print(f"fused backend: {fused_state}")

    outputs = {b: run_upscale(*make_inputs(in_side, b), args.chunk) for b in ("reference", "fused")}
    diff = (outputs["fused"] - outputs["reference"]).abs().max().item()
    print(f"check: max |fused - reference| = {diff:.2e} ({'ok' if diff < 1e-4 else 'MISMATCH'})\n")

    rows = {}
    for backend in ("reference", "fused"):
        rows[backend] = measure_time(backend, in_side, args.chunk, repeat)
        rows[backend]["peak"] = measure_peak(backend, in_side, args.chunk)
    print(f"{'backend':<10} {'wall s':>8} {'encoder':>8} {'basis':>8} {'MLP':>8} {'rest':>8} {'peak MiB':>9}")
    for backend, row in rows.items():
        shares = " ".join(f"{row[k]:>7.1%}" for k in ("encoder", "basis", "MLP", "rest"))
        print(f"{backend:<10} {row['total']:>8.2f} {shares} {row['peak'] / MIB:>9.1f}")
    speedup = rows["reference"]["total"] / rows["fused"]["total"]
    memory = rows["fused"]["peak"] / rows["reference"]["peak"]
    print(f"fused speed-up {speedup:.2f}x (target >= {TARGET_SPEEDUP}x: {'met' if speedup >= TARGET_SPEEDUP else 'NOT met'}); "
          f"fused/reference peak {memory:.2f} (target <= {TARGET_MEMORY_RATIO}: "
          f"{'met' if memory <= TARGET_MEMORY_RATIO else 'NOT met'})")
    print("(phase shares from one run timed with perf_counter around hooks; peak = VmHWM minus "
          "VmRSS before the run, in a fresh subprocess)\n")

    print(f"peak memory, fused, x{SCALE}, chunk {args.chunk}; buffers = output + input + coef/freq maps (float32)")
    print(f"{'output':>11} {'input':>9} {'peak MiB':>9} {'buffers':>8} {'working':>8}  target < {TARGET_PEAK_MIB} MiB")
    for side in sizes:
        peak = measure_peak("fused", side, args.chunk)
        buffers = buffer_bytes(side)
        print(f"{side * SCALE:>5}x{side * SCALE:<5} {side:>4}x{side:<4} {peak / MIB:>9.1f} {buffers / MIB:>8.1f} "
              f"{(peak - buffers) / MIB:>8.1f}  {'met' if peak < TARGET_PEAK_MIB * MIB else 'NOT met'}")


if __name__ == "__main__":
    main()
