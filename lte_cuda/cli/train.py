"""``lte-sr train``: train LTE from a published-layout config."""

from __future__ import annotations

import argparse
import os
import sys

from .. import distributed
from ..config import AMP_DTYPES, load_config
from ..models import BACKENDS
from ..train import train


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    parser.add_argument(
        "--resume", help="checkpoint to continue from (e.g. save/NAME/epoch-last.pth)"
    )
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--backend", choices=BACKENDS, help="query implementation")
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), help="mixed precision (default: fp32)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    parser.add_argument("--time-budget", type=float, help="stop after this many seconds")
    parser.add_argument("--num-workers", type=int, help="data loader workers per process")
    parser.add_argument("--seed", type=int, help="random seed (default: config's, else 0)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``lte-sr train``; returns the exit status."""
    config = load_config(args.config)
    overrides = {
        "device": args.device,
        "backend": args.backend,
        "amp": args.amp,
        "max_steps": args.max_steps,
        "time_budget": args.time_budget,
        "num_workers": args.num_workers,
        "seed": args.seed,
    }
    config.update({k: v for k, v in overrides.items() if v is not None})
    if args.compile:
        config["compile"] = True
    name = args.name or "_" + os.path.splitext(os.path.basename(args.config))[0]
    save_path = os.path.join(args.save_dir, name)
    result = train(config, save_path, resume=args.resume, config_file=args.config)
    if distributed.is_main():
        best = result["best_val_psnr"]
        print(
            f"{'stopped' if result['stopped_early'] else 'done'}: {result['epoch']} epochs "
            f"and step {result['global_step']}"
            + (f", best val PSNR {best:.4f} dB" if best is not None else "")
            + f"; checkpoints in {save_path}",
            file=sys.stderr,
        )
    return 0
