"""Inference on several processes: lte_cuda.distributed's helpers, and ``lte-sr upscale`` /
``lte-sr test`` under torchrun with 2 CPU processes (gloo)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from lte_cuda import distributed
from lte_cuda.checkpoint import save_model
from lte_cuda.models import build_preset

TINY_IMNET = {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16]}}


def set_world(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def test_shards_cover_every_item_once(monkeypatch):
    items = list(range(11))
    shares = []
    for rank in range(3):
        set_world(monkeypatch, rank, 3)
        shares.append(distributed.shard(items))
    assert sorted(i for share in shares for i in share) == items
    assert [len(s) for s in shares] == [4, 4, 3]


def test_one_process_outside_torchrun(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.shard("abc") == ["a", "b", "c"]
    assert distributed.gather_in_order([0.5, 0.25], [0, 1], 2) == [0.5, 0.25]


def test_bad_environment_and_arguments_are_named(monkeypatch):
    set_world(monkeypatch, 2, 2)
    with pytest.raises(ValueError, match="RANK must be in"):
        distributed.rank()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer, got 'two'"):
        distributed.world_size()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(ValueError, match="same length"):
        distributed.gather_in_order([1.0], [0, 1], 2)
    with pytest.raises(ValueError, match=r"items \[1\] were done by no process"):
        distributed.gather_in_order([1.0], [0], 2)


# ----------------------------------------------------------------------------- torchrun


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_preset(
        "edsr-baseline-lte", {"n_resblocks": 1, "n_feats": 8}, hidden_dim=8, imnet_spec=TINY_IMNET
    )
    path = tmp_path_factory.mktemp("model") / "tiny.pth"
    save_model(model, path)
    return path


def write_images(folder: Path, count: int, size: tuple[int, int], seed: int) -> list[str]:
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    names = []
    for i in range(count):
        pixels = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img{i}.png")
        names.append(f"img{i}.png")
    return names


def torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 --no-python lte-sr ARGS`` on CPU; fails the test if it fails."""
    lte_sr = shutil.which("lte-sr", path=str(Path(sys.executable).parent))
    assert lte_sr, "lte-sr is not installed beside this Python"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--no-python",
        lte_sr,
        *args,
    ]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_torchrun_upscale_writes_every_file_once(tmp_path, tiny_checkpoint):
    names = write_images(tmp_path / "in", 5, (12, 9), seed=1)
    done = torchrun(
        tmp_path,
        "upscale",
        "in",
        "out",
        "--scale",
        "2",
        "--model",
        str(tiny_checkpoint),
        "--device",
        "cpu",
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names
    for name in names:
        assert Image.open(tmp_path / "out" / name).size == (24, 18)
    # Each process reports its own share: 3 and 2 files (every second one), never all 5.
    assert (
        "3 written, 0 skipped, 0 failed" in done.stderr
        and "2 written, 0 skipped, 0 failed" in done.stderr
    )


def test_torchrun_test_mean_equals_the_one_process_mean(tmp_path, tiny_checkpoint):
    hr = tmp_path / "hr"
    write_images(hr, 5, (16, 12), seed=2)
    lr = tmp_path / "lr"
    lr.mkdir()
    for path in sorted(hr.iterdir()):
        Image.open(path).resize((8, 6), Image.BICUBIC).save(lr / path.name)
    config = {
        "test_dataset": {
            "dataset": {
                "name": "paired-image-folders",
                "args": {"root_path_1": str(lr), "root_path_2": str(hr)},
            },
            "wrapper": {"name": "sr-implicit-paired", "args": {}},
            "batch_size": 1,
        },
        "eval_type": "benchmark-2",
        "eval_bsize": 50,
        "data_norm": {"inp": {"sub": [0.5], "div": [0.5]}, "gt": {"sub": [0.5], "div": [0.5]}},
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(config))
    common = ["test", "--config", "test.yaml", "--model", str(tiny_checkpoint), "--device", "cpu"]
    one = subprocess.run(
        [sys.executable, "-m", "lte_cuda", *common, "--quiet", "--out", "one.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert one.returncode == 0, one.stderr
    done = torchrun(tmp_path, *common, "--out", "two.json")
    # Every image scored by one process only (each prints a line per image it scores).
    for i in range(5):
        assert done.stdout.count(f"] img{i}.png:") == 1, done.stdout
    single = json.loads((tmp_path / "one.json").read_text())
    sharded = json.loads((tmp_path / "two.json").read_text())
    assert len(sharded["images"]) == 5
    assert sharded["images"] == single["images"]
    assert sharded["mean_psnr"] == single["mean_psnr"]  # exactly, not approximately
