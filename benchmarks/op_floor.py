"""The query op against its floor, on CPU, in one process, in turns.

    python -m benchmarks.op_floor [--runs 5] [--queries 65536]

The op (``lte_cuda.ops.lte_basis``, features of a 128x128 input with C = 256, as in x4
128->512 with an EDSR-baseline-LTE) writes x (4 neighbours x C values per query) and computes
C/2 sin/cos pairs per neighbour. Its floor, measured in the same rounds: the time to write
x's bytes into memory (``fill_`` of a buffer of x's size and dtype: the machine's write
bandwidth) and the time of that many sin and cos at torch's vectorised rate (on a block that
stays in cache, so it is compute, not memory); the floor is the larger of the two (they can
overlap). Reported for x in float32 (plain call) and in bf16 (under CPU autocast, as
precision "auto" runs it on a CPU with native bf16).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.machine import cpu_line, require_fused

CHANNELS, SIDE = 256, 128
SINCOS_BLOCK = 1 << 14  # elements per torch.sin/cos call: stays in L1/L2


def make_inputs(queries: int) -> tuple[torch.Tensor, ...]:
    from lte_cuda.coords import make_coord

    g = torch.Generator().manual_seed(0)
    coef = torch.randn(1, CHANNELS, SIDE, SIDE, generator=g).contiguous(
        memory_format=torch.channels_last
    )
    freq = torch.randn(1, CHANNELS, SIDE, SIDE, generator=g).contiguous(
        memory_format=torch.channels_last
    )
    phase = torch.randn(CHANNELS // 2, 2, generator=g)
    # The first output pixels of the x4 output in row-major order, as the pipeline queries them.
    coord = make_coord((4 * SIDE, 4 * SIDE), flatten=True)[:queries].unsqueeze(0).contiguous()
    cell = torch.full((1, queries, 2), 2 / (4 * SIDE))
    return coef, freq, phase, coord, cell


def timed(fn, times: list[float]) -> None:
    """Append the CPU seconds of one call (all threads; run with OMP_NUM_THREADS=1 on a
    shared machine for figures that other processes' load moves least)."""
    start = time.process_time()
    fn()
    times.append(time.process_time() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--queries", type=int, default=65536)
    args = parser.parse_args(argv)
    require_fused("op_floor")
    from lte_cuda import ops

    print(cpu_line())
    inputs = make_inputs(args.queries)
    pairs = args.queries * 4 * CHANNELS // 2
    block = torch.rand(SINCOS_BLOCK) * 6 - 3
    repeats = max(pairs // SINCOS_BLOCK, 1)

    def sincos():
        for _ in range(repeats):
            torch.sin(block)
            torch.cos(block)

    work = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)
        buffer = torch.empty(args.queries * 4 * CHANNELS, dtype=dtype)

        def op(autocast=autocast):
            with autocast:
                ops.lte_basis(*inputs)

        work[(name, "op")] = op
        work[(name, "write")] = lambda buffer=buffer: buffer.fill_(1.0)
    work[("both", "sincos")] = sincos
    times = {key: [] for key in work}
    with torch.inference_mode():
        for run in range(args.runs + 1):  # the first round warms up
            for key, fn in work.items():
                timed(fn, times[key] if run else [])
    med = {key: statistics.median(t) for key, t in times.items()}
    print(
        f"{args.queries:,} queries (row-major x4 output pixels), C = {CHANNELS}, {SIDE}x{SIDE} "
        f"features, {torch.get_num_threads()} threads; CPU seconds, medians of {args.runs} "
        "rounds [min-max]"
    )
    for name in ("fp32", "bf16"):
        op = times[(name, "op")]
        floor = max(med[(name, "write")], med[("both", "sincos")])
        print(
            f"x in {name}: op {med[(name, 'op')] * 1e3:.1f} ms [{min(op) * 1e3:.1f}-"
            f"{max(op) * 1e3:.1f}] = {med[(name, 'op')] / args.queries * 1e6:.3f} us/query; "
            f"write {med[(name, 'write')] * 1e3:.1f} ms, sin+cos {med[('both', 'sincos')] * 1e3:.1f} "
            f"ms; op / floor {med[(name, 'op')] / floor:.2f}x"
        )


if __name__ == "__main__":
    main()
