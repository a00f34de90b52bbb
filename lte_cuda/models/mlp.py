"""The LTE decoder MLP (published ``mlp``): Linear + ReLU per hidden layer, final Linear."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from .bounds import Bound, int_bound


class MLP(nn.Module):
    """``(..., in_dim) -> (..., out_dim)``; keys ``layers.{0,2,...}`` as published."""

    arg_bounds: ClassVar[dict[str, Bound]] = {
        "in_dim": int_bound(1, 8192),
        "out_dim": int_bound(1, 8192),
        "hidden_list": Bound("int-list", 1, 8192, min_items=0),
    }

    def __init__(self, in_dim: int, out_dim: int, hidden_list: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        last = in_dim
        for hidden in hidden_list:
            # In-place ReLU: the Linear before it does not need its output for backward.
            layers += [nn.Linear(last, hidden), nn.ReLU(inplace=True)]
            last = hidden
        layers.append(nn.Linear(last, out_dim))
        self.layers = nn.Sequential(*layers)

    @staticmethod
    def count_numbers(args: dict, where: str) -> int:
        """Parameters of the MLP built from ``args`` (bounds checked)."""
        missing = [key for key in ("in_dim", "out_dim", "hidden_list") if key not in args]
        if missing:
            raise ValueError(f"{where} lacks {missing}")
        dims = [args["in_dim"], *args["hidden_list"], args["out_dim"]]
        return sum(d_in * d_out + d_out for d_in, d_out in zip(dims[:-1], dims[1:], strict=True))

    @property
    def first_layer(self) -> nn.Linear:
        """The first Linear: the training path fuses it with the query op."""
        return self.layers[0]

    def forward_after_first_layer(self, hidden: torch.Tensor) -> torch.Tensor:
        """The rest of the MLP, from the first Linear's output (before its ReLU)."""
        return self.layers[1:](hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
