"""Tests of the encoders, the LTE model and the model registry.

Most tests use tiny encoders (a few channels, one or two blocks) so the file runs in seconds
on two CPU cores; the full published presets are only built, never run.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lte_cuda import ops, reference
from lte_cuda.coords import make_cell, make_coord
from lte_cuda.models import LTE, PRESETS, build_preset, make_model
from lte_cuda.models.lte import LTEFeatures
from lte_cuda.models.swinir import (
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

TINY_IMNET = {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16, 16]}}
TINY_ENCODER_ARGS = {
    "edsr-baseline-lte": {"n_resblocks": 2, "n_feats": 8},
    "rdn-lte": {"G0": 8, "D": 2, "C": 2, "G": 4},
    # window 8 as published, so a 17x23 input is padded to 24x24
    "swinir-lte": {"img_size": 16, "embed_dim": 12, "depths": [2, 2], "num_heads": [2, 3]},
}

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]  # conftest skips cuda without a GPU


def tiny_model(preset: str) -> LTE:
    torch.manual_seed(0)
    model = build_preset(preset, TINY_ENCODER_ARGS[preset], hidden_dim=16, imnet_spec=TINY_IMNET)
    return model.eval()


def query_grid(batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates and cells of every pixel of a height x width output, for ``batch`` images."""
    coord = make_coord((height, width), flatten=True)
    cell = make_cell(coord, height, width)
    return coord.expand(batch, -1, -1), cell.expand(batch, -1, -1)


# ----------------------------------------------------------------------------- published presets

# (state_dict keys, parameters) of the published checkpoints.
PUBLISHED_COUNTS = {
    "edsr-baseline-lte": (85, 1_714_267),
    "rdn-lte": (309, 22_467_779),
    "swinir-lte": (557, 12_096_871),
}

# A few keys of each published checkpoint with their shapes.
PUBLISHED_SHAPES = {
    "edsr-baseline-lte": {
        "encoder.sub_mean.weight": (3, 3, 1, 1),
        "encoder.add_mean.bias": (3,),
        "encoder.head.0.weight": (64, 3, 3, 3),
        "encoder.body.15.body.2.weight": (64, 64, 3, 3),
        "encoder.body.16.bias": (64,),
    },
    "rdn-lte": {
        "encoder.SFENet1.weight": (64, 3, 3, 3),
        "encoder.SFENet2.weight": (64, 64, 3, 3),
        "encoder.RDBs.15.convs.7.conv.0.weight": (64, 64 + 7 * 64, 3, 3),
        "encoder.RDBs.0.LFF.weight": (64, 64 + 8 * 64, 1, 1),
        "encoder.GFF.0.weight": (64, 16 * 64, 1, 1),
        "encoder.GFF.1.weight": (64, 64, 3, 3),
    },
    "swinir-lte": {
        "encoder.conv_first.weight": (180, 3, 3, 3),
        "encoder.patch_embed.norm.weight": (180,),
        "encoder.layers.5.residual_group.blocks.5.attn.relative_position_bias_table": (225, 6),
        "encoder.layers.0.residual_group.blocks.0.attn.relative_position_index": (64, 64),
        "encoder.layers.0.residual_group.blocks.1.attn_mask": (36, 64, 64),
        "encoder.layers.2.residual_group.blocks.3.attn.qkv.weight": (540, 180),
        "encoder.layers.2.residual_group.blocks.3.mlp.fc1.weight": (360, 180),
        "encoder.layers.4.conv.weight": (180, 180, 3, 3),
        "encoder.norm.bias": (180,),
        "encoder.conv_after_body.weight": (180, 180, 3, 3),
        "encoder.conv_before_upsample.0.weight": (64, 180, 3, 3),
    },
}
DECODER_SHAPES = {
    "coef.weight": (256, 64, 3, 3),
    "freq.bias": (256,),
    "phase.weight": (128, 2),
    "imnet.layers.0.weight": (256, 256),
    "imnet.layers.4.bias": (256,),
    "imnet.layers.6.weight": (3, 256),
}


@pytest.mark.parametrize("preset", sorted(PUBLISHED_COUNTS))
def test_preset_matches_published_checkpoint_layout(preset: str) -> None:
    model = build_preset(preset)
    sd = model.state_dict()
    n_keys, n_params = PUBLISHED_COUNTS[preset]
    assert len(sd) == n_keys
    assert sum(p.numel() for p in model.parameters()) == n_params
    for key, shape in {**PUBLISHED_SHAPES[preset], **DECODER_SHAPES}.items():
        assert tuple(sd[key].shape) == shape, key
    assert model.spec == {"name": "lte", "args": PRESETS[preset]}


def test_swinir_buffers_as_published() -> None:
    sd = build_preset("swinir-lte").state_dict()
    masks = [k for k in sd if k.endswith("attn_mask")]
    assert len(masks) == 18  # the odd (shifted) block of each pair, 3 per layer
    assert all(".blocks.1." in k or ".blocks.3." in k or ".blocks.5." in k for k in masks)
    assert sum(k.endswith("relative_position_index") for k in sd) == 36
    index = sd["encoder.layers.0.residual_group.blocks.0.attn.relative_position_index"]
    assert index.dtype == torch.int64


def test_edsr_mean_shift_is_frozen_and_unused() -> None:
    model = tiny_model("edsr-baseline-lte")
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {
        f"encoder.{m}.{p}" for m in ("sub_mean", "add_mean") for p in ("weight", "bias")
    }
    x = torch.rand(1, 3, 5, 6)
    before = model.encoder(x)
    with torch.no_grad():
        model.encoder.sub_mean.bias.fill_(10.0)
    assert torch.equal(model.encoder(x), before)


def test_make_model_uses_published_spec_layout() -> None:
    small_encoder = {"name": "edsr-baseline", "args": {"n_resblocks": 1, "n_feats": 4}}
    spec = {"name": "lte", "args": {**PRESETS["edsr-baseline-lte"], "encoder_spec": small_encoder}}
    model = make_model(spec, backend="reference")
    assert isinstance(model, LTE) and model.backend == "reference"
    assert model.encoder.out_dim == 4
    encoder = make_model({"name": "rdn", "args": {"D": 1, "C": 1, "G": 2, "G0": 4}})
    assert encoder(torch.rand(1, 3, 4, 5)).shape == (1, 4, 4, 5)
    with pytest.raises(ValueError, match="unknown model name 'liif'"):
        make_model({"name": "liif", "args": {}})
    with pytest.raises(ValueError, match="no_upsampling"):
        make_model({"name": "edsr-baseline", "args": {"no_upsampling": False}})
    with pytest.raises(ValueError, match="unknown preset"):
        build_preset("edsr-lte")


def test_backend_is_validated() -> None:
    model = tiny_model("edsr-baseline-lte")
    with pytest.raises(ValueError, match="backend must be one of"):
        model.backend = "cuda"


def test_features_are_a_value_and_forward_is_query_of_encode() -> None:
    model = tiny_model("edsr-baseline-lte")
    torch.manual_seed(5)
    inp = torch.rand(1, 3, 6, 7)
    coord, cell = query_grid(1, 11, 13)
    with torch.no_grad():
        features = model.encode(inp)
        # The published norm: the model normalises its input itself.
        assert isinstance(features, LTEFeatures) and torch.equal(features.inp, (inp - 0.5) / 0.5)
        assert features.frame == (0, 0, 6, 7) and features.image_size == (6, 7)
        assert features.coef.shape == features.freq.shape == (1, 16, 6, 7)
        assert features.coef.is_contiguous(memory_format=torch.channels_last)
        other = model.encode(inp.flip(-1))  # a second encoding does not disturb the first
        torch.testing.assert_close(model.query(features, coord, cell), model(inp, coord, cell))
        assert not torch.allclose(model.query(other, coord, cell), model(inp, coord, cell))
    with pytest.raises(dataclasses.FrozenInstanceError):
        features.inp = inp
    assert not any(hasattr(model, name) for name in ("inp", "feat", "coef_map", "freq_map"))


# ----------------------------------------------------------------------------- fused vs reference


@pytest.mark.parametrize("backend, module", [("fused", ops), ("reference", reference)])
def test_backend_picks_the_op_at_call_time_and_calls_it_once(
    backend: str, module: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"ops": 0, "reference": 0}
    # Stubs compute with the captured reference function, so the count only sees the model's
    # own calls (the op's fallback calls reference.lte_basis when the extension is missing).
    compute = reference.lte_basis

    def counting(name: str):
        def stub(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            calls[name] += 1
            return compute(*args)

        return stub

    monkeypatch.setattr(ops, "lte_basis", counting("ops"))
    monkeypatch.setattr(reference, "lte_basis", counting("reference"))
    model = tiny_model("edsr-baseline-lte")
    model.backend = backend
    coord, cell = query_grid(1, 7, 9)
    with torch.no_grad():
        model(torch.rand(1, 3, 4, 5), coord, cell)
    assert calls == {"ops": int(module is ops), "reference": int(module is reference)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preset", sorted(TINY_ENCODER_ARGS))
def test_fused_backend_matches_reference(preset: str, device: str) -> None:
    model = tiny_model(preset).to(device)
    torch.manual_seed(1)
    inp = (torch.rand(2, 3, 17, 23) * 2 - 1).to(device)
    coord, cell = (t.to(device) for t in query_grid(2, 41, 58))  # x2.41 rows, x2.52 columns
    with torch.no_grad():
        features = model.encode(inp)
        model.backend = "reference"
        expected = model.query(features, coord, cell)
        model.backend = "fused"
        fused = model.query(features, coord, cell)
    assert fused.shape == (2, 41 * 58, 3)
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_backend_gradients_match_reference(device: str) -> None:
    model = tiny_model("edsr-baseline-lte").train().to(device)
    torch.manual_seed(2)
    inp = (torch.rand(2, 3, 9, 11) * 2 - 1).to(device)
    coord = (torch.rand(2, 50, 2) * 2 - 1).to(device)  # scattered training-style samples
    cell = torch.full_like(coord, 2 / 25)
    grads = {}
    for backend in ("reference", "fused"):
        model.backend = backend
        model.zero_grad()
        model(inp, coord, cell).square().mean().backward()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    for name, grad in grads["reference"].items():
        torch.testing.assert_close(grads["fused"][name], grad, atol=1e-5, rtol=1e-4, msg=name)


# ----------------------------------------------------------------------------- SwinIR specifics


def test_swinir_pads_to_window_and_does_not_crop() -> None:
    encoder = tiny_model("swinir-lte").encoder
    x = torch.rand(1, 3, 13, 19)
    with torch.no_grad():
        feat = encoder(x)
        padded = encoder(F.pad(x, (0, 5, 0, 3), mode="reflect"))
    assert feat.shape == (1, 64, 16, 24)
    torch.testing.assert_close(feat, padded, atol=0, rtol=0)


def test_swinir_mask_buffer_used_at_its_size_recomputed_otherwise() -> None:
    encoder = tiny_model("swinir-lte").encoder  # img_size 16, window 8
    blocks = [b for layer in encoder.layers for b in layer.residual_group.blocks if b.shift_size]
    torch.testing.assert_close(blocks[0].attn_mask, shifted_window_mask(16, 16, 8, 4))
    at_size, other_size = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        before = encoder(at_size), encoder(other_size)
        for block in blocks:
            block.attn_mask.zero_()
        after = encoder(at_size), encoder(other_size)
    assert not torch.allclose(after[0], before[0])  # the stored buffer is what 16x16 uses
    assert torch.equal(after[1], before[1])  # other sizes get a fresh mask


def test_swinir_window_helpers() -> None:
    x = torch.rand(2, 8, 12, 5)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 2 * 3, 4, 4, 5)
    torch.testing.assert_close(windows[1], x[0, 0:4, 4:8])
    assert torch.equal(window_reverse(windows, 4, 8, 12), x)
    ws = 3
    index = relative_position_index(ws)
    for i in range(ws * ws):
        for j in range(ws * ws):
            d_row, d_col = i // ws - j // ws, i % ws - j % ws
            assert index[i, j] == (d_row + ws - 1) * (2 * ws - 1) + (d_col + ws - 1)


# ----------------------------------------------------------------------------- torch.compile


@pytest.mark.slow
def test_query_compiles_fullgraph() -> None:
    model = tiny_model("edsr-baseline-lte")
    inp = torch.rand(1, 3, 6, 7) * 2 - 1
    coord, cell = query_grid(1, 13, 16)
    with torch.no_grad():
        features = model.encode(inp)
        expected = model.query(features, coord, cell)
        compiled = torch.compile(model.query, fullgraph=True)
        torch.testing.assert_close(compiled(features, coord, cell), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_training_step_compiles_fullgraph() -> None:
    """The training path (op and first MLP layer fused, in-place ReLU after it) under
    torch.compile gives the eager loss and gradients."""
    inp = torch.rand(2, 3, 6, 7) * 2 - 1
    coord, cell = query_grid(2, 13, 16)
    grads = []
    for compile_it in (False, True):
        model = tiny_model("edsr-baseline-lte").train()
        step = torch.compile(model, fullgraph=True, backend="aot_eager") if compile_it else model
        loss = step(inp, coord, cell).abs().mean()
        loss.backward()
        grads.append([loss.detach()] + [p.grad for p in model.parameters()])
    for compiled, eager in zip(grads[1], grads[0]):
        torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- sanity of outputs


def test_flat_image_stays_flat_without_texture() -> None:
    """With zero coefficients the decoder adds a constant, so a flat image stays flat."""
    model = tiny_model("edsr-baseline-lte")
    with torch.no_grad():
        model.coef.weight.zero_()
        model.coef.bias.zero_()
        inp = torch.full((1, 3, 5, 7), 0.25)
        coord, cell = query_grid(1, 11, 9)
        out = model(inp, coord, cell)
    assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-6)


def test_inference_runs_the_mlp_in_row_blocks_with_the_same_result(monkeypatch) -> None:
    import lte_cuda.models.lte as lte_module

    model = tiny_model("edsr-baseline-lte")
    coord, cell = query_grid(2, 19, 23)
    with torch.no_grad():
        features = model.encode(torch.rand(2, 3, 8, 9) * 2 - 1)
        whole = model.query(features, coord, cell)
        monkeypatch.setattr(lte_module, "MLP_ROWS_PER_BLOCK", 100)  # 2*19*23*4 rows: 35 blocks
        blocked = model.query(features, coord, cell)
    torch.testing.assert_close(blocked, whole, atol=1e-6, rtol=0)


def test_mlp_inference_on_packed_weights_equals_the_layers() -> None:
    """At inference on CPU the MLP runs on oneDNN-packed weights: same values as its layers
    (fp32; bf16 under autocast as autocast's own layers give), re-packed when a weight changes,
    and NaN (input or weights) still reaches the output instead of vanishing in a fused ReLU."""
    from lte_cuda.models.mlp import MLP

    torch.manual_seed(0)
    mlp = MLP(64, 3, [64, 64]).eval()
    x = torch.randn(1000, 64)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), mlp.layers(x), atol=1e-5, rtol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            packed, plain = mlp(x.bfloat16()), mlp.layers(x.bfloat16())
        assert packed.dtype == torch.bfloat16
        torch.testing.assert_close(packed.float(), plain.float(), atol=2e-2, rtol=2e-2)
        mlp.layers[0].bias.add_(1.0)  # in place: the packed copy must follow
        torch.testing.assert_close(mlp(x), mlp.layers(x), atol=1e-5, rtol=1e-5)
        x[7, 0] = float("nan")
        assert mlp(x)[7].isnan().all() and mlp(x)[:7].isfinite().all()
        mlp.layers[2].weight[0, 0] = float("nan")
        assert mlp(x[:7]).isnan().any()
