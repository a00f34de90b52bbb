"""The exported parts of a model as an :class:`~lte_cuda.inference.executor.Executor`: the
streaming pipeline runs ONNX Runtime or OpenVINO exactly as it runs torch (same tiles, memory
budget, chunks and files), through :meth:`OnnxExecutor.encode_tile` and
:meth:`OnnxExecutor.query`."""

from __future__ import annotations

import os
import weakref

import numpy as np
import torch

from ..models.lte import LTE, LTEFeatures
from ..models.traits import EncoderTraits
from .graphs import export_graphs, part_paths
from .runtimes import RUNTIMES, GraphSession, graph_info, load_graph, quantize_int8

RUNTIME_PRECISIONS = ("fp32", "int8")
# Executors already built for a module, by (runtime, precision): exporting and compiling take
# seconds, and a folder of images or a CLI run asks again for every file.
_BUILT: weakref.WeakKeyDictionary[LTE, dict] = weakref.WeakKeyDictionary()


class OnnxExecutor:
    """The ``encode`` and ``query`` graphs of one model, run by ``runtime`` on the CPU."""

    device = torch.device("cpu")

    def __init__(self, encode_graph, query_graph, runtime: str) -> None:
        for proto, name in ((encode_graph, "encode"), (query_graph, "query")):
            if graph_info(proto, "graph") != name:
                raise ValueError(f"expected the {name} graph of an --parts export")
        self.runtime = runtime
        self.precision = graph_info(query_graph, "precision")
        self.channels = graph_info(query_graph, "channels")
        self.trained_max_scale = float(graph_info(query_graph, "trained_scales")[1])
        # Only encoders that tile exactly export (see lte_cuda.export.graphs.check_exportable).
        self.traits = EncoderTraits(local=True, radius=graph_info(query_graph, "receptive_radius"))
        self._encode = GraphSession(encode_graph, runtime)
        self._query = GraphSession(query_graph, runtime)

    def encode_tile(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """See :meth:`lte_cuda.inference.executor.Executor.encode_tile`; the maps come back
        as channels-last views, the layout :meth:`query` hands back to the graph."""
        coef, freq, inp = self._encode(pixels=_array(pixels))
        maps = (torch.from_numpy(m).permute(0, 3, 1, 2) for m in (coef, freq))
        return (*maps, torch.from_numpy(inp))

    def query(self, features: LTEFeatures, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """See :meth:`lte_cuda.inference.executor.Executor.query`."""
        (rgb,) = self._query(
            coef=_array(features.coef.permute(0, 2, 3, 1)),
            freq=_array(features.freq.permute(0, 2, 3, 1)),
            inp=_array(features.inp),
            coord=_array(coord),
            cell=_array(cell),
        )
        return torch.from_numpy(rgb)


def _array(tensor: torch.Tensor) -> np.ndarray:
    """A float32 C-contiguous array of ``tensor`` (no copy when it already is one: channels-last
    maps permuted to (1, h, w, C) are)."""
    return tensor.detach().to(torch.float32).contiguous().numpy()


def runtime_executor(
    model: LTE | str | os.PathLike, runtime: str, precision: str = "fp32"
) -> OnnxExecutor:
    """An executor for ``model`` on ``runtime``: an :class:`LTE` is exported (and with
    ``precision="int8"`` quantised) in memory, once per module, runtime and precision; a path
    names an ``--parts`` export (``OUT.onnx`` for ``OUT.encode.onnx`` and ``OUT.query.onnx``),
    run at the precision it was exported in."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if precision not in RUNTIME_PRECISIONS:
        raise ValueError(
            f"precision must be one of {', '.join(RUNTIME_PRECISIONS)} with runtime={runtime!r}, "
            f"got {precision!r}"
        )
    if not isinstance(model, LTE):
        paths = part_paths(model)
        executor = OnnxExecutor(load_graph(paths["encode"]), load_graph(paths["query"]), runtime)
        if executor.precision != precision:
            raise ValueError(
                f"{model} was exported in {executor.precision}, but precision={precision!r} "
                "was asked for"
            )
        return executor
    # Keyed by the parameters' version counters too: weights changed in place (training on)
    # make a new export.
    key = (runtime, precision, tuple(p._version for p in model.parameters()))
    built = _BUILT.setdefault(model, {})
    if key not in built:
        graphs = export_graphs(model, parts=True)
        query = quantize_int8(graphs["query"]) if precision == "int8" else graphs["query"]
        built.clear()  # one executor per module at a time: each holds a copy of the weights
        built[key] = OnnxExecutor(graphs["encode"], query, runtime)
    return built[key]
