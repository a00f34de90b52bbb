"""YAML configs (training and test, published layout): reading them and the one schema that
checks every key the trainer and the tester read, before any work.

:func:`read_train_config` and :func:`read_test_config` check types, ranges, relations
(``scale_min <= scale_max``, ``sample_q`` within the smallest HR crop, one LR schedule), list
lengths (``data_norm``), the packages a dataset needs and the memory a training step or a
decode chunk takes, and return the values as a :class:`TrainConfig` / :class:`TestConfig`
with the defaults filled in. Every problem is a :class:`ConfigError` (a ``ValueError``) of one
line naming the file, the key, the value and what is allowed; a key nobody reads is reported
as one warning line on stderr and otherwise ignored.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import inspect
import math
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import yaml

from .data import DATASETS
from .distributed import is_main, local_rank, rank_device
from .inference import check_fits
from .metrics import parse_eval_type
from .models import BACKENDS, DEFAULT_BACKEND
from .models.bounds import Bound, int_bound, real_bound, short_repr
from .models.limits import check_model_spec

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# An epoch is repeat x images samples, and each epoch shuffles a permutation of them: 10,000
# repeats of DIV2K's 800 images are 8M samples (64 MB of indices); published configs use 20.
MAX_REPEAT = 10_000
MAX_INP_SIZE = 4096  # LR crop side
MAX_SCALE = 1000.0
MAX_STEPS = 10**9  # epochs, steps and milestones
MAX_WORKERS = 256
# Memory checks use lower bounds, so that no config that fits is refused: a decoded query
# holds at least its MLP input, 4 neighbours x C floats (C = 256 published: 4 KiB; measured 9 KiB
# per query for EDSR-baseline-LTE on CPU), and a trained one its MLP activations, 4 x (2C +
# hidden widths + 3) floats (20.5 KiB published; measured 34 KiB per query with the backward).
PUBLISHED_HIDDEN_DIM = 256


class ConfigError(ValueError):
    """A config file is unreadable, not YAML, or has a key that is missing or out of range."""


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config; it must be a mapping."""
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(config, dict):
        raise ConfigError(
            f"{path}: a config must be a YAML mapping of keys, got {type(config).__name__}"
        )
    return config


# ----------------------------------------------------------------------------- checked values


@dataclass(frozen=True)
class DatasetSpec:
    """A checked ``train_dataset`` / ``val_dataset`` / ``test_dataset``: the ``dataset`` and
    ``wrapper`` specs (``{'name': ..., 'args': {...}}``) as :func:`~lte_cuda.data.make_dataset`
    takes them, and the global batch size."""

    dataset: dict[str, Any]
    wrapper: dict[str, Any]
    batch_size: int


@dataclass(frozen=True)
class TrainConfig:
    """A checked training config (see :mod:`lte_cuda.train` for what each key does)."""

    raw: dict[str, Any]  # the mapping as given: what the run folder's config.yaml records
    train_dataset: DatasetSpec
    val_dataset: DatasetSpec | None
    data_norm: dict[str, Any] | None
    model: dict[str, Any]
    optimizer: dict[str, Any]
    epoch_max: int
    multi_step_lr: dict[str, Any] | None
    warmup_cosine_lr: dict[str, Any] | None
    epoch_val: int | None
    epoch_save: int | None
    resume: str | None
    init_weights: str | None
    eval_type: str | None
    eval_bsize: int | None
    seed: int
    num_workers: int
    device: str | None
    backend: str
    amp: str | None
    compile: bool
    max_steps: int | None
    time_budget: float | None
    clip_grad_norm: float | None


@dataclass(frozen=True)
class TestConfig:
    """A checked test config: the dataset, the protocol (``eval_type``), the decode chunk,
    the normalisation and the model's training maximum scale (cell enlargement)."""

    test_dataset: DatasetSpec
    eval_type: str | None
    eval_bsize: int | None
    data_norm: dict[str, Any] | None
    scale_max: float


# ----------------------------------------------------------------------------- the checks


class _Checker:
    """Reads one config, raising ConfigError ``'{source}: {key} must be ..., got ...'``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, value: Any, allowed: str) -> ConfigError:
        message = f"{key} must be {allowed}, got {short_repr(value)}"
        return ConfigError(f"{self.source}: {message}{_hint(value)}")

    def bound(self, mapping: Mapping, key: str, bound: Bound, where: str, default: Any = None):
        """``mapping[key]`` (``default`` when absent or null) checked against ``bound``."""
        value = mapping.get(key)
        if value is None:
            value = default
        if value is None and bound.optional:
            return None
        try:
            bound.check(value, f"{where}{key}")
        except ValueError as err:
            raise ConfigError(f"{self.source}: {err}{_hint(value)}") from None
        return value

    def mapping(self, mapping: Mapping, key: str, where: str = "", required: bool = True):
        value = mapping.get(key)
        if value is None and not required:
            return None
        if value is None:
            raise ConfigError(
                f"{self.source}: {where.rstrip('.') + ': ' if where else ''}missing key {key!r}"
            )
        if not isinstance(value, Mapping):
            raise self.fail(f"{where}{key}", value, "a mapping")
        return value

    def text(self, mapping: Mapping, key: str, where: str = "") -> str | None:
        """A non-empty string, or None when absent."""
        value = mapping.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise self.fail(f"{where}{key}", value, "a non-empty string")
        return value

    def positive(self, mapping: Mapping, key: str, where: str = "") -> float | None:
        """A finite number > 0, or None when absent."""
        value = mapping.get(key)
        if value is None:
            return None
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value <= 0:
            raise self.fail(f"{where}{key}", value, "a finite number > 0")
        return float(value)

    def known_keys(
        self, mapping: Mapping, known: Iterable[str], where: str = "", strict: bool = False
    ) -> None:
        """Unknown keys: an error when ``strict`` (they would reach a constructor), else one
        warning line each (from the reporting process only, under torchrun)."""
        known = tuple(known)
        for key in mapping:
            if key in known:
                continue
            close = difflib.get_close_matches(str(key), list(known), n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            if strict:
                raise ConfigError(
                    f"{self.source}: {where}{key}: unknown key{guess}; allowed: {sorted(known)}"
                )
            if is_main():
                print(
                    f"warning: {self.source}: unknown key {where}{key!r} is ignored{guess}",
                    file=sys.stderr,
                )


def _hint(value: Any) -> str:
    """What to write instead of a number YAML read as text (PyYAML reads ``1e-4``, without a
    dot, as a string)."""
    try:
        float(value if isinstance(value, str) else "x")
    except ValueError:
        return ""
    return " (YAML reads a number like 1e-4 as text: write 1.0e-4)"


def _int(low: int, high: int) -> Bound:
    """An optional integer key in [low, high] (the config's keys are optional by default)."""
    return int_bound(low, high, optional=True)


def _real(low: float, high: float) -> Bound:
    """An optional real key in [low, high]."""
    return real_bound(low, high, optional=True)


_REPEAT = _int(1, MAX_REPEAT)
_FOLDER_ARGS: dict[str, Bound | str] = {
    "split_file": "path",
    "split_key": "text",
    "first_k": _int(1, 10**9),
    "repeat": _REPEAT,
    "cache": Bound("choice", choices=("none", "in_memory", "bin"), optional=True),
}
# The arguments of each dataset and wrapper: a Bound, or 'path' / 'text' / 'names' (checked
# below); required ones are listed in _REQUIRED. They become keyword arguments, so unknown
# ones are errors.
DATASET_ARGS: dict[str, dict[str, Bound | str]] = {
    "image-folder": {"root_path": "path", **_FOLDER_ARGS},
    "paired-image-folders": {"root_path_1": "path", "root_path_2": "path", **_FOLDER_ARGS},
    "skimage-photos": {"names": "names", "repeat": _REPEAT},
}
_SAMPLING_ARGS: dict[str, Bound | str] = {
    "inp_size": _int(1, MAX_INP_SIZE),
    "augment": Bound("bool", optional=True),
    "sample_q": _int(1, 2**31 - 1),
}
WRAPPER_ARGS: dict[str, dict[str, Bound | str]] = {
    "sr-implicit-downsampled": {
        **_SAMPLING_ARGS,
        "scale_min": _real(1, MAX_SCALE),
        "scale_max": _real(1, MAX_SCALE),
    },
    "sr-implicit-paired": {**_SAMPLING_ARGS, "scale": _int(1, int(MAX_SCALE))},
}
_REQUIRED = {
    "image-folder": ("root_path",),
    "paired-image-folders": ("root_path_1", "root_path_2"),
    "skimage-photos": ("names",),
}
# The package each kind of bundled photo name needs (see lte_cuda.data.SkimagePhotos).
_PHOTO_PACKAGES = {
    "matplotlib:": ("matplotlib", "matplotlib"),
    "sklearn:": ("sklearn", "scikit-learn"),
}


def _check_dataset_spec(c: _Checker, config: Mapping, key: str, batch_default: int | None):
    """The ``key`` dataset spec as a :class:`DatasetSpec` (``batch_size`` required when
    ``batch_default`` is None)."""
    spec = c.mapping(config, key)
    c.known_keys(spec, ("dataset", "wrapper", "batch_size"), f"{key}.")
    parts = {}
    for part, table in (("dataset", DATASET_ARGS), ("wrapper", WRAPPER_ARGS)):
        where = f"{key}.{part}"
        entry = c.mapping(spec, part, f"{key}.")
        c.known_keys(entry, ("name", "args"), f"{where}.")
        name = entry.get("name")
        if name not in DATASETS:
            raise ConfigError(
                f"{c.source}: {where}.name: unknown dataset {name!r}; known: {sorted(DATASETS)}"
            )
        args = c.mapping(entry, "args", f"{where}.", required=False) or {}
        if name in table:  # a dataset registered by a user is built unchecked
            _check_args(c, args, table[name], _REQUIRED.get(name, ()), f"{where}.args.")
        parts[part] = {"name": name, "args": dict(args)}
    if batch_default is None and spec.get("batch_size") is None:
        raise ConfigError(f"{c.source}: {key}: missing key 'batch_size'")
    batch = c.bound(spec, "batch_size", _int(1, 65536), f"{key}.", default=batch_default)
    _check_sampling(c, parts["wrapper"], key)
    return DatasetSpec(parts["dataset"], parts["wrapper"], batch)


def _check_args(c: _Checker, args: Mapping, rules: Mapping, required, where: str) -> None:
    c.known_keys(args, rules, where, strict=True)
    for name in required:
        if args.get(name) is None:
            raise ConfigError(f"{c.source}: {where.rstrip('.')}: missing key {name!r}")
    for name, rule in rules.items():
        if isinstance(rule, Bound):
            c.bound(args, name, rule, where)
        elif rule in ("path", "text"):
            c.text(args, name, where)
        elif args.get(name) is not None:
            _check_photo_names(c, args[name], f"{where}{name}")
    if args.get("split_file") is not None and args.get("split_key") is None:
        raise ConfigError(f"{c.source}: {where}split_key: needed with split_file")


def _check_photo_names(c: _Checker, names: Any, key: str) -> None:
    """A list of bundled photo names whose packages are installed."""
    ok = isinstance(names, list) and 1 <= len(names) <= 1000
    if not ok or not all(isinstance(n, str) and n for n in names):
        raise c.fail(key, names, "a list of 1 to 1000 photo names")
    for name in names:
        module, package = next(
            (v for prefix, v in _PHOTO_PACKAGES.items() if name.startswith(prefix)),
            ("skimage", "scikit-image"),
        )
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"{c.source}: {key}: {name!r} needs the package {package}, which is not "
                f"installed (pip install {package})"
            )


def _check_sampling(c: _Checker, wrapper: Mapping, key: str) -> None:
    """Relations between a wrapper's arguments: the scale range, and ``sample_q`` within the
    smallest HR crop (otherwise the crops of a batch differ in size)."""
    args, where = wrapper["args"], f"{key}.wrapper.args."
    scale_min = args.get("scale_min") or 1  # paired wrappers: the pairs' scale, at least 1
    scale_max = args.get("scale_max")
    if scale_max is not None and scale_max < scale_min:
        raise ConfigError(
            f"{c.source}: {where}scale_max must be >= scale_min ({scale_min}), got {scale_max}"
        )
    inp_size, sample_q = args.get("inp_size"), args.get("sample_q")
    if inp_size is not None and sample_q is not None:
        smallest = round(inp_size * scale_min) ** 2
        if sample_q > smallest:
            raise ConfigError(
                f"{c.source}: {where}sample_q must be at most {smallest} (the pixels of the "
                f"smallest HR crop, inp_size {inp_size} x scale_min {scale_min}), got {sample_q}"
            )


NORM_PARTS = ("inp", "gt")


def _check_data_norm(c: _Checker, config: Mapping) -> dict[str, Any] | None:
    """``{'inp': {'sub': [...], 'div': [...]}, 'gt': ...}``, each list of 1 or 3 finite
    numbers, ``div`` non-zero."""
    norm = c.mapping(config, "data_norm", required=False)
    if norm is None:
        return None
    c.known_keys(norm, NORM_PARTS, "data_norm.", strict=True)
    checked = {}
    for part in NORM_PARTS:
        entry = c.mapping(norm, part, "data_norm.")
        c.known_keys(entry, ("sub", "div"), f"data_norm.{part}.", strict=True)
        checked[part] = {}
        for name in ("sub", "div"):
            value = entry.get(name)
            numbers = isinstance(value, list) and len(value) in (1, 3)
            numbers = numbers and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in value
            )
            if not numbers or (name == "div" and any(v == 0 for v in value)):
                allowed = "a list of 1 or 3 finite numbers (one per channel or for all)"
                raise c.fail(
                    f"data_norm.{part}.{name}",
                    value,
                    allowed + (", none 0" if name == "div" else ""),
                )
            checked[part][name] = list(value)
    return checked


def _check_optimizer(c: _Checker, config: Mapping) -> dict[str, Any]:
    """``{'name': 'adam', 'args': {'lr': ...}}``: a known optimizer, lr finite and > 0, and
    only arguments the optimizer takes, each a finite number, a bool or a list of numbers."""
    spec = c.mapping(config, "optimizer")
    c.known_keys(spec, ("name", "args", "sd"), "optimizer.")
    name = spec.get("name")
    if name not in OPTIMIZERS:
        raise c.fail("optimizer.name", name, f"one of {sorted(OPTIMIZERS)}")
    args = c.mapping(spec, "args", "optimizer.")
    taken = set(inspect.signature(OPTIMIZERS[name]).parameters) - {"params"}
    c.known_keys(args, taken, "optimizer.args.", strict=True)
    if args.get("lr") is None:
        raise ConfigError(f"{c.source}: optimizer.args: missing key 'lr'")
    c.positive(args, "lr", "optimizer.args.")
    for key, value in args.items():
        values = value if isinstance(value, list) else [value]
        plain = all(
            isinstance(v, bool) or (isinstance(v, (int, float)) and math.isfinite(v))
            for v in values
        )
        if not plain or (key in ("weight_decay", "momentum", "eps") and not value >= 0):
            raise c.fail(f"optimizer.args.{key}", value, "a finite number >= 0, a bool or a list")
    return {"name": name, "args": dict(args)}


def _check_schedules(c: _Checker, config: Mapping) -> tuple[dict | None, dict | None]:
    """``multi_step_lr`` (``milestones``, ``gamma``) or ``warmup_cosine_lr`` (``warmup_steps``,
    ``min_lr``, ``total_steps``), at most one."""
    multi = c.mapping(config, "multi_step_lr", required=False)
    cosine = c.mapping(config, "warmup_cosine_lr", required=False)
    if multi and cosine:
        raise ConfigError(
            f"{c.source}: multi_step_lr and warmup_cosine_lr: give one learning-rate schedule"
        )
    if multi:
        c.known_keys(multi, ("milestones", "gamma"), "multi_step_lr.", strict=True)
        milestones = Bound("int-list", 1, MAX_STEPS, min_items=0)
        c.bound(multi, "milestones", milestones, "multi_step_lr.", default=[])
        c.bound(multi, "gamma", _real(0, 1e6), "multi_step_lr.")
        multi = dict(multi)
    if cosine:
        c.known_keys(cosine, ("warmup_steps", "min_lr", "total_steps"), "warmup_cosine_lr.")
        c.bound(cosine, "warmup_steps", _int(0, MAX_STEPS), "warmup_cosine_lr.")
        c.bound(cosine, "min_lr", _real(0, 1e6), "warmup_cosine_lr.")
        c.bound(cosine, "total_steps", _int(1, MAX_STEPS), "warmup_cosine_lr.")
        cosine = dict(cosine)
    return multi or None, cosine or None


def _check_eval(c: _Checker, config: Mapping) -> tuple[str | None, int | None]:
    eval_type = config.get("eval_type")
    if eval_type is not None:
        try:
            parse_eval_type(eval_type if isinstance(eval_type, str) else repr(eval_type))
        except ValueError as err:
            raise ConfigError(f"{c.source}: {err}") from None
    return eval_type, c.bound(config, "eval_bsize", _int(1, 2**31 - 1), "")


TRAIN_KEYS = (
    "train_dataset", "val_dataset", "data_norm", "model", "optimizer", "epoch_max",
    "multi_step_lr", "warmup_cosine_lr", "epoch_val", "epoch_save", "resume", "init_weights",
    "eval_type", "eval_bsize", "seed", "num_workers", "device", "backend", "amp", "compile",
    "max_steps", "time_budget", "clip_grad_norm",
)  # fmt: skip
TEST_KEYS = ("test_dataset", "eval_type", "eval_bsize", "data_norm", "scale_max")


def read_train_config(config: Mapping, source: str = "config") -> TrainConfig:
    """``config`` checked as a training config (``source`` names it in messages), before any
    work: :class:`ConfigError` for a missing or bad key, one warning line per unknown key."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{source}: a config must be a mapping of keys, got {short_repr(config)}")
    c = _Checker(source)
    c.known_keys(config, TRAIN_KEYS)
    train_set = _check_dataset_spec(c, config, "train_dataset", None)
    val_set = None
    if config.get("val_dataset") is not None:
        val_set = _check_dataset_spec(c, config, "val_dataset", None)
    model = c.mapping(config, "model")
    try:
        check_model_spec(model)
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from None
    if config.get("epoch_max") is None:
        raise ConfigError(f"{source}: missing key 'epoch_max'")
    multi, cosine = _check_schedules(c, config)
    eval_type, eval_bsize = _check_eval(c, config)
    step = _int(1, MAX_STEPS)
    checked = TrainConfig(
        raw=copy.deepcopy(dict(config)),
        train_dataset=train_set,
        val_dataset=val_set,
        data_norm=_check_data_norm(c, config),
        model=dict(model),
        optimizer=_check_optimizer(c, config),
        epoch_max=c.bound(config, "epoch_max", step, ""),
        multi_step_lr=multi,
        warmup_cosine_lr=cosine,
        epoch_val=c.bound(config, "epoch_val", step, ""),
        epoch_save=c.bound(config, "epoch_save", step, ""),
        resume=c.text(config, "resume"),
        init_weights=c.text(config, "init_weights"),
        eval_type=eval_type,
        eval_bsize=eval_bsize,
        seed=c.bound(config, "seed", _int(0, 2**63 - 1), "", default=0),
        num_workers=c.bound(
            config, "num_workers", _int(0, MAX_WORKERS), "", default=min(8, os.cpu_count() or 1)
        ),
        device=c.text(config, "device"),
        backend=c.bound(config, "backend", Bound("choice", choices=BACKENDS), "", DEFAULT_BACKEND),
        amp=c.bound(config, "amp", Bound("choice", choices=tuple(AMP_DTYPES), optional=True), ""),
        compile=c.bound(config, "compile", Bound("bool"), "", default=False),
        max_steps=c.bound(config, "max_steps", step, ""),
        time_budget=c.positive(config, "time_budget"),
        clip_grad_norm=c.positive(config, "clip_grad_norm"),
    )
    _check_train_memory(c, checked)
    return checked


def read_test_config(config: Mapping, source: str = "config") -> TestConfig:
    """``config`` checked as a test config, like :func:`read_train_config`."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{source}: a config must be a mapping of keys, got {short_repr(config)}")
    c = _Checker(source)
    c.known_keys(config, TEST_KEYS)
    test_set = _check_dataset_spec(c, config, "test_dataset", 1)
    eval_type, eval_bsize = _check_eval(c, config)
    if eval_bsize is not None:  # the model is not known yet: a published one's C
        nbytes = eval_bsize * 4 * PUBLISHED_HIDDEN_DIM * 4
        _check_fits(c, nbytes, None, f"eval_bsize: a chunk of {eval_bsize} queries")
    return TestConfig(
        test_dataset=test_set,
        eval_type=eval_type,
        eval_bsize=eval_bsize,
        data_norm=_check_data_norm(c, config),
        scale_max=c.bound(config, "scale_max", _real(1, MAX_SCALE), "", default=4),
    )


# ----------------------------------------------------------------------------- memory


def step_bytes(config: TrainConfig, spec: DatasetSpec, backward: bool) -> int | None:
    """A lower bound on the bytes of one step over ``spec``'s batches (None when the crops are
    whole images of unknown size): the queries' MLP activations when training, their MLP input
    when only decoding (validation, in chunks of ``eval_bsize``)."""
    args = spec.wrapper["args"]
    inp_size = args.get("inp_size")
    if inp_size is None:
        return None
    scale_max = args.get("scale_max") or args.get("scale_min") or 1
    queries = spec.batch_size * (args.get("sample_q") or round(inp_size * scale_max) ** 2)
    model_args = config.model.get("args") or {}
    hidden = model_args.get("hidden_dim", PUBLISHED_HIDDEN_DIM)
    if not backward:
        return min(queries, config.eval_bsize or queries) * 4 * hidden * 4
    imnet_args = (model_args.get("imnet_spec") or {}).get("args") or {}
    widths = 2 * hidden + sum(imnet_args.get("hidden_list", [])) + 3
    return queries * 4 * widths * 4


def _check_train_memory(c: _Checker, config: TrainConfig) -> None:
    for key, spec, backward in (
        ("train_dataset", config.train_dataset, True),
        ("val_dataset", config.val_dataset, False),
    ):
        nbytes = None if spec is None else step_bytes(config, spec, backward)
        if nbytes is not None:
            args = spec.wrapper["args"]
            what = (
                f"{key}: a step of batch_size {spec.batch_size} x sample_q "
                f"{args.get('sample_q')} (inp_size {args.get('inp_size')})"
            )
            _check_fits(c, nbytes, config.device, what)


def _check_fits(c: _Checker, nbytes: int, device: str | None, what: str) -> None:
    """ConfigError unless ``nbytes`` fit the memory free on this process's ``device`` (a bad
    device is its own error, from :func:`~lte_cuda.distributed.rank_device`)."""
    free_on = rank_device(device, local_rank())
    try:
        check_fits(nbytes, free_on, what)
    except ValueError as err:
        raise ConfigError(f"{c.source}: {err}; make it smaller") from None


def dataset_paths(spec: DatasetSpec) -> list[str]:
    """The folders and split file a dataset spec reads (for the check that no output is one
    of its files)."""
    args = spec.dataset["args"]
    keys = ("root_path", "root_path_1", "root_path_2", "split_file")
    return [args[k] for k in keys if args.get(k)]
