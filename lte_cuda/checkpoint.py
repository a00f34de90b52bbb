"""Load and save LTE models in the published checkpoint format.

A checkpoint is ``torch.save({'model': {'name': 'lte', 'args': {...}, 'sd': state_dict},
'optimizer': ..., 'epoch': ...})``. Files are read with ``torch.load(weights_only=True)``, so
loading never runs code from the file, and matched against the model strictly.
"""

from __future__ import annotations

import copy
import os
import pickle
import re
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .models import DEFAULT_BACKEND, LTE, make_model

_SHOWN_KEYS = 8  # how many offending keys an error message lists


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, not an LTE checkpoint, or does not match its model."""


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN_KEYS])
    more = len(items) - _SHOWN_KEYS
    return f"{shown}, ... ({more} more)" if more > 0 else shown


def read_checkpoint(source: str | os.PathLike | Mapping) -> tuple[Any, str]:
    """The checkpoint object (tensors on the CPU) and a name for messages.

    ``source`` is a path, read with ``torch.load(weights_only=True)``, or an already loaded
    dict (returned as is). Raises :class:`CheckpointError` for a missing, truncated, empty or
    foreign file, and for one that holds Python objects other than tensors and plain data.
    """
    if isinstance(source, Mapping):
        return source, "<checkpoint dict>"
    path = Path(source)
    name = str(path)
    if not path.is_file():
        raise CheckpointError(f"{name}: no such file")
    try:
        with warnings.catch_warnings():
            # A foreign pickle's protocol warning would add lines to a one-line error.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # CPU first: the model is built there, and files saved on a GPU load without one.
            return torch.load(path, map_location="cpu", weights_only=True), name
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{name}: cannot be read as a weights-only PyTorch checkpoint "
            f"({_unpickling_reason(exc)}); checkpoints are read as tensors and plain data only"
        ) from None
    except Exception as exc:  # torch.load raises many types for corrupt files
        first_line = str(exc).splitlines()[0] if str(exc) else "empty or truncated"
        raise CheckpointError(
            f"{name}: cannot be read as a weights-only PyTorch checkpoint "
            f"({type(exc).__name__}: {first_line})"
        ) from exc


def _unpickling_reason(exc: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused, without its advice to load the file
    unsafely or to allow-list its globals (wrong advice for a file from an unknown source)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch bolds part of its advice
    found = re.search(r"WeightsUnpickler error: (.*?\.)(?:\s|$)", text)
    if found:
        return found.group(1)
    for line in text.splitlines():
        line = line.strip()
        if line and not re.search(
            r"weights.only|torch\.load|trust|safe_globals|documentation", line, re.I
        ):
            return line
    return "unsupported content"


def _model_entry(ckpt: Any, name: str) -> tuple[dict, Mapping]:
    """``(spec without 'sd', state_dict)`` of an LTE checkpoint, or CheckpointError."""
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("model"), Mapping):
        if isinstance(ckpt, Mapping):
            found = f"keys {_listing(sorted(map(str, ckpt)))}"
        else:
            found = type(ckpt).__name__
        raise CheckpointError(
            f"{name}: not an LTE checkpoint: expected a dict with a 'model' dict, found {found}"
        )
    entry = ckpt["model"]
    missing = [k for k in ("name", "args", "sd") if k not in entry]
    if missing:
        raise CheckpointError(f"{name}: not an LTE checkpoint: 'model' lacks {missing}")
    if entry["name"] != "lte":
        raise CheckpointError(
            f"{name}: not an LTE checkpoint: model name is {entry['name']!r}, expected 'lte' "
            "(LTE+ 'lte-fast' weights are laid out differently)"
        )
    if not isinstance(entry["args"], Mapping) or not isinstance(entry["sd"], Mapping):
        raise CheckpointError(f"{name}: 'model.args' and 'model.sd' must be dicts")
    return {"name": "lte", "args": dict(entry["args"])}, entry["sd"]


def _check_state_dict(sd: Mapping, expected: Mapping[str, torch.Tensor], name: str) -> dict:
    """Strictly compare ``sd`` with the model's ``expected`` state_dict; returns it as a dict."""
    bad_values = [str(k) for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad_values:
        raise CheckpointError(
            f"{name}: state_dict entries that are not tensors: {_listing(bad_values)}"
        )
    # DataParallel-saved state dicts prefix every key; that prefix is unambiguous to strip.
    if sd and all(str(k).startswith("module.") for k in sd):
        sd = {str(k)[len("module.") :]: v for k, v in sd.items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [str(k) for k in sd if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    shapes = [
        f"{k} {tuple(sd[k].shape)} (model wants {tuple(v.shape)})"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if shapes:
        problems.append(f"wrong shapes: {_listing(shapes)}")
    if problems:
        raise CheckpointError(
            f"{name}: state_dict does not match its model args: " + "; ".join(problems)
        )
    return dict(sd)


def load_model(
    source: str | os.PathLike | Mapping,
    map_location: str | torch.device | None = None,
    backend: str = DEFAULT_BACKEND,
    *,
    name: str | None = None,
) -> LTE:
    """Build the LTE model a checkpoint describes and load its weights, strictly.

    ``source`` is a file path or an already loaded checkpoint dict. ``map_location`` is the
    device of the returned model (default CPU). fp16 weights (``save_model(half=True)``)
    are upcast to the model's float32. The model is returned in eval mode. ``name`` is what
    messages call the checkpoint (default: the path, or ``<checkpoint dict>``).

    Raises :class:`CheckpointError` (a ``ValueError``) naming the file and the problem.
    """
    ckpt, read_name = read_checkpoint(source)
    name = name or read_name
    spec, sd = _model_entry(ckpt, name)
    try:
        # make_model checks the args against sane bounds before allocating anything.
        model = make_model(spec, backend=backend)
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{name}: model args cannot build an LTE: {exc}") from exc
    sd = _check_state_dict(sd, model.state_dict(), name)
    model.load_state_dict(sd, strict=True)
    return model.to("cpu" if map_location is None else map_location).eval()


def save_model(
    model: LTE,
    path: str | os.PathLike,
    optimizer: torch.optim.Optimizer | dict | None = None,
    epoch: int | None = None,
    extra: dict | None = None,
    half: bool = False,
) -> None:
    """Write ``model`` as a published-format checkpoint, atomically.

    ``optimizer`` is stored as published (``{'name': 'adam', 'args': {'lr': ...}, 'sd': ...}``);
    an Optimizer object is described by its class name and initial ``lr``, a dict is stored
    as given. ``extra`` adds top-level entries (they must be weights-only loadable: tensors,
    numbers, strings, containers). ``half`` stores floating weights as float16. The file is
    written to a temporary file in the same folder, fsynced, then renamed over ``path``, so a
    crash never leaves a truncated checkpoint.
    """
    sd = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        sd[key] = value.half() if half and value.is_floating_point() else value
    ckpt: dict[str, Any] = {
        "model": {"name": "lte", "args": copy.deepcopy(model.spec["args"]), "sd": sd},
        "optimizer": _optimizer_entry(optimizer),
        "epoch": epoch,
    }
    for key, value in (extra or {}).items():
        if key in ckpt:
            raise ValueError(f"extra entry {key!r} would overwrite a checkpoint field")
        ckpt[key] = value

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    # Opened outside the try ("x": never an existing file), so cleanup only removes our file;
    # open() (unlike mkstemp) gives the usual umask permissions.
    f = open(tmp, "xb")
    try:
        with f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _optimizer_entry(optimizer: torch.optim.Optimizer | dict | None) -> dict | None:
    if optimizer is None or isinstance(optimizer, dict):
        return optimizer
    return {
        "name": type(optimizer).__name__.lower(),
        "args": {"lr": optimizer.defaults["lr"]},
        "sd": optimizer.state_dict(),
    }


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable where the OS lets a folder be opened (POSIX)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
