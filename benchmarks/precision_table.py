"""CPU precision table: fp32, bf16 and auto side by side, in one process, in turns.

    python -m benchmarks.precision_table [--runs 3] [--fit-steps 200] [--quick]

Per precision: the time of ``lte_cuda.upscale`` x4 128->512 with an EDSR-baseline-LTE of the
published size (seeded random weights: time does not depend on them); the decoder MLP's rate in
GMAC/s (its four layers alone, in the blocks the query step uses) beside the large matrix
products of the same dtype measured in the same rounds (torch.mm 2048^3, and oneDNN's linear on
packed weights, the faster of the two on AVX-512 CPUs); and the quality rule of
:mod:`lte_cuda.precision` against fp32 (PSNR delta and largest 8-bit pixel difference) on the
held-out photos at x2, x3, x4 and x2.5, for the bundled model and for a published-size model
fitted briefly here with the bundled recipe's data (see :func:`fit_published_size`).

The quality helpers (:func:`held_out_crops`, :func:`quality_against_fp32`,
:func:`fit_published_size`) are what tests/test_precision.py checks the rule with.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.machine import cpu_line, require_fused

# lte_cuda/weights/README.md: photos never trained or validated on; and the training photos.
HELD_OUT = ("chelsea", "coffee", "camera")
TRAINING = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "brick")
SCALES = (2.0, 3.0, 4.0, 2.5)
CROP = 120  # HR crop side: a multiple of every scale above (LR 60, 40, 30, 48)
MLP_ROWS = 1 << 17
GEMM_SIDE = 2048


def held_out_crops(side: int = CROP) -> list[tuple[str, torch.Tensor]]:
    """``(name, hr (3, side, side) float in [0, 1])``: the centre crop of each held-out photo."""
    from lte_cuda.data.image_folder import SkimagePhotos

    photos = SkimagePhotos(list(HELD_OUT))
    crops = []
    for name, image in zip(HELD_OUT, photos.images):
        top, left = (image.shape[1] - side) // 2, (image.shape[2] - side) // 2
        crops.append((name, image[:, top : top + side, left : left + side].float() / 255))
    return crops


def quality_against_fp32(
    model: torch.nn.Module, hr: torch.Tensor, scale: float, precision: str, device: str = "cpu"
) -> dict[str, float]:
    """Upscale the PIL-bicubic downscale of ``hr`` by ``scale`` back to ``hr``'s size in fp32
    and in ``precision``: both PSNRs against ``hr`` (8-bit outputs, ``ceil(scale)`` border
    shaved), their difference, and the largest difference of one 8-bit output value."""
    from lte_cuda import upscale
    from lte_cuda.data.wrappers import resize_bicubic

    side = hr.shape[-1]
    lr = resize_bicubic(hr, (round(side / scale), round(side / scale)))
    outputs = [
        (upscale(lr, size=(side, side), model=model, device=device, precision=p) * 255).round()
        for p in ("fp32", precision)
    ]
    shave = math.ceil(scale)
    target = (hr * 255).round()[:, shave:-shave, shave:-shave]
    psnrs = []
    for out in outputs:
        mse = (out[:, shave:-shave, shave:-shave] - target).pow(2).mean().item()
        psnrs.append(10 * math.log10(255**2 / mse))
    return {
        "psnr_fp32": psnrs[0],
        "psnr": psnrs[1],
        "psnr_delta": psnrs[1] - psnrs[0],
        "max_pixel_delta": (outputs[1] - outputs[0]).abs().max().item(),
    }


def fit_published_size(
    steps: int, crop: int = 48, batch: int = 4, seed: int = 0
) -> torch.nn.Module:
    """An EDSR-baseline-LTE of the published size trained for ``steps`` steps on the bundled
    model's training photos with its recipe (``crop``-pixel LR crops, 48 in the recipe; scale
    U(1, 4), flips, L1, Adam 2e-3 with warm-up), shortened: ``batch`` crops, 512 queries each.
    Random weights say nothing about PSNR; a fitted model's weights have moved from their
    initialisation and its output is a real reconstruction. One step costs seconds on a
    2-core CPU (the encoder's backward), so the fit is short: see the README's caveat."""
    from lte_cuda.data.image_folder import SkimagePhotos
    from lte_cuda.data.wrappers import SRImplicitDownsampled
    from lte_cuda.models import build_preset

    torch.manual_seed(seed)
    model = build_preset("edsr-baseline-lte")
    data = SRImplicitDownsampled(
        SkimagePhotos(list(TRAINING), repeat=1000), crop, 1, 4, augment=True, sample_q=512
    )
    data.set_seed(seed)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    warmup = max(steps // 5, 1)
    model.train()
    for step, batch in zip(range(steps), loader):
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / warmup)
        pred = model((batch["inp"] - 0.5) / 0.5, batch["coord"], batch["cell"])
        loss = (pred - (batch["gt"] - 0.5) / 0.5).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _timed(fn: Callable[[], object], times: list[tuple[float, float]]) -> None:
    """Append (wall seconds, CPU seconds of the process) of one call of ``fn``."""
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    times.append((time.perf_counter() - start, time.process_time() - cpu_start))


def _mlp_and_gemm_calls(model, dtype: torch.dtype) -> dict[str, tuple[Callable, float]]:
    """name -> (call, multiply-accumulates) for the decoder MLP and the large products."""
    from lte_cuda.models import lte as lte_module

    mlp = model.imnet
    linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    mlp_macs = MLP_ROWS * sum(m.in_features * m.out_features for m in linears)
    rows = torch.randn(MLP_ROWS, linears[0].in_features).to(dtype)
    a, b = torch.randn(GEMM_SIDE, GEMM_SIDE, dtype=dtype), torch.randn(GEMM_SIDE, GEMM_SIDE)
    packed = torch.ops.mkldnn._reorder_linear_weight(b.to(dtype))
    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)

    def decoder_mlp():
        with autocast:
            torch.cat([mlp(block) for block in rows.split(lte_module.MLP_ROWS_PER_BLOCK)])

    return {
        "mlp": (decoder_mlp, mlp_macs),
        "torch.mm": (lambda: a @ b.to(dtype), GEMM_SIDE**3),
        "onednn": (
            lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""),
            GEMM_SIDE**3,
        ),
    }


def speed_rows(runs: int) -> dict[str, dict[str, float]]:
    """Per precision (fp32, bf16, auto): median upscale time and MLP/GEMM rates, in turns."""
    from lte_cuda import upscale
    from lte_cuda.models import build_preset
    from lte_cuda.precision import resolve_precision

    torch.manual_seed(0)
    model = build_preset("edsr-baseline-lte").eval()
    rgb = torch.rand(3, 128, 128)
    names = ("fp32", "bf16", "auto")
    dtypes = {n: resolve_precision(n, "cpu").dtype or torch.float32 for n in names}
    calls = {n: _mlp_and_gemm_calls(model, dtypes[n]) for n in names}
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with torch.inference_mode():
        for run in range(runs + 1):  # the first round warms up
            for name in names:
                work = {"upscale": lambda n=name: upscale(rgb, scale=4, model=model, precision=n)}
                work.update({k: c for k, (c, _) in calls[name].items()})
                for key, fn in work.items():
                    _timed(fn, times.setdefault((name, key), []) if run else [])
    table = {}
    for name in names:
        # Rates per CPU second: on a shared machine wall time also counts waiting for a core.
        cpu = {k: statistics.median(c for _, c in times[(name, k)]) for k in calls[name]}
        rate = {k: macs / cpu[k] / 1e9 for k, (_, macs) in calls[name].items()}
        walls = [t for t, _ in times[(name, "upscale")]]
        table[name] = {
            "upscale_s": statistics.median(walls),
            "upscale_min_s": min(walls),
            "upscale_max_s": max(walls),
            "upscale_cpu_s": statistics.median(c for _, c in times[(name, "upscale")]),
            "mlp_gmacs": rate["mlp"],
            "mm_gmacs": rate["torch.mm"],
            "onednn_gmacs": rate["onednn"],
        }
    return table


def quality_rows(
    models: dict[str, torch.nn.Module],
    precisions: tuple[str, ...] = ("bf16", "auto"),
    device: str = "cpu",
) -> dict[tuple[str, str], dict[str, float]]:
    """(model, precision) -> worst PSNR delta and pixel delta over held-out crops and scales."""
    crops = held_out_crops()
    rows = {}
    for model_name, model in models.items():
        for precision in precisions:
            results = [
                quality_against_fp32(model, hr, scale, precision, device)
                for _, hr in crops
                for scale in SCALES
            ]
            rows[(model_name, precision)] = {
                "worst_psnr_delta": max(abs(r["psnr_delta"]) for r in results),
                "max_pixel_delta": max(r["max_pixel_delta"] for r in results),
                "mean_psnr_fp32": statistics.mean(r["psnr_fp32"] for r in results),
            }
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed rounds (after one warm-up)")
    parser.add_argument("--fit-steps", type=int, default=30, help="published-size fit steps")
    parser.add_argument("--fit-crop", type=int, default=32, help="LR crop side of the fit")
    parser.add_argument("--speed-only", action="store_true", help="skip the quality columns")
    args = parser.parse_args(argv)
    require_fused("precision_table")
    from lte_cuda.precision import resolve_precision
    from lte_cuda.upscale import resolve_model

    print(cpu_line())
    print(f"auto resolves to {resolve_precision('auto', 'cpu')}")
    speed = speed_rows(args.runs)
    if args.speed_only:
        print_table(speed, None, args.runs)
        return
    start = time.perf_counter()
    fitted = fit_published_size(args.fit_steps)
    print(
        f"published-size model fitted for {args.fit_steps} steps in "
        f"{time.perf_counter() - start:.0f} s"
    )
    quality = quality_rows({"bundled": resolve_model(None), "published-size": fitted})
    print_table(speed, quality, args.runs)


def print_table(speed: dict, quality: dict | None, runs: int) -> None:
    """The markdown table of :func:`speed_rows` and :func:`quality_rows` (None: no quality)."""
    print(f"\nx4 128->512 EDSR-baseline-LTE, median of {runs} rounds in turns [min-max];")
    print(
        f"{torch.get_num_threads()} threads; MLP and GEMM rates in GMAC per CPU second; PSNR delta: worst |auto or bf16 - fp32| over "
        f"{len(HELD_OUT)} held-out {CROP}px crops x scales {SCALES}\n"
    )
    print(
        "| precision | upscale s [min-max] | CPU s | MLP GMAC/s | torch.mm | oneDNN | MLP % of torch.mm | "
        "MLP % of oneDNN | PSNR delta bundled / published-size dB | max 8-bit delta |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, row in speed.items():
        if quality is None:
            delta = pixels = "-"
        elif name == "fp32":
            delta, pixels = "0 / 0", "0 / 0"
        else:
            b, p = quality[("bundled", name)], quality[("published-size", name)]
            delta = f"{b['worst_psnr_delta']:.4f} / {p['worst_psnr_delta']:.4f}"
            pixels = f"{b['max_pixel_delta']:.0f} / {p['max_pixel_delta']:.0f}"
        print(
            f"| {name} | {row['upscale_s']:.2f} [{row['upscale_min_s']:.2f}-"
            f"{row['upscale_max_s']:.2f}] | {row['upscale_cpu_s']:.2f} | {row['mlp_gmacs']:.0f} | {row['mm_gmacs']:.0f} | "
            f"{row['onednn_gmacs']:.0f} | {100 * row['mlp_gmacs'] / row['mm_gmacs']:.0f}% | "
            f"{100 * row['mlp_gmacs'] / row['onednn_gmacs']:.0f}% | {delta} | {pixels} |"
        )
    for model_name in ("bundled", "published-size") if quality else ():
        row = quality[(model_name, "bf16")]
        print(f"{model_name}: mean fp32 PSNR over the crops {row['mean_psnr_fp32']:.2f} dB")


if __name__ == "__main__":
    main()
