"""End-to-end time and peak memory: the fused path against the published path (and LTE+).

    python -m benchmarks.end_to_end upscale --input 128 --scale 4 --runs 5 [--device cpu]
    python -m benchmarks.end_to_end upscale --precision auto --paths fused fused-fp32 published
    python -m benchmarks.end_to_end train --batch 16 --lr 48 --queries 2304 --runs 3

Paths: ``fused`` is the project as a user runs it (``lte_cuda.upscale.upscale`` with its
default chunking; the LTE module's training forward); ``published`` is the published code's
decode (benchmarks/published_path.py: one neighbour at a time, chunks of 30,000 at test time);
``fused-fp32`` is the fused path in fp32 whatever ``--precision`` asks (with ``--precision auto``
the table then has the published code, auto and fp32; the published path runs in fp32 then,
as the published code does);
``lte-plus`` is LTE+ (benchmarks/lte_plus.py, the whole output grid at once). All share one
EDSR-baseline-LTE at its published size (seeded random weights: time does not depend on them)
and one seeded input.

Every measurement runs in a fresh process: set-up, one warm-up call, then ``--calls`` measured
calls, each timed with perf_counter (CUDA synchronised before and after) and its peak memory
taken as on the other benchmarks (CPU: VmHWM above VmRSS just before the call, after
malloc's free memory is returned to the kernel, memory.py; CUDA: max_memory_allocated above
memory_allocated before it). The processes run with the default malloc settings, as a user's. The paths take turns, round
after round (``--runs``), so that load from other processes falls on them alike. The first
round's outputs (upscale: the image; train: the prediction and encoder gradients of the
first step) are compared with the fused path's before any further round runs; a mismatch
stops the benchmark. Reported: per path the median time and peak, their spreads (min-max)
and the ratios of the medians to the fused path's; records in run.py's results.json format.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import lte_plus, published_path
from benchmarks.machine import cpu_line, machine_info, require_fused
from benchmarks.memory import peak_since, reset_peak
from lte_cuda.precision import CHOICES, resolve_precision

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
PATHS = ("fused", "fused-fp32", "published", "lte-plus")
# Agreement with the fused path: images within 1e-4 on [0, 1] in fp32 (fp16/bf16: 2e-2);
# training predictions and encoder gradients as the suite checks them.
TOLERANCES = {
    ("upscale", "fp32"): (1e-4, 0.0),
    ("upscale", "fp16"): (2e-2, 0.0),
    ("upscale", "bf16"): (5e-2, 0.0),
    ("train", "fp32"): (1e-5, 1e-3),
    ("train", "bf16"): (5e-2, 5e-2),
}
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_batch(batch: int, side: int, queries: int) -> dict[str, torch.Tensor]:
    """Seeded input pixels and normalised targets shaped like the published training samples
    (a random scale in [1, 4] per image, ``queries`` HR pixels sampled without replacement)."""
    from lte_cuda.coords import make_coord

    gen = torch.Generator().manual_seed(0)
    coords, cells = [], []
    for _ in range(batch):
        hr = round(side * (1 + 3 * torch.rand((), generator=gen).item()))
        grid = make_coord((hr, hr), flatten=True)
        coords.append(grid[torch.randperm(len(grid), generator=gen)[:queries]])
        cells.append(torch.full((queries, 2), 2 / hr))
    return {
        "inp": torch.rand(batch, 3, side, side, generator=gen),
        "coord": torch.stack(coords),
        "cell": torch.stack(cells),
        "gt": (torch.rand(batch, queries, 3, generator=gen) - 0.5) / 0.5,
    }


def make_model(device: str, preset: str = "edsr-baseline-lte") -> torch.nn.Module:
    """The published-size model with seeded random weights."""
    from lte_cuda.models import build_preset

    torch.manual_seed(0)
    return build_preset(preset).to(device)


def _autocast(device: str, precision: str):
    dtype = PRECISIONS[precision]
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def setup_upscale(spec: dict, device: str) -> Callable[..., list[torch.Tensor]]:
    """One upscale of a seeded ``input``-square image by ``scale`` on ``spec['path']``
    (``run(check=...)``: the output either way)."""
    from lte_cuda.upscale import upscale

    model = make_model(device).eval()
    side = spec["input"]
    out_size = (side * spec["scale"], side * spec["scale"])
    rgb = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device)
    precision = spec["precision"]
    if spec["path"] in ("fused", "fused-fp32"):
        return lambda check=False: [
            upscale(rgb, size=out_size[::-1], model=model, device=device, precision=precision)
        ]
    if spec["path"] == "published":
        published = published_path.PublishedLTE(model).eval()
        return lambda check=False: [
            published_path.upscale(published, rgb, out_size, precision=precision)
        ]
    plus = lte_plus.LTEPlus.from_lte(model).eval()

    def run(check: bool = False) -> list[torch.Tensor]:
        with _autocast(device, precision):
            return [lte_plus.super_resolve(plus, rgb, out_size).float()]

    return run


def setup_train(spec: dict, device: str) -> Callable[..., list[torch.Tensor]]:
    """One training step (forward, L1, backward, Adam) at ``spec``'s shape on its path;
    ``run(check=True)`` returns the prediction and the encoder's gradients, else nothing."""
    model = make_model(device).train()
    data = {
        k: v.to(device) for k, v in make_batch(spec["batch"], spec["lr"], spec["queries"]).items()
    }
    if spec["path"] == "lte-plus":
        net = lte_plus.LTEPlus.from_lte(model).train()
        grid, grid_cell = data["coord"].unsqueeze(2), data["cell"][:, 0]

        def predict() -> torch.Tensor:
            pred = net(data["inp"], grid, grid_cell, normalised=True)
            return pred[..., 0].permute(0, 2, 1)  # (B, Q, 3)
    else:
        net = model if spec["path"] == "fused" else published_path.PublishedLTE(model).train()

        def predict() -> torch.Tensor:
            return net(data["inp"], data["coord"], data["cell"], normalised=True)

    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

    def step(check: bool = False) -> list[torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, spec["precision"]):
            pred = predict()
            loss = F.l1_loss(pred.float(), data["gt"])
        loss.backward()
        kept = []
        if check:
            kept = [pred.detach().float()] + [
                p.grad.detach().clone()
                for name, p in net.named_parameters()
                if name.startswith("encoder.") and p.grad is not None
            ]
        optimizer.step()
        return kept

    return step


SETUPS = {"upscale": setup_upscale, "train": setup_train}


def measure_child(spec: dict, save: str | None) -> dict:
    """In a fresh process: set up, warm up, then ``spec['calls']`` measured calls."""
    device = spec["device"]
    cuda = device.startswith("cuda")
    run = SETUPS[spec["bench"]](spec, device)
    result = run(check=True)  # warm-up; also the output checked against the fused path's
    if save:
        torch.save([t.cpu() for t in result], save)
    del result
    times, cpu_times, peaks = [], [], []
    for _ in range(spec["calls"]):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = reset_peak()
        start, cpu_start = time.perf_counter(), time.process_time()
        run()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        peaks.append(torch.cuda.max_memory_allocated() - base if cuda else peak_since(base))
    return {"times_s": times, "cpu_s": cpu_times, "peaks_bytes": peaks}


def run_child(spec: dict, save: str | None = None) -> dict:
    """:func:`measure_child` in a fresh process; ``{"skipped": reason}`` on out of memory."""
    cmd = [sys.executable, "-m", "benchmarks.end_to_end", "--child", json.dumps(spec)]
    if save:
        cmd += ["--save", save]
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # The default malloc (not memory.CHILD_ENV's): its mmap threshold would slow the timed
    # calls; reset_peak's malloc_trim makes reused free memory count in the peak instead.
    done = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": python_path}
    )
    if done.returncode != 0:
        if "OutOfMemoryError" in done.stderr or "out of memory" in done.stderr.lower():
            return {"skipped": "out of memory"}
        raise RuntimeError(f"{spec['path']} measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare_outputs(got_file: str, want_file: str, spec: dict) -> float:
    """Largest absolute difference of a path's saved outputs from the fused path's; raises
    AssertionError outside the bench's tolerance."""
    # "tolerance": the looser precision of the two compared (measure sets it); else its own.
    atol, rtol = TOLERANCES[(spec["bench"], spec.get("tolerance", spec["precision"]))]
    got, want = torch.load(got_file), torch.load(want_file)
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(
            g, w, atol=atol, rtol=rtol, msg=lambda m: f"{spec['path']} disagrees with fused: {m}"
        )
        worst = max(worst, (g - w).abs().max().item())
    return worst


def path_precision(path: str, base: dict) -> str:
    """The precision ``path`` runs in: fused-fp32 in fp32; the published path and LTE+ in fp32
    when auto was asked for (the published code has no auto), else as asked."""
    if path == "fused-fp32" or (path != "fused" and base["requested"] == "auto"):
        return "fp32"
    return base["precision"]


def label(spec: dict) -> str:
    if spec["bench"] == "upscale":
        out = spec["input"] * spec["scale"]
        return f"x{spec['scale']} {spec['input']}->{out}"
    return f"B={spec['batch']} {spec['lr']}x{spec['lr']} Q={spec['queries']:,}"


def shape_of(spec: dict) -> dict:
    """The size part of a spec (input and scale, or batch, LR side and queries)."""
    return {
        k: v
        for k, v in spec.items()
        if k not in ("path", "device", "calls", "bench", "precision", "requested", "tolerance")
    }


def summarize(spec: dict, samples: list[dict], diff: float | None) -> dict:
    """A run.py-format record of one path from its fresh processes' samples."""
    times = [t for s in samples for t in s["times_s"]]
    cpu_times = [t for s in samples for t in s["cpu_s"]]
    peaks = [p for s in samples for p in s["peaks_bytes"]]
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    queries = (
        (spec["input"] * spec["scale"]) ** 2
        if spec["bench"] == "upscale"
        else spec["batch"] * spec["queries"]
    )
    shape = shape_of(spec)
    return {
        "bench": spec["bench"],
        "path": spec["path"],
        "mode": spec["precision"],
        "shape": shape,
        "label": label(spec),
        "device": spec["device"],
        "queries": queries,
        "work": queries,
        "max_abs_diff": diff,
        "median_s": statistics.median(times),
        # CPU seconds of the process (all threads): less moved by other processes' load.
        "median_cpu_s": statistics.median(cpu_times),
        "cpu_s": cpu_times,
        "iqr_s": quartiles[2] - quartiles[0],
        "samples": len(times),
        "processes": len(samples),
        "times_s": times,
        "peaks_bytes": peaks,
        "peak_bytes": int(statistics.median(peaks)),
    }


def measure(
    base: dict, paths: list[str], runs: int, log: Callable[[str], None] = print
) -> list[dict]:
    """Records of each path of ``base`` (fused first): round one checked, then ``runs - 1`` more."""
    specs = {p: {**base, "path": p, "precision": path_precision(p, base)} for p in paths}
    for spec in specs.values():
        # Checked with the looser tolerance of the two precisions compared.
        reduced = [q for q in (spec["precision"], base["precision"]) if q != "fp32"]
        spec["tolerance"] = reduced[0] if reduced else "fp32"
    samples: dict[str, list[dict]] = {p: [] for p in paths}
    diffs: dict[str, float | None] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        saved = {p: str(Path(tmp) / f"{p}.pt") for p in paths}
        for p in paths:
            result = run_child(specs[p], saved[p])
            if "skipped" in result:
                skipped[p] = result["skipped"]
                continue
            samples[p].append(result)
            diffs[p] = 0.0 if p == "fused" else compare_outputs(saved[p], saved["fused"], specs[p])
            log(
                f"  check {label(base)} {base['precision']} {p}: max |diff| vs fused {diffs[p]:.2e}"
            )
    for _ in range(runs - 1):
        for p in paths:
            if p not in skipped:
                samples[p].append(run_child(specs[p]))
    records = []
    for p in paths:
        if p in skipped:
            records.append(
                {
                    "bench": base["bench"],
                    "path": p,
                    "mode": base["precision"],
                    "label": label(base),
                    "shape": shape_of(base),
                    "device": base["device"],
                    "skipped": skipped[p],
                }
            )
        else:
            records.append(summarize(specs[p], samples[p], diffs[p]))
    return records


def format_records(records: list[dict]) -> list[str]:
    """One line per path: median time and peak, spreads, ratios to the fused path."""
    fused = next((r for r in records if r["path"] == "fused" and "median_s" in r), None)
    lines = []
    for r in records:
        head = f"{r['bench']} {r['label']} {r['mode']} {r['path']:>9} ({r['device']}):"
        if "skipped" in r:
            lines.append(f"{head} skipped, {r['skipped']}")
            continue
        line = (
            f"{head} {r['median_s']:.3f} s [{min(r['times_s']):.3f}-{max(r['times_s']):.3f}] "
            f"(CPU {r['median_cpu_s']:.2f} s [{min(r['cpu_s']):.2f}-{max(r['cpu_s']):.2f}]), "
            f"peak {r['peak_bytes'] / MIB:.0f} MiB [{min(r['peaks_bytes']) / MIB:.0f}-"
            f"{max(r['peaks_bytes']) / MIB:.0f}], n={r['samples']}"
        )
        if fused is not None and r is not fused:
            line += (
                f"; {r['median_s'] / fused['median_s']:.2f}x fused's time "
                f"({r['median_cpu_s'] / fused['median_cpu_s']:.2f}x its CPU time), "
                f"{r['peak_bytes'] / max(fused['peak_bytes'], 1):.2f}x its peak"
            )
        lines.append(line)
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench", nargs="?", choices=sorted(SETUPS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=CHOICES)
    parser.add_argument("--paths", nargs="+", default=["fused", "published"], choices=PATHS)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per path (default 5)")
    parser.add_argument(
        "--calls", type=int, default=1, help="measured calls per process (default 1)"
    )
    parser.add_argument("--input", type=int, default=128, help="upscale: input side (default 128)")
    parser.add_argument("--scale", type=int, default=4, help="upscale: integer factor (default 4)")
    parser.add_argument("--batch", type=int, default=16, help="train: batch (default 16)")
    parser.add_argument("--lr", type=int, default=48, help="train: LR side (default 48)")
    parser.add_argument(
        "--queries", type=int, default=2304, help="train: queries per image (default 2304)"
    )
    parser.add_argument("--json", help="write the records (run.py's results.json format) here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.child and not args.bench:
        parser.error("choose a bench: upscale or train")
    if args.runs < 1 or args.calls < 1:
        parser.error(f"--runs and --calls must be >= 1, got {args.runs} and {args.calls}")
    if args.bench == "train" and "fused-fp32" in args.paths:
        parser.error("--paths fused-fp32 is for upscale only")
    if "fused" not in args.paths:
        parser.error(
            f"--paths must include fused (the others are checked against it), got {args.paths}"
        )
    return args


def base_spec(args: argparse.Namespace) -> dict:
    spec = {
        "bench": args.bench,
        "device": args.device,
        "requested": args.precision,
        "precision": resolve_precision(args.precision, args.device).name,
        "calls": args.calls,
    }
    if args.bench == "upscale":
        return {**spec, "input": args.input, "scale": args.scale}
    return {**spec, "batch": args.batch, "lr": args.lr, "queries": args.queries}


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure_child(json.loads(args.child), args.save)))
        return []
    require_fused("end_to_end")
    paths = ["fused"] + [p for p in args.paths if p != "fused"]
    print(cpu_line())
    print(f"precision {resolve_precision(args.precision, args.device)}")
    records = measure(base_spec(args), paths, args.runs)
    print("\n".join(format_records(records)))
    if args.json:
        machine = machine_info("cuda" if args.device.startswith("cuda") else "cpu")
        Path(args.json).write_text(
            json.dumps({"machine": machine, "plan": "end-to-end", "records": records}, indent=1)
        )
    return records


if __name__ == "__main__":
    main()
