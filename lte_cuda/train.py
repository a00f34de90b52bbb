"""Training with the published recipe and config layout (the command: :mod:`lte_cuda.cli.train`).

Config keys (published): ``train_dataset`` / ``val_dataset`` (``dataset``, ``wrapper``,
``batch_size``), ``data_norm``, ``model``, ``optimizer``, ``epoch_max``, ``multi_step_lr``,
``epoch_val``, ``epoch_save``, ``resume``, ``eval_type``, ``eval_bsize``. Additions, all
optional: ``seed`` (0), ``num_workers``, ``device``, ``backend`` ('fused'), ``amp``
('bf16' / 'fp16'), ``compile``, ``warmup_cosine_lr`` (``warmup_steps``, ``min_lr``,
``total_steps``; stepped per iteration, instead of ``multi_step_lr``), ``max_steps`` and
``time_budget`` (seconds) to stop early, ``init_weights`` (a checkpoint whose model weights a
new run starts from, e.g. a second schedule after a first; optimizer and schedule start fresh),
``clip_grad_norm`` (clip the gradients' total 2-norm to this value before each step; off
when absent, as published).

One process, or several under ``torchrun`` (DistributedDataParallel; ``batch_size`` is the
global batch, split evenly over the ranks; rank 0 alone writes files). Every sample's
randomness is keyed on (seed, epoch, index) and the batch order on (seed, epoch), so a run
gives the same weights whatever the number of processes or workers, and a stopped run
resumed from ``epoch-last.pth`` ends where an uninterrupted one does.

Every key is checked before any work by :func:`lte_cuda.config.read_train_config`, and no
file the run writes may be one it reads (:mod:`lte_cuda.output_guard`). A run holds a lock on
its folder (:mod:`lte_cuda.run_lock`) while it trains. A non-finite loss stops training before
it changes the weights, and non-finite weights or a non-finite validation PSNR stop it before
they are saved (:class:`TrainingDiverged`, exit status 1), so ``epoch-last.pth`` keeps the last
good state. Checkpoints and ``config.yaml`` are written atomically: a run stopped by SIGTERM or
SIGINT while saving leaves no partial file, and partial files left by a killed run are removed
when the folder is next locked.
"""

from __future__ import annotations

import functools
import math
import os
import random
import re
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from .checkpoint import CheckpointError, load_model, read_checkpoint, save_model
from .config import (
    AMP_DTYPES,
    OPTIMIZERS,
    DatasetSpec,
    TrainConfig,
    dataset_paths,
    read_train_config,
)
from .data import make_dataset, seed_worker
from .distributed import DistEnv
from .evaluate import evaluate
from .image_io.files import PARTIAL_TAG, atomic_output
from .models import make_model
from .models.norm import IDENTITY_NORM
from .output_guard import refuse_overwriting_inputs
from .run_lock import RunLock, RunLockedError

STATE_KEY = "train_state"  # extra checkpoint entry with what resuming needs; loaders ignore it
LAST = "epoch-last.pth"
CHECKPOINT_NAMES = r"epoch-(\d+|last|best)\.pth"  # what a run writes besides config and log
# The seed of the validation patches; 1 is what runs with seed 0 used before it was fixed.
VALIDATION_SEED = 1


class TrainingDiverged(ValueError):
    """The loss, the gradients, the weights or the validation PSNR became non-finite;
    training stopped without saving the model that gave them."""


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
            raise ValueError(
                f"batch_size {global_batch} is not divisible by {world_size} processes"
            )
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


def check_optimizer_spec(spec: Any, where: str) -> None:
    """``{'name': 'adam', 'args': {'lr': 1e-4, ...}}`` with a known name and a number lr >= 0."""
    if not isinstance(spec, Mapping):
        raise CheckpointError(f"{where} must be a mapping with 'name' and 'args', got {spec!r}")
    if spec.get("name") not in OPTIMIZERS:
        raise CheckpointError(
            f"{where}.name: unknown optimizer {spec.get('name')!r}; known: {sorted(OPTIMIZERS)}"
        )
    args = spec.get("args")
    lr = args.get("lr") if isinstance(args, Mapping) else None
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 <= lr < math.inf:
        raise CheckpointError(f"{where}.args.lr must be a number >= 0, got {lr!r}")


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


def make_loader(
    spec: DatasetSpec, seed: int, env: DistEnv, train: bool, num_workers: int
) -> tuple[Dataset, GlobalBatchSampler, DataLoader, torch.Generator]:
    """``(dataset, batch sampler, loader, generator)`` of a checked dataset spec for this
    rank."""
    dataset = make_dataset(spec.wrapper, args={"dataset": make_dataset(spec.dataset)})
    if hasattr(dataset, "set_seed"):
        # Validation always draws the same patches (epoch 0 of VALIDATION_SEED), whatever the
        # run's seed, so that runs with different seeds compare on one set.
        dataset.set_seed(seed if train else VALIDATION_SEED)
    sampler = GlobalBatchSampler(
        len(dataset),
        spec.batch_size,
        env.rank,
        env.world_size,
        shuffle=train,
        drop_last=train,
        seed=seed,
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


@dataclass
class TrainData:
    """The loaders of a run."""

    train_set: Dataset
    sampler: GlobalBatchSampler
    loader: DataLoader
    generator: torch.Generator
    val_loader: DataLoader | None

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.num_batches


def make_train_data(config: TrainConfig, seed: int, env: DistEnv) -> TrainData:
    """Training and (when ``val_dataset`` and ``epoch_val`` are set) validation loaders."""
    train_set, sampler, loader, generator = make_loader(
        config.train_dataset, seed, env, train=True, num_workers=config.num_workers
    )
    if sampler.num_batches == 0:
        raise ValueError(
            f"training set of {len(train_set)} samples gives no full batch of "
            f"{config.train_dataset.batch_size}"
        )
    val_loader = None
    if config.val_dataset is not None and config.epoch_val is not None:
        _, _, val_loader, _ = make_loader(
            config.val_dataset, seed, env, train=False, num_workers=config.num_workers
        )
    return TrainData(train_set, sampler, loader, generator, val_loader)


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


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _make_schedulers(
    config: TrainConfig, optimizer: torch.optim.Optimizer, lr: float, default_total: int
) -> tuple[LRScheduler | None, LRScheduler | None]:
    """``(per-epoch scheduler, per-step scheduler)``; at most one of them is not None (the
    config schema allows one)."""
    if config.multi_step_lr:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, **config.multi_step_lr), None
    if config.warmup_cosine_lr:
        spec = config.warmup_cosine_lr
        factor = functools.partial(
            warmup_cosine,
            warmup_steps=spec.get("warmup_steps", 0),
            total_steps=spec.get("total_steps") or default_total,
            min_ratio=spec.get("min_lr", 0.0) / lr if lr else 0.0,  # lr 0: every factor gives 0
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


def read_resume_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint to continue training from, or CheckpointError (one line naming the file):
    it must hold an optimizer state and a whole number of epochs done. The model entry is
    checked when the model is loaded from it."""
    ckpt, name = read_checkpoint(path)
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(
            f"{name}: cannot resume from it: not a checkpoint dict but {type(ckpt).__name__}"
        )
    optimizer = ckpt.get("optimizer")
    if not isinstance(optimizer, Mapping) or not isinstance(optimizer.get("sd"), Mapping):
        raise CheckpointError(
            f"{name}: cannot resume from it: it holds no optimizer state (a weights-only file); "
            f"to start a new run from its weights, set init_weights: {name} in the config"
        )
    check_optimizer_spec(optimizer, f"{name}: optimizer")
    epoch = ckpt.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CheckpointError(
            f"{name}: cannot resume from it: 'epoch' must be the epochs done, got {epoch!r}"
        )
    return dict(ckpt)


def initial_model(
    config: TrainConfig, ckpt: dict[str, Any] | None, resume: str | None
) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, optimizer spec)`` a run starts from: the resumed checkpoint's, or a new model
    from ``config.model`` (with ``init_weights`` loaded into it) and the config's optimizer."""
    backend = config.backend
    if ckpt is not None:
        return load_model(ckpt, backend=backend, name=resume).train(), ckpt["optimizer"]
    model = make_model(config.model, backend=backend)
    if config.init_weights:
        start = load_model(config.init_weights)
        try:
            model.load_state_dict(start.state_dict())
        except RuntimeError as err:
            raise ValueError(
                f"init_weights {config.init_weights!r} does not fit the config's model: {err}"
            ) from None
    return model, config.optimizer


@dataclass
class Progress:
    """Where a run stands: what a checkpoint restores besides weights, optimizer and schedules."""

    epoch: int = 0  # epochs completed
    epoch_step: int = 0  # optimizer steps done into epoch + 1
    global_step: int = 0
    best_val: float = -math.inf


class Trainer:
    """One run: the model, what updates it, where it stands, and the loop's three pieces
    (:meth:`restore`, :meth:`run_epoch`, :meth:`end_epoch`), each usable alone."""

    def __init__(
        self,
        config: TrainConfig,
        env: DistEnv,
        model: nn.Module,
        optimizer_spec: Mapping,
        steps_per_epoch: int,
        save_path: str,
    ) -> None:
        self.config, self.env, self.save_path = config, env, save_path
        self.steps_per_epoch = steps_per_epoch
        self.log = _Log(save_path, env.main)
        self.seed = config.seed
        self.model = model.to(env.device)
        # Trained with the config's norm (none when absent, as published); saved in its spec.
        self.model.set_data_norm(config.data_norm or IDENTITY_NORM)
        self.optimizer_spec = {k: v for k, v in optimizer_spec.items() if k != "sd"}
        self.optimizer = make_optimizer(self.model.parameters(), self.optimizer_spec)
        total_steps = config.max_steps or config.epoch_max * steps_per_epoch
        self.epoch_scheduler, self.step_scheduler = _make_schedulers(
            config, self.optimizer, self.optimizer_spec["args"]["lr"], total_steps
        )
        amp = config.amp
        self.scaler = torch.amp.GradScaler(env.device.type) if amp == "fp16" else None
        self.autocast = (
            torch.autocast(env.device.type, dtype=AMP_DTYPES[amp]) if amp else nullcontext()
        )
        self.clip_grad_norm = config.clip_grad_norm
        self.progress = Progress()
        self.ddp_model = DistributedDataParallel(self.model) if env.enabled else self.model
        self.forward = torch.compile(self.ddp_model) if config.compile else self.ddp_model

    # ------------------------------------------------------------------ restore state

    def restore(self, ckpt: Mapping[str, Any], name: str) -> None:
        """Continue from ``ckpt`` (see :func:`read_resume_checkpoint`): optimizer, progress,
        schedules, AMP scaler and RNG states; a published checkpoint (no train state)
        restores the optimizer and replays the epoch schedule up to its epoch."""
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"]["sd"])
            self.progress = Progress(epoch=ckpt["epoch"])
            state = ckpt.get(STATE_KEY)
            if state is None:
                self._replay_schedule()
            else:
                self._restore_state(state)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
            raise CheckpointError(
                f"{name}: cannot resume from it: its training state does not fit this run "
                f"({type(err).__name__}: {err})"
            ) from err
        steps = self.progress.epoch_step
        self.log(
            f"resumed from {name}: epoch {self.progress.epoch} done"
            + (f" + {steps} steps" if steps else "")
        )

    def _restore_state(self, state: Mapping[str, Any]) -> None:
        self.progress.epoch_step = int(state["epoch_step"])
        self.progress.global_step = int(state["global_step"])
        self.progress.best_val = float(state["best_val"])
        for scheduler, key in (
            (self.epoch_scheduler, "epoch_scheduler"),
            (self.step_scheduler, "step_scheduler"),
        ):
            if scheduler is not None and state.get(key) is not None:
                scheduler.load_state_dict(state[key])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])

    def _replay_schedule(self) -> None:
        # A published checkpoint: replay the schedule up to its epoch from the initial lr
        # (the published code replays from the saved, already decayed lr).
        for group in self.optimizer.param_groups:
            group["lr"] = group.get("initial_lr", self.optimizer_spec["args"]["lr"])
        self.progress.global_step = self.progress.epoch * self.steps_per_epoch
        with warnings.catch_warnings():
            # Replaying before any optimizer.step() is intended here.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            for _ in range(self.progress.epoch if self.epoch_scheduler is not None else 0):
                self.epoch_scheduler.step()
            for _ in range(self.progress.global_step if self.step_scheduler is not None else 0):
                self.step_scheduler.step()

    # ------------------------------------------------------------------ one epoch

    def run_epoch(self, data: TrainData, epoch: int, start_time: float) -> tuple[float, bool]:
        """Train ``epoch`` from step ``progress.epoch_step``; returns (mean training loss over
        the ranks, whether ``max_steps`` or ``time_budget`` stopped it early)."""
        self.ddp_model.train()
        data.train_set.set_epoch(epoch)
        data.sampler.set_epoch(epoch, start=self.progress.epoch_step)
        data.generator.manual_seed(_mix(self.seed, epoch))
        loss_sum, loss_count = torch.zeros((), device=self.env.device), 0
        bar = tqdm(
            data.loader,
            desc=f"epoch {epoch}/{self.config.epoch_max}",
            leave=False,
            disable=not self.env.main,
            dynamic_ncols=True,
        )
        stopped = False
        for batch in bar:
            loss_sum += self.step(batch, epoch)
            loss_count += 1
            if loss_count % 10 == 1:  # .item() waits for the GPU: not every step
                bar.set_postfix(loss=f"{loss_sum.item() / loss_count:.4f}", refresh=False)
            if self._should_stop(start_time):
                stopped = True
                break
        bar.close()
        loss_sum, loss_count = self.env.sum(loss_sum.item(), loss_count)
        return loss_sum / max(loss_count, 1), stopped

    def step(self, batch: Mapping[str, torch.Tensor], epoch: int) -> torch.Tensor:
        """One optimizer step on ``batch``; returns the detached loss. A non-finite loss
        raises :class:`TrainingDiverged` before the weights change."""
        device = self.env.device
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with self.autocast:
            pred = self.forward(batch["inp"], batch["coord"], batch["cell"], normalised=True)
        # On normalised values, as published.
        loss = F.l1_loss(pred.float(), self.model.normalise_target(batch["gt"]))
        finite = bool(
            torch.isfinite(loss)
        )  # one scalar sync per step: the price of stopping in time
        if self.env.any(not finite):  # every rank stops on any rank's loss
            what = (
                f"the loss is {loss.item()}"
                if not finite
                else "another process's loss is not finite"
            )
            self._diverged(
                f"{what} at epoch {epoch}, step {self.progress.global_step + 1} "
                "(the weights were not updated with it)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self._clip_gradients(epoch)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self._clip_gradients(epoch)
            self.optimizer.step()
        if self.step_scheduler is not None:
            self.step_scheduler.step()
        self.progress.global_step += 1
        self.progress.epoch_step += 1
        return loss.detach()

    def _clip_gradients(self, epoch: int) -> None:
        if self.clip_grad_norm is None:
            return
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        # fp16's scaler skips steps with non-finite gradients by design; elsewhere they would
        # turn the weights into NaN. Gradients are all-reduced: every rank sees the same norm.
        if self.scaler is None and not torch.isfinite(norm):
            self._diverged(
                f"the gradient norm is {norm.item()} at epoch {epoch}, "
                f"step {self.progress.global_step + 1} (the weights were not updated with it)"
            )

    def _should_stop(self, start_time: float) -> bool:
        budget, max_steps = self.config.time_budget, self.config.max_steps
        out_of_time = budget is not None and self.env.any(time.monotonic() - start_time > budget)
        return out_of_time or bool(max_steps and self.progress.global_step >= max_steps)

    def _diverged(self, what: str) -> None:
        last = os.path.join(self.save_path, LAST)
        kept = f"{last} keeps the last saved state" if os.path.exists(last) else "nothing was saved"
        raise TrainingDiverged(
            f"training stopped: {what}; {kept}. "
            "Try a lower learning rate, clip_grad_norm in the config, or no amp"
        )

    # ------------------------------------------------------------------ validate and save

    def end_epoch(
        self, data: TrainData, epoch: int, train_loss: float, start_time: float
    ) -> float | None:
        """After a whole epoch: step the epoch schedule, validate when due, write
        ``epoch-last`` (and ``epoch-N`` / ``epoch-best`` when due), log; returns the
        validation PSNR or None."""
        self.progress.epoch, self.progress.epoch_step = epoch, 0
        lr = self.optimizer.param_groups[0]["lr"]
        if self.epoch_scheduler is not None:
            self.epoch_scheduler.step()
        info = [
            f"epoch {epoch}/{self.config.epoch_max}",
            f"train: loss={train_loss:.4f}",
            f"lr={lr:.3g}",
        ]
        val_psnr = None
        if data.val_loader is not None and epoch % self.config.epoch_val == 0:
            val_psnr = self.validate(data.val_loader)
            if not math.isfinite(val_psnr):  # the same on every rank: it is summed over them
                self._diverged(
                    f"the validation PSNR is {val_psnr} after epoch {epoch} "
                    "(the model's output is not finite; not saving it)"
                )
            info.append(f"val: psnr={val_psnr:.4f}")
        names = [LAST]
        if self.config.epoch_save and epoch % self.config.epoch_save == 0:
            names.append(f"epoch-{epoch}.pth")
        if val_psnr is not None and val_psnr > self.progress.best_val:
            self.progress.best_val = val_psnr
            names.append("epoch-best.pth")
        self.save(names, epoch, 0)
        info.append(f"{(time.monotonic() - start_time) / 60:.1f} min")
        self.log(", ".join(info))
        return val_psnr

    def validate(self, loader: DataLoader) -> float:
        """Mean PSNR over the validation set, all ranks together."""
        values = evaluate(
            loader,
            self.model,
            eval_type=self.config.eval_type,
            eval_bsize=self.config.eval_bsize,
        )
        psnr_sum, psnr_count = self.env.sum(sum(values), len(values))
        return psnr_sum / psnr_count

    def save(self, names: list[str], epoch: int, step_in_epoch: int) -> None:
        """Write checkpoints ``names`` (rank 0) that resume exactly; :class:`TrainingDiverged`
        on every rank, and nothing written, if a weight is not finite."""
        floats = [t for t in self.model.state_dict().values() if t.is_floating_point()]
        if not bool(torch.stack([torch.isfinite(t).all() for t in floats]).all()):
            self._diverged(
                f"the weights are not finite at epoch {epoch} (not saving {', '.join(names)})"
            )
        if not self.env.main:
            return
        state = {
            "epoch_step": step_in_epoch,
            "global_step": self.progress.global_step,
            "best_val": self.progress.best_val,
            "epoch_scheduler": self.epoch_scheduler.state_dict() if self.epoch_scheduler else None,
            "step_scheduler": self.step_scheduler.state_dict() if self.step_scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": _rng_state(),
            "seed": self.seed,
        }
        optimizer_entry = {**self.optimizer_spec, "sd": self.optimizer.state_dict()}
        for name in names:
            save_model(
                self.model,
                os.path.join(self.save_path, name),
                optimizer=optimizer_entry,
                epoch=epoch,
                extra={STATE_KEY: state},
            )


def train(
    config: Mapping[str, Any] | TrainConfig,
    save_path: str,
    resume: str | None = None,
    config_file: str | None = None,
) -> dict[str, Any]:
    """Train as ``config`` says, writing checkpoints and ``log.txt`` under ``save_path``.

    ``config`` is a mapping (checked by :func:`~lte_cuda.config.read_train_config`; messages
    name ``config_file``, the file it was read from, if given) or a checked
    :class:`~lte_cuda.config.TrainConfig`. Nothing the run reads (``config_file``,
    ``init_weights``, the datasets' folders, a ``resume`` file of another folder) may be a
    file the run writes. ``resume`` (or ``config.resume``) is a checkpoint to continue from: a file written by
    this trainer restores model, optimizer, scheduler, AMP scaler, step, best validation and
    RNG states; a published checkpoint restores model and optimizer and replays the
    epoch schedule. Under ``torchrun`` this runs one rank of a DistributedDataParallel job.
    ``save_path`` is locked while training (rank 0 holds the lock); a folder another live
    trainer holds is refused with :class:`~lte_cuda.run_lock.RunLockedError`.

    Returns ``{'model', 'epoch', 'global_step', 'train_loss', 'val_psnr', 'best_val_psnr',
    'stopped_early'}``; ``model`` is the trained (unwrapped) module.
    """
    if not isinstance(config, TrainConfig):
        config = read_train_config(config, config_file or "config")
    resume = resume or config.resume
    _refuse_overwriting_inputs(config, save_path, resume, config_file)
    env = DistEnv(config.device)
    lock = RunLock(save_path)
    try:
        _lock_on_rank_zero(lock, env)
        return _run(config, save_path, resume, env)
    finally:
        lock.release()
        env.close()


def _lock_on_rank_zero(lock: RunLock, env: DistEnv) -> None:
    refused = None
    if env.main:
        try:
            lock.acquire()
        except RunLockedError as err:
            refused = err
    if env.any(refused is not None):  # every rank stops, not only the one that knows why
        raise refused or RunLockedError(f"rank 0 could not lock {lock.path.parent}")


def _refuse_overwriting_inputs(
    config: TrainConfig, save_path: str, resume: str | None, config_file: str | None
) -> None:
    """The run folder is no input folder, and no input is a file the run writes there. A
    ``resume`` file inside the folder is the run's own state, which it continues (it is read
    whole before anything is written)."""
    run = Path(save_path)
    inputs = [config_file, config.init_weights]
    for spec in (config.train_dataset, config.val_dataset):
        inputs += dataset_paths(spec) if spec is not None else []
    if resume and Path(resume).resolve().parent != run.resolve():
        inputs.append(resume)
    refuse_overwriting_inputs(run, inputs, "--save-dir/--name")
    for source in filter(None, inputs):
        name = Path(source).name
        if is_run_file(name):
            refuse_overwriting_inputs(run / name, inputs, "--save-dir/--name")


def _run(config: TrainConfig, save_path: str, resume: str | None, env: DistEnv) -> dict[str, Any]:
    start_time = time.monotonic()
    _prepare_folder(config, save_path, resume, env)
    seed = config.seed
    _seed_everything(seed)
    data = make_train_data(config, seed, env)
    ckpt = read_resume_checkpoint(resume) if resume else None
    model, optimizer_spec = initial_model(config, ckpt, resume)
    trainer = Trainer(config, env, model, optimizer_spec, data.steps_per_epoch, save_path)
    if ckpt is not None:
        trainer.restore(ckpt, resume)
        del ckpt
    n_params = sum(p.numel() for p in model.parameters())
    trainer.log(
        f"model: {n_params:,} parameters, backend {model.backend}; {env.world_size} process(es) "
        f"on {env.device}; {len(data.train_set)} samples, {data.steps_per_epoch} steps per epoch"
    )
    result = _fit(trainer, data, start_time)
    if env.enabled:
        dist.barrier()  # no rank leaves while rank 0 still writes
    return result


def _prepare_folder(config: TrainConfig, save_path: str, resume: str | None, env: DistEnv) -> None:
    """Refuse a folder that holds another run (unless resuming), make it, drop the partial
    files a killed run left (the lock says no live run writes here), and record the config."""
    last = os.path.join(save_path, LAST)
    if resume is None and os.path.exists(last):  # checked on every rank: all stop together
        raise FileExistsError(
            f"{save_path} already holds a run; resume it with --resume {last} "
            "or pick another --name / --save-dir"
        )
    if env.main:
        os.makedirs(save_path, exist_ok=True)
        for stray in _stray_partials(Path(save_path)):
            stray.unlink(missing_ok=True)
        with atomic_output(os.path.join(save_path, "config.yaml")) as stream:
            stream.write(yaml.safe_dump(config.raw, sort_keys=False).encode())


def _stray_partials(folder: Path) -> list[Path]:
    """Partial files of the run's own outputs left by a process killed while writing them:
    ``.NAME.lte-partial-XXXXXXXX`` (see :func:`~lte_cuda.image_io.files.atomic_output`)."""
    found = folder.glob(f".*{PARTIAL_TAG}*")
    return [path for path in found if is_run_file(path.name[1:].split(PARTIAL_TAG)[0])]


def is_run_file(name: str) -> bool:
    """Whether a run writes a file called ``name`` in its folder."""
    return name in ("config.yaml", "log.txt") or bool(re.fullmatch(CHECKPOINT_NAMES, name))


def _fit(trainer: Trainer, data: TrainData, start_time: float) -> dict[str, Any]:
    """Epochs from where ``trainer.progress`` stands to ``epoch_max`` or an early stop."""
    progress, config = trainer.progress, trainer.config
    max_steps = config.max_steps
    stopped = bool(max_steps) and progress.global_step >= max_steps
    train_loss = val_psnr = None
    for epoch in range(progress.epoch + 1, config.epoch_max + 1):
        if stopped:
            break
        train_loss, stopped = trainer.run_epoch(data, epoch, start_time)
        if progress.epoch_step < trainer.steps_per_epoch:
            # Stopped mid-epoch: record the epochs done and the steps into this one.
            trainer.save([LAST], epoch - 1, progress.epoch_step)
            lr = trainer.optimizer.param_groups[0]["lr"]
            trainer.log(
                f"epoch {epoch}/{config.epoch_max}: stopped after {progress.epoch_step}/"
                f"{trainer.steps_per_epoch} steps (step {progress.global_step}), "
                f"train loss {train_loss:.4f}, lr {lr:.3g}"
            )
            break
        val = trainer.end_epoch(data, epoch, train_loss, start_time)
        val_psnr = val if val is not None else val_psnr
    return {
        "model": trainer.model,
        "epoch": progress.epoch,
        "global_step": progress.global_step,
        "train_loss": train_loss,
        "val_psnr": val_psnr,
        "best_val_psnr": progress.best_val if progress.best_val > -math.inf else None,
        "stopped_early": stopped,
    }
