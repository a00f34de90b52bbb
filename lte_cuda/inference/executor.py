"""What the pipeline runs a model through: the :class:`Executor` interface and its torch
implementation. Tiling, budgets, frames, chunks, writing and self-ensemble live in the
pipeline (:mod:`.features`, :mod:`.streaming`) and call only these two methods, so another
runtime (ONNX Runtime, OpenVINO, reduced precision) is one more executor."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import torch

from ..models.lte import LTE, LTEFeatures
from ..models.traits import EncoderTraits
from ..precision import autocast, resolve_precision


class Executor(Protocol):
    """Runs one model: encodes tiles and answers queries on the pipeline's behalf."""

    device: torch.device
    traits: EncoderTraits
    channels: int  # channels of the coef/freq maps (memory estimates)
    trained_max_scale: float  # cell enlargement beyond it (published: 4)

    def encode_tile(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """pixels (1, 3, h, w) float32 in [0, 1] (already window-padded by the pipeline where the
        encoder needs it) -> (coef, freq, inp): coef/freq (1, C, h, w) maps, inp the normalised
        input (1, 3, h, w). The pipeline crops tile cores and places them into frame maps."""
        ...

    def query(self, features: LTEFeatures, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """coord, cell (1, Q, 2) in the features' frame units -> (1, Q, 3) RGB in [0, 1]
        units, unclamped."""
        ...


class TorchExecutor:
    """An :class:`LTE` module run by torch on ``device`` (where it must already be, in eval
    mode: see :func:`torch_executor`), under ``torch.autocast`` for ``"fp16"``/``"bf16"``
    (``"auto"`` resolved by :func:`lte_cuda.precision.resolve_precision`)."""

    def __init__(self, model: LTE, device: torch.device, precision: str = "fp32") -> None:
        self.model = model
        self.device = device
        self.precision = resolve_precision(precision, device).name
        self.traits = model.traits
        self.channels = model.coef.out_channels
        self.trained_max_scale = model.trained_max_scale

    def _running(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(autocast(self.precision, self.device))
        return stack

    def encode_tile(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """See :meth:`Executor.encode_tile`."""
        with self._running():
            return self.model.encode_tile(pixels)

    def query(self, features: LTEFeatures, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """See :meth:`Executor.query`."""
        with self._running():
            return self.model.query(features, coord, cell)


@contextlib.contextmanager
def torch_executor(
    model: LTE, device: torch.device, precision: str = "fp32"
) -> Iterator[TorchExecutor]:
    """A :class:`TorchExecutor` for ``model``, moved to ``device`` in place (and left there)
    and in eval mode until the block ends, when its train/eval mode is restored."""
    was_training = model.training
    # Moved outside inference mode, so the parameters stay usable for training afterwards.
    model.to(device).eval()
    try:
        yield TorchExecutor(model, device, precision)
    finally:
        model.train(was_training)
