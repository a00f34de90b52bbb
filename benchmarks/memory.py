"""Peak CPU memory of one call, as the benchmarks measure it (Linux).

The call runs in a process of its own (the caller spawns it); this module is what that
process uses. It returns malloc's free memory to the kernel (malloc_trim), resets the
kernel's resident-memory high-water mark (VmHWM) just before the call (writing 5 to
/proc/self/clear_refs), and reports the peak above the resident memory before the call. ru_maxrss cannot be used: a spawned process's ru_maxrss starts
at its parent's resident size, which hides any peak below the parent's.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

# For the spawned process's environment: blocks above 64 KiB get their own mappings and are
# returned when freed, so memory freed before the call (setup, compilation) is not silently
# reused by it, and repeated measurements agree.
CHILD_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 << 10)}


def status_bytes(field: str) -> int:
    """A ``kB`` field of /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def release_free_memory() -> None:
    """Returns the memory malloc holds free to the kernel (glibc's malloc_trim), so that a
    call reusing it touches its pages again and they count in its peak; no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak() -> int:
    """Returns free malloc memory to the kernel, resets the high-water mark to the current
    resident bytes, and returns those."""
    release_free_memory()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_bytes("VmRSS")


def peak_since(before: int) -> int:
    """Peak resident bytes since :func:`reset_peak` returned ``before``, above it."""
    return max(status_bytes("VmHWM") - before, 0)


def peak_rss_above_current(fn: Callable[[], object]) -> int:
    """Peak resident bytes while ``fn`` runs, above the resident bytes just before it."""
    before = reset_peak()
    fn()
    return peak_since(before)
