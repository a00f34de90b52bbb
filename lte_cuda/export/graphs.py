"""LTE as ONNX graphs: one graph for whole images, or the encode and query parts.

:func:`to_onnx` traces the modules below with PyTorch's TorchScript-based exporter (a static
graph with dynamic axes), checks that every op is in :data:`PORTABLE_OPS`, stores what a
runtime user needs in the file's metadata, and writes the file atomically.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..coords import make_coord
from ..inference.geometry import query_cell
from ..models import LTE
from .portable import pairs_split, query_rgb

# Ops that TensorRT 8.6, OpenVINO and ONNX Runtime all run (see docs/onnx-export.md). A graph
# with any other op is refused: no GridSample, no Unfold/Im2Col, no custom domain.
PORTABLE_OPS = frozenset(
    {
        "Abs", "Add", "Cast", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "Cos",
        "Div", "Equal", "Expand", "Flatten", "Floor", "Gather", "Gemm", "Identity", "MatMul",
        "Max", "Min", "Mul", "Neg", "Range", "ReduceSum", "Relu", "Reshape", "Round",
        "Shape",
        "Sin", "Slice", "Squeeze", "Sub", "Tile", "Transpose", "Unsqueeze", "Where",
    }
)  # fmt: skip
# Ops the int8 graphs add (ONNX Runtime's dynamic quantisation of the MatMuls).
INT8_OPS = frozenset({"DynamicQuantizeLinear", "MatMulInteger"})
DEFAULT_OPSET = 17  # the newest opset TensorRT 8.6 parses
OPSETS = range(13, 21)


class EncodeGraph(nn.Module):
    """``pixels (1, 3, h, w)`` in [0, 1] -> ``coef, freq (1, h, w, C)`` (channels-last, the
    layout the query gathers rows from; the frequency pairs split by
    :func:`~lte_cuda.export.portable.pairs_split`) and the normalised input ``inp (1, 3, h, w)``."""

    def __init__(self, model: LTE) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        coef, freq, inp = self.model.encode_tile(pixels)
        return coef.permute(0, 2, 3, 1), pairs_split(freq, 1).permute(0, 2, 3, 1), inp


class QueryGraph(nn.Module):
    """``coef, freq (1, h, w, C)``, ``inp (1, 3, h, w)``, ``coord, cell (1, Q, 2)`` -> RGB
    ``(1, Q, 3)`` in [0, 1] units, unclamped (:meth:`LTE.query`, de-normalised)."""

    def __init__(self, model: LTE) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        coef: torch.Tensor,
        freq: torch.Tensor,
        inp: torch.Tensor,
        coord: torch.Tensor,
        cell: torch.Tensor,
    ) -> torch.Tensor:
        model = self.model
        # The batch of one dropped by a reshape: [0] exports as a Gather that copies the maps on
        # every call, squeeze(0) as an If on the dynamic shape.
        coef, freq, inp, coord, cell = (t.flatten(0, 1) for t in (coef, freq, inp, coord, cell))
        # The plain Linear/ReLU layers: the MLP's inference path calls oneDNN's packed ops,
        # which do not export.
        rgb = query_rgb(coef, freq, model.phase.weight, model.imnet.layers, inp, coord, cell)
        return model.denormalise(rgb.unsqueeze(0))


class UpscaleGraph(nn.Module):
    """``image (1, 3, H, W)`` in [0, 1] and ``size`` (int64 [out H, out W]) -> the upscaled
    ``(1, 3, out H, out W)`` in [0, 1]: :func:`lte_cuda.upscale` with every rule in the graph."""

    def __init__(self, model: LTE) -> None:
        super().__init__()
        self.encode = EncodeGraph(model)
        self.query = QueryGraph(model)
        self.trained_max_scale = model.trained_max_scale

    def forward(self, image: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        coef, freq, inp = self.encode(image)
        in_size = torch._shape_as_tensor(image)[2:]
        coord = make_coord((size[0], size[1]), flatten=True).unsqueeze(0)
        cell = torch.stack(
            [query_cell(size[i], in_size[i], in_size[i], self.trained_max_scale) for i in (0, 1)]
        ).to(torch.float32)
        rgb = self.query(coef, freq, inp, coord, cell.expand_as(coord))
        return rgb.flatten(0, 1).t().reshape(1, 3, size[0], size[1]).clamp(0, 1)


def check_exportable(model: object) -> None:
    """``ValueError`` naming what cannot be exported, before any tracing."""
    if not isinstance(model, LTE):
        raise TypeError(f"model must be an LTE module, got {type(model).__name__}")
    traits = model.traits
    if not traits.local or traits.window:
        name = model.spec["args"]["encoder_spec"]["name"]
        raise ValueError(
            f"a {name} encoder does not export to ONNX (its window padding and shifted-window "
            "mask need ops outside the portable set); exportable: edsr-baseline, rdn"
        )


def graph_metadata(model: LTE, graph: str) -> dict[str, str]:
    """What a runtime user needs, stored in the file as JSON values: which graph this is, the
    model spec, the scales the model was trained on (the cell is enlarged beyond them), the
    input normalisation, the channels of the maps, the tile overlap, the precision and the
    project version."""
    return {
        "lte_cuda.graph": json.dumps(graph),
        "lte_cuda.model_spec": json.dumps(model.spec),
        "lte_cuda.trained_scales": json.dumps([1.0, model.trained_max_scale]),
        "lte_cuda.data_norm": json.dumps(model.data_norm),
        "lte_cuda.channels": json.dumps(model.coef.out_channels),
        "lte_cuda.receptive_radius": json.dumps(model.traits.radius),
        "lte_cuda.precision": json.dumps("fp32"),
        "lte_cuda.version": json.dumps(project_version()),
    }


def project_version() -> str:
    """The installed lte_cuda version, or ``"unknown"`` when run from a source tree."""
    try:
        return metadata.version("lte_cuda")
    except metadata.PackageNotFoundError:
        return "unknown"


def export_graphs(
    model: LTE,
    *,
    opset: int = DEFAULT_OPSET,
    parts: bool = False,
):
    """The ONNX model protos of ``model``: ``{"upscale": ...}``, or with ``parts``
    ``{"encode": ..., "query": ...}``; every op checked portable. Needs ``onnx``. The model
    is traced on the CPU in eval mode; its device and mode are restored."""
    check_exportable(model)
    if opset not in OPSETS:
        raise ValueError(f"opset must be in {OPSETS.start}..{OPSETS.stop - 1}, got {opset!r}")
    onnx = require("onnx")
    was_training, device = model.training, next(model.parameters()).device
    model.eval().to("cpu")
    try:
        protos = {}
        for name, (module, args, inputs, outputs) in _graph_specs(model, parts).items():
            proto = onnx.load_from_string(_trace(module, args, inputs, outputs, opset))
            reciprocals_as_division(proto)
            check_portable(proto)
            for key, value in graph_metadata(model, name).items():
                proto.metadata_props.add(key=key, value=value)
            protos[name] = proto
        return protos
    finally:
        model.to(device).train(was_training)


def _graph_specs(model: LTE, parts: bool) -> dict[str, tuple]:
    """Per graph: the module, example inputs to trace it at, and the inputs' and outputs'
    names with their dynamic axes."""
    channels = model.coef.out_channels
    pixels, maps = torch.rand(1, 3, 5, 6), torch.rand(1, 5, 6, channels)
    queries = (torch.rand(1, 7, 2), torch.rand(1, 7, 2))
    map_axes = {n: {1: "height", 2: "width"} for n in ("coef", "freq")}
    image_axes = {2: "height", 3: "width"}
    if not parts:
        return {
            "upscale": (
                UpscaleGraph(model),
                (pixels, torch.tensor([11, 9])),
                {"image": image_axes, "size": {}},
                {"output": {2: "out_height", 3: "out_width"}},
            )
        }
    return {
        "encode": (
            EncodeGraph(model),
            (pixels,),
            {"pixels": image_axes},
            map_axes | {"inp": image_axes},
        ),
        "query": (
            QueryGraph(model),
            (maps, maps.clone(), torch.rand(1, 3, 5, 6), *queries),
            map_axes | {"inp": image_axes, "coord": {1: "queries"}, "cell": {1: "queries"}},
            {"rgb": {1: "queries"}},
        ),
    }


def _trace(module: nn.Module, args: tuple, inputs: dict, outputs: dict, opset: int) -> bytes:
    """ONNX bytes of ``module`` traced at ``args``, with the named axes dynamic."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes it keeps dynamic
        torch.onnx.export(
            module,
            args,
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes={**inputs, **outputs},
        )
    return buffer.getvalue()


def reciprocals_as_division(proto) -> None:
    """Rewrite every ``Reciprocal(x)`` as ``Div(1, x)``: the exporter writes ``number / tensor``
    (``2 / n`` in the pixel-centre rule) that way, and TensorRT has no Reciprocal. Float32
    division by the same ``x`` gives the same bits."""
    onnx = require("onnx")
    for index, node in enumerate(proto.graph.node):
        if node.op_type != "Reciprocal":
            continue
        one = f"{node.output[0]}_one"
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.float32(1.0), one))
        division = onnx.helper.make_node("Div", [one, node.input[0]], list(node.output))
        proto.graph.node.remove(node)
        proto.graph.node.insert(index, division)


def check_portable(proto, allowed: frozenset[str] = PORTABLE_OPS) -> None:
    """``ValueError`` listing the ops of ``proto`` outside ``allowed`` or in a custom domain."""
    foreign = sorted(
        {n.op_type for n in proto.graph.node if n.op_type not in allowed}
        | {f"{n.domain}.{n.op_type}" for n in proto.graph.node if n.domain not in ("", "ai.onnx")}
    )
    if foreign:
        raise ValueError(f"the graph uses ops outside the portable set: {', '.join(foreign)}")


def part_paths(path: str | os.PathLike) -> dict[str, Path]:
    """Where ``--parts`` writes the two graphs for ``OUT.onnx``: ``OUT.encode.onnx`` and
    ``OUT.query.onnx``."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix == ".onnx" else path
    return {name: stem.with_name(f"{stem.name}.{name}.onnx") for name in ("encode", "query")}


def to_onnx(
    model: LTE,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    parts: bool = False,
    int8: bool = False,
) -> list[Path]:
    """Export ``model`` to ``path`` (one graph) or, with ``parts``, to the encode and query
    graphs of :func:`part_paths`, with the MLP in int8 when ``int8``; returns the files
    written (each atomically: a failed export leaves earlier files whole)."""
    protos = export_graphs(model, opset=opset, parts=parts)
    if int8:
        from .runtimes import quantize_int8

        protos = {name: quantize_int8(p) if name != "encode" else p for name, p in protos.items()}
    targets = output_paths(path, parts)
    for name, proto in protos.items():
        write_atomically(targets[name], proto.SerializeToString())
    return list(targets.values())


def output_paths(path: str | os.PathLike, parts: bool) -> dict[str, Path]:
    """The files :func:`to_onnx` writes for ``path``, by graph name."""
    return part_paths(path) if parts else {"upscale": Path(path)}


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in its folder and ``os.replace``,
    so a failed write leaves any earlier file whole."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # as open() would create it, not mkstemp's 0600
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def require(package: str):
    """Import a runtime package, or one line saying which extra installs it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise ImportError(
            f"{package} is not installed; install the runtime extra: pip install 'lte_cuda[runtime]'"
        ) from None
