"""Tests of lte_cuda.export: the portable query step, the ONNX graphs, their runtimes, and
``lte-sr export``. Runtime outputs are held to the torch fused path within 1e-4 on [0, 1].

Models are tiny (a few channels) so the whole file runs in well under a minute on two cores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lte_cuda.cli import main
from lte_cuda.coords import make_coord
from lte_cuda.demo import DEMO_PHOTO
from lte_cuda.export import PORTABLE_OPS, check_portable, export_graphs, to_onnx
from lte_cuda.export.portable import pairs_split, query_rgb
from lte_cuda.export.runtimes import RUNTIMES, GraphSession, load_graph
from lte_cuda.models.norm import PUBLISHED_NORM
from lte_cuda.upscale import resolve_model, upscale

from tiny_models import tiny_model

onnx = pytest.importorskip("onnx", reason="needs the runtime extra")
ENCODERS = ("edsr-baseline-lte", "rdn-lte")
TOLERANCE = 1e-4
# (in h, in w, out h, out w): exported at 5x6 -> 11x9, so every size here is new to the graph.
SIZES = [
    (7, 4, 20, 13),  # non-integer, different per axis
    (1, 5, 3, 17),  # one pixel high
    (6, 1, 17, 2),  # one pixel wide
    (1, 1, 3, 3),
    (9, 8, 40, 28),  # x4.4 and x3.5: the cell is enlarged on one axis only
    (12, 10, 7, 25),  # down on one axis, up on the other
]


@pytest.fixture(scope="module", params=ENCODERS)
def model(request: pytest.FixtureRequest):
    return tiny_model(request.param)


@pytest.fixture(scope="module")
def graphs(model):
    return export_graphs(model) | export_graphs(model, parts=True)


@pytest.fixture(scope="module", params=RUNTIMES)
def sessions(request: pytest.FixtureRequest, graphs):
    return {name: GraphSession(proto, request.param) for name, proto in graphs.items()}


def torch_upscale(model, image: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The torch fused path: lte_cuda's own pipeline, float32 in [0, 1]."""
    return upscale(image, size=size[::-1], model=model, device="cpu", precision="fp32").numpy()


def tie_coords(size: int) -> torch.Tensor:
    """Coordinates whose shifted neighbour lands exactly half-way between two pixels (positions
    0.5, 1.5, ...), where rounding half to even and rounding half up pick different pixels."""
    ties = []
    for v in (-1, 1):
        shift = np.float32(v / size + 1e-6)
        for k in range(size - 1):
            target = np.float32((2 * k + 2) / size - 1)  # position k + 0.5
            coord = np.float32(target - shift)
            if np.float32(coord + shift) == target:
                ties.append(float(coord))
    return torch.tensor(ties)


def test_query_step_in_plain_ops_equals_the_fused_op():
    model = tiny_model()
    torch.manual_seed(1)
    for h, w in [(7, 5), (1, 9), (16, 1), (1, 1), (4, 6)]:
        with torch.no_grad():
            features = model.encode(torch.rand(1, 3, h, w))
            # Queries everywhere, on pixel centres, and where the neighbour choice is a tie.
            ties = torch.cartesian_prod(tie_coords(h), tie_coords(w))
            assert len(ties) or min(h, w) == 1
            coord = torch.cat([torch.rand(200, 2) * 2 - 1, make_coord((h, w), flatten=True), ties])
            coord = coord[None]
            cell = torch.rand_like(coord) * 0.3
            fused = model.query(features, coord, cell, normalised=True)[0]
            plain = query_rgb(
                features.coef[0].permute(1, 2, 0),
                pairs_split(features.freq[0], 0).permute(1, 2, 0),
                model.phase.weight,
                model.imnet,
                features.inp[0],
                coord[0],
                cell[0],
            )
        torch.testing.assert_close(plain, fused, atol=1e-5, rtol=0)


def test_graphs_use_only_portable_ops(graphs):
    for name, proto in graphs.items():
        ops = {node.op_type for node in proto.graph.node}
        assert ops <= PORTABLE_OPS, (name, sorted(ops - PORTABLE_OPS))
        assert {"Gather", "Round", "Cos", "Conv"} & ops, name  # the graph is really there


def test_the_op_check_refuses_grid_sample_and_custom_domains():
    helper = onnx.helper
    node = helper.make_node("GridSample", ["x", "g"], ["y"])
    custom = helper.make_node("LteBasis", ["x"], ["z"], domain="lte_cuda")
    graph = helper.make_graph([node, custom], "g", [], [])
    with pytest.raises(ValueError, match="GridSample.*lte_cuda.LteBasis"):
        check_portable(helper.make_model(graph))


@pytest.mark.parametrize("in_h, in_w, out_h, out_w", SIZES)
def test_one_graph_equals_the_torch_path(model, sessions, in_h, in_w, out_h, out_w):
    torch.manual_seed(in_h * 100 + in_w)
    image = torch.rand(1, 3, in_h, in_w)
    (out,) = sessions["upscale"](image=image.numpy(), size=np.array([out_h, out_w]))
    assert out.shape == (1, 3, out_h, out_w)
    np.testing.assert_allclose(
        out, torch_upscale(model, image, (out_h, out_w)), atol=TOLERANCE, rtol=0
    )


def test_parts_equal_the_one_graph(sessions):
    image = np.random.default_rng(0).random((1, 3, 9, 7), dtype=np.float32)
    out_h, out_w = 23, 16
    coef, freq, inp = sessions["encode"](pixels=image)
    assert coef.shape == freq.shape == (1, 9, 7, 16) and inp.shape == (1, 3, 9, 7)
    coord = make_coord((out_h, out_w), flatten=True)[None].numpy()
    cell = np.broadcast_to(np.float32([2 / out_h, 2 / out_w]), coord.shape).copy()
    (rgb,) = sessions["query"](coef=coef, freq=freq, inp=inp, coord=coord, cell=cell)
    whole = rgb[0].T.reshape(1, 3, out_h, out_w).clip(0, 1)
    (expected,) = sessions["upscale"](image=image, size=np.array([out_h, out_w]))
    np.testing.assert_allclose(whole, expected, atol=1e-6, rtol=0)


def test_metadata_holds_what_a_runtime_user_needs(model, graphs):
    for name, proto in graphs.items():
        meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
        assert meta["lte_cuda.graph"] == name
        assert meta["lte_cuda.model_spec"] == model.spec
        assert meta["lte_cuda.trained_scales"] == [1.0, 4.0]
        assert meta["lte_cuda.data_norm"] == model.data_norm == PUBLISHED_NORM
        assert meta["lte_cuda.channels"] == 16
        assert meta["lte_cuda.precision"] == "fp32"
        assert isinstance(meta["lte_cuda.version"], str)


def test_bundled_model_graph_upscales_the_demo_photo_as_lte_cuda_does(tmp_path):
    photo = np.asarray(Image.open(DEMO_PHOTO).convert("RGB"))[100:148, 150:190]
    path = to_onnx(resolve_model(None), tmp_path / "default.onnx")[0]
    session = GraphSession(load_graph(path), "onnxruntime")
    image = (photo.astype(np.float32) / 255).transpose(2, 0, 1)[None]
    (out,) = session(image=image, size=np.array([130, 99]))
    expected = upscale(photo, size=(99, 130), device="cpu", precision="fp32")
    got = np.round(out[0].transpose(1, 2, 0) * 255)
    assert np.abs(got - expected).max() <= 1


def test_int8_graph_quantises_the_mlp(tmp_path, capsys, checkpoint):
    out = tmp_path / "int8.onnx"
    assert main(["export", "--model", str(checkpoint), "--int8", str(out)]) == 0
    proto = load_graph(out)
    assert "MatMulInteger" in {n.op_type for n in proto.graph.node}
    assert {p.key: p.value for p in proto.metadata_props}["lte_cuda.precision"] == '"int8"'
    image = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    (int8,) = GraphSession(proto, "onnxruntime")(image=image, size=np.array([20, 20]))
    fp32 = torch_upscale(resolve_model(str(checkpoint)), torch.from_numpy(image), (20, 20))
    assert 0 < np.abs(int8 - fp32).mean() < 0.01


def test_export_command_writes_parts_and_refuses_bad_requests(tmp_path, capsys, checkpoint):
    assert main(["export", "--model", str(checkpoint), "--parts", str(tmp_path / "m.onnx")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.encode.onnx", "m.query.onnx"]
    assert main(["export", str(checkpoint), "--model", str(checkpoint)]) == 1
    assert "OUT" in capsys.readouterr().err
    assert main(["export", "--opset", "9", str(tmp_path / "x.onnx")]) == 2
    assert main(["export", str(tmp_path / "missing" / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "--opset" in err and "does not exist" in err


def test_swinir_is_refused_in_one_line_and_leaves_the_file(tmp_path):
    target = tmp_path / "swin.onnx"
    target.write_bytes(b"earlier")
    with pytest.raises(ValueError, match="swinir encoder does not export"):
        to_onnx(tiny_model("swinir-lte"), target)
    assert target.read_bytes() == b"earlier"


def test_a_missing_runtime_package_names_the_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)
    assert main(["export", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lte_cuda[runtime]" in err


# ----------------------------------------------------------------------------- the runtimes in the pipeline


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_upscale_on_a_runtime_streams_tiles_as_torch_does(model, runtime):
    image = torch.rand(1, 3, 37, 29)
    expected = upscale(image, size=(70, 90), model=model, device="cpu", precision="fp32")
    whole = upscale(image, size=(70, 90), model=model, runtime=runtime)
    # A budget far too small for the maps: the input streams in 8-pixel tiles, 100 queries a call.
    streamed = upscale(
        image,
        size=(70, 90),
        model=model,
        runtime=runtime,
        tile_size=8,
        memory_budget=20_000,
        chunk_size=100,
    )
    torch.testing.assert_close(whole, expected, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=0)


def test_upscale_runs_an_exported_parts_file_and_int8(tmp_path):
    model = tiny_model()
    to_onnx(model, tmp_path / "tiny.onnx", parts=True)
    image = np.random.default_rng(0).integers(0, 256, (21, 18, 3), dtype=np.uint8)
    expected = upscale(image, 2.5, model=model, device="cpu", precision="fp32").astype(int)
    from_file = upscale(image, 2.5, model=str(tmp_path / "tiny.onnx"), runtime="onnxruntime")
    assert np.abs(from_file - expected).max() <= 1
    int8 = upscale(image, 2.5, model=model, runtime="onnxruntime", precision="int8")
    assert 0 < np.abs(int8 - expected).mean() < 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"runtime": "tensorrt"}, "runtime must be one of onnxruntime, openvino, got 'tensorrt'"),
        ({"precision": "int8"}, "precision='int8' runs on a runtime"),
        ({"runtime": "openvino", "precision": "fp16"}, "precision must be one of fp32, int8"),
    ],
)
def test_upscale_refuses_runtime_requests_it_cannot_run(kwargs, message):
    with pytest.raises(ValueError, match=message):
        upscale(np.zeros((4, 4, 3), np.uint8), 2, model=tiny_model(), **kwargs)


def test_upscale_command_on_a_runtime_writes_what_torch_writes(tmp_path, capsys, checkpoint):
    source = tmp_path / "in.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)).save(source)
    common = ["upscale", str(source), "--scale", "2.5", "--model", str(checkpoint)]
    assert (
        main([*common, str(tmp_path / "torch.png"), "--device", "cpu", "--precision", "fp32"]) == 0
    )
    assert main([*common, str(tmp_path / "ov.png"), "--runtime", "openvino"]) == 0
    assert main([*common, str(tmp_path / "bad.png"), "--precision", "int8"]) == 1
    assert "precision='int8' runs on a runtime" in capsys.readouterr().err
    torch_out, runtime_out = (
        np.asarray(Image.open(tmp_path / name)).astype(int) for name in ("torch.png", "ov.png")
    )
    assert np.abs(torch_out - runtime_out).max() <= 1


def test_a_module_changed_in_place_is_exported_again():
    model = tiny_model()
    image = torch.rand(1, 3, 9, 8)
    before = upscale(image, 2, model=model, runtime="onnxruntime")
    with torch.no_grad():
        model.imnet.layers[-1].bias.add_(0.25)  # as a training step would
    after = upscale(image, 2, model=model, runtime="onnxruntime")
    torch.testing.assert_close(
        after,
        upscale(image, 2, model=model, device="cpu", precision="fp32"),
        atol=TOLERANCE,
        rtol=0,
    )
    assert (after - before).abs().max() > 0.1
