"""Checks an installed lte_cuda: the compiled op library loads (not the reference fallback) and
one op call equals the reference. Run it from outside the source tree, so that the installed
package is the one imported:  cd /tmp && python /path/to/tests/smoke_installed.py
"""

import sys

import torch

import lte_cuda
from lte_cuda import ops, reference


def main() -> int:
    print(f"lte_cuda from {lte_cuda.__file__}, torch {torch.__version__}")
    if not ops.library_available():
        print(f"smoke: FAILED: {ops.LIBRARY_ERROR}")
        return 1
    gen = torch.Generator().manual_seed(0)
    batch, channels, height, width, queries = 2, 16, 5, 7, 50
    coef = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)
    freq = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)
    phase_weight = torch.randn(channels // 2, 2, generator=gen, dtype=torch.float64)
    coord = torch.rand(batch, queries, 2, generator=gen, dtype=torch.float64) * 2 - 1
    cell = torch.full((batch, queries, 2), 2 / 20, dtype=torch.float64)
    fused = ops.lte_basis(coef, freq, phase_weight, coord, cell)
    expected = reference.lte_basis(coef, freq, phase_weight, coord, cell)
    error = max((a - b).abs().max().item() for a, b in zip(fused, expected, strict=True))
    print(f"compiled op vs reference: max abs difference {error:.2e}")
    if error > 1e-10:
        print("smoke: FAILED: the compiled op differs from the reference")
        return 1
    print(f"smoke: OK (CUDA kernels: {ops.HAS_CUDA_KERNELS})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
