"""Builds the compiled op library lte_cuda._C; everything else is in pyproject.toml.

CPU kernels always; CUDA kernels too when the installed torch is a CUDA build and either a
GPU and nvcc are visible or FORCE_CUDA=1. The library must be built against the torch it runs
with: `pip install .` does that (build_backend/torch_build.py makes the installed torch visible
to pip's isolated build).

Environment: FORCE_CUDA=1 (build CUDA kernels without a visible GPU), DEBUG=1 (-O0 -g),
TORCH_CUDA_ARCH_LIST (read by torch; set it when no GPU is visible, e.g. "8.0;9.0"),
CUDA_HOME (the CUDA toolkit, e.g. /usr/local/cuda), CXX (the C++ compiler).
"""

import glob
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

DEBUG = os.environ.get("DEBUG", "0") == "1"
FORCE_CUDA = os.environ.get("FORCE_CUDA", "0") == "1"
# Paths relative to this folder (the build runs here), as setuptools wants them.
SOURCES = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
CUDA_SOURCES = sorted(glob.glob("csrc/cuda/*.cu"))


def fail(sentence: str) -> None:
    sys.exit(f"lte_cuda: {sentence}")


def import_torch():
    try:
        import torch
    except ImportError:
        fail(
            "building needs torch and none is importable; install torch first "
            "(pip install torch), then pip install ."
        )
    return torch


def check_tools(cpp_extension) -> None:
    """Fail in one sentence, before any compiling, when a build tool is missing."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        fail(
            f"building needs a C++ compiler and {compiler!r} was not found; install one "
            "(e.g. apt-get install g++) or point CXX at it"
        )
    if not cpp_extension.is_ninja_available():
        fail("building needs ninja and it is not on PATH; pip install ninja, then build again")


def want_cuda(torch, cuda_home) -> bool:
    if torch.version.cuda is None:
        if FORCE_CUDA:
            fail(
                f"FORCE_CUDA=1 but torch {torch.__version__} is a CPU-only build; install a "
                "CUDA build of torch or unset FORCE_CUDA"
            )
        return False
    if cuda_home is None:
        if FORCE_CUDA:
            fail("FORCE_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME (e.g. /usr/local/cuda)")
        return False
    return FORCE_CUDA or torch.cuda.is_available()


def compile_args(with_cuda: bool) -> dict[str, list[str]]:
    opt = ["-O0", "-g"] if DEBUG else ["-O3"]
    # -fno-trapping-math lets GCC vectorise the branch-free selects in lte_basis.h (the kernels
    # never read floating-point exception flags). No contraction of a * b + c into fused
    # multiply-adds on either device (-ffp-contract=off, --fmad=false), and no
    # --use_fast_math: both devices then round every operation of lte_basis.h as written, so
    # the CPU tests check the GPU's arithmetic.
    cxx = (
        opt + ([] if DEBUG else ["-g0"]) + ["-std=c++20", "-fno-trapping-math", "-ffp-contract=off"]
    )
    args = {"cxx": cxx}
    if with_cuda:
        args["nvcc"] = opt + ["-std=c++20", "--fmad=false"]
    return args


def build_command(torch, cpp_extension, with_cuda: bool):
    class BuildExtension(cpp_extension.BuildExtension):
        """torch's build_ext that also records, beside the library, what it was built against:
        lte_cuda.ops refuses a library built against another torch before loading it."""

        def run(self) -> None:
            super().run()  # builds in build_lib, then copies into the sources when inplace
            folder = Path(self.get_ext_fullpath("lte_cuda._C")).parent
            (folder / "_build_info.py").write_text(
                "# Written at build time by setup.py.\n"
                f"TORCH_VERSION = {torch.__version__!r}\n"
                f"WITH_CUDA = {with_cuda!r}\n"
            )

    return BuildExtension.with_options(use_ninja=True)


def extension_setup() -> dict:
    torch = import_torch()
    from torch.utils import cpp_extension

    check_tools(cpp_extension)
    with_cuda = want_cuda(torch, cpp_extension.CUDA_HOME)
    print(
        f"lte_cuda build: torch {torch.__version__}, CUDA kernels {'on' if with_cuda else 'off'}"
        f", {'debug' if DEBUG else 'release'}"
        + (
            f", CUDA_HOME={cpp_extension.CUDA_HOME}, TORCH_CUDA_ARCH_LIST="
            f"{os.environ.get('TORCH_CUDA_ARCH_LIST', '(all visible / default)')}"
            if with_cuda
            else ""
        )
    )
    make = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
    sources = SOURCES + (CUDA_SOURCES if with_cuda else [])
    ext = make("lte_cuda._C", sources, extra_compile_args=compile_args(with_cuda))
    return {
        "ext_modules": [ext],
        "cmdclass": {"build_ext": build_command(torch, cpp_extension, with_cuda)},
    }


# An sdist carries the sources (MANIFEST.in) and needs neither torch nor a compiler.
setup(**({} if os.environ.get("LTE_CUDA_SDIST") == "1" else extension_setup()))
