"""What a model argument may be: :class:`Bound`, with which every model class declares the
bounds of its arguments (``arg_bounds``), and the counting helper the classes use to say how
many numbers they hold. :mod:`.limits` checks specs against them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .norm import check_data_norm

MAX_LIST = 64  # longest depths / num_heads / hidden_list


@dataclass(frozen=True)
class Bound:
    """What one argument may be (``kind``) and its range."""

    kind: str  # 'int', 'real', 'bool', 'int-list', 'choice' or 'data-norm'
    low: float = -math.inf
    high: float = math.inf
    choices: tuple = ()
    optional: bool = False  # None allowed
    min_items: int = 1  # shortest list for 'int-list'

    def check(self, value: Any, where: str) -> None:
        """Raise ``ValueError`` naming ``where`` unless ``value`` is within the bound."""
        if value is None and self.optional:
            return
        if self.kind == "data-norm":
            check_data_norm(value, where)
        elif self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{where} must be one of {list(self.choices)}, got {value!r}")
        elif self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{where} must be true or false, got {value!r}")
        elif self.kind == "int-list":
            if not isinstance(value, (list, tuple)) or not self.min_items <= len(value) <= MAX_LIST:
                raise ValueError(
                    f"{where} must be a list of {self.min_items} to {MAX_LIST} integers, "
                    f"got {short_repr(value)}"
                )
            for i, item in enumerate(value):
                _check_number(item, f"{where}[{i}]", True, self.low, self.high)
        else:
            _check_number(value, where, self.kind == "int", self.low, self.high)


def _check_number(value: Any, where: str, integer: bool, low: float, high: float) -> None:
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        noun = "an integer" if integer else "a number"
        raise ValueError(f"{where} must be {noun} in [{low:g}, {high:g}], got {short_repr(value)}")


def short_repr(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def int_bound(low: int, high: int, optional: bool = False) -> Bound:
    return Bound("int", low, high, optional=optional)


def real_bound(low: float, high: float, optional: bool = False) -> Bound:
    return Bound("real", low, high, optional=optional)


BOOL = Bound("bool")
SCALE = int_bound(
    1, 64
)  # the unused upsampling tail's scale, accepted as published configs carry it


def conv_numbers(c_in: int, c_out: int, k: int = 3) -> int:
    """Parameters of a ``k x k`` convolution with bias."""
    return c_in * c_out * k * k + c_out
