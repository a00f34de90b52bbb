"""Everything that needs a GPU, in one call of at most 9 minutes, written to one folder:

    python benchmarks/gpu_check.py --out DIR [--device cuda|cpu] [--dry-run] [--wheels WHEELS]
                                   [--budget SECONDS] [--tiny] [--all-tests]

Steps, each with a time budget (a step that runs past it is stopped and the next one starts;
the whole run stays inside --budget, 540 s by default, and steps that no longer fit are
reported as not run; on --device cpu each step may take 5 times its budget):

1. wheels: with --wheels, installs the wheels of that folder offline (a GPU machine has no
   internet; make the folder beforehand with ``python3 -m pip download -d .whl
   --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 PACKAGE...``
   and carry it);
2. build: the extension in place for this GPU (CXX=/usr/bin/g++: the lent machines' default
   compiler built a library that crashed formatting an error message);
3. bad input raises on CPU and CUDA tensors instead of crashing;
4. tests: the CUDA cases of the suite (``-m cuda``; --all-tests: the whole suite);
5. parity: CPU and CUDA kernels on values and gradients (float64 and float32); then bf16 and
   fp16 upscales against fp32 by the quality rule of lte_cuda.precision (whether "auto" may
   pick one on CUDA; unverified until a GPU runs it);
6. compute-sanitizer memcheck and racecheck on a small forward + backward;
7. op: every kernel variant lte_cuda.ops offers (op_variants.py), forward and fwd+bwd at the
   inference and training shapes, each against the CPU kernel and a device copy's time; the
   winner per shape and mode is printed;
8. train: one training step (EDSR-baseline-LTE, batch 16, 48x48, 2,304 queries, fwd + L1 +
   bwd + Adam) in fp32 and bf16 autocast, fused vs the published path (end_to_end.py);
9. evaluation memory of a Set5-sized x2 image (256x256 -> 512x512), fused vs LTE+;
10. upscale: x4 256->1024 and 1024->4096 in fp32 and fp16, fused vs published vs LTE+;
11. viewer: ``lte-sr view``'s numbers (bench_viewer.py: first view, further tiles, memory).

DIR receives: results.json (run.py's format: a machine block and the records of steps 7-10,
plus the steps' outcomes), results.md (run.py's tables, for the README), summary.txt (the
step table and the headline ratios) and steps.log (every step's output). Exit status 0 only
if every step that ran passed. --device cpu runs what needs no GPU (steps 7-10 on CPU);
--tiny shrinks every shape (a test of the harness); --only REGEX runs the steps whose name
matches; --dry-run prints the plan and writes it to DIR without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if not __package__:
    # Run as a file (python benchmarks/gpu_check.py): the package's modules are imported below.
    sys.path.insert(0, str(ROOT))
DEFAULT_BUDGET_S = 540
# Seconds kept back at the end for writing the results.
RESERVE_S = 10
# Steps shorter than this are not started.
MIN_STEP_S = 5
# Fresh processes per path in the end-to-end steps (medians and spreads over them).
RUNS = 2
# The step budgets are sized for a GPU machine; on --device cpu they are this many times longer.
CPU_BUDGET_FACTOR = 5


@dataclass
class Step:
    """One step: a command, its time budget, how to tell it passed, and what it records."""

    name: str
    budget_s: int
    command: list[str]
    ok_pattern: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    records_file: Path | None = None
    needs_cuda: bool = False
    outcome: dict = field(default_factory=dict)


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a step: the project root importable (in-place build, installed or not)."""
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": python_path, "PYTHONUNBUFFERED": "1", **(extra or {})}


def build_env() -> dict[str, str]:
    import torch

    cuda_home = os.environ.get("CUDA_HOME") or str(
        Path(shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc").parent.parent
    )
    env = {"FORCE_CUDA": "1", "CUDA_HOME": cuda_home, "MAX_JOBS": str(os.cpu_count() or 4)}
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        env["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    if Path("/usr/bin/g++").exists():
        env["CXX"] = "/usr/bin/g++"
    return env


def bench_steps(
    out: Path, device: str, tiny: bool, variants: list[tuple[str, dict]], runs: int = RUNS
) -> list[Step]:
    """Steps 7-10: the op's variants, the training step, evaluation memory and upscale."""

    def end_to_end(name: str, bench_args: list[str]) -> list[str]:
        return [
            sys.executable,
            "-m",
            "benchmarks.end_to_end",
            *bench_args,
            "--device",
            device,
            "--runs",
            str(runs),
            "--json",
            str(out / f"{name}.json"),
        ]

    steps = []
    for variant, env in variants:
        path = out / f"op-{variant}.json"
        steps.append(
            Step(
                f"op variant {variant}",
                40,
                [
                    sys.executable,
                    "-m",
                    "benchmarks.op_variants",
                    "--variant",
                    variant,
                    "--device",
                    device,
                    "--json",
                    str(path),
                    *(["--tiny"] if tiny else []),
                ],
                env=env,
                records_file=path,
            )
        )
    train = ["train", "--batch", "2", "--lr", "8", "--queries", "16"] if tiny else ["train"]
    sizes = (
        [("upscale-256", 8), ("upscale-1024", 16)]
        if tiny
        else [("upscale-256", 256), ("upscale-1024", 1024)]
    )
    for precision in ("fp32", "bf16"):
        name = f"train-{precision}"
        steps.append(
            Step(
                f"train step {precision}",
                60,
                end_to_end(name, [*train, "--precision", precision]),
                records_file=out / f"{name}.json",
            )
        )
    side = 8 if tiny else 256
    args = ["upscale", "--input", str(side), "--scale", "2", "--paths", "fused", "lte-plus"]
    steps.append(
        Step(
            f"evaluation memory x2 {side}->{side * 2}",
            30,
            end_to_end("evaluate", args),
            records_file=out / "evaluate.json",
        )
    )
    for stem, side in sizes:
        for precision in ("fp32", "fp16"):
            name = f"{stem}-{precision}"
            args = [
                "upscale",
                "--input",
                str(side),
                "--scale",
                "4",
                "--precision",
                precision,
                "--paths",
                "fused",
                "published",
                "lte-plus",
            ]
            steps.append(
                Step(
                    f"upscale x4 {side}->{side * 4} {precision}",
                    45 if side < 1000 else 90,
                    end_to_end(name, args),
                    records_file=out / f"{name}.json",
                )
            )
    viewer = [sys.executable, "-m", "benchmarks.bench_viewer", "--device", device, "--rounds", "2"]
    steps.append(
        Step(
            "viewer (bench_viewer)",
            60,
            viewer + (["--megapixels", "0.05", "--tiles", "2"] if tiny else []),
            r"further 256x256 LTE tiles",
        )
    )
    return steps


def plan(args: argparse.Namespace) -> list[Step]:
    """Steps 1-6 (the bench steps are planned after the build, which fixes the variants)."""
    py, me = sys.executable, str(Path(__file__).resolve())
    steps = []
    if args.wheels:
        wheels = sorted(str(p) for p in Path(args.wheels).glob("*.whl"))
        steps.append(
            Step(
                "wheels",
                60,
                [py, "-m", "pip", "install", "--no-index", "--find-links", args.wheels, *wheels],
            )
        )
    cuda = args.device == "cuda"
    steps.append(
        Step(
            "build",
            180,
            [py, "setup.py", "build_ext", "--inplace"],
            needs_cuda=True,
            env=build_env() if cuda and not args.dry_run else {},
        )
    )
    steps.append(
        Step(
            "bad input raises, no crash",
            30,
            [py, me, "--case", "bad-input"],
            "bad input ok",
            needs_cuda=True,
        )
    )
    tests = [py, "-m", "pytest", "-q", "-ra", "tests"] + ([] if args.all_tests else ["-m", "cuda"])
    steps.append(
        Step(
            "tests (CUDA cases)",
            240 if args.all_tests else 90,
            tests,
            r"\d+ passed",
            needs_cuda=True,
        )
    )
    steps.append(
        Step("CPU vs CUDA parity", 40, [py, me, "--case", "parity"], "parity ok", needs_cuda=True)
    )
    steps.append(
        Step(
            "bf16/fp16 against the quality rule",
            60,
            [py, me, "--case", "precision-quality"],
            "precision quality measured",
            needs_cuda=True,
        )
    )
    sanitizer = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    for tool in ("memcheck", "racecheck"):
        steps.append(
            Step(
                f"compute-sanitizer {tool}",
                40,
                [sanitizer, "--tool", tool, "--error-exitcode", "1", py, me, "--case", "sanitizer"],
                r"ERROR SUMMARY: 0 errors|RACECHECK SUMMARY: 0 hazards",
                needs_cuda=True,
            )
        )
    return steps


def probe_variants() -> list[tuple[str, dict]]:
    """(name, environment) of every kernel variant the built lte_cuda.ops offers, asked in a
    fresh process (this one may predate the build)."""
    code = (
        "import json; from benchmarks.op_variants import available_variants as a; "
        "print(json.dumps(a()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=python_env(), capture_output=True, text=True
    )
    if done.returncode != 0:
        return [("default", {})]
    names, env = json.loads(done.stdout.strip().splitlines()[-1])
    return [(name, {env: name} if env else {}) for name in names]


def run_step(step: Step, seconds: float, log) -> None:
    """Runs ``step`` for at most ``seconds``; fills ``step.outcome``; appends to ``log``."""
    print(f"\n=== {step.name} (budget {seconds:.0f} s): {' '.join(step.command)}", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            step.command,
            cwd=ROOT,
            env=python_env(step.env),
            text=True,
            timeout=seconds,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        output, returncode = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as expired:
        output, returncode = expired.output or "", None
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
    except OSError as error:
        output, returncode = f"could not start: {error}", 127
    elapsed = time.perf_counter() - start
    print(output[-6000:], flush=True)
    log.write(f"\n=== {step.name} ({elapsed:.1f} s, exit {returncode})\n{output}")
    passed = returncode == 0 and (
        step.ok_pattern is None or re.search(step.ok_pattern, output) is not None
    )
    last = [line for line in output.strip().splitlines() if line.strip()]
    if returncode is None:
        note = f"stopped after {seconds:.0f} s (its budget)"
    elif returncode < 0:
        note = f"killed by signal {-returncode}" + (
            f"; last output: {last[-1][:100]}" if last else ""
        )
    else:
        note = last[-1][:160] if last else ""
    step.outcome = {"status": "PASS" if passed else "FAIL", "seconds": elapsed, "note": note}


def run_all(steps: list[Step], budget_s: float, device: str, log, only: str | None = None) -> None:
    """Every step in order (those matching ``only``), inside ``budget_s`` seconds in all."""
    deadline = time.perf_counter() + budget_s - RESERVE_S
    for step in steps:
        left = deadline - time.perf_counter()
        if only and not re.search(only, step.name):
            step.outcome = {"status": "SKIP", "seconds": 0.0, "note": "not selected (--only)"}
        elif step.needs_cuda and device != "cuda":
            step.outcome = {"status": "SKIP", "seconds": 0.0, "note": "needs CUDA (--device cpu)"}
        elif left < MIN_STEP_S:
            step.outcome = {"status": "NOT RUN", "seconds": 0.0, "note": "out of time (--budget)"}
        else:
            run_step(
                step, min(step.budget_s * (1 if device == "cuda" else CPU_BUDGET_FACTOR), left), log
            )
        if step.name == "build" and step.outcome["status"] == "FAIL":
            for later in steps[steps.index(step) + 1 :]:
                later.outcome = {"status": "NOT RUN", "seconds": 0.0, "note": "the build failed"}
            return


def sanitizer_case() -> None:
    """A small forward + backward on CUDA, in every dtype, for compute-sanitizer."""
    import torch

    from lte_cuda import ops

    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        g = torch.Generator().manual_seed(0)
        coef = torch.randn(2, 16, 5, 7, generator=g).to("cuda", dtype).requires_grad_(True)
        freq = torch.randn(2, 16, 5, 7, generator=g).to("cuda", dtype).requires_grad_(True)
        phase_weight = torch.randn(8, 2, generator=g).to("cuda", dtype).requires_grad_(True)
        geometry = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        coord = (torch.rand(2, 33, 2, generator=g) * 2.4 - 1.2).to("cuda", geometry)
        cell = torch.full_like(coord, 0.05)
        x, weights = ops.lte_basis(coef, freq, phase_weight, coord, cell)
        (x.float().sum(-1) * weights.float()).sum().backward()
    torch.cuda.synchronize()
    print("sanitizer case done")


def bad_input_case() -> None:
    """A bad input raises a clear error on CPU and CUDA tensors, and does not crash.

    A crash here while the test suite's CPU runs pass means the library's C++ runtime does not
    match torch's: on the lent machines, a build with their CXX=/opt/gcc/bin/g++ segfaulted while
    formatting the message; CXX=/usr/bin/g++ (the same GCC 13.3) did not.
    """
    import torch

    from lte_cuda import ops

    for device in ("cpu", "cuda"):
        coef = torch.randn(2, 8, 5, device=device)  # 3-D: must be (B, C, h, w)
        others = (
            torch.randn(2, 8, 5, device=device),
            torch.randn(4, 2, device=device),
            torch.rand(2, 10, 2, device=device),
            torch.rand(2, 10, 2, device=device),
        )
        try:
            ops.lte_basis(coef, *others)
        except RuntimeError as error:
            print(f"{device}: raised: {str(error).splitlines()[0]}", flush=True)
        else:
            raise AssertionError(f"{device}: a 3-D coef was accepted")
    print("bad input ok")


def parity_case() -> None:
    """CPU and CUDA kernels agree on values and gradients (float64 and float32)."""
    import torch

    from lte_cuda import ops

    for dtype, atol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        g = torch.Generator().manual_seed(1)
        inputs = [
            torch.randn(4, 128, 24, 31, generator=g, dtype=dtype),
            3 * torch.randn(4, 128, 24, 31, generator=g, dtype=dtype),
            torch.randn(64, 2, generator=g, dtype=dtype),
            torch.rand(4, 20000, 2, generator=g, dtype=dtype) * 2.2 - 1.1,
            torch.rand(4, 20000, 2, generator=g, dtype=dtype) * 0.1,
        ]
        cuda_inputs = [t.cuda() for t in inputs]
        x, w = ops.lte_basis(*inputs)
        x_gpu, w_gpu = ops.lte_basis(*cuda_inputs)
        grad_x = torch.randn_like(x)
        grads = torch.ops.lte_cuda.lte_basis_backward(grad_x, *inputs)
        grads_gpu = torch.ops.lte_cuda.lte_basis_backward(grad_x.cuda(), *cuda_inputs)
        diffs = [(a.cpu() - b).abs().max().item() for a, b in zip((x_gpu, w_gpu), (x, w))]
        grad_diffs = [
            ((a.cpu() - b).abs().max() / b.abs().max()).item() for a, b in zip(grads_gpu, grads)
        ]
        print(
            f"{dtype}: max |x| diff {diffs[0]:.2e}, |weights| {diffs[1]:.2e}, "
            f"relative grad diffs {', '.join(f'{d:.2e}' for d in grad_diffs)}"
        )
        assert max(diffs) <= atol and max(grad_diffs) <= 100 * atol, "CPU/CUDA mismatch"
    print("parity ok")


def precision_quality_case() -> None:
    """bf16 and fp16 against fp32 on CUDA, by the rule "auto" needs before it may pick one
    (lte_cuda.precision: PSNR within 0.02 dB, no 8-bit value more than 2 apart), with the
    bundled model on the held-out crops at x2, x3, x4 and x2.5."""
    from benchmarks.precision_table import quality_rows
    from lte_cuda.precision import MAX_PIXEL_DELTA, MAX_PSNR_DELTA_DB
    from lte_cuda.upscale import resolve_model

    rows = quality_rows({"bundled": resolve_model(None)}, ("bf16", "fp16"), device="cuda")
    for (_, precision), row in rows.items():
        meets = row["worst_psnr_delta"] <= MAX_PSNR_DELTA_DB and row["max_pixel_delta"] <= round(
            MAX_PIXEL_DELTA * 255
        )
        print(
            f"cuda {precision}: worst PSNR delta {row['worst_psnr_delta']:.4f} dB, max 8-bit "
            f"delta {row['max_pixel_delta']:.0f}: {'meets' if meets else 'misses'} the rule"
        )
    print("precision quality measured")


# The steps that run in a process of their own (``--case NAME``).
CASES = {
    "sanitizer": sanitizer_case,
    "parity": parity_case,
    "bad-input": bad_input_case,
    "precision-quality": precision_quality_case,
}


def collect_records(steps: list[Step]) -> list[dict]:
    """The benchmark records the steps wrote (op_variants: a list; end_to_end: run.py's format)."""
    records = []
    for step in steps:
        if step.records_file is None or not step.records_file.exists():
            continue
        data = json.loads(step.records_file.read_text())
        records += data if isinstance(data, list) else data["records"]
        step.records_file.unlink()  # merged into results.json: the folder keeps few files
    return records


def winners(records: list[dict]) -> list[str]:
    """Per op shape and mode, the fastest kernel variant and its lead over the default."""
    lines = []
    ops_records = [r for r in records if r["bench"] == "op" and "median_s" in r]
    for key in dict.fromkeys((r["label"], r["mode"]) for r in ops_records):
        rows = [r for r in ops_records if (r["label"], r["mode"]) == key]
        best = min(rows, key=lambda r: r["median_s"])
        default = next((r for r in rows if r["path"] == "fused"), best)
        agreement = (
            "bit-identical to CPU"
            if best["bit_identical_to_cpu"]
            else f"max diff vs CPU {best['max_abs_diff']:.1e}"
        )
        lines.append(
            f"op {key[0]} {key[1]}: {best['variant']} wins, {best['median_s'] * 1e3:.3f} ms "
            f"({default['median_s'] / best['median_s']:.2f}x the default, "
            f"{best['times_copy_bound']:.2f}x the copy-bound time, "
            f"{agreement})"
        )
    return lines


def summary_lines(steps: list[Step], records: list[dict]) -> list[str]:
    from benchmarks.end_to_end import format_records

    lines = [
        "=== gpu_check summary",
        f"{'status':<8} {'step':<36} {'seconds':>8} {'budget':>7}  note",
    ]
    for step in steps:
        o = step.outcome or {
            "status": "PLANNED",
            "seconds": 0.0,
            "note": " ".join(step.command)[:160],
        }
        lines.append(
            f"{o['status']:<8} {step.name:<36} {o['seconds']:8.1f} {step.budget_s:7d}  {o['note']}"
        )
    lines += ["", *winners(records)]
    for bench in ("train", "upscale"):
        groups = dict.fromkeys((r["label"], r["mode"]) for r in records if r["bench"] == bench)
        for key in groups:
            lines += format_records(
                [r for r in records if r["bench"] == bench and (r["label"], r["mode"]) == key]
            )
    failed = [s.name for s in steps if s.outcome.get("status") == "FAIL"]
    lines.append("all steps that ran passed" if not failed else f"failed: {', '.join(failed)}")
    return lines


def write_results(
    out: Path, steps: list[Step], records: list[dict], device: str, started: float
) -> None:
    """results.json (run.py's format plus the steps), results.md and summary.txt in ``out``."""
    from benchmarks.machine import machine_info
    from benchmarks.run import write_markdown

    machine = machine_info(device)
    machine.update(suite_s=time.perf_counter() - started, load_average_end=os.getloadavg()[0])
    step_rows = [
        {"name": s.name, "budget_s": s.budget_s, "command": s.command, **s.outcome} for s in steps
    ]
    (out / "results.json").write_text(
        json.dumps(
            {"machine": machine, "plan": "gpu-check", "steps": step_rows, "records": records},
            indent=1,
        )
    )
    if records:
        write_markdown(
            records,
            machine,
            "gpu-check",
            out / "results.md",
            command=f"python benchmarks/gpu_check.py --device {device} --out DIR",
        )
    (out / "summary.txt").write_text("\n".join(summary_lines(steps, records)) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", help="folder for results.json, results.md, summary.txt and steps.log"
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--dry-run", action="store_true", help="print and write the plan, run nothing"
    )
    parser.add_argument("--wheels", help="folder of wheels to install offline first")
    parser.add_argument(
        "--budget",
        type=int,
        default=DEFAULT_BUDGET_S,
        help="seconds for the whole run (default %(default)s)",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: a test of the harness")
    parser.add_argument(
        "--runs",
        type=int,
        default=RUNS,
        help="fresh processes per path in the end-to-end steps (default %(default)s)",
    )
    parser.add_argument(
        "--all-tests", action="store_true", help="the whole test suite, not only its CUDA cases"
    )
    parser.add_argument(
        "--only", metavar="REGEX", help="run only the steps whose name matches (others: SKIP)"
    )
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.case and not args.out:
        parser.error("--out DIR is required")
    if args.wheels and not Path(args.wheels).is_dir():
        parser.error(f"--wheels must be a folder of .whl files, got {args.wheels!r}")
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    if args.budget < MIN_STEP_S + RESERVE_S:
        parser.error(
            f"--budget must be at least {MIN_STEP_S + RESERVE_S} seconds, got {args.budget}"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.case:
        CASES[args.case]()
        return 0
    started = time.perf_counter()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.out = str(out)
    if args.device == "cuda" and not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print(
                "gpu_check: --device cuda but no CUDA device is visible (--device cpu runs the rest)",
                file=sys.stderr,
            )
            return 2
    steps = plan(args)
    with open(out / "steps.log", "w") as log:
        if not args.dry_run:
            run_all(steps, args.budget, args.device, log, args.only)
        # The variants are those of the fresh build.
        later = bench_steps(out, args.device, args.tiny, probe_variants(), args.runs)
        if not args.dry_run:
            run_all(
                later, args.budget - (time.perf_counter() - started), args.device, log, args.only
            )
    steps += later
    records = collect_records(steps)
    write_results(out, steps, records, args.device, started)
    print("\n" + (out / "summary.txt").read_text())
    return 1 if any(s.outcome.get("status") == "FAIL" for s in steps) else 0


if __name__ == "__main__":
    sys.exit(main())
