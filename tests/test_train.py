"""The trainer: published checkpoints, exact resume, multi-process equivalence."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lte_cuda.checkpoint import CheckpointError, load_model, save_model
from lte_cuda.cli import main
from lte_cuda.config import read_train_config
from lte_cuda.data import DATASETS
from lte_cuda.distributed import DistEnv
from lte_cuda.models import make_model
from lte_cuda.run_lock import RunLock, RunLockedError
from lte_cuda.train import (
    GlobalBatchSampler,
    Progress,
    Trainer,
    TrainingDiverged,
    make_loader,
    make_train_data,
    read_resume_checkpoint,
    train,
    warmup_cosine,
)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


@pytest.fixture
def config() -> dict:
    with open(TINY) as f:
        return yaml.safe_load(f)


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 4, 20, 0.1) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 20, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 20, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(12, 4, 20, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(20, 4, 20, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(99, 4, 20, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(0, 0, 10, 0.0) == pytest.approx(1.0)


def test_validation_patches_do_not_depend_on_the_run_seed(config: dict):
    # Runs with different seeds are compared on the same validation patches.
    first_batches = []
    for seed in (0, 5):
        _, _, loader, _ = make_loader(
            read_train_config(config).val_dataset, seed, DistEnv("cpu"), train=False, num_workers=0
        )
        first_batches.append(next(iter(loader)))
    assert first_batches[0].keys() == first_batches[1].keys()
    for key, value in first_batches[0].items():
        assert torch.equal(value, first_batches[1][key]), key


def test_global_batches_do_not_depend_on_the_number_of_processes():
    one = GlobalBatchSampler(22, 4, seed=3)
    two = [GlobalBatchSampler(22, 4, rank=r, world_size=2, seed=3) for r in range(2)]
    for sampler in (one, *two):
        sampler.set_epoch(5)
    batches = list(one)
    assert len(batches) == len(one) == 5  # the incomplete tail is dropped
    assert sorted(sum(batches, [])) == sorted(set(sum(batches, [])))
    for b, (r0, r1) in enumerate(zip(*two, strict=True)):
        assert sorted(r0 + r1) == sorted(batches[b]) and len(r0) == len(r1) == 2
    one.set_epoch(5, start=3)
    assert list(one) == batches[3:] and len(one) == 2
    one.set_epoch(6)
    assert list(one) != batches
    with pytest.raises(ValueError, match="not divisible"):
        GlobalBatchSampler(22, 3, world_size=2)


def test_cli_trains_and_writes_published_checkpoints(config, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path), "--save-dir", str(tmp_path / "save")]) == 0
    run = tmp_path / "save" / "_tiny"
    assert {p.name for p in run.iterdir()} == {
        "config.yaml",
        "log.txt",
        "epoch-1.pth",
        "epoch-2.pth",
        "epoch-last.pth",
        "epoch-best.pth",
    }
    ckpt = _state(run / "epoch-last.pth")
    assert ckpt["epoch"] == 2
    assert ckpt["model"]["name"] == "lte" and ckpt["model"]["args"] == config["model"]["args"]
    assert ckpt["optimizer"]["name"] == "adam" and ckpt["optimizer"]["args"] == {"lr": 1e-3}
    assert "state" in ckpt["optimizer"]["sd"]
    load_model(run / "epoch-last.pth")  # the published loader accepts it
    log = (run / "log.txt").read_text().splitlines()
    assert any(line.startswith("epoch 2/2, train: loss=") and "val: psnr=" in line for line in log)
    # A second run into the same folder must not overwrite it silently.
    assert main(["train", "--config", str(path), "--save-dir", str(tmp_path / "save")]) == 1


@pytest.mark.parametrize(
    "schedule, stop_at",
    [("multi_step", 2), ("warmup_cosine", 3)],  # stopped at an epoch end / mid-epoch
)
def test_resume_ends_where_an_uninterrupted_run_ends(config, tmp_path, schedule, stop_at):
    if schedule == "warmup_cosine":
        del config["multi_step_lr"]
        config["warmup_cosine_lr"] = {"warmup_steps": 2, "min_lr": 1e-5, "total_steps": 4}
    whole = train(copy.deepcopy(config), str(tmp_path / "whole"))

    stopped = train({**copy.deepcopy(config), "max_steps": stop_at}, str(tmp_path / "parts"))
    assert stopped["global_step"] == stop_at and stopped["stopped_early"]
    last = tmp_path / "parts" / "epoch-last.pth"
    assert _state(last)["epoch"] == (stop_at // 2)
    resumed = train(copy.deepcopy(config), str(tmp_path / "parts"), resume=str(last))

    assert resumed["global_step"] == whole["global_step"] == 4
    _assert_same_weights(whole["model"].state_dict(), resumed["model"].state_dict())
    a, b = _state(tmp_path / "whole" / "epoch-last.pth"), _state(last)
    _assert_same_weights(a["model"]["sd"], b["model"]["sd"])
    for pa, pb in zip(
        a["optimizer"]["sd"]["state"].values(), b["optimizer"]["sd"]["state"].values()
    ):
        _assert_same_weights(pa, pb)
    assert (
        a["optimizer"]["sd"]["param_groups"][0]["lr"]
        == b["optimizer"]["sd"]["param_groups"][0]["lr"]
    )
    assert resumed["best_val_psnr"] == pytest.approx(whole["best_val_psnr"], abs=1e-9)
    log = (tmp_path / "parts" / "log.txt").read_text()
    assert "resumed from" in log and "epoch 2/2, train" in log


def test_loader_workers_do_not_change_the_result(config, tmp_path):
    config = {**config, "epoch_max": 1, "epoch_val": None}
    inline = train({**config, "num_workers": 0}, str(tmp_path / "inline"))
    workers = train({**config, "num_workers": 2}, str(tmp_path / "workers"))
    _assert_same_weights(inline["model"].state_dict(), workers["model"].state_dict())


def test_resume_from_a_published_checkpoint_replays_the_lr_schedule(config, tmp_path):
    model = make_model(config["model"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1], gamma=0.5)
    optimizer.step()  # no gradients: changes nothing, but orders the scheduler step after it
    scheduler.step()  # the published run finished epoch 1: lr is now 5e-4
    path = tmp_path / "published.pth"
    entry = {"name": "adam", "args": {"lr": 1e-3}, "sd": optimizer.state_dict()}
    save_model(model, path, optimizer=entry, epoch=1)
    result = train(config, str(tmp_path / "run"), resume=str(path))
    assert result["epoch"] == 2 and result["global_step"] == 4
    lr = _state(tmp_path / "run" / "epoch-last.pth")["optimizer"]["sd"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(5e-4)  # halved once, not twice


def test_init_weights_starts_a_new_run_from_a_checkpoint(config, tmp_path):
    first = train({**config, "max_steps": 2}, str(tmp_path / "first"))["model"]
    start = tmp_path / "first" / "epoch-last.pth"
    # With a negligible learning rate the second run keeps the weights it started from.
    frozen = {
        **config,
        "init_weights": str(start),
        "max_steps": 1,
        "optimizer": {"name": "adam", "args": {"lr": 1e-30}},
    }
    second = train(frozen, str(tmp_path / "second"))
    assert second["global_step"] == 1  # a new run: its own step count, not the first run's
    _assert_same_weights(second["model"].state_dict(), first.state_dict(), atol=1e-20)
    wider = {
        **frozen,
        "model": {**config["model"], "args": {**config["model"]["args"], "hidden_dim": 32}},
    }
    with pytest.raises(ValueError, match="init_weights .* does not fit the config's model"):
        train(wider, str(tmp_path / "third"))


def test_bf16_autocast_step(config, tmp_path):
    result = train({**config, "amp": "bf16", "max_steps": 1}, str(tmp_path / "bf16"))
    assert result["global_step"] == 1 and math.isfinite(result["train_loss"])


def test_a_process_without_a_gpu_of_its_own_is_refused(config, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "99")
    with pytest.raises(ValueError, match=r"LOCAL_RANK=99 has no GPU of its own.*--nproc_per_node"):
        train({**config, "device": "cuda", "max_steps": 1}, str(tmp_path / "run"))


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(config, tmp_path):
    # Two CPU processes (gloo), also where a GPU is present.
    config = {**config, "max_steps": 3, "device": "cpu"}
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(config))
    script = tmp_path / "rank.py"
    script.write_text(
        "import json, os, sys, torch, yaml\n"
        "from lte_cuda.train import train\n"
        "out = sys.argv[2]\n"
        "result = train(yaml.safe_load(open(sys.argv[1])), os.path.join(out, 'run'))\n"
        "rank = os.environ['RANK']\n"
        "torch.save(result['model'].state_dict(), os.path.join(out, f'rank{rank}.pt'))\n"
        "json.dump({'val': result['val_psnr'], 'loss': result['train_loss']},"
        " open(os.path.join(out, f'rank{rank}.json'), 'w'))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(config_path),
        str(tmp_path),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    single = train(copy.deepcopy(config), str(tmp_path / "single"))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    _assert_same_weights(ranks[0], ranks[1])
    _assert_same_weights(single["model"].state_dict(), ranks[0], atol=1e-5)
    for r in range(2):
        summary = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert summary["val"] == pytest.approx(single["val_psnr"], abs=1e-4)
        assert summary["loss"] == pytest.approx(single["train_loss"], abs=1e-5)
    # Rank 0 alone wrote the run's files.
    assert (tmp_path / "run" / "epoch-last.pth").exists()
    assert len((tmp_path / "run" / "log.txt").read_text().splitlines()) >= 3


TRAIN_CONFIGS = sorted((REPO / "configs").glob("*.yaml")) + sorted(
    (REPO / "configs" / "train-div2k").glob("*.yaml")
)


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_bundled_training_configs_are_well_formed(path, capsys):
    config = yaml.safe_load(path.read_text())
    for key in ("train_dataset", "val_dataset"):
        assert config[key]["dataset"]["name"] in DATASETS
        assert config[key]["wrapper"]["name"] in DATASETS
    assert config["model"]["name"] == "lte" and config["optimizer"]["name"] == "adam"
    assert isinstance(config["epoch_max"], int)
    assert bool(config.get("multi_step_lr")) != bool(config.get("warmup_cosine_lr"))
    read_train_config(config, str(path))  # the schema takes it as it is, without warnings
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- the loop's pieces


def make_trainer(config: dict, save_path: Path) -> Trainer:
    save_path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = make_model(config["model"])
    checked = read_train_config(config)
    return Trainer(checked, DistEnv("cpu"), model, checked.optimizer, 2, str(save_path))


def test_one_epoch_runs_alone(config, tmp_path):
    trainer = make_trainer(config, tmp_path)
    data = make_train_data(trainer.config, 0, trainer.env)
    loss, stopped = trainer.run_epoch(data, 1, time.monotonic())
    assert math.isfinite(loss) and not stopped
    assert trainer.progress == Progress(epoch=0, epoch_step=2, global_step=2)


def test_resume_state_round_trips_without_a_loop(config, tmp_path):
    first = make_trainer(config, tmp_path)
    first.progress = Progress(epoch=1, epoch_step=1, global_step=3, best_val=21.5)
    first.optimizer.step()  # no gradients: changes nothing, but orders the scheduler step after it
    first.epoch_scheduler.step()  # lr halved after epoch 1
    first.save(["epoch-last.pth"], 1, 1)
    path = str(tmp_path / "epoch-last.pth")
    second = make_trainer(config, tmp_path / "other")
    second.restore(read_resume_checkpoint(path), path)
    assert second.progress == Progress(epoch=1, epoch_step=1, global_step=3, best_val=21.5)
    assert second.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert "resumed from" in (tmp_path / "other" / "log.txt").read_text()


def test_resume_from_a_published_checkpoint_replays_without_a_loop(config, tmp_path):
    trainer = make_trainer(config, tmp_path)
    entry = {"name": "adam", "args": {"lr": 1e-3}, "sd": trainer.optimizer.state_dict()}
    save_model(trainer.model, tmp_path / "published.pth", optimizer=entry, epoch=1)
    path = str(tmp_path / "published.pth")
    trainer.restore(read_resume_checkpoint(path), path)
    assert trainer.progress == Progress(epoch=1, epoch_step=0, global_step=2)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)


def test_a_train_state_that_does_not_fit_is_one_clear_error(config, tmp_path):
    trainer = make_trainer(config, tmp_path)
    trainer.save(["epoch-last.pth"], 1, 0)
    ckpt = torch.load(tmp_path / "epoch-last.pth", weights_only=True)
    del ckpt["train_state"]["rng"]
    with pytest.raises(
        CheckpointError,
        match=r"x\.pth: cannot resume from it: its training state does not fit .*'rng'",
    ):
        make_trainer(config, tmp_path / "b").restore(ckpt, "x.pth")


def test_non_finite_weights_are_never_saved(config, tmp_path):
    trainer = make_trainer(config, tmp_path)
    trainer.save(["epoch-last.pth"], 1, 0)
    good = (tmp_path / "epoch-last.pth").read_bytes()
    with torch.no_grad():
        trainer.model.coef.weight[0, 0, 0, 0] = math.inf
    with pytest.raises(
        TrainingDiverged,
        match=r"weights are not finite .*epoch-last\.pth keeps the last saved state",
    ):
        trainer.save(["epoch-last.pth", "epoch-best.pth"], 2, 0)
    assert (tmp_path / "epoch-last.pth").read_bytes() == good
    assert not (tmp_path / "epoch-best.pth").exists()


def test_clip_grad_norm_bounds_each_update(config, tmp_path):
    sgd = {
        **config,
        "optimizer": {"name": "sgd", "args": {"lr": 1.0}},
        "max_steps": 1,
        "epoch_val": None,
    }
    start = train(  # a negligible step: the weights the other runs start from
        {**sgd, "optimizer": {"name": "sgd", "args": {"lr": 1e-30}}}, str(tmp_path / "start")
    )["model"]

    def update_norm(run_config: dict, name: str) -> float:
        model = train(run_config, str(tmp_path / name))["model"]
        deltas = [
            (a - b).flatten() for a, b in zip(model.parameters(), start.parameters(), strict=True)
        ]
        return torch.cat(deltas).norm().item()

    assert update_norm(sgd, "free") > 1e-2
    assert update_norm({**sgd, "clip_grad_norm": 1e-3}, "clipped") == pytest.approx(1e-3, rel=1e-3)
    # Under fp16 the gradients are unscaled before clipping, so the bound is the same.
    fp16 = {**sgd, "clip_grad_norm": 1e-3, "amp": "fp16"}
    assert update_norm(fp16, "clipped-fp16") == pytest.approx(1e-3, rel=1e-3)


# ----------------------------------------------------------------------------- the command line


def run_cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """Exit status and stderr lines of ``lte-sr ARGV``."""
    status = main(list(argv))
    return status, capsys.readouterr().err.strip().splitlines()


def assert_one_line(status: int, lines: list[str], pattern: str) -> None:
    assert status == 1 and len(lines) == 1, lines
    assert re.match(rf"lte-sr: error: .*{pattern}", lines[0]), lines[0]


@pytest.fixture
def config_file(config, tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def truncated(path: Path) -> bytes:
    return path.read_bytes()[: path.stat().st_size // 2]


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"", r"bad\.pth: cannot be read as a weights-only PyTorch checkpoint \(EOFError"),
        (bytes(range(256)) * 8, r"bad\.pth: cannot be read as a weights-only PyTorch checkpoint"),
        ("truncated", r"bad\.pth: cannot be read as a weights-only PyTorch checkpoint"),
        (
            "no optimizer",
            r"bad\.pth: cannot resume from it: it holds no optimizer state .*init_weights",
        ),
        (
            "epoch None",
            r"bad\.pth: cannot resume from it: 'epoch' must be the epochs done, got None",
        ),
    ],
    ids=["empty", "random", "truncated", "no-optimizer", "no-epoch"],
)
def test_resume_from_a_bad_file_is_one_line(
    config, config_file, tmp_path, capsys, content, pattern
):
    bad = tmp_path / "bad.pth"
    model = make_model(config["model"])
    if content == "truncated":
        save_model(model, bad, optimizer=torch.optim.Adam(model.parameters()), epoch=1)
        content = truncated(bad)
    elif content == "no optimizer":
        save_model(model, bad, epoch=1)
        content = bad.read_bytes()
    elif content == "epoch None":
        save_model(model, bad, optimizer=torch.optim.Adam(model.parameters()))
        content = bad.read_bytes()
    bad.write_bytes(content)
    status, lines = run_cli(
        capsys,
        "train",
        "--config",
        str(config_file),
        "--save-dir",
        str(tmp_path / "s"),
        "--resume",
        str(bad),
    )
    assert_one_line(status, lines, pattern)


def test_resume_from_the_bundled_weights_says_to_use_init_weights(config_file, tmp_path, capsys):
    bundled = REPO / "lte_cuda" / "weights" / "default.pth"
    status, lines = run_cli(
        capsys,
        "train",
        "--config",
        str(config_file),
        "--save-dir",
        str(tmp_path / "s"),
        "--resume",
        str(bundled),
    )
    assert_one_line(
        status, lines, r"default\.pth: cannot resume from it: it holds no optimizer state"
    )


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda c: c.pop("model"), r"tiny\.yaml: missing key 'model'"),
        (lambda c: c.pop("optimizer"), r"tiny\.yaml: missing key 'optimizer'"),
        (lambda c: c.pop("epoch_max"), r"tiny\.yaml: missing key 'epoch_max'"),
        (
            lambda c: c["train_dataset"].pop("batch_size"),
            r"tiny\.yaml: train_dataset: missing key 'batch_size'",
        ),
        (
            lambda c: c.update(epoch_max="two"),
            r"epoch_max must be an integer in \[1, 1e\+09\], got 'two'",
        ),
        (
            lambda c: c.update(clip_grad_norm=-1),
            r"clip_grad_norm must be a finite number > 0, got -1",
        ),
        (
            lambda c: c["optimizer"].update(name="lion"),
            r"optimizer\.name must be one of \['adam', 'adamw', 'sgd'\], got 'lion'",
        ),
        (lambda c: c["train_dataset"]["dataset"].update(name="nope"), r"unknown dataset 'nope'"),
        (
            lambda c: c["model"]["args"].update(hidden_dim=-4),
            r"model\.args\.hidden_dim must be an integer",
        ),
    ],
    ids=[
        "model",
        "optimizer",
        "epoch_max",
        "batch_size",
        "epoch_max-type",
        "clip",
        "optimizer-name",
        "dataset-name",
        "model-args",
    ],
)
def test_a_config_without_what_training_needs_is_one_line(config, tmp_path, capsys, edit, pattern):
    edit(config)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    status, lines = run_cli(
        capsys, "train", "--config", str(path), "--save-dir", str(tmp_path / "s")
    )
    assert_one_line(status, lines, pattern)


def _wrapper(c: dict) -> dict:
    return c["train_dataset"]["wrapper"]["args"]


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (
            lambda c: c["optimizer"]["args"].update(lr=float("1e400")),
            r"optimizer\.args\.lr must be a finite number > 0, got inf",
        ),
        (
            lambda c: c["optimizer"]["args"].update(lr="1e-4"),
            r"optimizer\.args\.lr must be a finite number > 0, got '1e-4' \(YAML reads a number like 1e-4 as text",
        ),
        (
            lambda c: _wrapper(c).update(inp_size=0),
            r"train_dataset\.wrapper\.args\.inp_size must be an integer in \[1, 4096\], got 0",
        ),
        (
            lambda c: c["data_norm"]["inp"].update(sub=[0.5, 0.5]),
            r"data_norm\.inp\.sub must be a list of 1 or 3 finite numbers .*, got \[0\.5, 0\.5\]",
        ),
        (
            lambda c: _wrapper(c).update(sample_q=10**9),
            r"train_dataset\.wrapper\.args\.sample_q must be at most 64 \(the pixels of the smallest HR crop, inp_size 8 x "
            r"scale_min 1\), got 1000000000",
        ),
        (
            lambda c: _wrapper(c).update(inp_size=4096, sample_q=None),
            r"train_dataset: a step of batch_size 4 x sample_q None \(inp_size 4096\) needs "
            r"[\d.]+ GiB, more than the [\d.]+ GiB free on cpu; make it smaller",
        ),
        (
            lambda c: _wrapper(c).update(scale_min=4, scale_max=2),
            r"train_dataset\.wrapper\.args\.scale_max must be >= scale_min \(4\), got 2",
        ),
        (
            lambda c: c["train_dataset"]["dataset"]["args"].update(repeat=10**12),
            r"train_dataset\.dataset\.args\.repeat must be an integer in \[1, 10000\], got 1000000000000",
        ),
        (
            lambda c: c["multi_step_lr"].update(milestones="x"),
            r"multi_step_lr\.milestones must be a list of 0 to 64 integers, got 'x'",
        ),
        (
            lambda c: c["multi_step_lr"].update(milestones=[1, -2]),
            r"multi_step_lr\.milestones\[1\] must be an integer in \[1, 1e\+09\], got -2",
        ),
        (
            lambda c: c.update(warmup_cosine_lr={"warmup_steps": 1}),
            r"multi_step_lr and warmup_cosine_lr: give one learning-rate schedule",
        ),
        (
            lambda c: c["train_dataset"]["dataset"]["args"].update(root_path="x"),
            r"train_dataset\.dataset\.args\.root_path: unknown key; allowed: \['names', 'repeat'\]",
        ),
        (lambda c: c.update(seed=-1), r"seed must be an integer in \[0, "),
    ],
    ids=[
        "lr-overflow",
        "lr-text",
        "inp_size",
        "data_norm",
        "sample_q",
        "memory",
        "scale-range",
        "repeat",
        "milestones-type",
        "milestones-value",
        "two-schedules",
        "dataset-arg",
        "seed",
    ],
)
def test_the_config_schema_names_key_value_and_what_is_allowed(
    config, tmp_path, capsys, edit, pattern
):
    edit(config)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    status, lines = run_cli(
        capsys, "train", "--config", str(path), "--save-dir", str(tmp_path / "s")
    )
    assert_one_line(status, lines, rf"{re.escape(str(path))}: {pattern}")
    assert not (tmp_path / "s").exists()  # refused before any work


def test_a_photo_whose_package_is_missing_is_one_line(config, tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "sklearn" else find_spec(name)
    )
    config["train_dataset"]["dataset"]["args"]["names"] = ["astronaut", "sklearn:china"]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    status, lines = run_cli(
        capsys, "train", "--config", str(path), "--save-dir", str(tmp_path / "s")
    )
    assert_one_line(
        status,
        lines,
        r"train_dataset\.dataset\.args\.names: 'sklearn:china' needs the package scikit-learn, "
        r"which is not installed \(pip install scikit-learn\)",
    )


def test_a_photo_that_scikit_image_would_download_is_one_line(config, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("pooch") is not None:
        pytest.skip("pooch is installed: scikit-image would download the photo")
    config["train_dataset"]["dataset"]["args"]["names"] = ["eagle"]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    status, lines = run_cli(
        capsys, "train", "--config", str(path), "--save-dir", str(tmp_path / "s")
    )
    assert_one_line(
        status, lines, r"names: skimage\.data\.eagle is not bundled .* needs the package pooch"
    )


def test_unknown_keys_are_warned_and_the_run_goes_on(config, tmp_path, capsys):
    config["epochs_max"] = 5
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    status = main(["train", "--config", str(path), "--save-dir", str(tmp_path / "s"),
                   "--max-steps", "1"])  # fmt: skip
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert status == 0
    assert warnings == [
        f"warning: {path}: unknown key 'epochs_max' is ignored (did you mean 'epoch_max'?)"
    ]


def test_a_yaml_syntax_error_is_one_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  name: lte\n args: [1, 2\n")
    status, lines = run_cli(
        capsys, "train", "--config", str(path), "--save-dir", str(tmp_path / "s")
    )
    assert_one_line(status, lines, r"broken\.yaml: not valid YAML at line \d+, column \d+")
    status, lines = run_cli(capsys, "train", "--config", str(tmp_path / "absent.yaml"))
    assert_one_line(status, lines, r"absent\.yaml: no such config file")


def test_a_bad_device_is_one_line(config_file, tmp_path, capsys):
    status, lines = run_cli(
        capsys,
        "train",
        "--config",
        str(config_file),
        "--save-dir",
        str(tmp_path / "s"),
        "--device",
        "bogus",
    )
    assert_one_line(status, lines, r"device must be .* got 'bogus'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line(config_file, tmp_path, capsys):
    status, lines = run_cli(
        capsys,
        "train",
        "--config",
        str(config_file),
        "--save-dir",
        str(tmp_path / "s"),
        "--device",
        "cuda",
    )
    assert_one_line(status, lines, r"device='cuda' was asked for but CUDA is not available")


def test_the_real_entry_point_prints_no_traceback(config_file, tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lte_cuda",
            "train",
            "--config",
            str(config_file),
            "--save-dir",
            str(tmp_path / "s"),
            "--resume",
            str(empty),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "empty.pth: cannot be read" in done.stderr


def test_a_nan_loss_stops_training_and_keeps_the_last_checkpoint(
    config, config_file, tmp_path, capsys
):
    save = str(tmp_path / "save")
    assert (
        main(["train", "--config", str(config_file), "--save-dir", save, "--max-steps", "2"]) == 0
    )
    last = tmp_path / "save" / "_tiny" / "epoch-last.pth"
    good = last.read_bytes()
    capsys.readouterr()
    poisoned = tmp_path / "poisoned.yaml"  # inputs divided by 1e-45 overflow: the loss is NaN
    poisoned.write_text(
        yaml.safe_dump(
            {
                **config,
                "data_norm": {
                    "inp": {"sub": [0.5], "div": [1e-45]},
                    "gt": {"sub": [0.5], "div": [0.5]},
                },
            }
        )
    )
    status = main(
        [
            "train",
            "--config",
            str(poisoned),
            "--save-dir",
            save,
            "--name",
            "_tiny",
            "--resume",
            str(last),
        ]
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and "Traceback" not in "".join(lines)
    assert re.match(
        r"lte-sr: error: training stopped: the loss is nan at epoch 2, step 3 .*; .*"
        r"epoch-last\.pth keeps the last saved state",
        lines[-1],
    ), lines[-1]
    assert last.read_bytes() == good
    assert not (last.parent / "train.lock").exists()  # released on the way out


def test_a_non_finite_validation_psnr_stops_before_saving(config, tmp_path):
    trainer = make_trainer(config, tmp_path)
    trainer.save(["epoch-last.pth"], 1, 0)
    good = (tmp_path / "epoch-last.pth").read_bytes()
    trainer.optimizer.step()  # no gradients: orders the epoch schedule's step after one
    data = make_train_data(trainer.config, 0, trainer.env)
    with torch.no_grad():  # finite weights whose products overflow: the output is NaN
        for parameter in trainer.model.parameters():
            parameter.fill_(1e30)
    with pytest.raises(
        TrainingDiverged,
        match=r"the validation PSNR is nan after epoch 2 .*epoch-last\.pth keeps the last saved",
    ):
        trainer.end_epoch(data, 2, 0.1, time.monotonic())
    assert (tmp_path / "epoch-last.pth").read_bytes() == good
    assert not (tmp_path / "epoch-best.pth").exists()


def test_an_absurd_learning_rate_exits_non_zero_with_nothing_saved(config, tmp_path, capsys):
    config["train_dataset"]["dataset"]["args"]["repeat"] = 2  # one step per epoch
    config["optimizer"] = {"name": "sgd", "args": {"lr": 1e30}}
    path = tmp_path / "absurd.yaml"
    path.write_text(yaml.safe_dump(config))
    status, lines = run_cli(
        capsys, "train", "--config", str(path), "--save-dir", str(tmp_path / "s")
    )
    assert status == 1 and "Traceback" not in "".join(lines)
    assert re.match(
        r"lte-sr: error: training stopped: the validation PSNR is nan after epoch 1 .*; "
        r"nothing was saved",
        lines[-1],
    ), lines[-1]
    assert not list((tmp_path / "s" / "_absurd").glob("*.pth"))


# ----------------------------------------------------------------------------- inputs and outputs


def test_a_run_never_writes_over_what_it_reads(config, config_file, tmp_path, capsys):
    save = tmp_path / "save"
    run = ["train", "--save-dir", str(save), "--max-steps", "1"]
    assert main([*run, "--config", str(config_file)]) == 0
    capsys.readouterr()
    own = save / "_tiny"
    saved_config = (own / "config.yaml").read_bytes()
    # The run's own config.yaml as --config of a run in that folder.
    status, lines = run_cli(
        capsys,
        *run,
        "--config",
        str(own / "config.yaml"),
        "--name",
        "_tiny",
        "--resume",
        str(own / "epoch-last.pth"),
    )
    assert_one_line(status, lines, rf"--save-dir/--name: {re.escape(str(own / 'config.yaml'))} is")
    assert (own / "config.yaml").read_bytes() == saved_config
    # init_weights that a new run would replace with its own epoch-best.pth.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "epoch-best.pth").write_bytes((own / "epoch-last.pth").read_bytes())
    config_file.write_text(
        yaml.safe_dump({**config, "init_weights": str(fresh / "epoch-best.pth")})
    )
    status, lines = run_cli(capsys, *run, "--config", str(config_file), "--name", "fresh",
                            "--save-dir", str(tmp_path))  # fmt: skip
    assert_one_line(status, lines, r"fresh.epoch-best\.pth is the input file .*fresh.epoch-best")
    # A run folder that is the training images' folder.
    images = tmp_path / "images"
    images.mkdir()
    Image = pytest.importorskip("PIL.Image")
    Image.new("RGB", (32, 32)).save(images / "a.png")
    folder = {"name": "image-folder", "args": {"root_path": str(images)}}
    config_file.write_text(
        yaml.safe_dump({**config, "train_dataset": {**config["train_dataset"], "dataset": folder}})
    )
    status, lines = run_cli(capsys, *run, "--config", str(config_file), "--name", "images",
                            "--save-dir", str(tmp_path))  # fmt: skip
    assert_one_line(status, lines, r"--save-dir/--name: .*images is the input folder .*images; ")


SIGTERM_WHILE_SAVING = """
import os, signal, sys
import torch
from lte_cuda.cli import main

real_save = torch.save


def save_then_stop(obj, stream, *args, **kwargs):
    stream.write(b"half a checkpoint")
    stream.flush()
    os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler stopping the job would
    real_save(obj, stream, *args, **kwargs)


torch.save = save_then_stop
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_while_saving_leaves_no_partial_file(config_file, tmp_path):
    save = tmp_path / "save"
    done = subprocess.run(
        [sys.executable, "-c", SIGTERM_WHILE_SAVING, "train", "--config", str(config_file),
         "--save-dir", str(save), "--max-steps", "1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 128 + 15, done.stderr
    assert sorted(p.name for p in (save / "_tiny").iterdir()) == ["config.yaml", "log.txt"]


def test_partial_files_of_a_killed_run_are_ignored_and_dropped_on_resume(config_file, tmp_path):
    save = tmp_path / "save"
    assert main(["train", "--config", str(config_file), "--save-dir", str(save),
                 "--max-steps", "1"]) == 0  # fmt: skip
    own = save / "_tiny"
    strays = [own / ".epoch-last.pth.lte-partial-0123abcd", own / ".log.txt.lte-partial-00ff00ff"]
    for stray in strays:
        stray.write_bytes(b"left by kill -9")
    someone_elses = own / ".notes.txt.lte-partial-0123abcd"
    someone_elses.write_bytes(b"not the run's")
    assert main(["train", "--config", str(config_file), "--save-dir", str(save),
                 "--resume", str(own / "epoch-last.pth"), "--max-steps", "2"]) == 0  # fmt: skip
    assert not any(stray.exists() for stray in strays) and someone_elses.exists()
    assert _state(own / "epoch-last.pth")["train_state"]["global_step"] == 2


# ----------------------------------------------------------------------------- the run-folder lock


def test_a_second_trainer_is_refused_while_the_first_holds_the_folder(
    config_file, tmp_path, capsys
):
    run = tmp_path / "s" / "_tiny"
    with RunLock(run):
        holder = (run / "train.lock").read_text()
        assert holder.startswith(f"pid {os.getpid()} on ")
        status, lines = run_cli(
            capsys, "train", "--config", str(config_file), "--save-dir", str(tmp_path / "s")
        )
        assert_one_line(status, lines, rf"_tiny is in use by a running trainer \({holder.strip()}")
    assert not (run / "train.lock").exists()
    assert not (run / "epoch-last.pth").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(config_file, tmp_path):
    run = tmp_path / "s" / "_tiny"
    run.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (run / "train.lock").write_text(f"pid {dead.stdout.strip()} on {socket.gethostname()}\n")
    assert (
        main(
            [
                "train",
                "--config",
                str(config_file),
                "--save-dir",
                str(tmp_path / "s"),
                "--max-steps",
                "1",
            ]
        )
        == 0
    )
    assert (run / "epoch-last.pth").exists() and not (run / "train.lock").exists()


def test_the_lock_is_released_when_training_fails(config, tmp_path):
    with pytest.raises(ValueError, match=r"absent\.pth: no such file"):
        train({**config, "init_weights": str(tmp_path / "absent.pth")}, str(tmp_path / "run"))
    with RunLock(tmp_path / "run"):  # free again
        pass


def test_a_lock_held_by_a_killed_process_is_taken_over(tmp_path):
    # The holder is another process, killed with SIGKILL: nothing of it runs to clean up.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; sys.path.insert(0, sys.argv[1]); import run_lock\n"
            "lock = run_lock.RunLock(sys.argv[2])\nlock.acquire()\n"
            "print('locked', flush=True)\ntime.sleep(600)",
            str(REPO / "lte_cuda"),
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            RunLockedError, match=rf"in use by a running trainer \(pid {holder.pid} on "
        ):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "train.lock").exists()  # left behind by the killed holder
    with RunLock(tmp_path):
        assert (tmp_path / "train.lock").read_text().startswith(f"pid {os.getpid()} on ")
