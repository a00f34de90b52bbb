"""The LTE decoder MLP (published ``mlp``): Linear + ReLU per hidden layer, final Linear."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """``(..., in_dim) -> (..., out_dim)``; keys ``layers.{0,2,...}`` as published."""

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

    @property
    def first_layer(self) -> nn.Linear:
        """The first Linear: the training path fuses it with the query op."""
        return self.layers[0]

    def forward_after_first_layer(self, hidden: torch.Tensor) -> torch.Tensor:
        """The rest of the MLP, from the first Linear's output (before its ReLU)."""
        return self.layers[1:](hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
