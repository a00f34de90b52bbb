"""How the project installs: the build backend, the sdist's contents, the build's own errors.

The full installs (`pip install .` in fresh environments) take minutes and run in .ci/run.
"""

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def project_files() -> list[str]:
    """The files a clone of this checkout has (tracked, and new ones not ignored)."""
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to list the project's files")
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [name for name in listing if (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def sdist_names(tmp_path_factory) -> set[str]:
    """Builds the sdist through the project's own backend, from a copy of the checkout."""
    copy = tmp_path_factory.mktemp("src")
    for name in project_files():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    out = tmp_path_factory.mktemp("dist")
    build = (
        "import sys; sys.path.insert(0, 'build_backend'); import torch_build; "
        f"print(torch_build.build_sdist({str(out)!r}))"
    )
    done = subprocess.run([sys.executable, "-c", build], cwd=copy, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    archive = out / done.stdout.strip().splitlines()[-1]
    with tarfile.open(archive) as tar:
        top = archive.name.removesuffix(".tar.gz")
        return {name.removeprefix(top + "/") for name in tar.getnames()}


@pytest.mark.parametrize(
    "name",
    [
        "csrc/lte_basis.h",
        "csrc/lte_basis_host.h",
        "csrc/lte_basis.cpp",
        "csrc/cpu/lte_basis_cpu.cpp",
        "csrc/cuda/lte_basis_cuda.cu",
        "build_backend/torch_build.py",
        "setup.py",
        "pyproject.toml",
        "LICENSE",
        "README.md",
        "lte_cuda/weights/default.pth",
        "lte_cuda/weights/README.md",
        "lte_cuda/assets/chelsea.png",
        "lte_cuda/assets/README.md",
        "lte_cuda/viewer/static/index.html",
        "lte_cuda/viewer/static/viewer.js",
        "configs/default-model.yaml",
    ],
)
def test_sdist_holds_what_a_build_and_a_user_need(sdist_names, name):
    assert name in sdist_names


def test_sdist_holds_every_kernel_source_and_header(sdist_names):
    sources = [n for n in project_files() if n.startswith("csrc/")]
    assert sources and all(name in sdist_names for name in sources)


def test_sdist_leaves_out_build_outputs(sdist_names):
    assert not [n for n in sdist_names if n.endswith(".so") or n.endswith("_build_info.py")]


def test_backend_finds_the_torch_of_the_target_environment(tmp_path):
    """Under pip's build isolation the installed torch is hidden (here: python -S with only
    setuptools visible); the backend makes it visible and then asks for nothing more."""
    setuptools_home = Path(__import__("setuptools").__file__).parents[1]
    for package in ("setuptools", "_distutils_hack"):
        if (setuptools_home / package).exists():
            (tmp_path / package).symlink_to(setuptools_home / package)
    probe = (
        f"import sys; sys.path[:0] = [{str(tmp_path)!r}, 'build_backend']\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('torch') is None, 'torch visible before the backend'\n"
        "import torch_build, torch\n"
        "print(torch.__version__, torch_build.get_requires_for_build_wheel())\n"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [torch.__version__, "[]"]


def run_setup(**env_changes: str) -> subprocess.CompletedProcess:
    """setup.py's checks run before anything compiles; --name stops right after them."""
    env = {**os.environ, **env_changes}
    env.pop("LTE_CUDA_SDIST", None)
    return subprocess.run(
        [sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True
    )


def last_line(stderr: str) -> str:
    """The build's own sentence: the last line, after any warning torch logs on import (a CUDA
    build of torch without a GPU warns that it found no CUDA runtime); never a traceback."""
    assert "Traceback" not in stderr
    return stderr.strip().splitlines()[-1]


def test_setup_checks_pass_on_this_machine():
    done = run_setup()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "lte_cuda"


def test_a_missing_compiler_is_one_sentence():
    done = run_setup(CXX="/nonexistent/c++")
    assert done.returncode != 0
    assert last_line(done.stderr) == (
        "lte_cuda: building needs a C++ compiler and '/nonexistent/c++' was not found; "
        "install one (e.g. apt-get install g++) or point CXX at it"
    )


def test_a_missing_ninja_is_one_sentence(tmp_path):
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        pytest.skip("no C++ compiler here")
    done = run_setup(PATH=str(tmp_path), CXX=compiler)
    assert done.returncode != 0
    assert last_line(done.stderr) == (
        "lte_cuda: building needs ninja and it is not on PATH; pip install ninja, then build again"
    )


@pytest.mark.skipif(torch.version.cuda is not None, reason="torch here is a CUDA build")
def test_force_cuda_on_a_cpu_only_torch_is_one_sentence():
    done = run_setup(FORCE_CUDA="1")
    assert done.returncode != 0
    assert last_line(done.stderr).startswith("lte_cuda: FORCE_CUDA=1 but torch ")
    assert "is a CPU-only build" in done.stderr
