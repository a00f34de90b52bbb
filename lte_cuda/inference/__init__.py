"""Running an LTE model on whole images: one home for the rules every caller shares.

:mod:`lte_cuda.upscale`, :mod:`lte_cuda.evaluate`, :mod:`lte_cuda.demo`, the viewer and
:mod:`lte_cuda.texture_map` call these modules:

- :mod:`.device`: device choice, precisions, free memory and the working-set budget;
- :mod:`.settings`: :class:`InferenceSettings`, built once from the API's or CLI's options;
- :mod:`.geometry`: output pixels on the input (boxes, coordinates, cells, window padding);
- :mod:`.executor`: the :class:`Executor` interface the pipeline runs a model through, and
  :class:`TorchExecutor`;
- :mod:`.features`: :class:`FeatureSource`, encoding any box of an image with its context;
- :mod:`.streaming`: whole images region by region, and regions from features;
- :mod:`.ensemble`: self-ensemble; :mod:`.writing`: writers into the output.

Memory stays bounded by a budget whatever the input and output size. When the coef/freq maps
of the whole input fit the budget they are built once (the encoder itself running on
overlapping tiles if needed) and every output pixel is decoded from them. Otherwise the work
streams over tiles of the input: a tile is encoded with the overlap of the encoder's radius,
its maps are built, the output pixels whose centres lie in it (their four neighbours then lie
in the tile grown by one pixel) are decoded and written, and the tile is dropped. For local
encoders (EDSR-baseline, RDN) both give the untiled result to float rounding; SwinIR is never
streamed and only tiled when asked.
"""

from ..precision import PRECISIONS
from .device import (
    available_ram,
    check_fits,
    default_chunk,
    memory_budget,
    output_bytes,
    resolve_device,
)
from .executor import Executor, TorchExecutor, torch_executor
from .features import FeatureSource
from .geometry import cell_enlargement, query_cell, reflect_pad_to_window
from .settings import InferenceSettings, settings_for
from .streaming import (
    NonFiniteOutputError,
    decode_box,
    decode_region,
    encode_image,
    upscale_into,
)

__all__ = [
    "PRECISIONS",
    "Executor",
    "FeatureSource",
    "InferenceSettings",
    "NonFiniteOutputError",
    "TorchExecutor",
    "available_ram",
    "cell_enlargement",
    "check_fits",
    "decode_box",
    "decode_region",
    "default_chunk",
    "encode_image",
    "memory_budget",
    "output_bytes",
    "query_cell",
    "reflect_pad_to_window",
    "resolve_device",
    "settings_for",
    "torch_executor",
    "upscale_into",
]
