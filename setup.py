"""Builds lte_cuda and its compiled op library lte_cuda._C.

CPU kernels always; CUDA kernels too when the installed torch is a CUDA build and either a
GPU and nvcc are visible or FORCE_CUDA=1. Build against the torch you run with:

    pip install --no-build-isolation .

Environment: FORCE_CUDA=1 (build CUDA kernels without a visible GPU), DEBUG=1 (-O0 -g),
TORCH_CUDA_ARCH_LIST (read by torch; set it when no GPU is visible, e.g. "8.0;9.0"),
CUDA_HOME (the CUDA toolkit, e.g. /usr/local/cuda).
"""

import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit(
        "lte_cuda: building needs the torch you will run with, and none is importable here.\n"
        "pip's build isolation hides the installed torch: install torch first, then run\n"
        "    pip install --no-build-isolation ."
    )

ROOT = Path(__file__).parent
DEBUG = os.environ.get("DEBUG", "0") == "1"
FORCE_CUDA = os.environ.get("FORCE_CUDA", "0") == "1"


def want_cuda() -> bool:
    if torch.version.cuda is None:
        if FORCE_CUDA:
            sys.exit(f"lte_cuda: FORCE_CUDA=1 but torch {torch.__version__} is a CPU-only build")
        return False
    if CUDA_HOME is None:
        if FORCE_CUDA:
            sys.exit("lte_cuda: FORCE_CUDA=1 but no CUDA toolkit found; set CUDA_HOME")
        return False
    return FORCE_CUDA or torch.cuda.is_available()


def write_build_info(with_cuda: bool) -> None:
    """Records what the library was built against; lte_cuda.ops checks it before loading."""
    (ROOT / "lte_cuda" / "_build_info.py").write_text(
        "# Written by setup.py at build time.\n"
        f"TORCH_VERSION = {torch.__version__!r}\n"
        f"WITH_CUDA = {with_cuda!r}\n"
    )


def extension():
    with_cuda = want_cuda()
    write_build_info(with_cuda)
    opt = ["-O0", "-g"] if DEBUG else ["-O3"]
    sources = ["csrc/lte_basis.cpp", "csrc/cpu/lte_basis_cpu.cpp"]
    # -fno-trapping-math lets GCC vectorise the branch-free selects in lte_basis.h (the kernels
    # never read floating-point exception flags); results are unchanged. No contraction of
    # a * b + c into fused multiply-adds on either device (-ffp-contract=off, --fmad=false):
    # both then round every operation of lte_basis.h as written, so the CPU tests check the
    # GPU's arithmetic. With contraction, the CUDA kernel picked other weights than the
    # reference at the map's border (seen on an H200, 2026-11-26).
    cxx = opt + ([] if DEBUG else ["-g0"]) + ["-std=c++20", "-fno-trapping-math",
                                              "-ffp-contract=off"]
    print(
        f"lte_cuda build: torch {torch.__version__}, CUDA kernels {'on' if with_cuda else 'off'}"
        f", {'debug' if DEBUG else 'release'}"
        + (f", CUDA_HOME={CUDA_HOME}, TORCH_CUDA_ARCH_LIST="
           f"{os.environ.get('TORCH_CUDA_ARCH_LIST', '(all visible / default)')}"
           if with_cuda else "")
    )
    if with_cuda:
        # No --use_fast_math: CPU and CUDA must compute the same values.
        nvcc = opt + ["-std=c++20", "--fmad=false"]
        return CUDAExtension(
            "lte_cuda._C",
            sources + ["csrc/cuda/lte_basis_cuda.cu"],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        )
    return CppExtension("lte_cuda._C", sources, extra_compile_args={"cxx": cxx})


setup(
    name="lte_cuda",
    version="0.1.0",
    description="Arbitrary-scale super-resolution with LTE and a fused query kernel",
    packages=find_packages(include=["lte_cuda", "lte_cuda.*"]),
    package_data={"lte_cuda": ["weights/*.pth", "weights/*.md", "assets/*.png", "assets/*.md"]},
    python_requires=">=3.9",
    install_requires=["torch", "numpy", "pillow", "tqdm", "pyyaml"],
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["lte-sr = lte_cuda.cli:main"]},
)
