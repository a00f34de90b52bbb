"""Datasets and the published sampling wrappers, built from config specs by name.

A config names a base dataset (``image-folder``, ``paired-image-folders``, ``skimage-photos``)
and a wrapper (``sr-implicit-downsampled``, ``sr-implicit-paired``) that turns its images into
``{'inp', 'coord', 'cell', 'gt'}`` samples, the layout of the published configs::

    dataset = make_dataset(spec['dataset'])
    samples = make_dataset(spec['wrapper'], args={'dataset': dataset})
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

DATASETS: dict[str, type[Dataset]] = {}


def register(name: str) -> Callable[[type[Dataset]], type[Dataset]]:
    """Class decorator: make a dataset or wrapper buildable from a spec under ``name``."""

    def decorator(cls: type[Dataset]) -> type[Dataset]:
        if name in DATASETS:
            raise ValueError(f"dataset name {name!r} is already registered to {DATASETS[name]}")
        DATASETS[name] = cls
        return cls

    return decorator


def make_dataset(spec: dict[str, Any], args: dict[str, Any] | None = None) -> Dataset:
    """Build ``DATASETS[spec['name']](**spec['args'], **args)``; ``args`` wins on clashes."""
    name = spec["name"]
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; registered: {sorted(DATASETS)}")
    dataset_args = copy.deepcopy(spec.get("args") or {})
    dataset_args.update(args or {})
    return DATASETS[name](**dataset_args)


# Imported last: the modules register their classes with the decorator above.
from .image_folder import ImageFolder, PairedImageFolders, SkimagePhotos, load_image  # noqa: E402
from .wrappers import (  # noqa: E402
    SeededSampling,
    SRImplicitDownsampled,
    SRImplicitPaired,
    resize_bicubic,
    seed_worker,
)

__all__ = [
    "DATASETS",
    "ImageFolder",
    "PairedImageFolders",
    "SRImplicitDownsampled",
    "SeededSampling",
    "SRImplicitPaired",
    "SkimagePhotos",
    "load_image",
    "make_dataset",
    "register",
    "resize_bicubic",
    "seed_worker",
]
