"""The CPU and the GPU run the same arithmetic: lte_basis.h's host forms of rounding and of the
sin/cos quadrant step (vector instructions) give the bits of the device forms (the ones verified
on a GPU), over ~70 million floats and ~40 million doubles of every class."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "cpp" / "host_forms.cpp"
# The library's own flags (setup.py's compile_args), for the widest vector unit of this CPU.
FLAGS = ["-O3", "-march=native", "-std=c++20", "-fno-trapping-math", "-ffp-contract=off"]
COMPILER = shutil.which("c++") or shutil.which("g++")


def checksums(tmp_path: Path, *defines: str) -> list[str]:
    exe = tmp_path / ("device" if defines else "host")
    cmd = [COMPILER, *FLAGS, *defines, f"-I{ROOT / 'csrc'}", str(SOURCE), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return subprocess.run(
        [exe], check=True, capture_output=True, text=True, timeout=300
    ).stdout.split("\n")


@pytest.mark.skipif(COMPILER is None, reason="needs a C++ compiler (the build's own)")
def test_host_forms_give_the_device_forms_bits(tmp_path):
    host = checksums(tmp_path)
    device = checksums(tmp_path, "-DLTE_DEVICE_FORMS")
    assert host[0].startswith("float inputs") and host[1].startswith("double inputs")
    assert host == device
