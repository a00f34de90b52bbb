"""The LTE decoder MLP (published ``mlp``): Linear + ReLU per hidden layer, final Linear.

Inference on CPU (no gradient, float32 or bf16) runs each layer as one oneDNN matrix product
on weights packed once into oneDNN's blocked layout, with the bias and ReLU fused into it. On
AVX-512 CPUs that reaches the vector units' peak, where ``F.linear`` stays at torch's general
GEMM rate (its float32 GEMM here runs at about half the peak); README "Performance" has the
figures.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from .bounds import Bound, int_bound

# Packed weights per module: (the parameters' identity and versions, per-dtype packed layers).
# Kept beside the module (not on it) so that copying or saving a module never meets them.
_PACKED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, dict]] = weakref.WeakKeyDictionary()


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
        dtype = _packed_dtype(x)
        if dtype is None:
            return self.layers(x)
        layers = self._packed_layers(dtype)
        # oneDNN's fused ReLU maps NaN to 0: non-finite inputs (a corrupt encoder) take the
        # plain layers, which carry them to the caller's check. A NaN or inf anywhere makes the
        # sum non-finite; the sum costs about 1% of the products (isfinite().all(): a third).
        if layers is None or not bool(x.sum().isfinite()):
            return self.layers(x)
        hidden = x.reshape(-1, x.shape[-1]).to(dtype)
        for n, (weight, bias) in enumerate(layers):
            attr = "relu" if n < len(layers) - 1 else "none"
            hidden = torch.ops.mkldnn._linear_pointwise(hidden, weight, bias, attr, [], "")
        return hidden.view(*x.shape[:-1], hidden.shape[-1])

    def _packed_layers(self, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The Linear layers' weights packed for oneDNN in ``dtype`` (and biases cast), made
        once and again only when a parameter is replaced or changed in place. None when a
        parameter is not finite: oneDNN's fused ReLU maps NaN to 0, which would hide corrupt
        weights that the plain layers let through to the caller's check."""
        params = list(self.parameters())
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
        cached_key, by_dtype = _PACKED.get(self, (None, {}))
        if cached_key != key:
            by_dtype = {}
            _PACKED[self] = (key, by_dtype)
        if dtype not in by_dtype and not all(p.isfinite().all() for p in params):
            by_dtype[dtype] = None
        if dtype not in by_dtype:
            linears = [m for m in self.layers if isinstance(m, nn.Linear)]
            by_dtype[dtype] = [
                (
                    torch.ops.mkldnn._reorder_linear_weight(m.weight.detach().to(dtype)),
                    None if m.bias is None else m.bias.detach().to(dtype),
                )
                for m in linears
            ]
        return by_dtype[dtype]


def _packed_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype the packed CPU path computes ``x`` in (torch.autocast's on CPU when enabled),
    or None where it does not apply (gradients, other devices, float16/float64, no oneDNN, or
    under torch.compile, which packs weights itself)."""
    if (
        torch.compiler.is_compiling()
        or torch.is_grad_enabled()
        or x.device.type != "cpu"
        or not torch.backends.mkldnn.is_available()
    ):
        return None
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    if dtype == torch.float32 and x.dtype == torch.float32:
        return dtype
    if dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return dtype
    return None
