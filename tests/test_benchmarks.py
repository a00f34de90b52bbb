"""The benchmarks on tiny shapes: the baselines they time (benchmarks/lte_plus.py, LTE+, and
benchmarks/published_path.py, the published decode) must compute the LTE's function; the suite
(run.py), the end-to-end harness (end_to_end.py) and gpu_check.py run and write their results."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import end_to_end, gpu_check, lte_plus, op_variants, published_path, run
from lte_cuda import ops
from lte_cuda.coords import make_coord
from lte_cuda.models import build_preset
from lte_cuda.upscale import upscale

ROOT = Path(__file__).resolve().parent.parent
TINY_IMNET = {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [32, 32]}}


def tiny_lte():
    torch.manual_seed(0)
    return build_preset(
        "edsr-baseline-lte", {"n_resblocks": 2, "n_feats": 16}, hidden_dim=16, imnet_spec=TINY_IMNET
    ).eval()


def grid_queries(batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LTE+'s queries for a height x width output: the grid (B, H, W, 2) and one cell (B, 2)."""
    coord = make_coord((height, width)).expand(batch, -1, -1, -1)
    return coord, torch.tensor([2 / height, 2 / width]).expand(batch, 2)


# ----------------------------------------------------------------------------- LTE+


def test_split_permutation_moves_rows_first_then_columns() -> None:
    assert lte_plus.split_permutation(6).tolist() == [0, 2, 4, 1, 3, 5]


def test_lte_plus_from_lte_computes_the_lte_function() -> None:
    model = tiny_lte()
    inp = torch.rand(2, 3, 7, 9) * 2 - 1
    coord, cell = grid_queries(2, 17, 20)
    with torch.no_grad():
        flat = coord.reshape(2, -1, 2)
        want = (
            model(inp, flat, cell[:, None].expand_as(flat)).view(2, 17, 20, 3).permute(0, 3, 1, 2)
        )
        got = lte_plus.LTEPlus.from_lte(model).eval()(inp, coord, cell)
        unpermuted = lte_plus.LTEPlus.from_lte(model, split_frequencies=False).eval()(
            inp, coord, cell
        )
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    # LTE weights read in LTE+'s split layout are a different function.
    assert (unpermuted - want).abs().max() > 1e-3


def test_lte_plus_basis_matches_the_fused_op_values_and_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    coef = torch.randn(2, 8, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    freq = torch.randn(2, 8, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    phase = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    coord = torch.rand(2, 9, 7, 2, generator=g, dtype=torch.float64) * 2 - 1
    cell = torch.rand(2, 2, generator=g, dtype=torch.float64) * 0.2
    perm = lte_plus.split_permutation(8)

    xs, ws = lte_plus.lte_plus_basis(coef, freq[:, perm], phase, coord, cell)
    x_plus = torch.stack(xs, 1).flatten(3).permute(0, 3, 1, 2)  # (B, 4, C, H, W) -> (B, Q, 4, C)
    w_plus = torch.stack(ws, 1).flatten(2).permute(0, 2, 1)
    flat = coord.reshape(2, -1, 2)
    x_op, w_op = ops.lte_basis(coef, freq, phase, flat, cell[:, None].expand_as(flat).contiguous())
    torch.testing.assert_close(x_plus, x_op, atol=1e-10, rtol=0)
    torch.testing.assert_close(w_plus, w_op, atol=1e-10, rtol=0)

    grad = torch.randn(x_op.shape, generator=g, dtype=torch.float64)
    grads_plus = torch.autograd.grad((x_plus * grad).sum(), (coef, freq, phase))
    grads_op = torch.autograd.grad((x_op * grad).sum(), (coef, freq, phase))
    for got, want in zip(grads_plus, grads_op):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_lte_plus_upscale_matches_lte_upscale_beyond_the_trained_scales() -> None:
    model = tiny_lte()
    image = torch.rand(1, 3, 6, 5)
    out_size = (31, 27)  # x5.2 and x5.4: the cell is enlarged on both axes
    want = upscale(image, size=out_size[::-1], model=model, device="cpu")
    got = lte_plus.super_resolve(lte_plus.LTEPlus.from_lte(model).eval(), image, out_size)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- the suite


def check_suite_output(out: Path, records: list[dict], benches: tuple[str, ...]) -> None:
    saved = json.loads((out / "results.json").read_text())
    assert saved["records"] == json.loads(json.dumps(records))
    assert {"cpu", "cores", "torch", "gpu", "device"} <= set(saved["machine"])
    for bench in benches:
        rows = [r for r in records if r["bench"] == bench]
        baseline = "reference" if bench == "op" else "published"
        assert {r["path"] for r in rows} == {"fused", baseline, "lte-plus"}
        for r in rows:
            assert r["median_s"] > 0 and r["iqr_s"] >= 0 and r["device"] == "cpu"
            assert {"shape", "mode", "peak_bytes"} <= set(r)
    markdown = (out / "results.md").read_text()
    assert "Reproduce: `python -m benchmarks.run --smoke" in markdown
    assert "GPU figures: not measured" in markdown
    assert (out / "op_time.png").stat().st_size > 0 and (out / "speedup.png").stat().st_size > 0


def test_smoke_run_of_the_op_bench(tmp_path) -> None:
    records = run.main(["--smoke", "--bench", "op", "--out", str(tmp_path)])
    assert {(r["shape"]["queries"], r["mode"]) for r in records} == {
        (q, m) for q in (64, 256) for m in ("fwd", "fwd+bwd")
    }
    check_suite_output(tmp_path, records, ("op",))


@pytest.mark.slow
def test_smoke_run_of_every_bench(tmp_path) -> None:
    records = run.main(["--smoke", "--out", str(tmp_path)])
    check_suite_output(tmp_path, records, run.BENCHES)


def test_peak_memory_sees_the_call_and_not_the_parent() -> None:
    """The CPU peak is measured in a fresh process; a large parent must not leak into it (a
    spawned process's ru_maxrss starts at its parent's resident size)."""
    parent_ballast = torch.ones(128 << 20)  # 512 MiB resident in this process
    case = run.Case("op", "lte-plus", "fwd", run.op_shape(64, 50_000, lr=16))
    peak = run.cpu_peak(case)
    # Four MLP-input maps of 64 x 50,000 float32 values are 49 MiB, plus temporaries.
    assert 48 << 20 < peak < 400 << 20
    del parent_ballast


def test_cases_extrapolated_past_the_caps_are_skipped() -> None:
    plan = run.Plan(shapes={}, compiled={}, peak=None, min_run_time=0.1, max_call_s=5.0)
    done = [
        {
            "bench": "op",
            "path": "reference",
            "mode": "fwd",
            "label": "C=64 Q=1,000",
            "work": 64_000,
            "median_s": 0.1,
            "peak_bytes": 1 << 20,
        }
    ]
    small = run.Case("op", "reference", "fwd", run.op_shape(64, 10_000))
    large = run.Case("op", "reference", "fwd", run.op_shape(64, 100_000))
    assert run.skip_reason(small, done, plan, cap=1 << 30) is None
    assert "per call" in run.skip_reason(large, done, plan, cap=1 << 30)
    assert "peak" in run.skip_reason(small, done, plan, cap=4 << 20)
    assert (
        run.skip_reason(
            run.Case("op", "fused", "fwd", run.op_shape(64, 100_000)), done, plan, 1 << 30
        )
        is None
    )


@pytest.mark.slow
def test_compiled_path_is_checked_timed_and_its_compilation_reported_apart() -> None:
    """One torch.compile of the reference (about a minute on a small CPU)."""
    plan = run.Plan(shapes={}, compiled={}, peak=None, min_run_time=0.01, max_call_s=10.0)
    cases = [
        run.Case("op", path, "fwd", run.op_shape(16, 256, lr=8)) for path in ("fused", "compiled")
    ]
    fused, compiled = run.measure_paths(cases, "cpu", plan, [], cap=1 << 30)
    assert compiled["max_abs_diff"] < 1e-4 and compiled["median_s"] > 0
    assert compiled["compile_s"] > compiled["median_s"] and "compile_s" not in fused
    assert compiled["peak_bytes"] is not None


def test_gpu_check_reports_a_crashed_or_stalled_step_and_goes_on(tmp_path):
    # A lent GPU comes with minutes: one bad step must fail with its reason, not stop the rest.
    py = sys.executable
    steps = [
        gpu_check.Step("stalls", 1, [py, "-c", "import time; time.sleep(30)"]),
        gpu_check.Step(
            "crashes", 10, [py, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
        ),
        gpu_check.Step("passes", 10, [py, "-c", "print('parity ok')"], ok_pattern="parity ok"),
        gpu_check.Step("needs a GPU", 10, [py, "-c", "pass"], needs_cuda=True),
    ]
    with open(tmp_path / "log", "w") as log:
        gpu_check.run_all(steps, 60, "cpu", log)
    assert [s.outcome["status"] for s in steps] == ["FAIL", "FAIL", "PASS", "SKIP"]
    assert f"stopped after {gpu_check.CPU_BUDGET_FACTOR} s" in steps[0].outcome["note"]
    assert "killed by signal 11" in steps[1].outcome["note"]
    assert "=== passes" in (tmp_path / "log").read_text()


def test_gpu_check_keeps_inside_its_budget(tmp_path):
    py = sys.executable
    steps = [
        gpu_check.Step(f"sleeps {i}", 60, [py, "-c", "import time; time.sleep(5)"])
        for i in range(3)
    ]
    with open(tmp_path / "log", "w") as log:
        # 9 s to spend: the first step leaves less than a step needs to start.
        gpu_check.run_all(steps, gpu_check.RESERVE_S + gpu_check.MIN_STEP_S + 4, "cpu", log)
    assert [s.outcome["status"] for s in steps] == ["PASS", "NOT RUN", "NOT RUN"]


def test_gpu_check_dry_run_writes_the_plan(tmp_path):
    assert gpu_check.main(["--out", str(tmp_path), "--dry-run"]) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    names = [step["name"] for step in saved["steps"]]
    for expected in (
        "build",
        "tests (CUDA cases)",
        "CPU vs CUDA parity",
        "compute-sanitizer memcheck",
        "train step fp32",
        "train step bf16",
        "upscale x4 1024->4096 fp16",
        "evaluation memory x2 256->512",
    ):
        assert expected in names
    assert any(name.startswith("op variant ") for name in names)
    assert saved["records"] == [] and all("status" not in step for step in saved["steps"])
    assert "PLANNED" in (tmp_path / "summary.txt").read_text()


@pytest.mark.slow
def test_gpu_check_tiny_cpu_run_records_every_path(tmp_path):
    """A tiny --device cpu run of an op, a training and an evaluation step (about a minute)."""
    status = gpu_check.main(
        [
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
            "--tiny",
            "--runs",
            "1",
            "--budget",
            "900",
            "--only",
            "op variant default|train step fp32|evaluation",
        ]
    )
    assert status == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    records = saved["records"]
    assert {(r["bench"], r["path"]) for r in records} >= {
        ("op", "fused"),
        ("train", "fused"),
        ("train", "published"),
        ("upscale", "fused"),
        ("upscale", "lte-plus"),
    }
    for r in records:
        assert r["median_s"] > 0 and r["max_abs_diff"] is not None and r["device"] == "cpu"
    assert {s["status"] for s in saved["steps"]} == {"PASS", "SKIP"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "results.json",
        "results.md",
        "steps.log",
        "summary.txt",
    ]
    assert "train B=2 8x8 Q=16 fp32 published" in (tmp_path / "summary.txt").read_text()


# ----------------------------------------------------------------------------- published path


def test_published_path_computes_the_fused_function_and_gradients():
    model = tiny_lte().train()
    published = published_path.PublishedLTE(model).train()
    data = end_to_end.make_batch(2, 7, 30)
    want = model(data["inp"], data["coord"], data["cell"])
    got = published(data["inp"], data["coord"], data["cell"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # Same parameters (shared, not copied): the gradients land on the same tensors.
    assert {id(p) for p in published.parameters()} <= {id(p) for p in model.parameters()}
    params = [p for p in published.parameters() if p.requires_grad]
    grads = torch.autograd.grad(got.abs().sum(), params)
    want_grads = torch.autograd.grad(want.abs().sum(), params)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_published_upscale_matches_lte_upscale_in_chunks_beyond_the_trained_scales():
    model = tiny_lte()
    image = torch.rand(1, 3, 6, 5)
    out_size = (31, 27)  # x5.2 and x5.4: the cell is enlarged on both axes
    want = upscale(image, size=out_size[::-1], model=model, device="cpu")
    got = published_path.upscale(
        published_path.PublishedLTE(model).eval(), image, out_size, chunk=100
    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_end_to_end_check_stops_on_a_mismatch(tmp_path):
    spec = {"bench": "upscale", "precision": "fp32", "path": "published"}
    torch.save([torch.zeros(3)], tmp_path / "fused.pt")
    torch.save([torch.full((3,), 1e-3)], tmp_path / "published.pt")
    with pytest.raises(AssertionError, match="published disagrees with fused"):
        end_to_end.compare_outputs(str(tmp_path / "published.pt"), str(tmp_path / "fused.pt"), spec)


def test_op_variants_are_read_from_lte_cuda_ops(monkeypatch):
    monkeypatch.delattr(ops, "KERNEL_VARIANTS", raising=False)
    monkeypatch.delattr(ops, "KERNEL_ENV", raising=False)
    assert op_variants.available_variants() == (["default"], None)
    monkeypatch.setattr(ops, "KERNEL_VARIANTS", {"a": "one", "b": "two"}, raising=False)
    monkeypatch.setattr(ops, "KERNEL_ENV", "LTE_CUDA_KERNEL", raising=False)
    assert op_variants.available_variants() == (["default", "a", "b", "a,b"], "LTE_CUDA_KERNEL")


def test_bench_runtimes_table_gives_medians_spreads_and_speed_against_torch():
    from benchmarks import bench_runtimes

    def runs(*seconds):
        return [{"seconds": s, "setup": 1.0, "peak_rss": 2**30, "run_rss": 2**29} for s in seconds]

    results = {
        ("x4", "bundled", "torch", "fp32"): runs(4.0, 6.0, 5.0),
        ("x4", "bundled", "onnxruntime", "fp32"): runs(2.0, 3.0, 2.5),
    }
    lines = bench_runtimes.table(results).splitlines()
    assert lines[2].startswith("| x4 | bundled | torch | fp32 | 5.00 (4.00-6.00) | 1.00x |")
    assert "| 2.50 (2.00-3.00) | 2.00x | 1.0 | 1024 | 512 |" in lines[3]


@pytest.mark.parametrize("memory", [[], ["--reuse-memory"]])
def test_op_floor_reports_the_op_against_the_larger_floor(memory):
    # A process of its own: --reuse-memory changes malloc's settings for the whole process.
    cmd = [sys.executable, "-m", "benchmarks.op_floor", "--queries", "64", "--runs", "1", *memory]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=300)
    lines = out.stdout.splitlines()
    assert lines[1] == "memory: " + (
        "freed memory kept by malloc" if memory else "malloc's defaults"
    )
    assert "GMAC/s -> arithmetic floor" in lines[3]
    for name, line in zip(("fp32", "bf16"), lines[4:6], strict=True):
        assert line.startswith(f"x in {name}: op ") and "op / floor" in line
        ratio = float(line.rsplit(" ", 1)[1].rstrip("x"))
        assert ratio > 0


def test_mlp_variants_rate_each_block_size_against_the_gemm(capsys):
    from benchmarks import mlp_variants

    mlp_variants.main(["--rows", "512", "--runs", "1", "--blocks", "128", "512"])
    out = capsys.readouterr().out
    for dtype in ("float32", "bfloat16"):
        assert f"{dtype}: oneDNN GEMM" in out
    assert out.count("packed, blocks of 128:") == 2 and out.count("of the GEMM") == 4
