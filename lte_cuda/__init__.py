"""lte_cuda: arbitrary-scale image super-resolution with LTE and a fused query kernel."""

from . import ops, reference
from .checkpoint import CheckpointError, load_model, save_model
from .coords import make_coord, to_pixel_samples
from .metrics import psnr

# The function shadows its module's name here; import helpers with `from lte_cuda.upscale import ...`.
from .upscale import upscale

__all__ = [
    "ops",
    "reference",
    "make_coord",
    "to_pixel_samples",
    "CheckpointError",
    "load_model",
    "save_model",
    "psnr",
    "upscale",
]
