"""Tests of loading and saving LTE checkpoints in the published format.

The published-format files here are written by the tests themselves with ``torch.save`` of
the published dict layout, with key names and shapes spelled out below from the spec, not
taken from the model under test.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lte_cuda
from lte_cuda import CheckpointError, load_model, save_model
from lte_cuda.models import MODELS, PRESETS, build_preset, check_model_spec, make_model
from lte_cuda.models.limits import ARG_BOUNDS

N_BLOCKS, N_FEATS, HIDDEN, HIDDEN_LIST = 2, 8, 16, [16, 16]
TINY_ARGS = {
    "encoder_spec": {
        "name": "edsr-baseline",
        "args": {"no_upsampling": True, "n_resblocks": N_BLOCKS, "n_feats": N_FEATS},
    },
    "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": HIDDEN_LIST}},
    "hidden_dim": HIDDEN,
}


def published_edsr_lte_shapes(
    n_blocks: int, feats: int, hidden: int, hidden_list: list[int]
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a published EDSR-baseline-LTE state_dict (from the spec)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for shift in ("sub_mean", "add_mean"):
        shapes[f"encoder.{shift}.weight"] = (3, 3, 1, 1)
        shapes[f"encoder.{shift}.bias"] = (3,)
    shapes["encoder.head.0.weight"], shapes["encoder.head.0.bias"] = (feats, 3, 3, 3), (feats,)
    for i in range(n_blocks):
        for j in (0, 2):
            shapes[f"encoder.body.{i}.body.{j}.weight"] = (feats, feats, 3, 3)
            shapes[f"encoder.body.{i}.body.{j}.bias"] = (feats,)
    shapes[f"encoder.body.{n_blocks}.weight"] = (feats, feats, 3, 3)
    shapes[f"encoder.body.{n_blocks}.bias"] = (feats,)
    for conv in ("coef", "freq"):
        shapes[f"{conv}.weight"], shapes[f"{conv}.bias"] = (hidden, feats, 3, 3), (hidden,)
    shapes["phase.weight"] = (hidden // 2, 2)
    dims = [hidden, *hidden_list, 3]
    for i in range(len(dims) - 1):
        shapes[f"imnet.layers.{2 * i}.weight"] = (dims[i + 1], dims[i])
        shapes[f"imnet.layers.{2 * i}.bias"] = (dims[i + 1],)
    return shapes


def test_shape_table_is_the_published_one() -> None:
    shapes = published_edsr_lte_shapes(16, 64, 256, [256, 256, 256])
    assert len(shapes) == 85
    assert sum(math.prod(s) for s in shapes.values()) == 1_714_267


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in published_edsr_lte_shapes(N_BLOCKS, N_FEATS, HIDDEN, HIDDEN_LIST).items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
        sd[key] = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
    return sd


def published_checkpoint(sd: dict[str, torch.Tensor] | None = None, **model_fields) -> dict:
    model = {"name": "lte", "args": TINY_ARGS, "sd": random_state_dict() if sd is None else sd}
    model.update(model_fields)
    return {
        "model": model,
        "optimizer": {"name": "adam", "args": {"lr": 1e-4}, "sd": None},
        "epoch": 7,
    }


def write(path: Path, ckpt: object) -> Path:
    torch.save(ckpt, path)
    return path


# ----------------------------------------------------------------------------- independent forward


def published_forward(
    sd: dict, inp: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor
) -> torch.Tensor:
    """EDSR-baseline-LTE written from the spec: a plain loop over the four neighbours with
    grid_sample, as the published code does (with the feature grid from the feature size)."""

    def conv(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)

    x = conv(inp, "encoder.head.0")
    res = x
    for i in range(N_BLOCKS):
        res = res + conv(F.relu(conv(res, f"encoder.body.{i}.body.0")), f"encoder.body.{i}.body.2")
    feat = conv(res, f"encoder.body.{N_BLOCKS}") + x
    coef, freq = conv(feat, "coef"), conv(feat, "freq")

    def sample(
        maps: torch.Tensor, at: torch.Tensor, mode: str, padding: str = "zeros"
    ) -> torch.Tensor:
        grid = at.flip(-1).unsqueeze(1)
        out = F.grid_sample(maps, grid, mode=mode, padding_mode=padding, align_corners=False)
        return out[:, :, 0].permute(0, 2, 1)

    def linear(v: torch.Tensor, layer: int) -> torch.Tensor:
        return F.linear(v, sd[f"imnet.layers.{layer}.weight"], sd[f"imnet.layers.{layer}.bias"])

    def imnet(v: torch.Tensor) -> torch.Tensor:
        for i in range(len(HIDDEN_LIST)):
            v = F.relu(linear(v, 2 * i))
        return linear(v, 2 * len(HIDDEN_LIST))

    b, _, h, w = coef.shape
    centres = [(-1 + 1 / n) + (2 / n) * torch.arange(n, dtype=torch.float32) for n in (h, w)]
    feat_coord = (
        torch.stack(torch.meshgrid(*centres, indexing="ij")).unsqueeze(0).expand(b, 2, h, w)
    )
    rel_cell = cell * torch.tensor([h, w])
    preds, areas = [], []
    for v_row in (-1, 1):
        for v_col in (-1, 1):
            shifted = coord.clone()
            shifted[:, :, 0] += v_row / h + 1e-6
            shifted[:, :, 1] += v_col / w + 1e-6
            shifted.clamp_(-1 + 1e-6, 1 - 1e-6)
            q_coef = sample(coef, shifted, "nearest")
            q_freq = sample(freq, shifted, "nearest")
            rel = (coord - sample(feat_coord, shifted, "nearest")) * torch.tensor([h, w])
            phi = q_freq[..., 0::2] * rel[..., :1] + q_freq[..., 1::2] * rel[..., 1:]
            phi = phi + F.linear(rel_cell, sd["phase.weight"])
            basis = torch.cat((torch.cos(math.pi * phi), torch.sin(math.pi * phi)), dim=-1)
            preds.append(imnet(q_coef * basis))
            areas.append((rel[..., 0] * rel[..., 1]).abs() + 1e-9)
    total = sum(areas)
    out = sum(pred * (area / total).unsqueeze(-1) for pred, area in zip(preds, reversed(areas)))
    return out + sample(inp, coord, "bilinear", "border")


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_loaded_published_checkpoint_matches_independent_forward(
    tmp_path: Path, backend: str
) -> None:
    sd = random_state_dict()
    path = write(tmp_path / "epoch-best.pth", published_checkpoint(sd))
    model = load_model(path, backend=backend)
    assert model.backend == backend and not model.training
    torch.manual_seed(3)
    pixels = torch.rand(2, 3, 17, 23)
    corners = torch.tensor([[[-1.0, 1.0], [1.0, -1.0]]]).expand(2, -1, -1)
    coord = torch.cat([torch.rand(2, 300, 2) * 2 - 1, corners], dim=1)
    cell = torch.stack([torch.full((2, 302), 2 / 41), torch.full((2, 302), 2 / 58)], dim=-1)
    with torch.no_grad():
        # The published test normalises the image and de-normalises the prediction (0.5 / 0.5);
        # a published checkpoint carries no norm and loads with exactly that one.
        expected = published_forward(sd, (pixels - 0.5) / 0.5, coord, cell) * 0.5 + 0.5
        got = model(pixels, coord, cell)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- save / load


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    encoder_args = TINY_ARGS["encoder_spec"]["args"]
    return build_preset(
        "edsr-baseline-lte", encoder_args, hidden_dim=HIDDEN, imnet_spec=TINY_ARGS["imnet_spec"]
    )


def test_public_api_is_exported() -> None:
    assert {"CheckpointError", "load_model", "save_model"} <= set(lte_cuda.__all__)
    assert issubclass(CheckpointError, ValueError)


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    path = tmp_path / "epoch-last.pth"
    save_model(model, path, optimizer=optimizer, epoch=12, extra={"note": "x"})

    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "optimizer", "epoch", "note"}
    assert raw["epoch"] == 12
    assert raw["model"]["name"] == "lte" and raw["model"]["args"] == TINY_ARGS
    assert raw["optimizer"]["name"] == "adam" and raw["optimizer"]["args"] == {"lr": 1e-4}
    resumed = torch.optim.Adam(model.parameters(), **raw["optimizer"]["args"])
    resumed.load_state_dict(raw["optimizer"]["sd"])

    loaded = load_model(path, backend="reference")
    assert loaded.spec == model.spec
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert [p.requires_grad for p in loaded.parameters()] == [
        p.requires_grad for p in model.parameters()
    ]
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_save_half_stores_fp16_and_loads_fp32(tmp_path: Path) -> None:
    encoder_args = {"img_size": 16, "embed_dim": 8, "depths": [2], "num_heads": [2]}
    model = build_preset(
        "swinir-lte", encoder_args, hidden_dim=HIDDEN, imnet_spec=TINY_ARGS["imnet_spec"]
    )
    path = tmp_path / "half.pth"
    save_model(model, path, half=True)
    raw = torch.load(path, weights_only=True)["model"]["sd"]
    assert raw["coef.weight"].dtype == torch.float16
    index = raw["encoder.layers.0.residual_group.blocks.0.attn.relative_position_index"]
    assert index.dtype == torch.int64
    loaded = load_model(path)
    for key, value in model.state_dict().items():
        got = loaded.state_dict()[key]
        assert got.dtype == value.dtype, key
        torch.testing.assert_close(got, value, atol=1e-3, rtol=1e-3, msg=key)


def test_loads_a_checkpoint_dict_and_strips_module_prefix() -> None:
    sd = {f"module.{k}": v for k, v in random_state_dict().items()}
    model = load_model(published_checkpoint(sd))
    torch.testing.assert_close(model.phase.weight, sd["module.phase.weight"])


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pth"
    save_model(tiny_model(), path, epoch=1)
    before = path.read_bytes()

    def failing_save(obj: object, f: object) -> None:
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_model(tiny_model(), path, epoch=2)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.pth"]


def test_save_rejects_extra_that_overwrites_fields(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'epoch'"):
        save_model(tiny_model(), tmp_path / "m.pth", extra={"epoch": 3})


# ----------------------------------------------------------------------------- errors


def test_missing_key(tmp_path: Path) -> None:
    sd = random_state_dict()
    del sd["coef.bias"]
    path = write(tmp_path / "a.pth", published_checkpoint(sd))
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}.*missing keys: coef\.bias"):
        load_model(path)


def test_unexpected_key(tmp_path: Path) -> None:
    sd = random_state_dict()
    sd["encoder.tail.0.weight"] = torch.zeros(3)
    path = write(tmp_path / "a.pth", published_checkpoint(sd))
    with pytest.raises(CheckpointError, match=r"unexpected keys: encoder\.tail\.0\.weight"):
        load_model(path)


def test_wrong_shape(tmp_path: Path) -> None:
    sd = random_state_dict()
    sd["phase.weight"] = torch.zeros(4, 2)
    path = write(tmp_path / "a.pth", published_checkpoint(sd))
    wanted = r"wrong shapes: phase\.weight \(4, 2\) \(model wants \(8, 2\)\)"
    with pytest.raises(CheckpointError, match=wanted):
        load_model(path)


@pytest.mark.parametrize(
    "ckpt, message",
    [
        (published_checkpoint(name="liif"), "model name is 'liif'"),
        (random_state_dict(), "expected a dict with a 'model' dict, found keys coef\\.bias"),
        ([1, 2], "found list"),
        ({"model": {"name": "lte", "args": TINY_ARGS}}, r"lacks \['sd'\]"),
    ],
)
def test_not_an_lte_checkpoint(tmp_path: Path, ckpt: object, message: str) -> None:
    path = write(tmp_path / "other.pth", ckpt)
    with pytest.raises(CheckpointError, match=rf"other\.pth: not an LTE checkpoint.*{message}"):
        load_model(path)


def test_non_tensor_entry(tmp_path: Path) -> None:
    sd = random_state_dict()
    sd["phase.weight"] = [[0.0, 0.0]] * 8
    path = write(tmp_path / "a.pth", published_checkpoint(sd))
    with pytest.raises(CheckpointError, match=r"not tensors: phase\.weight"):
        load_model(path)


def test_bad_model_args(tmp_path: Path) -> None:
    ckpt = published_checkpoint(args={**TINY_ARGS, "encoder_spec": {"name": "vgg", "args": {}}})
    with pytest.raises(CheckpointError, match="cannot build an LTE: unknown model name 'vgg'"):
        load_model(write(tmp_path / "a.pth", ckpt))


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pth"
    good = tmp_path / "good.pth"
    save_model(tiny_model(), good)
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"corrupt\.pth: cannot be read"):
        load_model(path)
    path.write_bytes(b"\x00not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"corrupt\.pth: cannot be read"):
        load_model(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nothere\.pth: no such file"):
        load_model(tmp_path / "nothere.pth")


SIDE_EFFECTS: list[str] = []


def _record(text: str) -> None:
    SIDE_EFFECTS.append(text)


class _Payload:
    """Unpickling this calls a function: a weights-only load must refuse it."""

    def __reduce__(self):
        return (_record, ("executed",))


def test_code_in_a_checkpoint_is_never_run(tmp_path: Path) -> None:
    path = write(tmp_path / "evil.pth", published_checkpoint(epoch=_Payload()))
    with pytest.raises(CheckpointError, match=r"evil\.pth: cannot be read as a weights-only"):
        load_model(path)
    assert SIDE_EFFECTS == []


# ----------------------------------------------------------------------------- hostile files


def test_refusal_names_no_unsafe_workaround(tmp_path: Path) -> None:
    path = write(tmp_path / "evil.pth", published_checkpoint(epoch=_Payload()))
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert "weights_only" not in message and "trust" not in message and "\n" not in message
    assert "posix" in message or "_record" in message  # what was refused


@pytest.mark.parametrize(
    "content", [b"", b"\x80\x04K\x01.", bytes(range(256)) * 8], ids=["empty", "pickle", "random"]
)
def test_unreadable_files_give_one_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"bad\.pth: cannot be read") as info:
        load_model(path)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


def with_encoder_args(**encoder_args) -> dict:
    encoder = {
        **TINY_ARGS["encoder_spec"],
        "args": {**TINY_ARGS["encoder_spec"]["args"], **encoder_args},
    }
    return published_checkpoint(args={**TINY_ARGS, "encoder_spec": encoder})


ENC = r"model\.args\.encoder_spec\.args\."


@pytest.mark.parametrize(
    "ckpt, message",
    [
        (
            with_encoder_args(n_resblocks=200000),
            ENC + r"n_resblocks must be an integer in \[0, 1024\], got 200000",
        ),
        (with_encoder_args(n_feats=-5), ENC + r"n_feats must be an integer .* got -5"),
        (with_encoder_args(n_feats="64"), ENC + r"n_feats must be an integer .* got '64'"),
        (with_encoder_args(n_feats=True), ENC + r"n_feats must be an integer .* got True"),
        (with_encoder_args(res_scale=math.nan), ENC + r"res_scale must be a number .* got nan"),
        (with_encoder_args(depth=3), ENC + r"depth: unknown argument of edsr-baseline"),
        (
            published_checkpoint(args={**TINY_ARGS, "hidden_dim": 1e12}),
            r"model\.args\.hidden_dim must be an integer .* got 1000000000000\.0",
        ),
        (
            published_checkpoint(args={**TINY_ARGS, "hidden_dim": 15}),
            r"model\.args\.hidden_dim must be even .* got 15",
        ),
        (
            published_checkpoint(
                args={
                    **TINY_ARGS,
                    "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16] * 65}},
                }
            ),
            r"model\.args\.imnet_spec\.args\.hidden_list must be a list of 0 to 64",
        ),
        (
            published_checkpoint(
                args={
                    **TINY_ARGS,
                    "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16, -1]}},
                }
            ),
            r"model\.args\.imnet_spec\.args\.hidden_list\[1\] must be an integer",
        ),
        (
            published_checkpoint(
                args={**TINY_ARGS, "encoder_spec": {"name": "rdn", "args": {"RDNkSize": 4}}}
            ),
            ENC + r"RDNkSize must be odd",
        ),
        (
            published_checkpoint(
                args={**TINY_ARGS, "encoder_spec": {"name": "rdn", "args": {"G0": 10**6}}}
            ),
            ENC + r"G0 must be an integer in \[1, 4096\], got 1000000",
        ),
        (
            published_checkpoint(
                args={
                    **TINY_ARGS,
                    "encoder_spec": {
                        "name": "swinir",
                        "args": {"depths": [2, 2], "num_heads": [2]},
                    },
                }
            ),
            ENC + r"depths \[2, 2\] and .*num_heads \[2\] differ",
        ),
        (
            published_checkpoint(
                args={
                    **TINY_ARGS,
                    "encoder_spec": {
                        "name": "swinir",
                        "args": {"embed_dim": 10, "depths": [2], "num_heads": [4]},
                    },
                }
            ),
            ENC + r"num_heads\[0\] = 4 does not divide",
        ),
        (
            published_checkpoint(
                args={
                    **TINY_ARGS,
                    "encoder_spec": {"name": "swinir", "args": {"img_size": 20, "window_size": 8}},
                }
            ),
            ENC + r"img_size must be a multiple of window_size \(8\)",
        ),
        # Every argument within its range, but far too large together.
        (
            with_encoder_args(n_resblocks=1024, n_feats=4096),
            r"model describes a model of 309,\d{3},\d{3},\d{3} numbers .* more than the limit of "
            r"1,000,000,000",
        ),
    ],
)
def test_model_args_are_bounded_before_anything_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ckpt: dict, message: str
) -> None:
    def no_building(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was built from args that should have been refused")

    monkeypatch.setattr("lte_cuda.models.make_part", no_building)
    path = write(tmp_path / "crafted.pth", ckpt)
    with pytest.raises(
        CheckpointError, match=rf"crafted\.pth: model args cannot build an LTE: {message}"
    ):
        load_model(path)


def test_the_crafted_checkpoint_is_small_and_refused_in_a_fresh_process(tmp_path: Path) -> None:
    path = write(
        tmp_path / "crafted.pth",
        with_encoder_args(n_resblocks=200000, n_feats=64) | {"epoch": None},
    )
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"]["sd"] = {}
    write(path, ckpt)
    assert path.stat().st_size < 2000
    script = (
        "import resource, sys\n"
        "from lte_cuda import CheckpointError, load_model\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    load_model(sys.argv[1])\nexcept CheckpointError as e:\n    print(e)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    )
    message, grown_kib = done.stdout.splitlines()
    assert "n_resblocks must be an integer in [0, 1024], got 200000" in message
    assert int(grown_kib) < 50 * 1024  # the published loader grew past 11 GB here


def published_spec_variants() -> list[dict]:
    swinir = {
        "img_size": 16,
        "embed_dim": 12,
        "depths": [2, 3],
        "num_heads": [2, 3],
        "window_size": 4,
        "qkv_bias": False,
        "mlp_ratio": 1.5,
    }
    return [
        {"name": "lte", "args": PRESETS["edsr-baseline-lte"]},
        {"name": "lte", "args": {**TINY_ARGS, "encoder_spec": {"name": "swinir", "args": swinir}}},
        {
            "name": "lte",
            "args": {
                **TINY_ARGS,
                "encoder_spec": {
                    "name": "rdn",
                    "args": {"G0": 8, "RDNkSize": 5, "D": 2, "C": 3, "G": 4},
                },
            },
        },
        {
            "name": "swinir",
            "args": {
                "img_size": 12,
                "embed_dim": 8,
                "depths": [1],
                "num_heads": [1],
                "window_size": 1,
            },
        },
        {"name": "edsr-baseline", "args": {"n_resblocks": 0, "n_feats": 5}},
        {"name": "mlp", "args": {"in_dim": 4, "out_dim": 3, "hidden_list": []}},
    ]


@pytest.mark.parametrize("spec", published_spec_variants(), ids=lambda s: s["name"])
def test_the_count_from_the_spec_is_what_the_model_holds(spec: dict) -> None:
    model = make_model(spec)
    assert check_model_spec(spec) == sum(v.numel() for v in model.state_dict().values())


def test_published_presets_are_within_bounds() -> None:
    counts = {
        name: check_model_spec({"name": "lte", "args": args}) for name, args in PRESETS.items()
    }
    assert counts == {
        "edsr-baseline-lte": 1_714_267,
        "rdn-lte": 22_467_779,
        "swinir-lte": 14_898_535,
    }


@pytest.mark.parametrize("name", ["edsr-baseline", "rdn", "swinir", "mlp", "lte"])
def test_every_constructor_argument_has_a_bound(name: str) -> None:
    params = set(inspect.signature(MODELS[name]).parameters) - {"encoder_spec", "imnet_spec"}
    assert params == set(ARG_BOUNDS[name])


# ----------------------------------------------------------------------------- checked before read


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        (lambda w: w.to_sparse(), r"\['phase\.weight'\] is a sparse_coo tensor \(not dense\)"),
        (lambda w: w.to(torch.complex64) + 1j, r"\['phase\.weight'\] is complex \(complex64\)"),
        (lambda w: (w * 100).long(), r"wrong types: phase\.weight is int64 \(model wants float32"),
    ],
    ids=["sparse", "complex", "integer"],
)
def test_weights_must_be_dense_real_floats(tmp_path: Path, weight, message: str) -> None:
    sd = random_state_dict()
    sd["phase.weight"] = weight(sd["phase.weight"])
    path = write(tmp_path / "a.pth", published_checkpoint(sd))
    with pytest.raises(CheckpointError, match=rf"a\.pth: .*{message}"):
        load_model(path)
    with pytest.raises(CheckpointError, match=message):  # a loaded dict is checked alike
        load_model(published_checkpoint(sd))


def test_optimizer_state_must_be_dense_and_real(tmp_path: Path) -> None:
    ckpt = published_checkpoint()
    ckpt["optimizer"]["sd"] = {"state": {0: {"exp_avg": torch.ones(2, dtype=torch.complex64)}}}
    with pytest.raises(CheckpointError, match=r"\['exp_avg'\] is complex \(complex64\)"):
        load_model(write(tmp_path / "a.pth", ckpt))


def test_a_container_holding_itself_is_walked_once(tmp_path: Path) -> None:
    ckpt = published_checkpoint()
    loop: list = []
    loop.append(loop)
    ckpt["loop"] = loop
    assert load_model(write(tmp_path / "a.pth", ckpt)).spec["args"] == TINY_ARGS


def deflated_copy(source: Path, target: Path) -> Path:
    """``source``'s archive with every entry compressed (torch.save stores them as they are)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        for info in zin.infolist():
            z.writestr(info.filename, zin.read(info.filename))
    return target


def test_a_compressed_archive_within_its_model_size_loads(tmp_path: Path) -> None:
    plain = write(tmp_path / "plain.pth", published_checkpoint())
    model = load_model(deflated_copy(plain, tmp_path / "deflated.pth"))
    torch.testing.assert_close(model.phase.weight, random_state_dict()["phase.weight"])


PEAK_SCRIPT = (
    "import resource, sys\n"
    "from lte_cuda import CheckpointError, load_model\n"
    "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "try:\n    load_model(sys.argv[1])\nexcept CheckpointError as e:\n    print(e)\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
)


def refusal_and_growth_kib(path: Path) -> tuple[str, int]:
    """The refusal of loading ``path`` in a fresh process, and how much its peak RSS grew."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(path)], capture_output=True, text=True, check=True
    )
    message, grown_kib = done.stdout.splitlines()
    return message, int(grown_kib)


def test_a_small_file_inflating_past_its_model_is_refused_unread(tmp_path: Path) -> None:
    ckpt = published_checkpoint()
    ckpt["padding"] = torch.zeros(64 * 2**20)  # 256 MiB of zeros, deflated to 256 KiB
    write(tmp_path / "plain.pth", ckpt)
    path = deflated_copy(tmp_path / "plain.pth", tmp_path / "bomb.pth")
    (tmp_path / "plain.pth").unlink()
    assert path.stat().st_size < 2**20
    message, grown_kib = refusal_and_growth_kib(path)
    assert re.fullmatch(
        r".*bomb\.pth: holds 268,\d{3},\d{3} bytes uncompressed, more than the 16,\d{3},\d{3} "
        r"its model can need \(24 bytes per weight \+ 16 MiB\)",
        message,
    )
    assert grown_kib < 50 * 1024  # reading it in full grew the process by 256 MiB


def test_an_empty_state_dict_is_refused_before_its_model_is_allocated(tmp_path: Path) -> None:
    # Within every bound: 925 million numbers, a 3.7 GB model.
    ckpt = with_encoder_args(n_resblocks=1024, n_feats=220)
    ckpt["model"]["sd"] = {}
    path = write(tmp_path / "empty.pth", ckpt)
    assert path.stat().st_size < 2000
    message, grown_kib = refusal_and_growth_kib(path)
    assert re.fullmatch(
        r".*empty\.pth: state_dict does not match its model args: missing keys: "
        r"encoder\.sub_mean\.weight, .* \(4107 more\)",
        message,
    )
    assert grown_kib < 100 * 1024  # allocating the model grew the process by 3.4 GiB


def test_an_oversized_pickle_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = write(tmp_path / "a.pth", published_checkpoint(epoch="x" * (2 * 2**20)))
    with pytest.raises(
        CheckpointError,
        match=r"a\.pth: .* its pickle and small entries hold 2,\d{3},\d{3} bytes, more than the "
        r"1,048,576 allowed",
    ):
        load_model(path)


def test_a_legacy_format_file_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    torch.save(published_checkpoint(), path, _use_new_zipfile_serialization=False)
    with pytest.raises(
        CheckpointError,
        match=r"old\.pth: cannot be read .* \(not a zip archive: .* since PyTorch 1\.6",
    ) as info:
        load_model(path)
    assert "\n" not in str(info.value)
