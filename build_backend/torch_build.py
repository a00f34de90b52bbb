"""PEP 517 build backend: setuptools' own, with the target environment's torch visible.

A compiled torch extension must be built against the torch it will run with (the same version
and variant: its C++ ABI and ops change between releases). pip builds in an isolated
environment by default, which hides the torch installed where the package goes, so this
backend looks for that torch with the same interpreter outside the isolation (``python -I``
ignores the PYTHONPATH that pip's isolation relies on) and appends its folder to ``sys.path``:

- torch installed in the target environment: the build uses exactly it; nothing is downloaded.
- no torch there: the build asks for ``torch`` like any other build requirement, and pip installs
  the same release into the build environment as it then installs as a dependency.
- isolation off (``--no-build-isolation``) or torch already importable: nothing changes.

Making an sdist needs neither torch nor a compiler (``LTE_CUDA_SDIST`` tells setup.py).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401  (hooks used unchanged)
    build_editable,
    build_wheel,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

_PROBE = (
    "import importlib.util as u, os; s = u.find_spec('torch'); "
    "print(os.path.dirname(s.submodule_search_locations[0]) if s else '')"
)


def _target_site_folder() -> str | None:
    """The folder holding the target environment's torch package, or None."""
    try:
        found = subprocess.run(
            [sys.executable, "-I", "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return found or None


def _expose_target_torch() -> None:
    if importlib.util.find_spec("torch") is not None:
        return
    folder = _target_site_folder()
    if folder is not None:
        # Appended, so the build environment's setuptools and wheel still come first.
        sys.path.append(folder)
        importlib.invalidate_caches()


def _torch_if_missing() -> list[str]:
    return [] if importlib.util.find_spec("torch") is not None else ["torch"]


def get_requires_for_build_wheel(config_settings=None) -> list[str]:
    """Only torch, when the target environment has none (setup.py needs no setup_requires)."""
    return _torch_if_missing()


def get_requires_for_build_editable(config_settings=None) -> list[str]:
    return _torch_if_missing()


def get_requires_for_build_sdist(config_settings=None) -> list[str]:
    os.environ["LTE_CUDA_SDIST"] = "1"
    return _setuptools.get_requires_for_build_sdist(config_settings)


def build_sdist(sdist_directory, config_settings=None) -> str:
    os.environ["LTE_CUDA_SDIST"] = "1"
    return _setuptools.build_sdist(sdist_directory, config_settings)


_expose_target_torch()
