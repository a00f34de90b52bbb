"""Tests of lte_cuda.bicubic: torch's bicubic resize, a strip of output rows at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from lte_cuda import bicubic
from lte_cuda.bicubic import bicubic_into


def torch_bicubic(unit: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    resized = F.interpolate(unit[None, None], size=size, mode="bicubic", align_corners=False)
    return resized[0, 0].clamp(0, 1)


@pytest.mark.parametrize(
    "in_size, out_size",
    [((13, 17), (26, 34)), ((13, 17), (40, 21)), ((100, 80), (37, 301)), ((1, 1), (4, 4))],
)
def test_strips_equal_torch_interpolate(monkeypatch, in_size, out_size) -> None:
    """Up, down, per-axis and a single pixel, over strips of a few rows (the taps of each
    strip's first and last rows lie in other strips' rows)."""
    monkeypatch.setattr(bicubic, "STRIP_VALUES", 50)
    source = torch.rand(in_size, generator=torch.Generator().manual_seed(0))
    out = torch.empty(out_size)
    bicubic_into(source, out)
    torch.testing.assert_close(out, torch_bicubic(source, out_size), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype, full", [(torch.uint8, 255), (torch.uint16, 65535)])
def test_integer_images_are_read_and_rounded_in_their_range(dtype, full) -> None:
    values = torch.randint(0, full + 1, (9, 11), generator=torch.Generator().manual_seed(1))
    source = values.to(torch.int32).to(dtype)
    out = torch.empty((20, 7), dtype=dtype)
    bicubic_into(source, out)
    expected = (torch_bicubic(values.float() / full, (20, 7)) * full).round()
    assert (out.to(torch.float32) - expected).abs().max() <= 1


PEAK_SCRIPT = textwrap.dedent(
    """
    import json
    import torch
    from lte_cuda.bicubic import bicubic_into

    def status(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

    source = torch.randint(0, 256, (2000, 2000), dtype=torch.uint8)
    out = torch.ones((6000, 6000), dtype=torch.uint8)  # touched: resident before the call
    bicubic_into(source[:50, :50], out[:150, :150])  # warm up
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak to the current resident size
    before = status("VmRSS")
    bicubic_into(source, out)
    print(json.dumps({"peak": status("VmHWM") - before}))
    """
)


def test_a_large_resize_holds_strips_not_float_images() -> None:
    """2000x2000 -> 6000x6000 uint8: F.interpolate would hold float32 copies of the input and
    the output (16 + 144 MB); the strips stay within a few tens of MB."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak")
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 << 10)},
    )
    assert json.loads(result.stdout)["peak"] < 48 << 20, result.stdout
