"""The decoder MLP's ways to run on CPU, against oneDNN's large GEMM, in one process, in turns.

    python -m benchmarks.mlp_variants [--runs 5] [--rows 65536] [--blocks 2048 8192] [--compile]

The MLP of an EDSR-baseline-LTE of the published size (256 -> 256 -> 256 -> 256 -> 3, seeded
weights) on ``--rows`` rows, per dtype (float32; bfloat16 under CPU autocast, rows already in
bf16 as the query op writes them): the project's packed oneDNN path (``models/mlp.py``) in
blocks of each ``--blocks`` size, and with ``--compile`` the plain layers compiled by
``torch.compile`` (its compilation timed apart) and the plain layers as they are (``F.linear``),
both in blocks of the project's size. Rates in GMAC/s per CPU second, beside a 2048^3 product
through oneDNN's linear on packed weights in the same dtype and rounds.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.machine import cpu_line

GEMM_SIDE = 2048


def variants(mlp: torch.nn.Module, rows: torch.Tensor, args) -> dict[str, Callable[[], object]]:
    """name -> call, for one dtype's rows."""
    from lte_cuda.models.lte import MLP_ROWS_PER_BLOCK

    def blocked(fn, block):
        return lambda: torch.cat([fn(b) for b in rows.split(block)])

    calls = {f"packed, blocks of {b}": blocked(mlp, b) for b in args.blocks}
    if args.compile:
        plain = copy.deepcopy(mlp.layers)
        start = time.perf_counter()
        compiled = torch.compile(copy.deepcopy(mlp.layers))
        compiled(rows[:MLP_ROWS_PER_BLOCK])
        print(f"  torch.compile: {time.perf_counter() - start:.1f} s to compile")
        calls[f"torch.compile, blocks of {MLP_ROWS_PER_BLOCK}"] = blocked(
            compiled, MLP_ROWS_PER_BLOCK
        )
        calls[f"F.linear, blocks of {MLP_ROWS_PER_BLOCK}"] = blocked(plain, MLP_ROWS_PER_BLOCK)
    return calls


def measure(dtype: torch.dtype, mlp: torch.nn.Module, args) -> None:
    rows = torch.randn(args.rows, mlp.first_layer.in_features).to(dtype)
    macs = args.rows * sum(
        m.in_features * m.out_features for m in mlp.modules() if isinstance(m, torch.nn.Linear)
    )
    a = torch.randn(GEMM_SIDE, GEMM_SIDE, dtype=dtype)
    packed = torch.ops.mkldnn._reorder_linear_weight(torch.randn(GEMM_SIDE, GEMM_SIDE).to(dtype))
    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)
    with torch.inference_mode(), autocast:
        calls = variants(mlp, rows, args)
        calls["oneDNN GEMM"] = lambda: torch.ops.mkldnn._linear_pointwise(
            a, packed, None, "none", [], ""
        )
        times: dict[str, list[float]] = {name: [] for name in calls}
        for run in range(args.runs + 1):  # the first round warms up
            for name, fn in calls.items():
                start = time.process_time()
                fn()
                if run:
                    times[name].append(time.process_time() - start)
    gemm = GEMM_SIDE**3 / statistics.median(times.pop("oneDNN GEMM")) / 1e9
    print(f"{str(dtype).removeprefix('torch.')}: oneDNN GEMM {gemm:.0f} GMAC/s")
    for name, t in times.items():
        rate = macs / statistics.median(t) / 1e9
        spread = f"{macs / max(t) / 1e9:.0f}-{macs / min(t) / 1e9:.0f}"
        print(f"  {name}: {rate:.0f} GMAC/s [{spread}], {rate / gemm:.0%} of the GEMM")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=1 << 16)
    parser.add_argument("--blocks", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--compile", action="store_true", help="also torch.compile and F.linear")
    args = parser.parse_args(argv)
    from lte_cuda.models import build_preset

    print(cpu_line())
    print(
        f"{args.rows:,} rows, {torch.get_num_threads()} threads; medians of {args.runs} rounds [min-max]"
    )
    torch.manual_seed(0)
    mlp = build_preset("edsr-baseline-lte").eval().imnet
    for dtype in (torch.float32, torch.bfloat16):
        measure(dtype, mlp, args)


if __name__ == "__main__":
    main()
