"""Load and save LTE models in the published checkpoint format.

A checkpoint is ``torch.save({'model': {'name': 'lte', 'args': {...}, 'sd': state_dict},
'optimizer': ..., 'epoch': ...})``. Files are read with ``torch.load(weights_only=True)``, so
loading never runs code from the file, and matched against the model strictly.

A file is checked before its tensors are read: the zip archive's directory gives every entry's
uncompressed size, a first ``torch.load`` onto the meta device gives every tensor's shape, dtype
and layout without reading their data, and the state dict is matched against the model its
spec declares, built on the meta device. Only then is the file read for real, so a small file
can never cost more memory than its declared model needs.
"""

from __future__ import annotations

import contextlib
import copy
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .image_io.files import atomic_output
from .models import DEFAULT_BACKEND, LTE, check_model_spec, make_model

_SHOWN_KEYS = 8  # how many offending keys an error message lists
# The pickle and small entries, read before the declared model is known: the largest published
# training checkpoint's (SwinIR-LTE with its Adam state) are 0.2 MB; reading a crafted 1 MiB
# pickle of empty dicts grows the process by about 80 MB.
MAX_PICKLE_BYTES = 2**20
# What a file may hold per number (weight or buffer) of its declared model: the weights and two
# Adam moments, in float64 at most; plus a fixed allowance for the pickle and small entries.
BYTES_PER_MODEL_NUMBER = 3 * 8
SLACK_BYTES = 16 * 2**20
_STORAGE_ENTRY = re.compile(r"[^/]*/data/[^/]+")  # where torch.save puts tensor data


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, not an LTE checkpoint, or does not match its model."""


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN_KEYS])
    more = len(items) - _SHOWN_KEYS
    return f"{shown}, ... ({more} more)" if more > 0 else shown


def read_checkpoint(source: str | os.PathLike | Mapping) -> tuple[Any, str]:
    """The checkpoint object (tensors on the CPU) and a name for messages.

    ``source`` is a path, read with ``torch.load(weights_only=True)``, or an already loaded
    dict (returned as is). A file is checked before its tensors are read (module docstring).
    Raises :class:`CheckpointError` for a missing, truncated, empty or foreign file, one that
    holds Python objects other than tensors and plain data, sparse or complex tensors, a state
    dict that does not match its model spec, or more bytes than that model can need.
    """
    if isinstance(source, Mapping):
        return source, "<checkpoint dict>"
    path = Path(source)
    name = str(path)
    if not path.is_file():
        raise CheckpointError(f"{name}: no such file")
    stored = _archive_size(path, name)
    layout = _torch_load(path, name, "meta")  # shapes, dtypes, layouts; no tensor data read
    spec, sd = _model_entry(layout, name)
    count = _match_spec(spec, sd, name)
    _check_dense_and_real(layout, name)
    allowed = BYTES_PER_MODEL_NUMBER * count + SLACK_BYTES
    if stored > allowed:
        raise CheckpointError(
            f"{name}: holds {stored:,} bytes uncompressed, more than the {allowed:,} its model "
            f"can need ({BYTES_PER_MODEL_NUMBER} bytes per weight + {SLACK_BYTES // 2**20} MiB)"
        )
    return _torch_load(path, name, "cpu"), name


def _archive_size(path: Path, name: str) -> int:
    """The uncompressed size of everything in a ``torch.save`` zip archive, from its directory
    alone; refuses other files, and a pickle (read before the model is known) over
    :data:`MAX_PICKLE_BYTES`."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        reason = (
            "EOFError: the file is empty"
            if path.stat().st_size == 0
            else f"not a zip archive: {exc}; torch.save has written zip archives since "
            "PyTorch 1.6, re-save an older file"
        )
        raise CheckpointError(
            f"{name}: cannot be read as a weights-only PyTorch checkpoint ({reason})"
        ) from None
    small = sum(e.file_size for e in entries if not _STORAGE_ENTRY.fullmatch(e.filename))
    if small > MAX_PICKLE_BYTES:
        raise CheckpointError(
            f"{name}: cannot be read as an LTE checkpoint: its pickle and small entries hold "
            f"{small:,} bytes, more than the {MAX_PICKLE_BYTES:,} allowed"
        )
    return sum(e.file_size for e in entries)


def _torch_load(path: Path, name: str, location: str) -> Any:
    """``torch.load(path, weights_only=True)`` onto ``location``, errors as CheckpointError."""
    meta = location == "meta"
    try:
        with (
            warnings.catch_warnings(),
            _no_sparse_validation() if meta else contextlib.nullcontext(),
        ):
            # A foreign pickle's protocol warning would add lines to a one-line error.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # CPU first: the model is built there, and files saved on a GPU load without one.
            return torch.load(path, map_location=location, weights_only=True)
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


@contextlib.contextmanager
def _no_sparse_validation():
    """Skip torch's end-of-load check of sparse tensors' indices (torch 2.14 runs it on every
    weights-only load): a meta load holds no indices to check, and ``_check_dense_and_real``
    then refuses every sparse tensor by name before anything is read for real."""
    utils = torch._utils
    validate = getattr(utils, "_validate_loaded_sparse_tensors", None)
    pending = getattr(utils, "_sparse_tensors_to_validate", None)
    if validate is None or pending is None:
        yield
        return
    utils._validate_loaded_sparse_tensors = lambda weights_only=False: pending.clear()
    try:
        yield
    finally:
        utils._validate_loaded_sparse_tensors = validate


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


def _match_spec(spec: dict, sd: Mapping, name: str) -> int:
    """The number of weights and buffers ``spec`` declares, after refusing a state dict that
    cannot be that model's, before the model is allocated: a state dict holding another count
    of numbers is matched against the model built on the meta device, for the message."""
    try:
        count = check_model_spec(spec)  # from the args alone: nothing is built
    except ValueError as exc:
        raise CheckpointError(f"{name}: model args cannot build an LTE: {exc}") from None
    tensors = [v for v in sd.values() if isinstance(v, torch.Tensor)]
    if len(tensors) != len(sd) or sum(v.numel() for v in tensors) != count:
        try:
            with torch.device("meta"):
                expected = make_model(spec).state_dict()
        except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{name}: model args cannot build an LTE: {exc}") from exc
        _check_state_dict(sd, expected, name)  # names the keys and shapes that differ
    return count


def _layout_problem(tensor: torch.Tensor) -> str | None:
    """Why a tensor cannot be a model weight or optimizer state, or None."""
    if tensor.layout != torch.strided or tensor.is_nested:
        return f"a {str(tensor.layout).removeprefix('torch.')} tensor (not dense)"
    if tensor.is_complex():
        return f"complex ({str(tensor.dtype).removeprefix('torch.')})"
    if tensor.is_quantized:
        return f"quantized ({str(tensor.dtype).removeprefix('torch.')})"
    return None


def _type_problem(value: torch.Tensor, wanted: torch.Tensor) -> str | None:
    """Why ``value`` cannot be loaded where the model holds ``wanted``, or None."""
    problem = _layout_problem(value)
    if problem is None and value.is_floating_point() != wanted.is_floating_point():
        problem = str(value.dtype).removeprefix("torch.")
    if problem is None:
        return None
    return f"{problem} (model wants {str(wanted.dtype).removeprefix('torch.')})"


def _check_state_dict(sd: Mapping, expected: Mapping[str, torch.Tensor], name: str) -> dict:
    """Strictly compare ``sd`` with the model's ``expected`` state_dict (keys, shapes, dense
    real tensors, floating point where the model's are); returns it as a dict."""
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
    present = [k for k in expected if k in sd]
    shapes = [
        f"{k} {tuple(sd[k].shape)} (model wants {tuple(expected[k].shape)})"
        for k in present
        if sd[k].shape != expected[k].shape
    ]
    if shapes:
        problems.append(f"wrong shapes: {_listing(shapes)}")
    types = [f"{k} is {p}" for k in present if (p := _type_problem(sd[k], expected[k]))]
    if types:
        problems.append(f"wrong types: {_listing(types)}")
    if problems:
        raise CheckpointError(
            f"{name}: state_dict does not match its model args: " + "; ".join(problems)
        )
    return dict(sd)


def _check_dense_and_real(ckpt: Any, name: str) -> None:
    """Refuse a sparse, complex or quantized tensor anywhere in the checkpoint (the optimizer
    state included): torch.load would build it, and nothing here can use it."""
    stack, seen = [("checkpoint", ckpt)], set()
    while stack:
        where, value = stack.pop()
        if isinstance(value, torch.Tensor):
            problem = _layout_problem(value)
            if problem:
                raise CheckpointError(f"{name}: {where} is {problem}; expected dense real tensors")
        elif id(value) not in seen and isinstance(value, (Mapping, list, tuple)):
            seen.add(id(value))  # a pickle can make a container hold itself
            items = value.items() if isinstance(value, Mapping) else enumerate(value)
            stack.extend((f"{where}[{key!r}]", item) for key, item in items)


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

    Raises :class:`CheckpointError` (a ``ValueError``) naming the file and the problem; a state
    dict that cannot be the declared model's is refused before the model is allocated.
    """
    ckpt, read_name = read_checkpoint(source)
    name = name or read_name
    spec, sd = _model_entry(ckpt, name)
    _match_spec(spec, sd, name)  # before the model is allocated
    _check_dense_and_real(ckpt, name)
    try:
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
    written as :func:`~lte_cuda.image_io.files.atomic_output` writes (a partial file in the
    same folder, removed on an error or a SIGINT/SIGTERM), fsynced, then renamed over ``path``,
    so neither a crash nor a stop ever leaves a truncated checkpoint.
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
    # A partial file beside the target, removed on an error, SIGINT or SIGTERM; fsynced before
    # the rename, so a crash never leaves a truncated checkpoint.
    with atomic_output(path) as stream:
        torch.save(ckpt, stream)
        stream.flush()
        os.fsync(stream.fileno())
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
