"""Everything that needs a GPU, in one command, for a machine lent with one:

    python benchmarks/gpu_check.py [--skip-bench] [--quick] [--out DIR]

1. builds the extension in place for this GPU's architecture (no network needed);
2. checks that a bad input raises rather than crashes, then runs the whole test suite, CUDA
   cases included;
3. checks CPU-vs-CUDA parity on a mid-sized case;
4. runs compute-sanitizer (memcheck, racecheck) on a small forward + backward;
5. compares forward and backward times with a device copy of the same bytes;
6. runs the op benchmark on CUDA (and the benchmark suite if present);
and prints one summary. Exit status 0 only if every step passed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# Longest one step may run (seconds): a lent GPU comes with minutes, so a slow step must not
# take the steps after it with it. Set by --step-timeout.
STEP_TIMEOUT = 300


def run(name: str, cmd: list[str], results: list, env: dict | None = None, log_dir: Path | None = None,
        ok_pattern: str | None = None) -> str:
    """Runs one step, prints its output, records (name, passed, seconds, note)."""
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    # Steps import the in-place build, installed or not.
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": python_path, **(env or {})},
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=STEP_TIMEOUT)
        output, returncode = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as expired:
        output, returncode = expired.output or "", None
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
    seconds = time.perf_counter() - start
    print(output[-20000:], flush=True)
    if log_dir:
        (log_dir / f"{re.sub(r'[^A-Za-z0-9]+', '_', name)}.log").write_text(output)
    passed = returncode == 0 and (ok_pattern is None or re.search(ok_pattern, output))
    last = [line for line in output.strip().splitlines() if line.strip()]
    if returncode is None:
        note = f"stopped after {STEP_TIMEOUT} s (--step-timeout)"
    elif returncode < 0:
        note = f"killed by signal {-returncode}" + (f"; last output: {last[-1][:100]}" if last else "")
    else:
        note = last[-1][:160] if last else ""
    results.append((name, bool(passed), seconds, note))
    return output


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
        others = (torch.randn(2, 8, 5, device=device), torch.randn(4, 2, device=device),
                  torch.rand(2, 10, 2, device=device), torch.rand(2, 10, 2, device=device))
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
        inputs = [torch.randn(4, 128, 24, 31, generator=g, dtype=dtype),
                  3 * torch.randn(4, 128, 24, 31, generator=g, dtype=dtype),
                  torch.randn(64, 2, generator=g, dtype=dtype),
                  torch.rand(4, 20000, 2, generator=g, dtype=dtype) * 2.2 - 1.1,
                  torch.rand(4, 20000, 2, generator=g, dtype=dtype) * 0.1]
        cuda_inputs = [t.cuda() for t in inputs]
        x, w = ops.lte_basis(*inputs)
        x_gpu, w_gpu = ops.lte_basis(*cuda_inputs)
        grad_x = torch.randn_like(x)
        grads = torch.ops.lte_cuda.lte_basis_backward(grad_x, *inputs)
        grads_gpu = torch.ops.lte_cuda.lte_basis_backward(grad_x.cuda(), *cuda_inputs)
        diffs = [(a.cpu() - b).abs().max().item() for a, b in zip((x_gpu, w_gpu), (x, w))]
        grad_diffs = [((a.cpu() - b).abs().max() / b.abs().max()).item()
                      for a, b in zip(grads_gpu, grads)]
        print(f"{dtype}: max |x| diff {diffs[0]:.2e}, |weights| {diffs[1]:.2e}, "
              f"relative grad diffs {', '.join(f'{d:.2e}' for d in grad_diffs)}")
        assert max(diffs) <= atol and max(grad_diffs) <= 100 * atol, "CPU/CUDA mismatch"
    print("parity ok")


def median_seconds(fn, repeats: int = 20) -> float:
    """Median of CUDA-event timings of fn() after one warm-up call."""
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def roofline_case() -> None:
    """Forward and backward time against the time a device copy of the same bytes takes.

    Bytes counted: every input read once and every output written once (float32, C=256,
    a 64x64 map). The copy bandwidth is measured here, counting bytes read plus written.
    """
    import torch

    from lte_cuda import ops

    copy_bytes = 1 << 30
    src = torch.rand(copy_bytes // 4, device="cuda")
    dst = torch.empty_like(src)
    bandwidth = 2 * copy_bytes / median_seconds(lambda: dst.copy_(src))
    print(f"device copy: {bandwidth / 1e12:.2f} TB/s (read + write)")
    del src, dst
    g = torch.Generator(device="cuda").manual_seed(0)
    for queries in (65_536, 1_000_000):
        coef = torch.randn(1, 256, 64, 64, device="cuda", generator=g)
        freq = 3 * torch.randn(1, 256, 64, 64, device="cuda", generator=g)
        phase_weight = torch.randn(128, 2, device="cuda", generator=g)
        coord = torch.rand(1, queries, 2, device="cuda", generator=g) * 2 - 1
        cell = torch.full_like(coord, 2 / 256)
        inputs = (coef, freq, phase_weight, coord, cell)
        x, weights = ops.lte_basis(*inputs)
        input_bytes = sum(t.numel() * t.element_size() for t in inputs)
        output_bytes = (x.numel() + weights.numel()) * 4
        forward = median_seconds(lambda: ops.lte_basis(*inputs))
        grad_x = torch.randn_like(x)
        backward = median_seconds(lambda: torch.ops.lte_cuda.lte_basis_backward(grad_x, *inputs))
        grad_bytes = grad_x.numel() * 4 + input_bytes + (coef.numel() * 2 + phase_weight.numel()) * 4
        for name, seconds, moved in (("forward", forward, input_bytes + output_bytes),
                                     ("backward", backward, grad_bytes)):
            floor = moved / bandwidth
            print(f"{queries:>9,} queries {name:<8} {seconds * 1e3:8.3f} ms  "
                  f"{moved / seconds / 1e12:5.2f} TB/s  {seconds / floor:5.2f}x the copy-bound time")
        del x, grad_x
    print("roofline done")


# The steps that run in a process of their own (``--case NAME``).
CASES = {"sanitizer": sanitizer_case, "parity": parity_case, "roofline": roofline_case,
         "bad-input": bad_input_case}


def main() -> int:
    global STEP_TIMEOUT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--quick", action="store_true", help="run the benchmarks with --quick (fits a 15-minute lease)")
    parser.add_argument("--step-timeout", type=int, default=STEP_TIMEOUT,
                        help="seconds one step may run (default %(default)s)")
    parser.add_argument("--pytest-arg", action="append", default=[],
                        help="extra argument for the test step (repeatable), e.g. -k EXPR")
    parser.add_argument("--out", help="folder for logs and benchmark results")
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    STEP_TIMEOUT = args.step_timeout
    if args.case:
        CASES[args.case]()
        return 0

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible", file=sys.stderr)
        return 2
    major, minor = torch.cuda.get_device_capability()
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    cuda_home = os.environ.get("CUDA_HOME") or str(Path(shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc").parent.parent)
    build_env = {"FORCE_CUDA": "1", "CUDA_HOME": cuda_home,
                 "TORCH_CUDA_ARCH_LIST": f"{major}.{minor}", "MAX_JOBS": str(os.cpu_count() or 4)}
    results: list = []
    py = sys.executable
    print(f"GPU: {torch.cuda.get_device_name()} (sm_{major}{minor}), torch {torch.__version__}")

    run("build", [py, "setup.py", "build_ext", "--inplace"], results, env=build_env, log_dir=out)
    if not results[-1][1]:
        return summarize(results)
    run("bad input raises, no crash", [py, __file__, "--case", "bad-input"], results,
        log_dir=out, ok_pattern="bad input ok")
    run("tests (CUDA cases included)", [py, "-m", "pytest", "-q", "-ra", "tests", *args.pytest_arg], results,
        log_dir=out, ok_pattern=r"\d+ passed")
    run("CPU vs CUDA parity", [py, __file__, "--case", "parity"], results, log_dir=out,
        ok_pattern="parity ok")
    sanitizer = shutil.which("compute-sanitizer") or f"{cuda_home}/bin/compute-sanitizer"
    for tool in ("memcheck", "racecheck"):
        run(f"compute-sanitizer {tool}",
            [sanitizer, "--tool", tool, "--error-exitcode", "1", py, __file__, "--case", "sanitizer"],
            results, log_dir=out, ok_pattern=r"ERROR SUMMARY: 0 errors|RACECHECK SUMMARY: 0 hazards")
    if not args.skip_bench:
        json_args = ["--json", str(out / "bench_basis.json")] if out else []
        run("copy-bound comparison", [py, __file__, "--case", "roofline"], results, log_dir=out,
            ok_pattern="roofline done")
        quick = ["--quick"] if args.quick else []
        run("op benchmark (CUDA)", [py, "benchmarks/bench_basis.py", "--device", "cuda", *quick, *json_args],
            results, log_dir=out)
        if (ROOT / "benchmarks" / "run.py").exists():
            suite_out = ["--out", str(out / "suite")] if out else []
            suite_out += quick
            run("benchmark suite (CUDA)", [py, "benchmarks/run.py", "--device", "cuda", *suite_out],
                results, log_dir=out)
    return summarize(results)


def summarize(results: list) -> int:
    print("\n=== gpu_check summary")
    for name, passed, seconds, note in results:
        print(f"{'PASS' if passed else 'FAIL'}  {name:<32} {seconds:7.1f} s  {note}")
    failed = [name for name, passed, _, _ in results if not passed]
    print("all steps passed" if not failed else f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
