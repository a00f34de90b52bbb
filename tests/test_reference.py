"""The plain-PyTorch reference of the query step on empty batches and query sets."""

from __future__ import annotations

import pytest
import torch

from lte_cuda import ops, reference

CHANNELS = 8


def empty_case(batch: int, queries: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    coef = torch.randn(batch, CHANNELS, 4, 5, dtype=dtype, requires_grad=True)
    freq = torch.randn(batch, CHANNELS, 4, 5, dtype=dtype, requires_grad=True)
    phase_weight = torch.randn(CHANNELS // 2, 2, dtype=dtype, requires_grad=True)
    coord = torch.rand(batch, queries, 2, dtype=dtype) * 2 - 1
    cell = torch.full((batch, queries, 2), 0.1, dtype=dtype)
    return coef, freq, phase_weight, coord, cell


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("batch, queries", [(0, 5), (2, 0), (0, 0)])
def test_empty_inputs_give_what_the_compiled_op_gives(batch, queries, dtype):
    inputs = empty_case(batch, queries, dtype)
    x, weights = reference.lte_basis(*inputs)
    assert x.shape == (batch, queries, 4, CHANNELS) and x.dtype == dtype
    assert weights.shape == (batch, queries, 4) and weights.dtype == dtype
    x.sum().backward()  # an empty result still back-propagates (zero gradients)
    assert inputs[0].grad is not None and not inputs[0].grad.any()
    if ops.library_available():
        fused_x, fused_weights = ops.lte_basis(*empty_case(batch, queries, dtype))
        assert (fused_x.shape, fused_x.dtype) == (x.shape, x.dtype)
        assert (fused_weights.shape, fused_weights.dtype) == (weights.shape, weights.dtype)


def map_without(rows: int, cols: int) -> tuple[torch.Tensor, ...]:
    coef = torch.randn(1, CHANNELS, rows, cols)
    coord = torch.rand(1, 5, 2) * 2 - 1
    return coef, coef.clone(), torch.randn(CHANNELS // 2, 2), coord, torch.full((1, 5, 2), 0.1)


@pytest.mark.parametrize("rows, cols", [(0, 5), (4, 0)])
def test_a_map_without_rows_or_columns_is_a_value_error(rows, cols):
    inputs = map_without(rows, cols)
    message = rf"coef must have h >= 1 and w >= 1, got shape \(1, {CHANNELS}, {rows}, {cols}\)"
    with pytest.raises(ValueError, match=message):
        reference.lte_basis(*inputs)
    with pytest.raises(ValueError, match=message):
        ops.lte_basis(*inputs)
    with pytest.raises(ValueError, match=message):
        ops.lte_basis_linear(*inputs, torch.randn(3, CHANNELS))


def test_meta_tensors_give_meta_results_of_the_right_shapes():
    inputs = [t.to("meta") for t in map_without(4, 5)]
    for x, weights in (reference.lte_basis(*inputs), ops.lte_basis(*inputs)):
        assert x.device.type == "meta" and x.shape == (1, 5, 4, CHANNELS)
        assert weights.shape == (1, 5, 4)
