"""The fused op lte_cuda.ops.lte_basis, held to the published grid_sample path
(lte_cuda.reference.lte_basis) on values, gradients, dtypes, layouts and bad input."""

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import DEVICES
from torch._subclasses.fake_tensor import FakeTensorMode

import lte_cuda
from lte_cuda import ops, reference
from lte_cuda.coords import make_coord


def make_inputs(
    batch=2,
    channels=16,
    height=5,
    width=7,
    queries=50,
    dtype=torch.float64,
    device="cpu",
    coord_range=1.0,
    seed=0,
):
    """Random LTE query-step inputs: features (B, C, h, w), phase weight, coords and cells."""
    g = torch.Generator().manual_seed(seed)
    coef = torch.randn(batch, channels, height, width, generator=g, dtype=dtype)
    freq = 3 * torch.randn(batch, channels, height, width, generator=g, dtype=dtype)
    phase_weight = torch.randn(channels // 2, 2, generator=g, dtype=dtype)
    coord = (torch.rand(batch, queries, 2, generator=g, dtype=dtype) * 2 - 1) * coord_range
    cell = torch.rand(batch, queries, 2, generator=g, dtype=dtype) * 0.2
    return [t.to(device) for t in (coef, freq, phase_weight, coord, cell)]


def assert_matches_reference(inputs, atol):
    x, weights = ops.lte_basis(*inputs)
    x_ref, weights_ref = reference.lte_basis(*inputs)
    assert x.shape == x_ref.shape and weights.shape == weights_ref.shape
    assert x.dtype == x_ref.dtype and weights.dtype == weights_ref.dtype
    torch.testing.assert_close(x, x_ref, atol=atol, rtol=0)
    torch.testing.assert_close(weights, weights_ref, atol=atol, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_queries_match_reference(device, dtype, atol, seed):
    assert_matches_reference(make_inputs(dtype=dtype, device=device, seed=seed), atol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [2, 6, 64, 256, 512])
def test_channel_counts_match_reference(device, channels):
    inputs = make_inputs(batch=1, channels=channels, queries=40, dtype=torch.float32, device=device)
    assert_matches_reference(inputs, 1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_queries_outside_the_map_are_clamped_like_reference(device):
    inputs = make_inputs(dtype=torch.float64, device=device, coord_range=1.6, queries=400)
    assert_matches_reference(inputs, 1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_queries_at_pixel_centres_and_borders(device):
    coef, freq, phase_weight, _, _ = make_inputs(
        batch=1, height=6, width=9, dtype=torch.float64, device=device
    )
    centres = make_coord((6, 9), dtype=torch.float64).view(1, -1, 2)
    borders = torch.tensor(
        [[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.3]],
        dtype=torch.float64,
    ).view(1, -1, 2)
    coord = torch.cat([centres, borders], dim=1).to(device)
    cell = torch.full_like(coord, 2 / 20)
    assert_matches_reference([coef, freq, phase_weight, coord, cell], 1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_rounding_ties_pick_the_even_pixel(device):
    # h = w = 4. Neighbour 3 shifts the coordinate by +(1/4 + 1e-6) per axis; starting from
    # minus that shift, the shifted coordinate is exactly 0, i.e. pixel position 1.5, which
    # grid_sample's nearest rounding sends to the even index 2.
    dtype = torch.float32
    shift = torch.tensor(0.25 + 1e-6, dtype=dtype)
    coef = torch.arange(16, dtype=dtype).view(1, 1, 4, 4).repeat(1, 2, 1, 1).to(device)
    freq = torch.zeros_like(coef)
    phase_weight = torch.zeros(1, 2, dtype=dtype, device=device)
    coord = (-shift).expand(1, 1, 2).clone().to(device)
    cell = torch.zeros_like(coord)
    x, _ = ops.lte_basis(coef, freq, phase_weight, coord, cell)
    assert x[0, 0, 3, 0].item() == 2 * 4 + 2  # row 2, column 2
    assert_matches_reference([coef, freq, phase_weight, coord, cell], 0.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("height, width", [(1, 1), (1, 7), (5, 1)])
def test_degenerate_maps(device, height, width):
    inputs = make_inputs(height=height, width=width, device=device)
    assert_matches_reference(inputs, 1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch, queries", [(2, 0), (0, 5)])
def test_empty_inputs(device, batch, queries):
    inputs = make_inputs(batch=batch, queries=queries, device=device, dtype=torch.float32)
    x, weights = ops.lte_basis(*inputs)
    assert x.shape == (batch, queries, 4, 16) and weights.shape == (batch, queries, 4)
    for param in inputs[:3]:
        param.requires_grad_(True)
    x, _ = ops.lte_basis(*inputs)
    x.sum().backward()
    assert all(p.grad is not None and not p.grad.any() for p in inputs[:3])


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    coef, freq, phase_weight, coord, cell = make_inputs(channels=8, device=device)
    coef_t = coef.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    freq_s = torch.stack([freq, freq], dim=2).flatten(1, 2)[:, ::2]  # every other channel
    phase_t = phase_weight.t().contiguous().t()
    coord_t = coord.transpose(0, 1).contiguous().transpose(0, 1)
    cell_s = torch.stack([cell, cell], dim=-1)[..., 0]
    assert not any(t.is_contiguous() for t in (coef_t, freq_s, phase_t, coord_t, cell_s))
    x, weights = ops.lte_basis(coef_t, freq_s, phase_t, coord_t, cell_s)
    x_ref, weights_ref = reference.lte_basis(coef, freq, phase_weight, coord, cell)
    torch.testing.assert_close(x, x_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(weights, weights_ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device):
    coef, freq, phase_weight, coord, cell = make_inputs(
        batch=2, channels=6, height=3, width=4, queries=7, device=device
    )
    coef.requires_grad_(True)
    freq.requires_grad_(True)
    phase_weight.requires_grad_(True)
    torch.autograd.gradcheck(
        lambda c, f, p: ops.lte_basis(c, f, p, coord, cell)[0], (coef, freq, phase_weight)
    )


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_match_reference(device):
    inputs = make_inputs(
        batch=2, channels=32, height=6, width=5, queries=300, dtype=torch.float32, device=device
    )
    grad_x = torch.randn(2, 300, 4, 32, device=device)
    grads = []
    for fn in (ops.lte_basis, reference.lte_basis):
        params = [t.clone().requires_grad_(True) for t in inputs[:3]]
        x, _ = fn(*params, *inputs[3:])
        grads.append(torch.autograd.grad(x, params, grad_x))
    for fused, ref in zip(*grads):
        torch.testing.assert_close(fused, ref, atol=2e-3, rtol=1e-4)


def test_cpu_backward_is_deterministic_across_thread_counts():
    inputs = make_inputs(
        batch=1, channels=128, height=8, width=8, queries=2000, dtype=torch.float32
    )
    grad_x = torch.randn(1, 2000, 4, 128)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            results.append(torch.ops.lte_cuda.lte_basis_backward(grad_x, *inputs))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_coord_and_cell_get_no_gradient_and_weights_are_constant():
    coef, freq, phase_weight, coord, cell = make_inputs()
    coef.requires_grad_(True)
    coord.requires_grad_(True)
    x, weights = ops.lte_basis(coef, freq, phase_weight, coord, cell)
    assert not weights.requires_grad
    x.sum().backward()
    assert coord.grad is None and coef.grad is not None


def test_double_backward_raises():
    coef, freq, phase_weight, coord, cell = make_inputs(channels=4, queries=5)
    coef.requires_grad_(True)
    x, _ = ops.lte_basis(coef, freq, phase_weight, coord, cell)
    (grad,) = torch.autograd.grad(x.pow(2).sum(), coef, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad.sum().backward()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    inputs = make_inputs(
        batch=2, channels=8, height=4, width=5, queries=9, dtype=torch.float32, device=device
    )
    for t in inputs[:3]:
        t.requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.lte_cuda.lte_basis.default, tuple(inputs))
    grad_x = torch.randn(2, 9, 4, 8, device=device)
    plain = [t.detach() for t in inputs]
    torch.library.opcheck(torch.ops.lte_cuda.lte_basis_backward.default, (grad_x, *plain))


@pytest.mark.slow
def test_torch_compile_fullgraph():
    inputs = make_inputs(batch=1, channels=8, height=4, width=4, queries=16, dtype=torch.float32)
    params = [t.clone().requires_grad_(True) for t in inputs[:3]]

    def decode(coef, freq, phase_weight, coord, cell):
        x, weights = ops.lte_basis(coef, freq, phase_weight, coord, cell)
        return (x.sum(-1) * weights).sum()

    compiled = torch.compile(decode, fullgraph=True, backend="aot_eager")
    out = compiled(*params, *inputs[3:])
    out.backward()
    torch.testing.assert_close(out, decode(*inputs))
    assert all(p.grad is not None for p in params)


@pytest.mark.parametrize("device", DEVICES)
def test_basis_linear_gradcheck(device):
    coef, freq, phase_weight, coord, cell = make_inputs(
        batch=2, channels=6, height=3, width=4, queries=7, device=device
    )
    weight = torch.randn(5, 6, dtype=torch.float64, device=device)
    bias = torch.randn(5, dtype=torch.float64, device=device)
    differentiable = [t.requires_grad_(True) for t in (coef, freq, phase_weight, weight, bias)]
    torch.autograd.gradcheck(
        lambda c, f, p, w, b: ops.lte_basis_linear(c, f, p, coord, cell, w, b)[0], differentiable
    )


@pytest.mark.parametrize("device", DEVICES)
def test_basis_linear_recomputes_x_instead_of_keeping_it(device):
    """The MLP's first layer fused with the op keeps no (B, Q, 4, C) tensor for backward and
    gives the gradients of lte_basis followed by F.linear."""
    inputs = make_inputs(
        batch=2, channels=32, height=6, width=5, queries=300, dtype=torch.float32, device=device
    )
    layer = torch.nn.Linear(32, 24).to(device)
    x_numel = 2 * 300 * 4 * 32
    saved_numels = []

    def keep_numel(tensor):
        saved_numels.append(tensor.numel())
        return tensor

    results = []
    for fused in (True, False):
        params = [t.clone().requires_grad_(True) for t in inputs[:3]]
        layer.zero_grad()
        with torch.autograd.graph.saved_tensors_hooks(keep_numel, lambda t: t):
            if fused:
                y, weights = ops.lte_basis_linear(*params, *inputs[3:], layer.weight, layer.bias)
            else:
                x, weights = ops.lte_basis(*params, *inputs[3:])
                y = layer(x).reshape(-1, 24)
        if fused:
            assert x_numel not in saved_numels
        else:
            assert x_numel in saved_numels  # the check sees x when F.linear keeps it
        (y.square().sum() + weights.sum()).backward()
        results.append(
            [y, weights] + [p.grad for p in params] + [layer.weight.grad, layer.bias.grad]
        )
    for fused, plain in zip(*results):
        torch.testing.assert_close(fused, plain, atol=2e-3, rtol=1e-4)


def test_basis_linear_under_torch_compile_fullgraph():
    inputs = make_inputs(batch=1, channels=8, height=4, width=4, queries=16, dtype=torch.float32)
    params = [t.clone().requires_grad_(True) for t in inputs[:3]]
    layer = torch.nn.Linear(8, 4)

    def decode(coef, freq, phase_weight, coord, cell):
        y, weights = ops.lte_basis_linear(
            coef, freq, phase_weight, coord, cell, layer.weight, layer.bias
        )
        return (y.sum(-1).view(weights.shape) * weights).sum()

    compiled = torch.compile(decode, fullgraph=True, backend="aot_eager")
    out = compiled(*params, *inputs[3:])
    out.backward()
    torch.testing.assert_close(out, decode(*inputs))
    assert all(p.grad is not None for p in params) and layer.weight.grad is not None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_is_computed_in_float32(device, dtype):
    coef, freq, phase_weight, coord, cell = make_inputs(dtype=torch.float32, device=device)
    low = [t.to(dtype) for t in (coef, freq, phase_weight)]
    # float32 geometry (what autocast passes): float32 math on the rounded features, rounded once.
    x, weights = ops.lte_basis(*low, coord, cell)
    assert x.dtype == dtype and weights.dtype == dtype
    x32, w32 = ops.lte_basis(*[t.float() for t in low], coord, cell)
    torch.testing.assert_close(x, x32.to(dtype))
    torch.testing.assert_close(weights, w32.to(dtype))
    # Everything in low precision: as the reference computes it from the same inputs.
    low_geometry = (coord.to(dtype), cell.to(dtype))
    x, _ = ops.lte_basis(*low, *low_geometry)
    x_ref, _ = reference.lte_basis(*low, *low_geometry)
    torch.testing.assert_close(x.float(), x_ref.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_autocast(device):
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    inputs = make_inputs(dtype=torch.float32, device=device)
    coef = inputs[0].clone().requires_grad_(True)
    with torch.autocast(device, dtype=dtype):
        x, weights = ops.lte_basis(coef, *inputs[1:])
    if device == "cpu":
        # On CPU float32 features are read as given: x is the float32 result rounded once.
        expected = ops.lte_basis(*inputs)[0].to(dtype)
    else:
        # On CUDA: features in the autocast dtype, coordinates and cells in float32.
        expected, _ = ops.lte_basis(*[t.to(dtype) for t in inputs[:3]], *inputs[3:])
    assert x.dtype == dtype
    torch.testing.assert_close(x, expected)
    x.float().sum().backward()
    assert coef.grad.dtype == torch.float32


def bad_inputs():
    """(description, mutate(inputs) -> inputs, message pattern) for each rejected input."""
    return [
        ("coef 3-d", lambda i: [i[0][0]] + i[1:], r"coef must have shape \(B, C, h, w\)"),
        (
            "freq shape",
            lambda i: [i[0], i[1][:, :, :3]] + i[2:],
            r"freq must have the shape of coef",
        ),
        (
            "odd C",
            lambda i: [i[0][:, :5], i[1][:, :5], i[2][:2]] + i[3:],
            r"must be even and positive, got C=5",
        ),
        (
            "phase_weight shape",
            lambda i: i[:2] + [i[2][:3]] + i[3:],
            r"phase_weight must have shape \(C/2, 2\) = \(4, 2\)",
        ),
        (
            "coord last dim",
            lambda i: i[:3] + [i[3][..., :1], i[4][..., :1]],
            r"coord must have shape \(B, Q, 2\)",
        ),
        ("coord ndim", lambda i: i[:3] + [i[3][0], i[4][0]], r"coord must have shape \(B, Q, 2\)"),
        ("cell shape", lambda i: i[:4] + [i[4][:, :3]], r"cell must have the shape of coord"),
        (
            "batch mismatch",
            lambda i: i[:3] + [i[3][:1], i[4][:1]],
            r"coord has batch size 1 but coef has batch size 2",
        ),
        (
            "mixed feature dtypes",
            lambda i: [i[0], i[1].double()] + i[2:],
            r"coef, freq and phase_weight must have one dtype",
        ),
        (
            "mixed geometry dtypes",
            lambda i: i[:4] + [i[4].double()],
            r"coord and cell must have one dtype",
        ),
        (
            "geometry dtype",
            lambda i: i[:3] + [i[3].double(), i[4].double()],
            r"must have the dtype of coef",
        ),
        (
            "integer coef",
            lambda i: [i[0].long(), i[1].long(), i[2].long()] + i[3:],
            r"coef must be float16, bfloat16, float32 or float64",
        ),
    ]


@pytest.mark.parametrize("mode", ["eager", "fake"])
@pytest.mark.parametrize("case", bad_inputs(), ids=lambda c: c[0])
def test_bad_input_is_rejected_with_a_clear_message(mode, case):
    _, mutate, pattern = case
    inputs = mutate(make_inputs(channels=8, dtype=torch.float32))
    if mode == "eager":
        with pytest.raises(RuntimeError, match=pattern):
            ops.lte_basis(*inputs)
    else:
        with FakeTensorMode() as fake_mode:
            fakes = [fake_mode.from_tensor(t) for t in inputs]
            with pytest.raises(RuntimeError, match=pattern):
                torch.ops.lte_cuda.lte_basis(*fakes)


@pytest.mark.cuda
def test_mixed_devices_are_rejected():
    inputs = make_inputs(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="all tensors must be on one device"):
        ops.lte_basis(inputs[0].cuda(), *inputs[1:])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_cuda_matches_cpu(dtype, atol):
    inputs = make_inputs(
        batch=3, channels=64, height=9, width=11, queries=3000, dtype=dtype, coord_range=1.2
    )
    x_cpu, w_cpu = ops.lte_basis(*inputs)
    x_gpu, w_gpu = ops.lte_basis(*[t.cuda() for t in inputs])
    torch.testing.assert_close(x_gpu.cpu(), x_cpu, atol=atol, rtol=0)
    torch.testing.assert_close(w_gpu.cpu(), w_cpu, atol=atol, rtol=0)
    grad_x = torch.randn_like(x_cpu)
    grads_cpu = torch.ops.lte_cuda.lte_basis_backward(grad_x, *inputs)
    grads_gpu = torch.ops.lte_cuda.lte_basis_backward(grad_x.cuda(), *[t.cuda() for t in inputs])
    for g_gpu, g_cpu in zip(grads_gpu, grads_cpu):
        torch.testing.assert_close(g_gpu.cpu(), g_cpu, atol=100 * atol, rtol=100 * atol)


@pytest.mark.cuda
def test_cuda_backward_is_deterministic():
    inputs = make_inputs(
        batch=2,
        channels=128,
        height=16,
        width=16,
        queries=20000,
        dtype=torch.float32,
        device="cuda",
    )
    grad_x = torch.randn(2, 20000, 4, 128, device="cuda")
    first = torch.ops.lte_cuda.lte_basis_backward(grad_x, *inputs)
    second = torch.ops.lte_cuda.lte_basis_backward(grad_x, *inputs)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_cuda_kernels_are_registered_in_a_cuda_build():
    if not ops.HAS_CUDA_KERNELS:
        pytest.skip("built without CUDA kernels")
    for op in ("lte_cuda::lte_basis", "lte_cuda::lte_basis_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op


@pytest.mark.cuda
def test_cuda_tensors_without_cuda_kernels_get_a_clear_error(monkeypatch):
    monkeypatch.setattr(ops, "HAS_CUDA_KERNELS", False)
    with pytest.raises(RuntimeError, match="built without CUDA kernels"):
        ops.lte_basis(*make_inputs(device="cuda"))


def run_python(code: str) -> str:
    """What ``code`` prints in a fresh interpreter that imports this checkout's lte_cuda."""
    package_root = str(Path(lte_cuda.__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    return done.stdout


# Run first in a fresh interpreter: torch then reports a version the library was not built for.
ANOTHER_TORCH = "import torch\ntorch.__version__ = '0.0.1'\n"


def test_library_built_against_another_torch_is_refused():
    # Loading a library built against another torch can crash the process: ops refuses it
    # before loading it.
    probe = ANOTHER_TORCH + "from lte_cuda import ops\nprint(ops.library_available())\n"
    probe += "print(ops.LIBRARY_ERROR)\n"
    available, error = run_python(probe).splitlines()
    assert available == "False"
    assert f"built against torch {torch.__version__} but torch 0.0.1 is installed" in error
    assert "pip install ." in error


def test_refused_library_falls_back_to_reference_with_one_warning():
    probe = ANOTHER_TORCH + textwrap.dedent(
        """
        import os, warnings
        from lte_cuda import ops, reference
        os.environ.pop("LTE_CUDA_REQUIRE_LIBRARY", None)  # as in a user's environment
        g = torch.Generator().manual_seed(0)
        coef, freq = torch.randn(2, 1, 8, 5, 7, generator=g, dtype=torch.float64)
        coord = torch.rand(1, 50, 2, generator=g, dtype=torch.float64) * 2 - 1
        inputs = (coef, freq, torch.randn(4, 2, generator=g, dtype=torch.float64), coord,
                  torch.full_like(coord, 0.1))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            x = ops.lte_basis(*inputs)[0]
            ops.lte_basis(*inputs)
        print(len(caught), caught[0].message)
        print(torch.equal(x, reference.lte_basis(*inputs)[0]))
        try:
            ops.lte_basis(coef[:, :3], *inputs[1:])
        except RuntimeError as error:
            print(error)
        """
    )
    warned, same, refused = run_python(probe).splitlines()
    assert warned.startswith("1 lte_cuda: using the slow reference path: the compiled op library")
    assert same == "True"
    assert "freq must have the shape of coef" in refused  # the fallback checks its input too


def test_importing_ops_loads_no_images_and_no_inference():
    probe = (
        "import sys\n"
        "import lte_cuda.ops\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'PIL'"
        " or m in ('lte_cuda.inference', 'lte_cuda.upscale', 'lte_cuda.checkpoint')))\n"
    )
    assert run_python(probe).strip() == "[]"


def test_the_package_names_import_on_first_use():
    probe = (
        "import sys\n"
        "import lte_cuda\n"
        "print('lte_cuda.upscale' in sys.modules)\n"
        "from lte_cuda.upscale import resolve_model\n"  # the module of the same name
        "print(callable(lte_cuda.upscale) and lte_cuda.upscale.__name__)\n"
        "print(lte_cuda.load_model.__module__, lte_cuda.reference.__name__)\n"
    )
    assert run_python(probe).splitlines() == [
        "False",
        "upscale",
        "lte_cuda.checkpoint lte_cuda.reference",
    ]


@pytest.mark.slow
def test_outputs_over_2_pow_31_elements():
    # (B, Q, 4, C) with C = 512 and Q = 2^20 + 1 holds 2^31 + 2048 elements (4 GiB in float16).
    queries = (1 << 20) + 1
    coef, freq, phase_weight, _, _ = make_inputs(
        batch=1, channels=512, height=4, width=4, dtype=torch.float16
    )
    coord = torch.linspace(-1, 1, queries).view(1, -1, 1).expand(1, queries, 2).contiguous()
    cell = torch.full_like(coord, 0.01)
    x, weights = ops.lte_basis(coef, freq, phase_weight, coord, cell)
    assert x.numel() > 2**31
    tail = slice(queries - 3, queries)
    x_ref, w_ref = reference.lte_basis(coef, freq, phase_weight, coord[:, tail], cell[:, tail])
    torch.testing.assert_close(x[:, tail], x_ref, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(weights[:, tail], w_ref)
    del x


def grid_sample_has_double_backward() -> bool:
    """torch 2.11 has no derivative for grid_sampler_2d_backward; torch 2.13 has one."""
    maps = torch.rand(1, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    grid = torch.zeros(1, 1, 1, 2, dtype=torch.float64)
    out = torch.nn.functional.grid_sample(maps, grid, mode="nearest", align_corners=False)
    (grad,) = torch.autograd.grad(out.sum(), maps, create_graph=True)
    try:
        torch.autograd.grad((grad * grad).sum(), maps, allow_unused=True)
    except RuntimeError:
        return False
    return True


@pytest.mark.skipif(
    not grid_sample_has_double_backward(), reason="this torch's grid_sample has no double backward"
)
def test_reference_gradcheck_double_backward_is_available():
    # The reference is plain autograd: the documented way to get second-order gradients.
    coef, freq, phase_weight, coord, cell = make_inputs(
        batch=1, channels=4, height=3, width=3, queries=4
    )
    coef.requires_grad_(True)
    torch.autograd.gradgradcheck(
        lambda c: reference.lte_basis(c, freq, phase_weight, coord, cell)[0], (coef,)
    )


def test_phase_comes_from_the_cell_in_lr_pixels():
    # phase = phase.weight @ (cell * (h, w)); the basis is cos(pi * phase) with zero frequency.
    coef = torch.ones(1, 2, 1, 1, dtype=torch.float64)
    freq = torch.zeros_like(coef)
    phase_weight = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    coord = torch.zeros(1, 1, 2, dtype=torch.float64)
    cell = torch.tensor([[[2.0, 0.0]]], dtype=torch.float64)  # rel_cell_row = 2, phase = 1
    x, _ = ops.lte_basis(coef, freq, phase_weight, coord, cell)
    assert x[0, 0, 0, 0].item() == pytest.approx(math.cos(math.pi))


def test_autocast_leaves_float64_alone():
    """torch's own autocast rule: float64 tensors are never cast down."""
    inputs = make_inputs(dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x, weights = ops.lte_basis(*inputs)
    expected_x, expected_weights = ops.lte_basis(*inputs)
    assert x.dtype == torch.float64 and weights.dtype == torch.float64
    assert torch.equal(x, expected_x) and torch.equal(weights, expected_weights)


def bad_grad_x():
    """(description, grad_x from the good one, message pattern) for each rejected grad_x."""
    return [
        ("shape", lambda g: g[:, :-1], r"grad_x must have shape \(B, Q, 4, C\) = \(2, 50, 4, 8\)"),
        ("neighbours", lambda g: g[:, :, :3], r"grad_x must have shape \(B, Q, 4, C\)"),
        (
            "dtype",
            lambda g: g.double(),
            r"grad_x must have the dtype of coef \((torch\.float32|Float)\) or float16/bfloat16",
        ),
    ]


@pytest.mark.parametrize("mode", ["eager", "fake"])
@pytest.mark.parametrize("case", bad_grad_x(), ids=lambda c: c[0])
def test_backward_rejects_a_bad_grad_x(mode, case):
    _, mutate, pattern = case
    inputs = make_inputs(channels=8, dtype=torch.float32)
    grad_x = mutate(torch.randn(2, 50, 4, 8))
    if mode == "eager":
        with pytest.raises(RuntimeError, match=pattern):
            torch.ops.lte_cuda.lte_basis_backward(grad_x, *inputs)
    else:
        with FakeTensorMode() as fake_mode:
            fakes = [fake_mode.from_tensor(t) for t in (grad_x, *inputs)]
            with pytest.raises(RuntimeError, match=pattern):
                torch.ops.lte_cuda.lte_basis_backward(*fakes)


@pytest.mark.parametrize("mode", ["eager", "fake"])
def test_out_dtype_is_checked(mode):
    inputs = make_inputs(channels=8, dtype=torch.float64)
    pattern = r"out_dtype must be the dtype of coef \(.*\) or float16/bfloat16 when coef is float32"
    if mode == "eager":
        with pytest.raises(RuntimeError, match=pattern):
            torch.ops.lte_cuda.lte_basis(*inputs, out_dtype=torch.bfloat16)
    else:
        with FakeTensorMode() as fake_mode:
            fakes = [fake_mode.from_tensor(t) for t in inputs]
            with pytest.raises(RuntimeError, match=pattern):
                torch.ops.lte_cuda.lte_basis(*fakes, out_dtype=torch.bfloat16)


@pytest.fixture
def kernel_variants():
    """``ops.set_kernel_variants`` for one test, which starts and ends with the variants of
    the environment."""
    ops.set_kernel_variants(None)
    yield ops.set_kernel_variants
    ops.set_kernel_variants(None)


@pytest.mark.parametrize("spec", ["bogus", "default,bogus", "sync_free_backward, autocast-x"])
def test_unknown_kernel_variant_is_a_clear_error(monkeypatch, spec):
    pattern = r"LTE_CUDA_KERNEL: unknown kernel variant .* known: default, "
    with pytest.raises(ValueError, match=pattern):
        ops.set_kernel_variants(spec)
    monkeypatch.setenv("LTE_CUDA_KERNEL", spec)
    with pytest.raises(ValueError, match="unknown kernel variant"):
        ops.active_kernel_variants()


def test_kernel_variants_are_selected_by_environment_or_call(monkeypatch, kernel_variants):
    monkeypatch.delenv("LTE_CUDA_KERNEL", raising=False)
    assert ops.active_kernel_variants() == frozenset()
    monkeypatch.setenv("LTE_CUDA_KERNEL", "sync_free_backward,autocast_x")
    assert ops.active_kernel_variants() == {"sync_free_backward", "autocast_x"}
    kernel_variants("default")
    assert ops.active_kernel_variants() == frozenset()
    kernel_variants(None)
    assert ops.active_kernel_variants() == {"sync_free_backward", "autocast_x"}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "batch, height, width, queries", [(2, 6, 5, 300), (1, 9, 11, 7), (3, 1, 1, 20)]
)
def test_sync_free_backward_equals_the_default_on_cpu(dtype, batch, height, width, queries):
    """Same groups (also with pixels no query reads), same order, so the same bits."""
    inputs = make_inputs(
        batch=batch,
        channels=16,
        height=height,
        width=width,
        queries=queries,
        dtype=torch.float32,
        coord_range=1.2,
    )
    geometry_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    inputs = [t.to(dtype) for t in inputs[:3]] + [t.to(geometry_dtype) for t in inputs[3:]]
    grad_x = torch.randn(batch, queries, 4, 16, dtype=torch.float32).to(dtype)
    default = torch.ops.lte_cuda.lte_basis_backward(grad_x, *inputs)
    sync_free = torch.ops.lte_cuda.lte_basis_backward(grad_x, *inputs, sync_free=True)
    assert all(torch.equal(a, b) for a, b in zip(default, sync_free))


def test_sync_free_backward_variant_reaches_the_backward(monkeypatch, kernel_variants):
    inputs = make_inputs(batch=2, channels=8, queries=40, dtype=torch.float32)
    calls = []
    backward = torch.ops.lte_cuda.lte_basis_backward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("sync_free"))
        return backward(*args, **kwargs)

    grads = []
    for spec in ("default", "sync_free_backward"):
        monkeypatch.setenv("LTE_CUDA_KERNEL", spec)
        params = [t.clone().requires_grad_(True) for t in inputs[:3]]
        x, _ = ops.lte_basis(*params, *inputs[3:])
        kernel_variants("default")  # the forward's choice holds for its backward
        monkeypatch.setattr(torch.ops.lte_cuda, "lte_basis_backward", spy)
        x.square().sum().backward()
        monkeypatch.setattr(torch.ops.lte_cuda, "lte_basis_backward", backward)
        kernel_variants(None)
        grads.append([p.grad for p in params])
    assert calls == [False, True]
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_autocast_x_variant_writes_x_from_float32_features(kernel_variants):
    """autocast_x: x is the float32 computation rounded once to the autocast dtype (the default
    rounds the features first); gradients reach the float32 features from a bfloat16 grad_x."""
    inputs = make_inputs(dtype=torch.float32)
    kernel_variants("autocast_x")
    coef = inputs[0].clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x, weights = ops.lte_basis(coef, *inputs[1:])
    x32, weights32 = ops.lte_basis(*inputs)
    assert x.dtype == torch.bfloat16 and weights.dtype == torch.bfloat16
    assert torch.equal(x, x32.bfloat16()) and torch.equal(weights, weights32.bfloat16())
    grad_x = torch.randn_like(x32).bfloat16()
    x.backward(grad_x)
    expected = torch.ops.lte_cuda.lte_basis_backward(grad_x.float(), *inputs)[0]
    assert coef.grad.dtype == torch.float32 and torch.equal(coef.grad, expected)


def test_bfloat16_x_is_the_float32_x_rounded_nan_and_subnormal_included():
    """bfloat16 x from float32 features holds the float32 x rounded as torch rounds it, also
    where the CPU converts 32 values at a time (AVX512-BF16): C = 72 is two such blocks and a
    tail; one pixel's coefficients are subnormal, another's NaN, so blocks take both paths."""
    coef, freq, phase_weight, coord, cell = make_inputs(channels=72, dtype=torch.float32)
    coef[0, :40, 0, 0] = 1e-39  # x = coef * cos: subnormal in float32
    coef[0, 50:, 1, 1] = float("nan")
    coord[0, :10] = torch.tensor([-0.9, -0.9])  # queries gathering from those corner pixels
    inputs = (coef, freq, phase_weight, coord, cell)
    x, weights = torch.ops.lte_cuda.lte_basis(*inputs, out_dtype=torch.bfloat16)
    x32, weights32 = torch.ops.lte_cuda.lte_basis(*inputs)
    nan = x32.isnan()
    assert nan.any() and ((x32 != 0) & (x32.abs() < 1.2e-38)).any()
    # NaN where float32 has NaN (torch's own rounding writes other NaN bits than c10's scalar
    # one), the same bits everywhere else, signed zeros and subnormals included.
    assert torch.equal(x.isnan(), nan)
    assert torch.equal(x.view(torch.int16)[~nan], x32.bfloat16().view(torch.int16)[~nan])
    assert torch.equal(weights, weights32.bfloat16())


@pytest.mark.parametrize("variant", ["sync_free_backward", "autocast_x"])
def test_variants_pass_opcheck(kernel_variants, variant):
    kernel_variants(variant)
    inputs = make_inputs(batch=2, channels=8, height=4, width=5, queries=9, dtype=torch.float32)
    for t in inputs[:3]:
        t.requires_grad_(True)
    torch.library.opcheck(
        torch.ops.lte_cuda.lte_basis.default, tuple(inputs), {"out_dtype": torch.bfloat16}
    )
    plain = [t.detach() for t in inputs]
    grad_x = torch.randn(2, 9, 4, 8, dtype=torch.bfloat16)
    torch.library.opcheck(
        torch.ops.lte_cuda.lte_basis_backward.default, (grad_x, *plain), {"sync_free": True}
    )


@pytest.mark.cuda
def test_cuda_sync_free_backward_needs_no_host_sync_and_matches_the_default():
    inputs = make_inputs(
        batch=2,
        channels=64,
        height=16,
        width=16,
        queries=5000,
        dtype=torch.float32,
        device="cuda",
        coord_range=1.2,
    )
    grad_x = torch.randn(2, 5000, 4, 64, device="cuda")
    default = torch.ops.lte_cuda.lte_basis_backward(grad_x, *inputs)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sync_free = torch.ops.lte_cuda.lte_basis_backward(grad_x, *inputs, sync_free=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # Per pixel the same sums in the same order; the phase-weight partials are cut differently.
    assert torch.equal(default[0], sync_free[0]) and torch.equal(default[1], sync_free[1])
    torch.testing.assert_close(default[2], sync_free[2], atol=1e-4, rtol=1e-5)


@pytest.mark.cuda
def test_cuda_out_dtype_equals_the_float32_output_rounded():
    inputs = make_inputs(
        batch=2, channels=64, height=9, width=11, queries=3000, dtype=torch.float32, device="cuda"
    )
    x, weights = torch.ops.lte_cuda.lte_basis(*inputs, out_dtype=torch.bfloat16)
    x32, weights32 = torch.ops.lte_cuda.lte_basis(*inputs)
    assert torch.equal(x, x32.bfloat16()) and torch.equal(weights, weights32.bfloat16())
