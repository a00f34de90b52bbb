"""LTE outside PyTorch: ONNX graphs that ONNX Runtime, OpenVINO and TensorRT run.

:func:`to_onnx` writes one graph for whole images (``image``, ``size`` -> the upscaled image)
or, with ``parts=True``, the ``encode`` and ``query`` graphs a host program streams tiles
through; :mod:`.portable` is the query step in plain tensor ops that makes this possible.
Needs the ``runtime`` extra (``pip install 'lte_cuda[runtime]'``).
"""

from .graphs import DEFAULT_OPSET, PORTABLE_OPS, check_portable, export_graphs, part_paths, to_onnx

__all__ = [
    "DEFAULT_OPSET",
    "PORTABLE_OPS",
    "check_portable",
    "export_graphs",
    "part_paths",
    "to_onnx",
]
