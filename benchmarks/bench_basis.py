"""Benchmark of the LTE query step: fused op vs the published grid_sample path (eager) vs
torch.compile of that path, forward and forward+backward.

    python -m benchmarks.bench_basis [--quick] [--device cpu|cuda] [--no-compile] [--json FILE]

forward+backward is the forward, then the backward from a fixed dense gradient of x (as the
MLP's first layer would hand back), so that only the op's own work is timed. Results are
checked to agree before anything is timed. Times are medians from
torch.utils.benchmark. Peak memory: on CUDA torch.cuda.max_memory_allocated; on CPU each
measurement runs in a fresh subprocess that resets the kernel's resident-memory high-water
mark, runs the call once and reports the peak above the resident memory just before it, so
every allocation the call touches is seen.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.utils.benchmark as benchmark

from benchmarks.machine import cpu_line, require_fused
from benchmarks.memory import CHILD_ENV, peak_rss_above_current
from lte_cuda import ops, reference


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    channels: int
    height: int
    width: int
    queries: int

    def describe(self) -> str:
        return f"B={self.batch} C={self.channels} {self.height}x{self.width} Q={self.queries:,}"


SHAPES = {
    "inference": Shape("inference", 1, 256, 64, 64, 65_536),
    "published-chunk": Shape("published-chunk", 1, 256, 64, 64, 30_000),
    "training": Shape("training", 16, 256, 48, 48, 2_304),
}
QUICK_SHAPES = {
    "inference": Shape("inference", 1, 256, 64, 64, 16_384),
    "training": Shape("training", 4, 256, 48, 48, 2_304),
}


def make_inputs(shape: Shape, device: str, requires_grad: bool):
    g = torch.Generator().manual_seed(0)
    coef = torch.randn(shape.batch, shape.channels, shape.height, shape.width, generator=g)
    freq = torch.randn(shape.batch, shape.channels, shape.height, shape.width, generator=g)
    phase_weight = torch.randn(shape.channels // 2, 2, generator=g)
    coord = torch.rand(shape.batch, shape.queries, 2, generator=g) * 2 - 1
    cell = torch.full((shape.batch, shape.queries, 2), 2 / (4 * shape.height))
    # Channels-last feature maps, as LTE's coef/freq convolutions produce them.
    coef, freq = (t.contiguous(memory_format=torch.channels_last) for t in (coef, freq))
    params = [t.to(device).requires_grad_(requires_grad) for t in (coef, freq, phase_weight)]
    return params + [coord.to(device), cell.to(device)]


def upstream_gradient(shape: Shape, device: str) -> torch.Tensor:
    """A fixed dense gradient for x ``(B, Q, 4, C)``, as the MLP's first layer hands back: the
    backward of fwd+bwd starts from it, so only the op's own work is timed."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(shape.batch, shape.queries, 4, shape.channels, generator=g).to(device)


def path_fn(path: str):
    if path == "fused":
        return ops.lte_basis
    if path == "reference":
        return reference.lte_basis
    if path == "compiled":
        return torch.compile(reference.lte_basis, dynamic=False)
    raise ValueError(f"unknown path {path!r}")


def run_once(fn, inputs, mode: str, grad_x: torch.Tensor | None = None):
    """One call; for ``fwd+bwd`` also the backward from ``grad_x``."""
    x, weights = fn(*inputs)
    if mode == "fwd+bwd":
        x.backward(grad_x)
        for t in inputs[:3]:
            t.grad = None
    return x


def check_agreement(shape: Shape, device: str, paths: list[str]) -> None:
    small = Shape(
        shape.name,
        min(shape.batch, 2),
        shape.channels,
        shape.height,
        shape.width,
        min(shape.queries, 4096),
    )
    outputs = {}
    for path in paths:
        inputs = make_inputs(small, device, requires_grad=True)
        x, weights = path_fn(path)(*inputs)
        x.backward(upstream_gradient(small, device))
        outputs[path] = [x.detach(), weights.detach()] + [t.grad for t in inputs[:3]]
    for path in paths[1:]:
        for got, want in zip(outputs[path], outputs[paths[0]]):
            torch.testing.assert_close(got, want, atol=2e-3, rtol=1e-3)


def measure(shape: Shape, device: str, path: str, mode: str, min_run_time: float) -> dict:
    """Time one (shape, path, mode); returns median/IQR seconds and compile time."""
    inputs = make_inputs(shape, device, requires_grad=(mode == "fwd+bwd"))
    grad_x = upstream_gradient(shape, device) if mode == "fwd+bwd" else None
    fn = path_fn(path)
    start = time.perf_counter()
    run_once(fn, inputs, mode, grad_x)  # warm-up; for torch.compile this is the compilation
    if device == "cuda":
        torch.cuda.synchronize()
    first_call_s = time.perf_counter() - start
    timer = benchmark.Timer(
        stmt="run_once(fn, inputs, mode, grad_x)",
        globals={"run_once": run_once, "fn": fn, "inputs": inputs, "mode": mode, "grad_x": grad_x},
        num_threads=torch.get_num_threads(),
    )
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return {
        "median_s": m.median,
        "iqr_s": m.iqr,
        "compile_s": first_call_s if path == "compiled" else None,
    }


def peak_memory(shape: Shape, device: str, path: str, mode: str) -> int:
    """Peak bytes allocated by one call (fresh subprocess on CPU)."""
    if device == "cuda":
        inputs = make_inputs(shape, device, requires_grad=(mode == "fwd+bwd"))
        grad_x = upstream_gradient(shape, device) if mode == "fwd+bwd" else None
        fn = path_fn(path)
        run_once(fn, inputs, mode, grad_x)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_once(fn, inputs, mode, grad_x)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_basis",
        "--peak-rss-child",
        json.dumps([asdict(shape), path, mode]),
    ]
    root = Path(__file__).resolve().parent.parent
    env = {
        **CHILD_ENV,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=root).stdout
    return int(out.strip().splitlines()[-1])


def peak_rss_child(spec: str) -> None:
    shape_d, path, mode = json.loads(spec)
    shape = Shape(**shape_d)
    inputs = make_inputs(shape, "cpu", requires_grad=(mode == "fwd+bwd"))
    grad_x = upstream_gradient(shape, "cpu") if mode == "fwd+bwd" else None
    fn = path_fn(path)
    if path == "compiled":
        run_once(fn, inputs, mode, grad_x)  # compile first; its memory is not the op's
    print(peak_rss_above_current(lambda: run_once(fn, inputs, mode, grad_x)))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, short timing")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="skip torch.compile of the reference (its first compile is slow)",
    )
    parser.add_argument("--shape", action="append", help="only these shapes (repeatable)")
    parser.add_argument("--mode", choices=["fwd", "fwd+bwd"], help="only this mode")
    parser.add_argument("--json", help="write the records to this file")
    parser.add_argument("--peak-rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peak_rss_child:
        peak_rss_child(args.peak_rss_child)
        return []
    require_fused("bench_basis")
    print(cpu_line())

    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shape:
        unknown = set(args.shape) - set(shapes)
        if unknown:
            sys.exit(f"bench_basis: unknown --shape {sorted(unknown)}; known: {sorted(shapes)}")
        shapes = {name: shapes[name] for name in args.shape}
    modes = [args.mode] if args.mode else ["fwd", "fwd+bwd"]
    paths = ["fused", "reference"] + ([] if args.no_compile else ["compiled"])
    min_run_time = 0.5 if args.quick else 2.0
    print(
        f"torch {torch.__version__}, device {args.device}"
        + (
            f" ({torch.cuda.get_device_name()})"
            if args.device == "cuda"
            else f", {torch.get_num_threads()} threads"
        )
    )
    records = []
    for shape in shapes.values():
        check_agreement(shape, args.device, paths)
        for mode in modes:
            for path in paths:
                rec = {
                    "bench": "basis",
                    "shape": shape.name,
                    "dims": shape.describe(),
                    "mode": mode,
                    "path": path,
                    "device": args.device,
                }
                rec.update(measure(shape, args.device, path, mode, min_run_time))
                rec["peak_bytes"] = peak_memory(shape, args.device, path, mode)
                rec["us_per_query"] = rec["median_s"] / (shape.batch * shape.queries) * 1e6
                records.append(rec)
                print_record(rec, records)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return records


def print_record(rec: dict, records: list[dict]) -> None:
    fused = next(
        r
        for r in records
        if r["shape"] == rec["shape"] and r["mode"] == rec["mode"] and r["path"] == "fused"
    )
    speedup = rec["median_s"] / fused["median_s"]
    compile_note = f"  (compile {rec['compile_s']:.1f} s)" if rec["compile_s"] else ""
    print(
        f"{rec['shape']:>16} {rec['dims']:>28} {rec['mode']:>8} {rec['path']:>10}: "
        f"{rec['median_s'] * 1e3:9.2f} ms  {rec['us_per_query']:7.3f} us/query  "
        f"fused is {speedup:6.1f}x faster  peak {rec['peak_bytes'] / 2**20:8.1f} MiB"
        f"{compile_note}"
    )


if __name__ == "__main__":
    main()
