"""The benchmark suite: the fused LTE query step against the published paths, in one command.

    python -m benchmarks.run [--quick] [--out DIR] [--device cpu|cuda] [--no-compile]

(from the project root: ``benchmarks`` is a package).

The full run is sized for under half an hour on 2 CPU cores (compiling for the torch.compile
path is a large part of it; --no-compile skips that path); --quick runs fewer and smaller
shapes and no torch.compile, in a few minutes; --smoke only tests the harness on tiny shapes.

Benches, each on every path:
- ``op``: the query step alone (lte_basis), forward and forward+backward, over query counts
  and channel counts C (random queries on 64x64 LR maps, batch 1; bench_basis's inputs);
- ``upscale``: end-to-end upscale with EDSR-baseline-LTE (published size, seeded random
  weights) at x2, x4, x8 and several output sizes, chunks of 32,768 queries (the published
  path: 30,000, as published);
- ``train``: one training step (forward, L1 loss, backward, Adam) at the published shape.

Paths: ``fused`` (lte_cuda.ops.lte_basis; end to end, lte_cuda.upscale.upscale and the LTE
module); ``reference`` (op only: the published query step's math as one op,
lte_cuda.reference); ``published`` (end to end only: the published code's decode, one
neighbour at a time, see published_path.py); ``compiled`` (torch.compile, static shapes, of
the reference op, and end to end of the published query step; its first call, compilation
included, is reported apart as compile_s; a compile takes minutes on a small CPU, so it runs
on a few shapes only and not at all with --quick); ``lte-plus`` (LTE+, the published fast
variant, see lte_plus.py: for ``op`` its basis-building part, end to end its whole query step
over the whole output grid, built from the same LTE weights with the frequency channels
permuted into its split layout so that its results equal LTE's).

Every path's results are checked against the fused path's on the same inputs before it is
timed; then the paths of a case are timed in turns (3 rounds), so that load from other
processes falls on all of them alike. Times: torch.utils.benchmark (median and IQR, 3 samples
or more). Peak memory: on CUDA torch.cuda.max_memory_allocated; on CPU each measurement runs
once in a fresh subprocess that reports its peak resident memory during the call (VmHWM)
above its resident memory just before it, so every allocation the call touches is seen. A
case whose time or memory, extrapolated linearly from the same path's largest smaller case,
would exceed the caps is skipped and recorded with the reason.

Writes DIR/results.json (a machine block and one record per measurement), DIR/results.md
(tables for the README) and DIR/*.png (plots.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark

from benchmarks import bench_basis, lte_plus, plots, published_path
from benchmarks.end_to_end import make_batch, make_model
from benchmarks.machine import machine_info, require_fused
from benchmarks.memory import CHILD_ENV, peak_rss_above_current
from lte_cuda.inference import available_ram
from lte_cuda.upscale import upscale

BENCHES = ("op", "upscale", "train")
MODES = {"op": ("fwd", "fwd+bwd"), "upscale": ("inference",), "train": ("step",)}
PATHS = ("fused", "reference", "published", "compiled", "lte-plus")
# The op is compared with the published math as one op (reference); end to end, with the
# published code's per-neighbour decode (published_path.py).
BENCH_PATHS = {
    "op": ("fused", "reference", "compiled", "lte-plus"),
    "upscale": ("fused", "published", "compiled", "lte-plus"),
    "train": ("fused", "published", "compiled", "lte-plus"),
}
# Near the published 30,000 but a power of two: every chunk of the outputs below has the same
# size, so torch.compile (static shapes) compiles once per case.
CHUNK = 32768
# Timing rounds: each path gets at least one sample per round.
ROUNDS = 3
# Only the first queries of the op's output are kept for the agreement check (memory).
CHECK_QUERIES = 4096
# Agreement with the fused path (absolute, relative): bench_basis's and the training check's
# tolerances; images within 1e-4 on [0, 1].
TOLERANCES = {"op": (2e-3, 1e-3), "upscale": (1e-4, 0.0), "train": (1e-5, 1e-3)}
MIB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent
NAMES = {
    "fused": "fused",
    "reference": "reference",
    "published": "published",
    "compiled": "torch.compile",
    "lte-plus": "LTE+",
}


@dataclass
class Plan:
    """What a run measures. ``compiled`` and ``peak`` list, per bench, the shapes that get
    the torch.compile path and a peak-memory measurement (``None``: every shape)."""

    shapes: dict[str, list[dict]]
    compiled: dict[str, list[dict]]
    peak: dict[str, list[dict]] | None
    min_run_time: float
    max_call_s: float


def op_shape(channels: int, queries: int, lr: int = 64) -> dict:
    """An ``op`` bench shape: ``queries`` points on an ``lr`` x ``lr`` feature map of
    ``channels`` channels (batch 1)."""
    return {"batch": 1, "channels": channels, "lr": lr, "queries": queries}


def upscale_shape(scale: int, output: int) -> dict:
    """An ``upscale`` bench shape: an ``output`` x ``output`` result at ``scale``."""
    return {"scale": scale, "input": output // scale, "output": output}


def train_shape(batch: int, lr: int, queries: int) -> dict:
    """A ``train`` bench shape: ``batch`` crops of ``lr`` x ``lr``, ``queries`` each."""
    return {"batch": batch, "lr": lr, "queries": queries}


PUBLISHED_TRAIN = train_shape(16, 48, 2304)
PLANS = {
    "full": Plan(
        shapes={
            "op": [op_shape(256, q) for q in (1_000, 10_000, 100_000, 1_000_000)]
            + [op_shape(c, 30_000) for c in (64, 128, 256, 512)],
            "upscale": [upscale_shape(s, 256) for s in (2, 4, 8)] + [upscale_shape(4, 512)],
            "train": [PUBLISHED_TRAIN],
        },
        compiled={
            "op": [op_shape(256, 100_000)],
            "upscale": [upscale_shape(4, 256)],
            "train": [PUBLISHED_TRAIN],
        },
        peak=None,
        min_run_time=1.0,
        max_call_s=15.0,
    ),
    "quick": Plan(
        shapes={
            "op": [op_shape(256, q) for q in (1_000, 10_000, 100_000)]
            + [op_shape(c, 1_000) for c in (64, 512)],
            "upscale": [upscale_shape(s, 64) for s in (2, 4, 8)],
            "train": [train_shape(2, 24, 576)],
        },
        compiled={bench: [] for bench in BENCHES},
        peak={"op": [op_shape(256, 10_000)], "upscale": [], "train": [train_shape(2, 24, 576)]},
        min_run_time=0.2,
        max_call_s=2.5,
    ),
    # Tiny shapes: a test of the harness (no compile, no peak memory), not a benchmark.
    "smoke": Plan(
        shapes={
            "op": [op_shape(16, q, lr=8) for q in (64, 256)],
            "upscale": [upscale_shape(4, 32)],
            "train": [train_shape(2, 8, 16)],
        },
        compiled={bench: [] for bench in BENCHES},
        peak={bench: [] for bench in BENCHES},
        min_run_time=0.01,
        max_call_s=10.0,
    ),
}


@dataclass
class Case:
    bench: str
    path: str
    mode: str
    shape: dict


@dataclass
class Prepared:
    """``run()`` is the measured work; ``check()`` does the same work once and returns the
    tensors compared with the fused path's (it is also the warm-up, and the compilation)."""

    run: Callable[[], object]
    check: Callable[[], list[torch.Tensor]]


def label(bench: str, shape: dict) -> str:
    if bench == "op":
        return f"C={shape['channels']} Q={shape['queries']:,}"
    if bench == "upscale":
        return f"x{shape['scale']} {shape['output']}x{shape['output']}"
    return f"B={shape['batch']} {shape['lr']}x{shape['lr']} Q={shape['queries']:,}"


def queries(bench: str, shape: dict) -> int:
    """Query points per call: the op's and the training step's queries, upscale's output pixels."""
    if bench == "upscale":
        return shape["output"] ** 2
    return shape["batch"] * shape["queries"]


def work(bench: str, shape: dict) -> int:
    """What time and memory grow with (linearly), for extrapolating to larger cases."""
    return queries(bench, shape) * (shape["channels"] if bench == "op" else 1)


def published_model(model: torch.nn.Module, path: str) -> published_path.PublishedLTE:
    """The published decode of ``model``; for ``compiled``, its query step under torch.compile
    (on this instance only: nothing global is patched)."""
    published = published_path.PublishedLTE(model)
    if path == "compiled":
        published.query_rgb = torch.compile(published.query_rgb)
    return published


def op_digest(x: torch.Tensor, weights: torch.Tensor, params: list[torch.Tensor], mode: str):
    """The start of the op's outputs and, for fwd+bwd, the gradients of bench_basis's loss."""
    digest = [x[:, :CHECK_QUERIES].detach().clone(), weights[:, :CHECK_QUERIES].detach().clone()]
    if mode == "fwd+bwd":
        (x.sum(-1) * weights).sum().backward()
        digest += [p.grad for p in params]
        for p in params:
            p.grad = None
    return digest


def setup_op(case: Case, device: str) -> Prepared:
    s = case.shape
    shape = bench_basis.Shape(
        label("op", s), s["batch"], s["channels"], s["lr"], s["lr"], s["queries"]
    )
    inputs = bench_basis.make_inputs(shape, device, requires_grad=case.mode == "fwd+bwd")
    grad_x = bench_basis.upstream_gradient(shape, device) if case.mode == "fwd+bwd" else None
    if case.path != "lte-plus":
        fn = bench_basis.path_fn(case.path)
        return Prepared(
            run=lambda: bench_basis.run_once(fn, inputs, case.mode, grad_x),
            check=lambda: op_digest(*fn(*inputs), inputs[:3], case.mode),
        )
    coef, freq, phase_weight, coord, cell = inputs
    perm = lte_plus.split_permutation(s["channels"]).to(device)
    # LTE+'s inputs: the queries as a (Q x 1) grid with one cell per image, freq in its layout.
    grid, grid_cell = coord.unsqueeze(2), cell[:, 0]
    freq_split = freq.detach()[:, perm].requires_grad_(freq.requires_grad)
    params = [coef, freq_split, phase_weight]
    # The same upstream gradient as the other paths, in LTE+'s layout: (B, C, Q, 1) per neighbour.
    grads_plus = None
    if grad_x is not None:
        grads_plus = [grad_x[:, :, n].permute(0, 2, 1).unsqueeze(-1).contiguous() for n in range(4)]

    def run():
        xs, ws = lte_plus.lte_plus_basis(coef, freq_split, phase_weight, grid, grid_cell)
        if case.mode == "fwd+bwd":
            torch.autograd.backward(list(xs), grads_plus)
            for p in params:
                p.grad = None

    def check():
        # Permuting inside the graph puts the gradient on the interleaved freq, as the op's.
        xs, ws = lte_plus.lte_plus_basis(coef, freq[:, perm], phase_weight, grid, grid_cell)
        x = torch.stack(xs, 1)[..., 0].permute(0, 3, 1, 2)  # (B, 4, C, Q) -> (B, Q, 4, C)
        weights = torch.stack(ws, 1)[..., 0].permute(0, 2, 1)
        return op_digest(x, weights, inputs[:3], case.mode)

    return Prepared(run, check)


def setup_upscale(case: Case, device: str) -> Prepared:
    s = case.shape
    model = make_model(device).eval()
    image = torch.rand(1, 3, s["input"], s["input"], generator=torch.Generator().manual_seed(0)).to(
        device
    )
    out_size = (s["output"], s["output"])
    if case.path == "lte-plus":
        plus = lte_plus.LTEPlus.from_lte(model).eval()
        run = partial(lte_plus.super_resolve, plus, image, out_size)
    elif case.path == "fused":
        run = partial(
            upscale, image, size=out_size[::-1], model=model, device=device, chunk_size=CHUNK
        )
    else:
        run = partial(
            published_path.upscale, published_model(model, case.path).eval(), image, out_size
        )
    return Prepared(run=run, check=lambda: [run()])


def setup_train(case: Case, device: str) -> Prepared:
    s = case.shape
    data = {k: v.to(device) for k, v in make_batch(s["batch"], s["lr"], s["queries"]).items()}
    lte = make_model(device).train()
    if case.path == "lte-plus":
        model = lte_plus.LTEPlus.from_lte(lte).train()
        grid, grid_cell = data["coord"].unsqueeze(2), data["cell"][:, 0]

        def predict():
            # (B, 3, Q, 1) -> (B, Q, 3), the layout of the targets.
            return model(data["inp"], grid, grid_cell)[..., 0].permute(0, 2, 1)
    else:
        model = lte if case.path == "fused" else published_model(lte, case.path).train()
        predict = partial(model, data["inp"], data["coord"], data["cell"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def run():
        optimizer.zero_grad(set_to_none=True)
        F.l1_loss(predict(), data["gt"]).backward()
        optimizer.step()

    def check():
        # Prediction and the encoder's gradients: the encoder is the same module in every path.
        pred = predict()
        F.l1_loss(pred, data["gt"]).backward()
        grads = [
            p.grad.clone()
            for name, p in model.named_parameters()
            if name.startswith("encoder.") and p.grad is not None
        ]
        optimizer.zero_grad(set_to_none=True)
        return [pred.detach(), *grads]

    return Prepared(run, check)


SETUPS = {"op": setup_op, "upscale": setup_upscale, "train": setup_train}


def setup(case: Case, device: str) -> Prepared:
    if case.path == "compiled":
        torch._dynamo.reset()  # static shapes: start each case afresh, below the recompile limit
    return SETUPS[case.bench](case, device)


def time_paths(prepared: dict[str, tuple[Prepared, float]], min_run_time: float) -> dict:
    """torch.utils.benchmark measurements of each path's ``run()``, taken in ROUNDS rounds
    that visit every path in turn, so that load from other processes falls on all paths
    alike. ``prepared`` maps a path to its job and the seconds of one warm call.

    Each round runs blocked_autorange for ``min_run_time / ROUNDS``, or for one call's time
    if that is longer, so that every round takes a sample even of a slow call.
    """
    parts: dict[str, list[benchmark.Measurement]] = {path: [] for path in prepared}
    for _ in range(ROUNDS):
        for path, (job, warm_s) in prepared.items():
            timer = benchmark.Timer(
                "run()", globals={"run": job.run}, num_threads=torch.get_num_threads()
            )
            parts[path].append(
                timer.blocked_autorange(min_run_time=max(min_run_time / ROUNDS, warm_s))
            )
    return {
        path: benchmark.Measurement.merge(measurements)[0] for path, measurements in parts.items()
    }


def cuda_peak(job: Prepared) -> int:
    """Peak bytes one warm call allocates beyond what is allocated before it."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    job.run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def cpu_peak(case: Case) -> int:
    """Peak resident bytes of one call above those before it, in a fresh process."""
    cmd = [sys.executable, "-m", "benchmarks.run", "--peak-child", json.dumps(asdict(case))]
    out = subprocess.run(
        cmd, check=True, capture_output=True, text=True, env=child_env(), cwd=ROOT
    ).stdout
    return int(out.strip().splitlines()[-1])


def child_env() -> dict[str, str]:
    """The measuring child's environment: memory.py's, with the project root importable."""
    return {
        **CHILD_ENV,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


def peak_child(spec: str) -> int:
    """In a fresh process: the peak resident bytes of one CPU call above those before it.

    See memory.py for how.
    """
    case = Case(**json.loads(spec))
    prepared = setup(case, "cpu")
    if case.path == "compiled":
        prepared.run()  # compile first: the compiler's memory is not the call's
    return peak_rss_above_current(prepared.run)


def memory_cap(device: str) -> int:
    """Bytes a case may be predicted to need: half the available RAM (the inference module's
    reading of it), or 80% of free GPU memory."""
    if device == "cuda":
        return int(torch.cuda.mem_get_info()[0] * 0.8)
    return available_ram() // 2


def skip_reason(case: Case, records: list[dict], plan: Plan, cap: int) -> str | None:
    """Why ``case`` should not run: its time or memory extrapolated linearly from the same
    path's largest measured smaller case exceeds the caps."""
    size = work(case.bench, case.shape)
    done = [
        r
        for r in records
        if r["bench"] == case.bench
        and r["path"] == case.path
        and r["mode"] == case.mode
        and "median_s" in r
        and r["work"] < size
    ]
    if not done:
        return None
    prev = max(done, key=lambda r: r["work"])
    ratio = size / prev["work"]
    if prev["median_s"] * ratio > plan.max_call_s:
        return (
            f"predicted {prev['median_s'] * ratio:.0f} s per call (from {prev['label']}) "
            f"> cap {plan.max_call_s:g} s"
        )
    if prev["peak_bytes"] and prev["peak_bytes"] * ratio > cap:
        return (
            f"predicted peak {prev['peak_bytes'] * ratio / MIB:,.0f} MiB (from {prev['label']}) "
            f"> cap {cap / MIB:,.0f} MiB"
        )
    return None


def compare(got: list[torch.Tensor], want: list[torch.Tensor], bench: str, what: str) -> float:
    """Largest absolute difference; raises if outside the bench's tolerance."""
    atol, rtol = TOLERANCES[bench]
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(
            g, w, atol=atol, rtol=rtol, msg=lambda m: f"{what} disagrees with fused: {m}"
        )
        worst = max(worst, (g.float() - w.float()).abs().max().item())
    return worst


def seconds_of(fn: Callable[[], object], device: str) -> tuple[object, float]:
    """``fn()`` and the seconds it took (a rough timing, to plan the real one)."""
    start = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def new_record(case: Case, device: str) -> dict:
    return {
        "bench": case.bench,
        "path": case.path,
        "mode": case.mode,
        "shape": case.shape,
        "label": label(case.bench, case.shape),
        "device": device,
        "queries": queries(case.bench, case.shape),
        "work": work(case.bench, case.shape),
    }


def measure_paths(
    cases: list[Case], device: str, plan: Plan, records: list[dict], cap: int
) -> list[dict]:
    """The records of one bench, shape and mode on each path of ``cases`` (fused first): every
    path is checked against the fused path, then all are timed together, then their peak
    memory is measured. Cases predicted past the caps, or out of memory, are skipped."""
    prepared: dict[str, tuple[Prepared, float]] = {}
    done: dict[str, dict] = {}
    baseline = None
    for case in cases:
        record = new_record(case, device)
        reason = skip_reason(case, records, plan, cap)
        if reason is None and case.path != "fused" and baseline is None:
            reason = "the fused path was skipped, nothing to check against"
        if reason is None:
            try:
                job = setup(case, device)
                result, first_call_s = seconds_of(job.check, device)
                record["max_abs_diff"] = (
                    0.0
                    if baseline is None
                    else compare(
                        result,
                        baseline,
                        case.bench,
                        f"{case.bench} {record['label']} {case.mode} {case.path}",
                    )
                )
                if baseline is None:
                    baseline = result
                # The check call was the warm-up, unless it compiled: then time a warm call.
                warm_s = seconds_of(job.run, device)[1] if case.path == "compiled" else first_call_s
                if case.path == "compiled":
                    record["compile_s"] = first_call_s  # the first call, compilation included
                prepared[case.path] = (job, warm_s)
            except torch.OutOfMemoryError:
                reason = "out of memory"
        if reason is not None:
            record["skipped"] = reason
        done[case.path] = record
    measurements = time_paths(prepared, plan.min_run_time)
    for case in cases:
        if case.path not in measurements:
            continue
        m = measurements[case.path]
        record = done[case.path]
        record.update(median_s=m.median, iqr_s=m.iqr, samples=len(m.times), peak_bytes=None)
        if plan.peak is None or case.shape in plan.peak[case.bench]:
            record["peak_bytes"] = (
                cuda_peak(prepared[case.path][0]) if device == "cuda" else cpu_peak(case)
            )
    return [done[case.path] for case in cases]


def print_record(record: dict) -> None:
    head = f"{record['bench']:>7} {record['label']:>20} {record['mode']:>9} {record['path']:>9}:"
    if "skipped" in record:
        print(f"{head} skipped, {record['skipped']}", flush=True)
        return
    peak = f"peak {record['peak_bytes'] / MIB:9.1f} MiB" if record["peak_bytes"] is not None else ""
    compile_note = f"  first call {record['compile_s']:.0f} s" if "compile_s" in record else ""
    print(
        f"{head} {record['median_s'] * 1e3:10.2f} ms (IQR {record['iqr_s'] * 1e3:.2f}, "
        f"n={record['samples']})  {peak}  diff {record['max_abs_diff']:.1e}{compile_note}",
        flush=True,
    )


def run_suite(
    plan: Plan,
    device: str,
    benches: list[str],
    with_compile: bool,
    write: Callable[[list[dict]], None],
) -> list[dict]:
    """Every case of ``plan``, smaller shapes first; ``write`` gets the records as they come."""
    records: list[dict] = []
    cap = memory_cap(device)
    for bench in benches:
        start = time.perf_counter()
        for shape in sorted(plan.shapes[bench], key=lambda s: work(bench, s)):
            for mode in MODES[bench]:
                paths = [
                    p
                    for p in BENCH_PATHS[bench]
                    if p != "compiled" or (with_compile and shape in plan.compiled[bench])
                ]
                for record in measure_paths(
                    [Case(bench, p, mode, shape) for p in paths], device, plan, records, cap
                ):
                    records.append(record)
                    print_record(record)
                write(records)
        print(f"{bench}: {time.perf_counter() - start:.0f} s", flush=True)
    return records


def ordered_paths(rows: list[dict]) -> list[str]:
    """The paths of ``rows``: the known ones in PATHS order, then others (kernel variants)."""
    present = dict.fromkeys(r["path"] for r in rows)
    return [p for p in PATHS if p in present] + sorted(p for p in present if p not in PATHS)


def ordered_modes(rows: list[dict], bench: str) -> list[str]:
    """The modes of ``bench`` in ``rows``: MODES' order, then others (e.g. precisions)."""
    present = dict.fromkeys(r["mode"] for r in rows if r["bench"] == bench)
    return [m for m in MODES[bench] if m in present] + [m for m in present if m not in MODES[bench]]


def write_markdown(
    records: list[dict], machine: dict, plan_name: str, path: Path, command: str | None = None
) -> None:
    """The README's Performance tables: time (and how many times the fused path's), memory.
    ``command`` is the reproducing command (default: this suite's)."""
    quick = {"quick": " --quick", "smoke": " --smoke"}.get(plan_name, "")
    command = command or f"python -m benchmarks.run{quick} --device {machine['device']} --out DIR"
    gpu = f", {machine['gpu']}" if machine["device"] == "cuda" else ""
    lines = [
        f"Measured on {machine['cpu']}{gpu} ({machine['cores']} cores, {machine['threads']} threads), "
        f"torch {machine['torch']}, device {machine['device']}, {machine['date']}; load average "
        f"{machine['load_average_start']:.1f} at the start, {machine['load_average_end']:.1f} at the end "
        f"(other processes may have shared the cores). Suite time {machine['suite_s'] / 60:.1f} min.",
        "",
        f"Reproduce: `{command}`.",
        "",
    ]
    if machine["device"] != "cuda":
        lines += ["GPU figures: not measured in this run (CPU only).", ""]
    lines += [
        "Times are medians from torch.utils.benchmark, the paths of a case timed in turns over 3 "
        "rounds (IQR in results.json); `(xN)` is the path's "
        "time over the fused path's. Every path's results matched the fused path's before timing. "
        "Peak memory: "
        + (
            "torch.cuda.max_memory_allocated per call."
            if machine["device"] == "cuda"
            else "peak resident memory during one call above the resident memory just before "
            "it, each in a fresh process (VmHWM)."
        ),
        "End to end, `published` is the published code's decode (one neighbour at a time through "
        "the MLP, queries in chunks of 30,000), with the same weights; the op is compared with "
        "`reference`, the published query step's math as one op. "
        "LTE+ is the published fast variant (whole query grids, 1x1-conv MLP), built from the same "
        "LTE weights with its frequency channels permuted into its split layout, so it computes "
        "the same function; `torch.compile` is, for the op, the reference compiled and, end to end, "
        "the published query step compiled, with static shapes, its first call (compilation) "
        "reported apart.",
        "",
    ]
    lr = next((r["shape"]["lr"] for r in records if r["bench"] == "op"), None)
    titles = {
        "op": f"Query step (lte_basis), batch 1, random queries on {lr}x{lr} LR maps",
        "upscale": f"End-to-end upscale, EDSR-baseline-LTE, chunks of {CHUNK:,} queries "
        "(LTE+: the whole output grid at once, as published)",
        "train": "One training step (forward, L1, backward, Adam), EDSR-baseline-LTE",
    }
    lines += [
        "Headlines (the largest case measured on the most paths; time and peak memory relative "
        "to the fused path):",
        "",
        *[f"- {line}" for line in headlines(records)],
        "",
    ]
    for bench in BENCHES:
        rows = [r for r in records if r["bench"] == bench]
        if not rows:
            continue
        paths = ordered_paths(rows)
        keys = plots.ordered_cases(rows, bench)
        table = {(r["label"], r["mode"], r["path"]): r for r in rows}
        header = "| case | mode | " + " | ".join(NAMES.get(p, p) for p in paths) + " |"
        rule = "|---|---|" + "---:|" * len(paths)
        lines += [f"### {titles[bench]}", "", "Time:", "", header, rule]
        for key in keys:
            fused = table.get((*key, "fused"), {}).get("median_s")
            cells = [_time_cell(table.get((*key, p)), fused) for p in paths]
            lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
        memory_rows = []
        for key in keys:
            cells = [_memory_cell(table.get((*key, p))) for p in paths]
            if any(c != "–" for c in cells):
                memory_rows.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
        if memory_rows:
            lines += ["", "Peak memory (MiB):", "", header, rule, *memory_rows]
        compiles = [r for r in rows if "compile_s" in r]
        if compiles:
            lines += [
                "",
                "torch.compile first call (compilation included): "
                + ", ".join(f"{r['label']} {r['mode']} {r['compile_s']:.0f} s" for r in compiles)
                + ".",
            ]
        lines.append("")
    skipped = [r for r in records if "skipped" in r]
    if skipped:
        lines += (
            ["Skipped:", ""]
            + [
                f"- {r['bench']} {r['label']} {r['mode']} {NAMES.get(r['path'], r['path'])}: "
                f"{r['skipped']}"
                for r in skipped
            ]
            + [""]
        )
    if not any(r["path"] == "compiled" for r in records):
        lines += [
            "torch.compile was not run (its compile takes minutes on a small CPU; the full run "
            "measures it on a few shapes).",
            "",
        ]
    path.write_text("\n".join(lines))


def headlines(records: list[dict]) -> list[str]:
    """Per bench and mode, the fused path against the others on the largest case measured on
    the most paths."""
    measured = [r for r in records if "median_s" in r]
    lines = []
    for bench in BENCHES:
        for mode in ordered_modes(measured, bench):
            cases = {
                r["label"]: r
                for r in measured
                if r["bench"] == bench and r["mode"] == mode and r["path"] == "fused"
            }
            if not cases:
                continue
            by_case = {
                lbl: [
                    r
                    for r in measured
                    if r["bench"] == bench and r["mode"] == mode and r["label"] == lbl
                ]
                for lbl in cases
            }
            best = max(cases, key=lambda lbl: (len(by_case[lbl]), cases[lbl]["work"]))
            fused = cases[best]
            parts = [f"fused {_seconds(fused['median_s'])}" + _mib(fused["peak_bytes"])]
            for r in sorted(
                by_case[best], key=lambda r: ordered_paths(by_case[best]).index(r["path"])
            ):
                if r["path"] != "fused":
                    memory = (
                        f", x{r['peak_bytes'] / fused['peak_bytes']:.2f} memory"
                        if r["peak_bytes"] and fused["peak_bytes"]
                        else ""
                    )
                    parts.append(
                        f"{NAMES.get(r['path'], r['path'])} x{r['median_s'] / fused['median_s']:.1f} time{memory}"
                    )
            lines.append(f"{bench} {mode} {best}: " + "; ".join(parts))
    return lines


def _seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _mib(peak: int | None) -> str:
    return f", {peak / MIB:,.1f} MiB" if peak else ""


def _time_cell(record: dict | None, fused_s: float | None) -> str:
    if record is None or "skipped" in record:
        return "–" if record is None else "skipped"
    seconds = record["median_s"]
    text = _seconds(seconds)
    return (
        text if record["path"] == "fused" or not fused_s else f"{text} (x{seconds / fused_s:.1f})"
    )


def _memory_cell(record: dict | None) -> str:
    if record is None or record.get("peak_bytes") is None:
        return "–"
    return f"{record['peak_bytes'] / MIB:,.1f}"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="fewer and smaller shapes, no torch.compile (a few minutes on 2 cores)",
    )
    size.add_argument("--smoke", action="store_true", help="tiny shapes: tests the harness only")
    parser.add_argument(
        "--out", default="bench-results", help="output folder (default bench-results)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile path")
    parser.add_argument(
        "--bench",
        nargs="+",
        choices=BENCHES,
        default=list(BENCHES),
        help="which benches to run (default all)",
    )
    parser.add_argument("--peak-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peak_child:
        print(peak_child(args.peak_child))
        return []
    require_fused("run.py")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("run.py: --device cuda but CUDA is not available")

    plan_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    plan = PLANS[plan_name]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info(args.device)
    print(
        f"{plan_name} run on {machine['cpu']} ({machine['cores']} cores, {machine['threads']} threads)"
        f"{', ' + machine['gpu'] if args.device == 'cuda' else ''}, torch {machine['torch']}, "
        f"device {args.device}; results in {out}",
        flush=True,
    )

    def write(records: list[dict]) -> None:
        (out / "results.json").write_text(
            json.dumps({"machine": machine, "plan": plan_name, "records": records}, indent=1)
        )

    start = time.perf_counter()
    records = run_suite(plan, args.device, args.bench, not args.no_compile, write)
    machine.update(suite_s=time.perf_counter() - start, load_average_end=os.getloadavg()[0])
    write(records)
    write_markdown(records, machine, plan_name, out / "results.md")
    figures = plots.write_plots(records, out)
    print(
        f"wrote {out / 'results.json'}, {out / 'results.md'}, " + ", ".join(str(f) for f in figures)
    )
    print("\n".join(headlines(records)))
    print(f"suite time {machine['suite_s']:.0f} s")
    return records


if __name__ == "__main__":
    main()
