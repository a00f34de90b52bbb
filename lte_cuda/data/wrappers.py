"""The published sampling wrappers: images -> ``{'inp', 'coord', 'cell', 'gt'}`` samples.

``inp`` is the LR image (3, h, w), ``coord`` (Q, 2) and ``cell`` (Q, 2) the HR query
coordinates (row, col) and cells (2/H, 2/W), ``gt`` (Q, 3) the HR colours there; all in [0, 1]
and un-normalised (the trainer normalises).
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..coords import make_cell, to_pixel_samples
from . import register
from .image_folder import pil_to_tensor


def resize_bicubic(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL bicubic resize of a float image (3, H, W) in [0, 1] to (3, h, w), as published.

    The published ``resize_fn`` goes through torchvision's ToPILImage, which quantises with
    ``mul(255)`` and truncation (not rounding); that is kept so LR inputs match bit for bit.
    """
    array = img.mul(255).byte().permute(1, 2, 0).contiguous().numpy()
    return pil_to_tensor(Image.fromarray(array).resize((size[1], size[0]), Image.BICUBIC))


class SeededSampling(Dataset):
    """Per-sample random streams keyed by (seed, epoch, index).

    With a seed, the randomness of sample ``idx`` depends only on the seed, the epoch and
    ``idx``, never on which process, worker or position draws it: one-process, multi-worker,
    multi-process and resumed runs see the same samples. Without a seed each sample's stream
    is drawn from Python's global generator, which the loader's ``worker_init_fn`` seeds.
    """

    seed: int | None = None
    epoch: int = 0

    def set_seed(self, seed: int | None) -> None:
        """Key every sample's randomness on ``seed`` (None: draw from the global generator)."""
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random streams (call before iterating the epoch)."""
        self.epoch = epoch

    def _rngs(self, idx: int) -> tuple[random.Random, torch.Generator]:
        # A string seed goes through SHA-512, so it is the same in every process.
        key = random.getrandbits(64) if self.seed is None else f"{self.seed}:{self.epoch}:{idx}"
        rng = random.Random(key)
        return rng, torch.Generator().manual_seed(rng.getrandbits(63))


def _augment(x: torch.Tensor, flip_rows: bool, flip_cols: bool, transpose: bool) -> torch.Tensor:
    if flip_rows:
        x = x.flip(-2)
    if flip_cols:
        x = x.flip(-1)
    if transpose:
        x = x.transpose(-2, -1)
    return x


def _make_sample(
    crop_lr: torch.Tensor,
    crop_hr: torch.Tensor,
    augment: bool,
    sample_q: int | None,
    rng: random.Random,
    gen: torch.Generator,
) -> dict[str, torch.Tensor]:
    if augment:
        flips = (rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.5)
        crop_lr = _augment(crop_lr, *flips)
        crop_hr = _augment(crop_hr, *flips)
    hr_coord, hr_rgb = to_pixel_samples(crop_hr.contiguous())
    if sample_q is not None:
        # Without replacement, as the published np.random.choice(..., replace=False).
        keep = torch.randperm(len(hr_coord), generator=gen)[:sample_q]
        hr_coord, hr_rgb = hr_coord[keep], hr_rgb[keep]
    cell = make_cell(hr_coord, crop_hr.shape[-2], crop_hr.shape[-1])
    return {"inp": crop_lr.contiguous(), "coord": hr_coord, "cell": cell, "gt": hr_rgb}


@register("sr-implicit-downsampled")
class SRImplicitDownsampled(SeededSampling):
    """LR made by PIL bicubic down-sampling of the HR image at a random scale.

    Args:
        dataset: yields HR images (3, H, W).
        inp_size: LR crop size; the HR crop is ``round(inp_size * s)`` square at a random
            position. None: the whole image, LR ``floor(H / s + 1e-9)`` rows (and columns),
            HR cropped to ``round(h_lr * s)`` (the x6+ test protocol).
        scale_min, scale_max: s ~ U(scale_min, scale_max) (scale_max defaults to scale_min).
        augment: random row flip, column flip and transpose, each with p = 0.5.
        sample_q: number of HR pixels sampled without replacement (None: all).
    """

    def __init__(
        self,
        dataset: Dataset,
        inp_size: int | None = None,
        scale_min: float = 1,
        scale_max: float | None = None,
        augment: bool = False,
        sample_q: int | None = None,
    ) -> None:
        self.dataset = dataset
        self.inp_size = inp_size
        self.scale_min = scale_min
        self.scale_max = scale_min if scale_max is None else scale_max
        self.augment = augment
        self.sample_q = sample_q

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        rng, gen = self._rngs(idx)
        img = self.dataset[idx]
        s = rng.uniform(self.scale_min, self.scale_max)
        if self.inp_size is None:
            h_lr = math.floor(img.shape[-2] / s + 1e-9)
            w_lr = math.floor(img.shape[-1] / s + 1e-9)
            crop_hr = img[:, : round(h_lr * s), : round(w_lr * s)]
            crop_lr = resize_bicubic(crop_hr, (h_lr, w_lr))
        else:
            w_lr = self.inp_size
            w_hr = round(w_lr * s)
            if min(img.shape[-2:]) < w_hr:
                raise ValueError(
                    f"image {idx} of size {tuple(img.shape[-2:])} is smaller than the HR crop "
                    f"{w_hr} (inp_size {w_lr} x scale {s:.3f})"
                )
            x0 = rng.randint(0, img.shape[-2] - w_hr)
            y0 = rng.randint(0, img.shape[-1] - w_hr)
            crop_hr = img[:, x0 : x0 + w_hr, y0 : y0 + w_hr]
            crop_lr = resize_bicubic(crop_hr, (w_lr, w_lr))
        return _make_sample(crop_lr, crop_hr, self.augment, self.sample_q, rng, gen)


@register("sr-implicit-paired")
class SRImplicitPaired(SeededSampling):
    """Given (LR, HR) pairs with an integer scale ``s``: the LR is the HR divided by ``s``,
    rounded down (``h = H // s``, ``w = W // s``), as the datasets' bicubic LR files are.

    Args:
        dataset: yields (LR (3, h, w), HR (3, H, W)); its ``pair_paths(idx)``, if it has one,
            names the files in messages.
        inp_size: LR crop size with the matching HR crop at s times the position.
            None: the whole LR image and the HR cropped to (h * s, w * s).
        augment, sample_q: as :class:`SRImplicitDownsampled`.
        scale: the pairs' scale (the test protocol's N); None: ``H // h`` of each pair.
            A pair whose sizes do not fit it is refused with ``ValueError`` naming the file.
    """

    def __init__(
        self,
        dataset: Dataset,
        inp_size: int | None = None,
        augment: bool = False,
        sample_q: int | None = None,
        scale: int | None = None,
    ) -> None:
        self.dataset = dataset
        self.inp_size = inp_size
        self.augment = augment
        self.sample_q = sample_q
        self.scale = scale

    def _pair_scale(self, idx: int, lr_size: tuple[int, int], hr_size: tuple[int, int]) -> int:
        """The scale of a pair, checked: ``lr_size == hr_size // s`` in both dimensions."""
        (h, w), (big_h, big_w) = lr_size, hr_size
        s = self.scale or max(big_h // h, 1)
        if (h, w) != (big_h // s, big_w // s):
            paths = getattr(self.dataset, "pair_paths", None)
            lr_name, hr_name = paths(idx) if paths else (f"pair {idx} LR", f"pair {idx} HR")
            raise ValueError(
                f"{lr_name}: LR size {w}x{h} is not the size of {hr_name} ({big_w}x{big_h}) "
                f"divided by the scale {s}, rounded down: expected {big_w // s}x{big_h // s}"
            )
        return s

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        rng, gen = self._rngs(idx)
        img_lr, img_hr = self.dataset[idx]
        s = self._pair_scale(idx, img_lr.shape[-2:], img_hr.shape[-2:])
        if self.inp_size is None:
            h_lr, w_lr = img_lr.shape[-2:]
            crop_lr, crop_hr = img_lr, img_hr[:, : h_lr * s, : w_lr * s]
        else:
            w_lr = self.inp_size
            x0 = rng.randint(0, img_lr.shape[-2] - w_lr)
            y0 = rng.randint(0, img_lr.shape[-1] - w_lr)
            crop_lr = img_lr[:, x0 : x0 + w_lr, y0 : y0 + w_lr]
            w_hr = w_lr * s
            crop_hr = img_hr[:, x0 * s : x0 * s + w_hr, y0 * s : y0 * s + w_hr]
        return _make_sample(crop_lr, crop_hr, self.augment, self.sample_q, rng, gen)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python's and NumPy's generators from torch's.

    torch seeds each worker with ``base_seed + worker_id`` (base_seed drawn from the loader's
    generator); the other two generators would otherwise be copies of the parent's.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
