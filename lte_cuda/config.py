"""YAML configs (training and test, published layout): reading them and checking their keys.

Every problem is a :class:`ConfigError` (a ``ValueError``) of one line that names the file
and the key, so ``lte-sr train`` / ``lte-sr test`` print it instead of a traceback.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import yaml

from .data import DATASETS


class ConfigError(ValueError):
    """A config file is unreadable, not YAML, or lacks or mistypes a key."""


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


def require(mapping: Mapping, key: str, where: str) -> Any:
    """``mapping[key]``; ConfigError naming ``where`` (e.g. ``'train.yaml: train_dataset'``)
    when it is absent or null."""
    value = mapping.get(key) if isinstance(mapping, Mapping) else None
    if value is None:
        raise ConfigError(f"{where}: missing key {key!r}")
    return value


def require_mapping(mapping: Mapping, key: str, where: str) -> Mapping:
    """``mapping[key]``, which must be a mapping."""
    value = require(mapping, key, where)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
    return value


def positive_int(value: Any, name: str, where: str) -> int:
    """``value`` if it is an integer >= 1, else ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {name} must be a positive integer, got {value!r}")
    return value


def positive_number(value: Any, name: str, where: str) -> float:
    """``value`` if it is a finite number > 0, else ConfigError naming ``name``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{where}: {name} must be a positive number, got {value!r}")
    return float(value)


def check_dataset_spec(config: Mapping, key: str, where: str, batch_size: bool = True) -> None:
    """``config[key]`` holds ``dataset`` and ``wrapper`` specs (``{'name': ...}``) and, when
    ``batch_size``, a positive ``batch_size``."""
    spec = require_mapping(config, key, where)
    for part in ("dataset", "wrapper"):
        name = require(
            require_mapping(spec, part, f"{where}: {key}"), "name", f"{where}: {key}.{part}"
        )
        if name not in DATASETS:
            raise ConfigError(
                f"{where}: {key}.{part}.name: unknown dataset {name!r}; known: {sorted(DATASETS)}"
            )
    if batch_size:
        positive_int(require(spec, "batch_size", f"{where}: {key}"), f"{key}.batch_size", where)
