"""Refusing to write an output over one of the run's own input files."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def refuse_overwriting_inputs(
    out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], name: str
) -> None:
    """``ValueError`` naming the argument ``name`` when ``out`` is the same file as one of
    ``inputs`` (``None`` entries are skipped)."""
    out = Path(out)
    for source in inputs:
        if source is None:
            continue
        source = Path(source)
        if out.exists() and source.exists() and os.path.samefile(out, source):
            raise ValueError(f"{name} {out} is the input file {source}; choose another path")
