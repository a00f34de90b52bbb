"""The query op against its floor, on CPU, in one process, in turns.

    python -m benchmarks.op_floor [--runs 7] [--queries 65536] [--reuse-memory]

The op (``lte_cuda.ops.lte_basis``, features of a 128x128 input with C = 256, as in x4
128->512 with an EDSR-baseline-LTE) writes x (4 neighbours x C values per query) and computes
C/2 sin/cos pairs per neighbour. Its floor is the larger of two times measured in the same
rounds:

- **write**: x's bytes written into memory (``fill_`` of a buffer of x's size and dtype,
  allocated once: the machine's write bandwidth);
- **arithmetic**: the op's floating-point operations at the vector units' rate, the
  multiply-add rate of a large float32 matrix product (2048^3 through oneDNN's linear on
  packed weights, the fastest float32 product torch reaches on CPU) in the same rounds. Per
  pair and neighbour the CPU kernel does OPS_PER_PAIR floating-point operations (the phase's 2
  shared by 4 neighbours; phi 3; argument reduction 3: 2x + 0, rint, x - q/2; r^2 1; sin 5;
  cos 5; quadrant 4: q/4, rint, q mod 4, + 1.5 * 2^23; coef 2; the integer and select steps
  not counted), each counted as one multiply-add.

Also printed: the same number of sin and cos through torch's vectorised kernels (on a block that
stays in cache), the library's rate for the same functions.

The op allocates x at every call. With malloc's defaults glibc maps an allocation that large
afresh and returns it to the kernel when freed, so each call also faults x's pages in (2 MiB
pages: the op advises them) and the kernel zeroes them, a write pass of its own that the write
floor's buffer does not pay. ``--reuse-memory`` has malloc keep freed memory (``mallopt``: mmap
and trim thresholds raised), so that the op writes into memory already mapped, as the floor
does.

Reported for x in float32 (plain call) and in bf16 (under CPU autocast, as precision "auto" runs
it on a CPU with native bf16); the arithmetic is float32 in both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from benchmarks.machine import cpu_line, require_fused

CHANNELS, SIDE = 256, 128
SINCOS_BLOCK = 1 << 14  # elements per torch.sin/cos call: stays in L1/L2
GEMM_SIDE = 2048
WARM_UP_ROUNDS = 3
OPS_PER_PAIR = 2 / 4 + 3 + 3 + 1 + 5 + 5 + 4 + 2


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


def floor_work(queries: int) -> dict:
    """The floors' work, by key: x's bytes written per dtype, sin+cos, the GEMM."""
    block = torch.rand(SINCOS_BLOCK) * 6 - 3
    repeats = max(queries * 4 * CHANNELS // 2 // SINCOS_BLOCK, 1)
    a = torch.randn(GEMM_SIDE, GEMM_SIDE)
    packed = torch.ops.mkldnn._reorder_linear_weight(torch.randn(GEMM_SIDE, GEMM_SIDE))

    def sincos():
        for _ in range(repeats):
            torch.sin(block)
            torch.cos(block)

    work = {
        ("both", "sincos"): sincos,
        ("both", "gemm"): lambda: torch.ops.mkldnn._linear_pointwise(
            a, packed, None, "none", [], ""
        ),
    }
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        buffer = torch.empty(queries * 4 * CHANNELS, dtype=dtype)
        work[(name, "write")] = lambda buffer=buffer: buffer.fill_(1.0)
    return work


def op_work(queries: int) -> dict:
    from lte_cuda import ops

    inputs = make_inputs(queries)
    work = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)

        def op(autocast=autocast):
            with autocast:
                ops.lte_basis(*inputs)

        work[(name, "op")] = op
    return work


def report(times: dict, queries: int, runs: int) -> None:
    med = {key: statistics.median(t) for key, t in times.items()}
    pairs = queries * 4 * CHANNELS // 2
    mac_rate = GEMM_SIDE**3 / med[("both", "gemm")]
    arithmetic = pairs * OPS_PER_PAIR / mac_rate
    print(
        f"{queries:,} queries (row-major x4 output pixels), C = {CHANNELS}, {SIDE}x{SIDE} "
        f"features, {torch.get_num_threads()} threads; CPU seconds, medians of {runs} rounds "
        f"[min-max]\nvector rate: float32 GEMM {mac_rate / 1e9:.0f} GMAC/s -> arithmetic floor "
        f"{arithmetic * 1e3:.1f} ms ({OPS_PER_PAIR:g} ops x {pairs:,} pairs); torch sin+cos "
        f"of as many values {med[('both', 'sincos')] * 1e3:.1f} ms"
    )
    for name in ("fp32", "bf16"):
        op, write = times[(name, "op")], med[(name, "write")]
        floor = max(write, arithmetic)
        print(
            f"x in {name}: op {med[(name, 'op')] * 1e3:.1f} ms [{min(op) * 1e3:.1f}-"
            f"{max(op) * 1e3:.1f}] = {med[(name, 'op')] / queries * 1e6:.3f} us/query; write "
            f"{write * 1e3:.1f} ms; floor {floor * 1e3:.1f} ms; op / floor "
            f"{med[(name, 'op')] / floor:.2f}x"
        )


def keep_freed_memory() -> None:
    """glibc's malloc keeps freed blocks of any size for reuse instead of returning them to the
    kernel (M_MMAP_THRESHOLD 1 GiB, M_TRIM_THRESHOLD 2 GiB); exits where it cannot."""
    import ctypes

    m_trim_threshold, m_mmap_threshold = -1, -3
    try:
        libc = ctypes.CDLL("libc.so.6")
        done = libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 2**31 - 1)
    except (OSError, AttributeError):
        done = False
    if not done:
        sys.exit("op_floor: --reuse-memory needs glibc's mallopt")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--queries", type=int, default=65536)
    parser.add_argument(
        "--reuse-memory", action="store_true", help="malloc keeps freed memory (see above)"
    )
    args = parser.parse_args(argv)
    require_fused("op_floor")
    if args.reuse_memory:
        keep_freed_memory()
    print(cpu_line())
    print(
        "memory: " + ("freed memory kept by malloc" if args.reuse_memory else "malloc's defaults")
    )
    work = {**op_work(args.queries), **floor_work(args.queries)}
    times = {key: [] for key in work}
    with torch.inference_mode():
        # Warm-up rounds: the first calls also fault in memory that later rounds reuse.
        for run in range(args.runs + WARM_UP_ROUNDS):
            for key, fn in work.items():
                timed(fn, times[key] if run >= WARM_UP_ROUNDS else [])
    report(times, args.queries, args.runs)


if __name__ == "__main__":
    main()
