"""Evaluation with the published test protocol (``lte-sr test`` is :mod:`lte_cuda.cli.test`).

Per image: (SwinIR only) reflect-pad the LR input, decode every HR pixel in chunks of
``eval_bsize`` queries with the cell enlarged above the training scale (the model normalises
and de-normalises with its own norm, so a test config's ``data_norm`` is not used), clamp,
and take the PSNR of :func:`lte_cuda.metrics.psnr` for the config's ``eval_type``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from . import distributed
from .config import TestConfig, read_test_config
from .coords import make_cell, make_coord
from .data import make_dataset
from .inference import cell_enlargement, reflect_pad_to_window
from .metrics import parse_eval_type, psnr


@torch.no_grad()
def evaluate(
    loader: DataLoader,
    model: nn.Module,
    eval_type: str | None = None,
    eval_bsize: int | None = None,
    window_size: int = 0,
    scale_max: float | None = None,
    on_image: Callable[[int, float], None] | None = None,
) -> list[float]:
    """PSNR of every sample of ``loader``, in loader order.

    ``eval_type`` None scores the query samples as they are (training validation); otherwise
    the queries must cover the whole HR image, which is rebuilt from them and scored with
    the shave and channel weights of ``eval_type``. ``window_size`` > 0 applies the published
    SwinIR reflection padding (needs ``eval_type`` for the scale). The cell is enlarged above
    ``scale_max`` (default: the model's ``trained_max_scale``). The model normalises its
    input and de-normalises its output itself (the norm it was trained with).
    ``on_image(i, psnr)`` is called after each sample. The model is left in eval mode.
    """
    model.eval()
    device = next(model.parameters()).device
    scale_max = model.trained_max_scale if scale_max is None else scale_max
    _, scale = parse_eval_type(eval_type)
    if window_size and not scale:
        raise ValueError("SwinIR padding needs eval_type 'div2k-N' or 'benchmark-N' for the scale")
    cell_factor = cell_enlargement(scale, scale_max) if scale else 1

    results: list[float] = []
    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        inp = batch["inp"]
        coord, cell = batch["coord"], batch["cell"]
        if eval_type is not None:
            # The cell is (2/H, 2/W) of the HR image: it gives the shape to rebuild.
            hr_h = round(2 / cell[0, 0, 0].item())
            hr_w = round(2 / cell[0, 0, 1].item())
            out_h, out_w = hr_h, hr_w
            if coord.shape[1] != hr_h * hr_w:
                raise ValueError(
                    f"{eval_type} needs every HR pixel queried: got {coord.shape[1]} queries "
                    f"for a {hr_h}x{hr_w} image (drop sample_q from the test wrapper)"
                )
        if window_size:
            inp = reflect_pad_to_window(inp, window_size)
            out_h, out_w = scale * inp.shape[-2], scale * inp.shape[-1]
            coord = make_coord((out_h, out_w), device=device, flatten=True)
            coord = coord.unsqueeze(0).expand(inp.shape[0], -1, -1)
            cell = make_cell(coord, out_h, out_w)
        pred = batched_predict(model, inp, coord, cell * cell_factor, eval_bsize).clamp_(0, 1)
        gt = batch["gt"]
        if eval_type is not None:
            bsz = pred.shape[0]
            pred = pred.reshape(bsz, out_h, out_w, 3).permute(0, 3, 1, 2)[..., :hr_h, :hr_w]
            gt = gt.reshape(bsz, hr_h, hr_w, 3).permute(0, 3, 1, 2)
        for value in psnr(pred, gt, eval_type).tolist():
            results.append(value)
            if on_image is not None:
                on_image(len(results) - 1, value)
    return results


def batched_predict(
    model: nn.Module,
    pixels: torch.Tensor,
    coord: torch.Tensor,
    cell: torch.Tensor,
    bsize: int | None = None,
) -> torch.Tensor:
    """The model's RGB (B, Q, 3) in [0, 1] units (unclamped) for ``pixels (B, 3, h, w)`` in
    [0, 1], as the published test runs it: features once, then queries in chunks of
    ``bsize`` (all at once when None)."""
    with torch.no_grad():
        if bsize is None:
            return model(pixels, coord, cell)
        features = model.encode(pixels)
        chunks = [
            model.query(features, coord[:, i : i + bsize], cell[:, i : i + bsize])
            for i in range(0, coord.shape[1], bsize)
        ]
        return torch.cat(chunks, dim=1)


def _image_names(dataset: Dataset) -> list[str] | None:
    # Wrappers keep the base dataset in .dataset; folder datasets know their file names.
    base = getattr(dataset, "dataset", dataset)
    return getattr(base, "names", None)


def run_test(
    config: Mapping[str, Any] | TestConfig,
    model: nn.Module,
    eval_bsize: int | None = None,
    num_workers: int = 0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model`` on a published-layout test config; returns the result record.

    ``config`` is a mapping (checked by :func:`~lte_cuda.config.read_test_config`) or an
    already checked :class:`~lte_cuda.config.TestConfig`. The record has ``eval_type``,
    ``mean_psnr``, ``images`` (name and PSNR of each) and ``seconds``. ``eval_bsize``
    overrides the config's chunk size. PSNRs may be NaN or infinite here: see
    :func:`check_finite`.
    """
    if not isinstance(config, TestConfig):
        config = read_test_config(config)
    eval_type = config.eval_type
    dataset, indices, loader = _test_loader(config, next(model.parameters()).device, num_workers)
    names = _image_names(dataset)
    count = len(dataset)
    records: list[dict[str, Any]] = []

    def name_of(i: int) -> str:
        return names[i % len(names)] if names else str(i)

    def on_image(i: int, value: float) -> None:
        i = indices[i]
        records.append({"name": name_of(i), "psnr": value})
        if verbose:
            mean = sum(r["psnr"] for r in records) / len(records)
            width = len(str(count))
            print(
                f"[{i + 1:>{width}}/{count}] {name_of(i)}: {value:.4f} dB (mean {mean:.4f})",
                flush=True,
            )

    start = time.perf_counter()
    local_values = evaluate(
        loader,
        model,
        eval_type=eval_type,
        eval_bsize=eval_bsize if eval_bsize is not None else config.eval_bsize,
        window_size=model.traits.window,
        scale_max=config.scale_max,
        on_image=on_image,
    )
    values = distributed.gather_in_order(local_values, indices, count)
    records = [{"name": name_of(i), "psnr": value} for i, value in enumerate(values)]
    mean = sum(values) / len(values) if values else math.nan
    return {
        "eval_type": eval_type,
        "mean_psnr": mean,
        "images": records,
        "seconds": time.perf_counter() - start,
    }


def _test_loader(
    config: TestConfig, device: torch.device, num_workers: int
) -> tuple[Dataset, list[int], DataLoader]:
    """The test set of ``config`` (wrapped as its ``wrapper`` says), the indices of the
    images this process scores, and a loader over those in order."""
    spec = config.test_dataset
    wrapper_args = {"dataset": make_dataset(spec.dataset)}
    _, scale = parse_eval_type(config.eval_type)
    if spec.wrapper["name"] == "sr-implicit-paired" and scale:
        wrapper_args["scale"] = scale  # pairs must be at the protocol's scale
    dataset = make_dataset(spec.wrapper, args=wrapper_args)
    # Under torchrun each process scores its share; run_test puts the PSNRs back in order.
    indices = distributed.shard(range(len(dataset)))
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=spec.batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    return dataset, indices, loader


def check_finite(result: Mapping[str, Any]) -> None:
    """``NonFiniteResultError`` naming the first image whose PSNR in a :func:`run_test`
    record is not finite, and why: NaN comes from a model output that is not finite,
    +inf from a prediction equal to the ground truth (zero error)."""
    for record in result["images"]:
        value = record["psnr"]
        if math.isfinite(value):
            continue
        cause = (
            "the model's output is not finite (its weights are likely corrupt)"
            if math.isnan(value)
            else "the prediction equals the ground truth exactly (zero error)"
        )
        raise NonFiniteResultError(f"{record['name']}: PSNR is {value}: {cause}")


class NonFiniteResultError(ValueError):
    """A PSNR of a test run is NaN or infinite: the result is not a measurement."""
