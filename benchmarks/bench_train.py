"""Benchmark of one LTE training step: fused vs reference query step, time and peak memory.

One step of the published recipe: EDSR-baseline-LTE at its published size (seeded random
weights), batch 16 of 48x48 LR inputs, 2,304 queries per image at random scales in [1, 4],
L1 loss, backward, Adam. Gradients of the two backends are compared first.

Each backend runs in a fresh subprocess (so one cannot inherit the other's memory):
- time: median over ``--steps`` steps after ``--warmup`` steps, with perf_counter around
  each phase (encoder forward = gen_feat: encoder + coef/freq convs; query forward =
  query_rgb + loss; backward; optimizer step), synchronising CUDA at each boundary;
- peak memory: on CPU the peak resident memory during the steps above the resident memory
  before them (after imports, model, optimizer and batch are set up; see memory.py), i.e. the
  extra memory the steps needed at their peak; on CUDA ``torch.cuda.max_memory_allocated``.

Targets: fused >= 1.2x faster and <= 0.7x the peak memory of the reference. Until the compiled
extension is built, the fused backend falls back to the reference (ratios ~1); the script
says which is in use.

    python benchmarks/bench_train.py             # published sizes (minutes per backend on a small CPU)
    python benchmarks/bench_train.py --quick     # batch 2, 24x24, 576 queries: a smoke run
    python benchmarks/bench_train.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from lte_cuda import ops
from lte_cuda.coords import make_coord
from lte_cuda.models import LTE, build_preset
from memory import CHILD_ENV, peak_since, reset_peak

MIB = 1 << 20
TARGET_SPEEDUP = 1.2  # reference step time / fused step time
TARGET_MEMORY_RATIO = 0.7  # fused peak / reference peak
PHASES = ("encoder fwd", "query fwd", "backward", "optimizer")


def make_batch(batch: int, side: int, queries: int) -> dict[str, torch.Tensor]:
    """Seeded normalised inputs and targets shaped like the published training samples."""
    gen = torch.Generator().manual_seed(0)
    coords, cells = [], []
    for _ in range(batch):
        hr = round(side * (1 + 3 * torch.rand((), generator=gen).item()))
        grid = make_coord((hr, hr), flatten=True)
        coords.append(grid[torch.randperm(len(grid), generator=gen)[:queries]])
        cells.append(torch.full((queries, 2), 2 / hr))
    return {
        "inp": (torch.rand(batch, 3, side, side, generator=gen) - 0.5) / 0.5,
        "coord": torch.stack(coords),
        "cell": torch.stack(cells),
        "gt": (torch.rand(batch, queries, 3, generator=gen) - 0.5) / 0.5,
    }


def make_model(backend: str, device: str) -> LTE:
    torch.manual_seed(0)
    return build_preset("edsr-baseline-lte", backend=backend).to(device).train()


def check_gradients(device: str) -> float:
    """Largest gradient difference between the backends on a small batch (raises if off)."""
    batch = {k: v.to(device) for k, v in make_batch(2, 16, 64).items()}
    grads = []
    for backend in ("reference", "fused"):
        model = make_model(backend, device)
        loss = F.l1_loss(model(batch["inp"], batch["coord"], batch["cell"]), batch["gt"])
        loss.backward()
        grads.append([p.grad for p in model.parameters() if p.grad is not None])
    worst = 0.0
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)
        worst = max(worst, (a - b).abs().max().item())
    return worst


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def worker(backend: str, device: str, batch: int, side: int, queries: int, warmup: int, steps: int) -> dict:
    """Time ``steps`` training steps of one backend in this process; report as a dict."""
    model = make_model(backend, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    data = {k: v.to(device) for k, v in make_batch(batch, side, queries).items()}
    _sync(device)
    rss_before = reset_peak()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    records: list[dict[str, float]] = []
    for i in range(warmup + steps):
        marks = [time.perf_counter()]
        model.gen_feat(data["inp"])
        _sync(device)
        marks.append(time.perf_counter())
        loss = F.l1_loss(model.query_rgb(data["coord"], data["cell"]), data["gt"])
        _sync(device)
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _sync(device)
        marks.append(time.perf_counter())
        optimizer.step()
        _sync(device)
        marks.append(time.perf_counter())
        if i >= warmup:
            records.append({p: marks[j + 1] - marks[j] for j, p in enumerate(PHASES)})
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - cuda_before
    else:
        peak = peak_since(rss_before)
    return {
        "backend": backend,
        "fused_kernels": ops.library_available() if backend == "fused" else False,
        "step_s": statistics.median(sum(r.values()) for r in records),
        "phases_s": {p: statistics.median(r[p] for r in records) for p in PHASES},
        "peak_bytes": peak,
        "loss": loss.item(),
    }


def run_worker(args: argparse.Namespace, backend: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", backend, "--device", args.device,
           "--batch", str(args.batch), "--side", str(args.side), "--queries", str(args.queries),
           "--warmup", str(args.warmup), "--steps", str(args.steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=CHILD_ENV)
    if done.returncode != 0:
        raise RuntimeError(f"{backend} worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 2, 24x24, 576 queries, 1 + 2 steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--side", type=int, default=48, help="LR input side")
    parser.add_argument("--queries", type=int, default=2304, help="queries per image")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--worker", choices=("fused", "reference"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.device, args.batch, args.side, args.queries,
                                args.warmup, args.steps)))
        return
    if args.quick:
        args.batch, args.side, args.queries, args.warmup, args.steps = 2, 24, 576, 1, 2

    kernels = "built" if ops.library_available() else "NOT built (fused = reference fallback)"
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"fused kernels: {kernels}")
    print(f"gradients fused vs reference: max |diff| {check_gradients(args.device):.2e} (checked)")
    print(f"step: EDSR-baseline-LTE, batch {args.batch}, {args.side}x{args.side} LR, "
          f"{args.queries} queries/image, L1 + backward + Adam; median of {args.steps} "
          f"after {args.warmup} warm-up")
    results = {b: run_worker(args, b) for b in ("reference", "fused")}
    memory = "CUDA max_memory_allocated" if args.device.startswith("cuda") else "VmHWM above VmRSS"
    header = f"{'backend':<10} {'step s':>8} " + " ".join(f"{p:>12}" for p in PHASES) + f" {'peak MiB':>9}"
    print(header)
    for name, r in results.items():
        phases = " ".join(f"{r['phases_s'][p]:>12.4f}" for p in PHASES)
        print(f"{name:<10} {r['step_s']:>8.4f} {phases} {r['peak_bytes'] / MIB:>9.1f}")
    speedup = results["reference"]["step_s"] / results["fused"]["step_s"]
    mem_ratio = results["fused"]["peak_bytes"] / max(results["reference"]["peak_bytes"], 1)
    print(f"peak memory is the {memory} of each backend's own subprocess")
    print(f"speed-up fused vs reference: {speedup:.2f}x (target >= {TARGET_SPEEDUP}x) "
          f"{'PASS' if speedup >= TARGET_SPEEDUP else 'FAIL'}")
    print(f"peak memory fused / reference: {mem_ratio:.2f} (target <= {TARGET_MEMORY_RATIO}) "
          f"{'PASS' if mem_ratio <= TARGET_MEMORY_RATIO else 'FAIL'}")


if __name__ == "__main__":
    main()
