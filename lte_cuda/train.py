"""Training with the published recipe and config layout, and the ``lte-sr train`` subcommand.

Config keys (published): ``train_dataset`` / ``val_dataset`` (``dataset``, ``wrapper``,
``batch_size``), ``data_norm``, ``model``, ``optimizer``, ``epoch_max``, ``multi_step_lr``,
``epoch_val``, ``epoch_save``, ``resume``, ``eval_type``, ``eval_bsize``. Additions, all
optional: ``seed`` (0), ``num_workers``, ``device``, ``backend`` ('fused'), ``amp``
('bf16' / 'fp16'), ``compile``, ``warmup_cosine_lr`` (``warmup_steps``, ``min_lr``,
``total_steps``; stepped per iteration, instead of ``multi_step_lr``), ``max_steps`` and
``time_budget`` (seconds) to stop early, ``init_weights`` (a checkpoint whose model weights a
new run starts from, e.g. a second schedule after a first; optimizer and schedule start fresh).

One process, or several under ``torchrun`` (DistributedDataParallel; ``batch_size`` is the
global batch, split evenly over the ranks; rank 0 alone writes files). Every sample's
randomness is keyed on (seed, epoch, index) and the batch order on (seed, epoch), so a run
gives the same weights whatever the number of processes or workers, and a stopped run
resumed from ``epoch-last.pth`` ends where an uninterrupted one does.
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from .checkpoint import load_model, save_model
from .data import make_dataset, seed_worker
from .evaluate import evaluate, norm_tensors
from .models import make_model

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
STATE_KEY = "train_state"  # extra checkpoint entry with what resuming needs; loaders ignore it


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's share of each global batch, in an order fixed by (seed, epoch).

    Each epoch the indices are shuffled by a generator seeded with (seed, epoch) and cut into
    global batches of ``global_batch``; rank r takes positions r, r + world_size, ... of each.
    The union over ranks of step k is therefore the same global batch for any number of
    processes. ``drop_last`` drops the incomplete final batch (training); otherwise it is
    shared out as far as it goes (validation). torch's DistributedSampler shards the whole
    epoch instead, which ties the batches to the number of processes and cannot start
    mid-epoch.
    """

    def __init__(
        self,
        size: int,
        global_batch: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(f"batch_size {global_batch} is not divisible by {world_size} processes")
        self.size = size
        self.global_batch = global_batch
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_batches = size // global_batch if drop_last else math.ceil(size / global_batch)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order, beginning at batch ``start`` (to resume mid-epoch)."""
        self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=gen)
        else:
            order = torch.arange(self.size)
        for b in range(self.start, self.num_batches):
            batch = order[b * self.global_batch : (b + 1) * self.global_batch]
            mine = batch[self.rank :: self.world_size].tolist()
            if mine:
                yield mine

    def __len__(self) -> int:
        return self.num_batches - self.start


def _mix(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def load_config(path: str) -> dict[str, Any]:
    """Read a YAML training or test config."""
    with open(path) as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config must be a YAML mapping")
    return config


def make_optimizer(params, spec: dict[str, Any]) -> torch.optim.Optimizer:
    """``{'name': 'adam', 'args': {'lr': 1e-4}}`` -> the optimizer over ``params``."""
    name = spec["name"]
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, **spec.get("args", {}))


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR factor at ``step``: linear warm-up to 1 over ``warmup_steps`` steps, then cosine
    decay to ``min_ratio`` at ``total_steps`` (held there afterwards)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class _Dist:
    """Process-group facts of this process (one process: rank 0 of 1)."""

    def __init__(self, device: str | None) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        name = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(name)
        if self.device.type == "cuda" and self.device.index is None:
            gpus = torch.cuda.device_count()
            if local_rank >= gpus:
                raise ValueError(
                    f"train: process with LOCAL_RANK={local_rank} has no GPU of its own: this "
                    f"machine has {gpus}; start at most {gpus} processes per node "
                    "(--nproc_per_node), or set device: cpu in the config"
                )
            self.device = torch.device("cuda", local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.enabled = self.world_size > 1
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, device_id=self.device if backend == "nccl" else None)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, *values: float) -> list[float]:
        """Sum numbers over the ranks."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.enabled:
            dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on one (ranks must stop together)."""
        return self.sum(float(flag))[0] > 0 if self.enabled else flag

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


# The seed of the validation patches; 1 is what runs with seed 0 used before it was fixed.
VALIDATION_SEED = 1


def _make_loader(
    spec: dict[str, Any], seed: int, env: _Dist, train: bool, num_workers: int
) -> tuple[Dataset, GlobalBatchSampler, DataLoader, torch.Generator]:
    dataset = make_dataset(spec["wrapper"], args={"dataset": make_dataset(spec["dataset"])})
    if hasattr(dataset, "set_seed"):
        # Validation always draws the same patches (epoch 0 of VALIDATION_SEED), whatever the
        # run's seed, so that runs with different seeds compare on one set.
        dataset.set_seed(seed if train else VALIDATION_SEED)
    sampler = GlobalBatchSampler(
        len(dataset), spec["batch_size"], env.rank, env.world_size,
        shuffle=train, drop_last=train, seed=seed,
    )
    generator = torch.Generator()  # reseeded every epoch; gives the workers' base seeds
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        worker_init_fn=seed_worker,
        generator=generator,
        pin_memory=env.device.type == "cuda",
    )
    return dataset, sampler, loader, generator


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _make_schedulers(
    config: dict[str, Any], optimizer: torch.optim.Optimizer, lr: float, default_total: int
) -> tuple[LRScheduler | None, LRScheduler | None]:
    """``(per-epoch scheduler, per-step scheduler)``; at most one of them is not None."""
    if config.get("multi_step_lr") and config.get("warmup_cosine_lr"):
        raise ValueError("give either multi_step_lr or warmup_cosine_lr, not both")
    if config.get("multi_step_lr"):
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, **config["multi_step_lr"]), None
    if config.get("warmup_cosine_lr"):
        spec = config["warmup_cosine_lr"]
        factor = functools.partial(
            warmup_cosine,
            warmup_steps=spec.get("warmup_steps", 0),
            total_steps=spec.get("total_steps") or default_total,
            min_ratio=spec.get("min_lr", 0.0) / lr,
        )
        return None, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return None, None


class _Log:
    """Lines to the terminal and appended to ``log.txt`` (rank 0 only)."""

    def __init__(self, save_path: str, enabled: bool) -> None:
        self.path = os.path.join(save_path, "log.txt")
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        tqdm.write(message)
        with open(self.path, "a") as f:
            f.write(message + "\n")


def train(config: dict[str, Any], save_path: str, resume: str | None = None) -> dict[str, Any]:
    """Train as ``config`` says, writing checkpoints and ``log.txt`` under ``save_path``.

    ``resume`` (or ``config['resume']``) is a checkpoint to continue from: a file written by
    this trainer restores model, optimizer, scheduler, AMP scaler, step, best validation and
    RNG states; a published checkpoint restores model and optimizer and replays the
    epoch schedule. Under ``torchrun`` this runs one rank of a DistributedDataParallel job.

    Returns ``{'model', 'epoch', 'global_step', 'train_loss', 'val_psnr', 'best_val_psnr',
    'stopped_early'}``; ``model`` is the trained (unwrapped) module.
    """
    env = _Dist(config.get("device"))
    try:
        return _train(config, save_path, resume or config.get("resume"), env)
    finally:
        env.close()


def _train(config: dict[str, Any], save_path: str, resume: str | None, env: _Dist) -> dict[str, Any]:
    start_time = time.monotonic()
    device = env.device
    seed = int(config.get("seed", 0))
    last = os.path.join(save_path, "epoch-last.pth")
    if resume is None and os.path.exists(last):  # checked on every rank: all stop together
        raise FileExistsError(
            f"{save_path} already holds a run; resume it with --resume {last} "
            "or pick another --name / --save-dir"
        )
    if env.main:
        os.makedirs(save_path, exist_ok=True)
        with open(os.path.join(save_path, "config.yaml"), "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
    log = _Log(save_path, env.main)

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    num_workers = config.get("num_workers", min(8, os.cpu_count() or 1))
    train_set, train_sampler, train_loader, loader_gen = _make_loader(
        config["train_dataset"], seed, env, train=True, num_workers=num_workers
    )
    val_loader = None
    if config.get("val_dataset") is not None and config.get("epoch_val") is not None:
        _, _, val_loader, _ = _make_loader(
            config["val_dataset"], seed, env, train=False, num_workers=num_workers
        )
    steps_per_epoch = len(train_sampler)
    if steps_per_epoch == 0:
        raise ValueError(
            f"training set of {len(train_set)} samples gives no full batch of "
            f"{config['train_dataset']['batch_size']}"
        )

    backend = config.get("backend", "fused")
    ckpt = torch.load(resume, map_location="cpu", weights_only=True) if resume else None
    if ckpt is not None:
        model = load_model(ckpt, backend=backend).train()
        optimizer_spec = ckpt.get("optimizer") or config["optimizer"]
    else:
        model = make_model(config["model"], backend=backend)
        if config.get("init_weights"):
            start = load_model(config["init_weights"])
            try:
                model.load_state_dict(start.state_dict())
            except RuntimeError as err:
                raise ValueError(
                    f"init_weights {config['init_weights']!r} does not fit the config's model: {err}"
                ) from None
        optimizer_spec = config["optimizer"]
    model.to(device)
    optimizer_spec = {k: v for k, v in optimizer_spec.items() if k != "sd"}
    optimizer = make_optimizer(model.parameters(), optimizer_spec)

    epoch_max = config["epoch_max"]
    max_steps = config.get("max_steps")
    epoch_scheduler, step_scheduler = _make_schedulers(
        config, optimizer, optimizer_spec["args"]["lr"], max_steps or epoch_max * steps_per_epoch
    )

    amp = config.get("amp")
    if amp not in (None, *AMP_DTYPES):
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)} or null, got {amp!r}")
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    epoch_start, epoch_step, global_step, best_val = 1, 0, 0, -math.inf
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"]["sd"])
        state = ckpt.get(STATE_KEY)
        epoch_start = ckpt["epoch"] + 1
        if state is not None:
            epoch_step = state["epoch_step"]
            global_step = state["global_step"]
            best_val = state["best_val"]
            for scheduler, key in ((epoch_scheduler, "epoch_scheduler"), (step_scheduler, "step_scheduler")):
                if scheduler is not None and state.get(key) is not None:
                    scheduler.load_state_dict(state[key])
            if scaler is not None and state.get("scaler") is not None:
                scaler.load_state_dict(state["scaler"])
            _set_rng_state(state["rng"])
        else:
            # A published checkpoint: replay the schedule up to its epoch from the initial lr
            # (the published code replays from the saved, already decayed lr).
            for group in optimizer.param_groups:
                group["lr"] = group.get("initial_lr", optimizer_spec["args"]["lr"])
            global_step = (epoch_start - 1) * steps_per_epoch
            with warnings.catch_warnings():
                # Replaying before any optimizer.step() is intended here.
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                for _ in range(epoch_start - 1 if epoch_scheduler is not None else 0):
                    epoch_scheduler.step()
                for _ in range(global_step if step_scheduler is not None else 0):
                    step_scheduler.step()
        log(f"resumed from {resume}: epoch {epoch_start - 1} done"
            + (f" + {epoch_step} steps" if epoch_step else ""))
        del ckpt

    ddp_model = DistributedDataParallel(model) if env.enabled else model
    forward = torch.compile(ddp_model) if config.get("compile") else ddp_model
    inp_sub, inp_div, gt_sub, gt_div = norm_tensors(config.get("data_norm"), device)
    autocast = (
        torch.autocast(device.type, dtype=AMP_DTYPES[amp]) if amp else nullcontext()
    )
    time_budget = config.get("time_budget")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params:,} parameters, backend {model.backend}; {env.world_size} process(es) "
        f"on {device}; {len(train_set)} samples, {steps_per_epoch} steps per epoch")

    def checkpoint(path: str, epoch: int, step_in_epoch: int) -> None:
        state = {
            "epoch_step": step_in_epoch,
            "global_step": global_step,
            "best_val": best_val,
            "epoch_scheduler": epoch_scheduler.state_dict() if epoch_scheduler else None,
            "step_scheduler": step_scheduler.state_dict() if step_scheduler else None,
            "scaler": scaler.state_dict() if scaler else None,
            "rng": _rng_state(),
            "seed": seed,
        }
        optimizer_entry = {**optimizer_spec, "sd": optimizer.state_dict()}
        save_model(model, os.path.join(save_path, path), optimizer=optimizer_entry,
                   epoch=epoch, extra={STATE_KEY: state})

    train_loss = val_psnr = None
    stopped = bool(max_steps) and global_step >= max_steps
    done_epoch = epoch_start - 1
    for epoch in range(epoch_start, epoch_max + 1):
        if stopped:
            break
        ddp_model.train()
        train_set.set_epoch(epoch)
        train_sampler.set_epoch(epoch, start=epoch_step)
        loader_gen.manual_seed(_mix(seed, epoch))
        loss_sum, loss_count = torch.zeros((), device=device), 0
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{epoch_max}", leave=False,
                   disable=not env.main, dynamic_ncols=True)
        for batch in bar:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            inp = (batch["inp"] - inp_sub) / inp_div
            gt = (batch["gt"] - gt_sub) / gt_div
            with autocast:
                pred = forward(inp, batch["coord"], batch["cell"])
            loss = F.l1_loss(pred.float(), gt)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            if step_scheduler is not None:
                step_scheduler.step()
            global_step += 1
            epoch_step += 1
            loss_sum += loss.detach()
            loss_count += 1
            if loss_count % 10 == 1:  # .item() waits for the GPU: not every step
                bar.set_postfix(loss=f"{loss_sum.item() / loss_count:.4f}", refresh=False)
            out_of_time = time_budget is not None and env.any(
                time.monotonic() - start_time > time_budget
            )
            if out_of_time or (max_steps and global_step >= max_steps):
                stopped = True
                break
        bar.close()
        loss_sum, loss_count = env.sum(loss_sum.item(), loss_count)
        train_loss = loss_sum / max(loss_count, 1)
        lr = optimizer.param_groups[0]["lr"]
        if epoch_step < steps_per_epoch:
            # Stopped mid-epoch: record the epochs done and the steps into this one.
            if env.main:
                checkpoint("epoch-last.pth", epoch - 1, epoch_step)
            log(f"epoch {epoch}/{epoch_max}: stopped after {epoch_step}/{steps_per_epoch} steps "
                f"(step {global_step}), train loss {train_loss:.4f}, lr {lr:.3g}")
            break
        epoch_step = 0
        done_epoch = epoch
        if epoch_scheduler is not None:
            epoch_scheduler.step()
        info = [f"epoch {epoch}/{epoch_max}", f"train: loss={train_loss:.4f}", f"lr={lr:.3g}"]
        is_best = False
        if val_loader is not None and epoch % config["epoch_val"] == 0:
            values = evaluate(val_loader, model, data_norm=config.get("data_norm"),
                              eval_type=config.get("eval_type"), eval_bsize=config.get("eval_bsize"))
            psnr_sum, psnr_count = env.sum(sum(values), len(values))
            val_psnr = psnr_sum / psnr_count
            info.append(f"val: psnr={val_psnr:.4f}")
            is_best = val_psnr > best_val
            best_val = max(best_val, val_psnr)
        if env.main:
            checkpoint("epoch-last.pth", epoch, 0)
            if config.get("epoch_save") and epoch % config["epoch_save"] == 0:
                checkpoint(f"epoch-{epoch}.pth", epoch, 0)
            if is_best:
                checkpoint("epoch-best.pth", epoch, 0)
        elapsed = time.monotonic() - start_time
        info.append(f"{elapsed / 60:.1f} min")
        log(", ".join(info))
    if env.enabled:
        dist.barrier()  # no rank leaves while rank 0 still writes
    return {
        "model": model,
        "epoch": done_epoch,
        "global_step": global_step,
        "train_loss": train_loss,
        "val_psnr": val_psnr,
        "best_val_psnr": best_val if best_val > -math.inf else None,
        "stopped_early": stopped,
    }


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to the ``lte-sr`` parser."""
    parser = subparsers.add_parser(
        "train",
        help="train a model from a published-layout config",
        description="Train LTE from a YAML config (published layout). Run under "
        "`torchrun --nproc_per_node N --no-python lte-sr train ...` for several processes.",
    )
    parser.add_argument("--config", required=True, help="training config (YAML)")
    parser.add_argument("--name", help="run name (default: _<config file name>)")
    parser.add_argument("--save-dir", default="save", help="parent folder of runs (default: save)")
    parser.add_argument("--resume", help="checkpoint to continue from (e.g. save/NAME/epoch-last.pth)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--backend", choices=("fused", "reference"), help="query implementation")
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), help="mixed precision (default: fp32)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    parser.add_argument("--time-budget", type=float, help="stop after this many seconds")
    parser.add_argument("--num-workers", type=int, help="data loader workers per process")
    parser.add_argument("--seed", type=int, help="random seed (default: config's, else 0)")
    parser.set_defaults(func=run_train_command)
    return parser


def run_train_command(args: argparse.Namespace) -> int:
    """Run ``lte-sr train``; returns the exit status."""
    config = load_config(args.config)
    overrides = {
        "device": args.device, "backend": args.backend, "amp": args.amp,
        "max_steps": args.max_steps, "time_budget": args.time_budget,
        "num_workers": args.num_workers, "seed": args.seed,
    }
    config.update({k: v for k, v in overrides.items() if v is not None})
    if args.compile:
        config["compile"] = True
    name = args.name or "_" + os.path.splitext(os.path.basename(args.config))[0]
    save_path = os.path.join(args.save_dir, name)
    result = train(copy.deepcopy(config), save_path, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        best = result["best_val_psnr"]
        print(f"{'stopped' if result['stopped_early'] else 'done'}: {result['epoch']} epochs "
              f"and step {result['global_step']}"
              + (f", best val PSNR {best:.4f} dB" if best is not None else "")
              + f"; checkpoints in {save_path}", file=sys.stderr)
    return 0
