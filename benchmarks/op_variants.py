"""The fused op's kernel variants at the inference and training shapes, one variant per process.

    python -m benchmarks.op_variants [--variant NAME] [--device cuda] [--tiny] [--json FILE]

A variant is chosen the way lte_cuda.ops offers it: ``ops.KERNEL_VARIANTS`` (their names)
and ``ops.KERNEL_ENV`` (the environment variable that selects them: ``default`` or
comma-separated names). A build without them has one variant, ``default``. This process runs
with the variable already set (gpu_check.py starts one process per variant), so a selection
read at load time is honoured too.

Per shape: the variant's outputs and gradients against the CPU kernel's (max abs diff, and
whether bit-identical), then forward, forward+backward and forward+backward under bf16
autocast (where the autocast variants act) times (torch.utils.benchmark,
median and IQR) and peak memory, and each time over the time a device copy of the same
bytes takes (inputs read once, outputs written once; the copy's bandwidth measured here).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.utils.benchmark as benchmark

from benchmarks.bench_basis import Shape, make_inputs, upstream_gradient
from benchmarks.machine import cpu_line, require_fused
from lte_cuda import ops

SHAPES = {
    "inference": Shape("inference", 1, 256, 64, 64, 65_536),
    "inference-1M": Shape("inference-1M", 1, 256, 64, 64, 1_000_000),
    "training": Shape("training", 16, 256, 48, 48, 2_304),
}
# Queries of the CPU-vs-device check (the CPU kernel's time and x's memory grow with them).
CHECK_QUERIES = 65_536
TINY_SHAPES = {"tiny": Shape("tiny", 2, 16, 8, 8, 256)}
MODES = ("fwd", "fwd+bwd", "fwd+bwd bf16")
# The autocast dtype of the "bf16" mode (the training step's mixed precision).
AUTOCAST = torch.bfloat16


def available_variants() -> tuple[list[str], str | None]:
    """What to measure: ``default``, each variant lte_cuda.ops offers (``ops.KERNEL_VARIANTS``),
    and all of them together when there are several; and the environment variable that
    selects them (``ops.KERNEL_ENV``, which takes ``default`` or comma-separated names)."""
    offered = list(getattr(ops, "KERNEL_VARIANTS", None) or [])
    names = ["default", *offered] + ([",".join(offered)] if len(offered) > 1 else [])
    return names, getattr(ops, "KERNEL_ENV", None)


def copy_bandwidth(device: str) -> float:
    """Bytes per second a device copy moves (read + written), 256 MiB each way."""
    src = torch.rand(64 << 20, device=device)
    dst = torch.empty_like(src)
    timer = benchmark.Timer("dst.copy_(src)", globals={"dst": dst, "src": src})
    return 2 * src.numel() * 4 / timer.blocked_autorange(min_run_time=0.2).median


def moved_bytes(inputs: list[torch.Tensor], shape: Shape, with_backward: bool) -> int:
    """Forward: inputs read, x and weights written (float32); the backward adds grad_x read,
    the inputs again and the coef/freq/phase gradients written."""
    inputs_bytes = sum(t.numel() * t.element_size() for t in inputs)
    x_bytes = shape.batch * shape.queries * 4 * shape.channels * 4
    forward = inputs_bytes + x_bytes + shape.batch * shape.queries * 4 * 4
    backward_bytes = x_bytes + inputs_bytes + sum(t.numel() * t.element_size() for t in inputs[:3])
    return forward + backward_bytes if with_backward else forward


def check_against_cpu(shape: Shape, device: str) -> tuple[float, bool]:
    """Largest abs difference of x, weights and the gradients from the CPU kernel's, and
    whether all are bit-identical (on at most CHECK_QUERIES queries: the CPU's share)."""
    shape = Shape(
        shape.name,
        shape.batch,
        shape.channels,
        shape.height,
        shape.width,
        min(shape.queries, CHECK_QUERIES),
    )
    results = []
    for dev in ("cpu", device):
        inputs = make_inputs(shape, dev, requires_grad=True)
        x, weights = ops.lte_basis(*inputs)
        x.backward(upstream_gradient(shape, dev))
        results.append([t.detach().cpu() for t in (x, weights, *(p.grad for p in inputs[:3]))])
    diffs = [(a - b).abs().max().item() for a, b in zip(*results)]
    return max(diffs), all(torch.equal(a, b) for a, b in zip(*results))


def measure_shape(shape: Shape, device: str, variant: str, bandwidth: float) -> list[dict]:
    """fwd and fwd+bwd records of ``shape`` with the variant this process runs."""
    diff, identical = check_against_cpu(shape, device) if device != "cpu" else (0.0, True)
    records = []
    for mode in MODES:
        backward = mode.startswith("fwd+bwd")
        inputs = make_inputs(shape, device, requires_grad=backward)
        grad_x = upstream_gradient(shape, device) if backward else None
        autocast = torch.autocast(
            torch.device(device).type, dtype=AUTOCAST, enabled=mode.endswith("bf16")
        )

        def call():
            with autocast:
                x, _ = ops.lte_basis(*inputs)
            if backward:
                x.backward(grad_x.to(x.dtype))
                for t in inputs[:3]:
                    t.grad = None

        call()  # warm-up
        timer = benchmark.Timer("run()", globals={"run": call})
        m = timer.blocked_autorange(min_run_time=0.3)
        peak = None
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            call()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        copy_s = moved_bytes(inputs, shape, backward) / bandwidth
        records.append(
            {
                "bench": "op",
                "path": "fused" if variant == available_variants()[0][0] else f"fused:{variant}",
                "variant": variant,
                "mode": mode,
                "shape": {
                    "batch": shape.batch,
                    "channels": shape.channels,
                    "lr": shape.height,
                    "queries": shape.queries,
                },
                "label": f"{shape.name} {shape.describe()}",
                "device": device,
                "queries": shape.batch * shape.queries,
                "work": shape.batch * shape.queries * shape.channels,
                "max_abs_diff": diff,
                "bit_identical_to_cpu": identical,
                "median_s": m.median,
                "iqr_s": m.iqr,
                "samples": len(m.times),
                "peak_bytes": peak,
                "copy_bound_s": copy_s,
                "times_copy_bound": m.median / copy_s,
            }
        )
    return records


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variant", help="the variant this process runs (default: the default one)"
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="one tiny shape: a test of the harness")
    parser.add_argument("--json", help="write the records here")
    args = parser.parse_args(argv)
    require_fused("op_variants")
    print(cpu_line())
    names, env = available_variants()
    args.variant = args.variant or names[0]
    if args.variant not in names:
        parser.error(f"--variant must be one of {names}, got {args.variant!r}")
    if env and args.variant != names[0] and os.environ.get(env) != args.variant:
        parser.error(
            f"run with {env}={args.variant} in the environment to measure variant {args.variant!r}"
        )
    bandwidth = copy_bandwidth(args.device)
    print(
        f"device copy: {bandwidth / 1e12:.2f} TB/s (read + write); variant {args.variant}",
        flush=True,
    )
    records = []
    for shape in (TINY_SHAPES if args.tiny else SHAPES).values():
        for r in measure_shape(shape, args.device, args.variant, bandwidth):
            records.append(r)
            print(
                f"{r['label']:<40} {r['mode']:>8} {r['median_s'] * 1e3:9.3f} ms  "
                f"{r['times_copy_bound']:5.2f}x the copy-bound time  diff vs CPU {r['max_abs_diff']:.1e}"
                f"{' (bit-identical)' if r['bit_identical_to_cpu'] else ''}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    return records


if __name__ == "__main__":
    main()
