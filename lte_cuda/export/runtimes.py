"""ONNX graphs run by ONNX Runtime or OpenVINO on the CPU, and their int8 form."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from .graphs import INT8_OPS, PORTABLE_OPS, check_portable, require

RUNTIMES = ("onnxruntime", "openvino")
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


class GraphSession:
    """One ONNX graph compiled by ``runtime``; call it with named float32/int64 arrays to get
    its outputs in order. ``metadata`` holds the file's ``lte_cuda.*`` properties."""

    def __init__(self, proto, runtime: str) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        module = require(PACKAGES[runtime])
        self.runtime = runtime
        self.metadata = {p.key: p.value for p in proto.metadata_props}
        self.output_names = [o.name for o in proto.graph.output]
        data = proto.SerializeToString()
        if runtime == "onnxruntime":
            options = module.SessionOptions()
            # Without its arena ONNX Runtime returns each chunk's buffers: x2 512->1024 with
            # the bundled model rose 475-512 MB instead of 617 MB, in the same time.
            options.enable_cpu_mem_arena = False
            self._session = module.InferenceSession(
                data, options, providers=["CPUExecutionProvider"]
            )
        else:
            core = module.Core()
            # ACCURACY keeps every op in float32 (PERFORMANCE trades ~5e-4 on [0, 1] for speed).
            compiled = core.compile_model(
                core.read_model(data, b""), "CPU", {"EXECUTION_MODE_HINT": "ACCURACY"}
            )
            self._request = compiled.create_infer_request()

    def __call__(self, **inputs: np.ndarray) -> list[np.ndarray]:
        if self.runtime == "onnxruntime":
            return self._session.run(self.output_names, inputs)
        results = self._request.infer(inputs, share_inputs=True)
        return [np.array(results[name]) for name in self.output_names]


def quantize_int8(proto):
    """``proto`` with its MatMuls in int8 (ONNX Runtime's dynamic quantisation: int8 weights,
    activations quantised per call); the op check then allows :data:`INT8_OPS` too."""
    onnx = require("onnx")
    quantization = require("onnxruntime.quantization")
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "int8.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the tool logs advice on pre-processing to the root logger
        try:
            quantization.quantize_dynamic(proto, target, op_types_to_quantize=["MatMul"])
        finally:
            root.setLevel(level)
        quantized = onnx.load(target)
    check_portable(quantized, PORTABLE_OPS | INT8_OPS)
    del quantized.metadata_props[:]
    for prop in proto.metadata_props:
        value = json.dumps("int8") if prop.key == "lte_cuda.precision" else prop.value
        quantized.metadata_props.add(key=prop.key, value=value)
    return quantized


def load_graph(path: str | os.PathLike):
    """The ONNX model proto in ``path``; ``ValueError`` naming the file if it is not one."""
    onnx = require("onnx")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        return onnx.load(path)
    except Exception as err:  # onnx raises DecodeError and others for a foreign file
        raise ValueError(f"{path}: not an ONNX file ({type(err).__name__})") from None


def graph_info(proto, key: str) -> object:
    """The JSON metadata ``lte_cuda.<key>`` of an exported graph."""
    for prop in proto.metadata_props:
        if prop.key == f"lte_cuda.{key}":
            return json.loads(prop.value)
    raise ValueError(f"the graph has no lte_cuda.{key} metadata: not exported by lte_cuda")
