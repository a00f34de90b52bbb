"""Figures of a benchmark run (records as benchmarks/run.py writes them).

- ``op_time.png``: time of the query step against the query count, log-log, one line per
  path, forward and forward+backward side by side, with a slope-1 line through the fused
  path's largest point: linear growth runs parallel to it.
- ``speedup.png``: per bench and case, each path's time over the fused path's (bars; above 1
  means the fused path is faster).
- ``peak_memory.png``: peak memory per path, per bench and case.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

BENCHES = ("op", "upscale", "train")
PATHS = ("fused", "reference", "published", "compiled", "lte-plus")
NAMES = {
    "fused": "fused",
    "reference": "reference (grid_sample)",
    "published": "published (per neighbour)",
    "compiled": "torch.compile",
    "lte-plus": "LTE+ (lte-fast)",
}
COLORS = {
    "fused": "tab:green",
    "reference": "tab:gray",
    "published": "tab:red",
    "compiled": "tab:blue",
    "lte-plus": "tab:orange",
}
TITLES = {"op": "query step (op)", "upscale": "end-to-end upscale", "train": "training step"}


def ordered_cases(records: list[dict], bench: str) -> list[tuple[str, str]]:
    """The (label, mode) cases of ``bench`` in shape order (C then queries for the op; scale
    then size for upscale), modes in the order they were run."""
    rows = [r for r in records if r["bench"] == bench]
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    rows.sort(key=lambda r: (tuple(r["shape"].values()), modes.index(r["mode"])))
    return list(dict.fromkeys((r["label"], r["mode"]) for r in rows))


def write_plots(records: list[dict], out: Path) -> list[Path]:
    """Writes the figures that the measured records allow; returns their paths."""
    measured = [r for r in records if "median_s" in r]
    device = measured[0]["device"] if measured else "cpu"
    figures = []
    op = [r for r in measured if r["bench"] == "op"]
    if op:
        figures.append(_op_time(op, device, out / "op_time.png"))
    if measured:
        figures.append(_bars(measured, "speedup", out / "speedup.png", device))
        if any(r["peak_bytes"] for r in measured):
            figures.append(_bars(measured, "peak", out / "peak_memory.png", device))
    return figures


def _op_time(op: list[dict], device: str, path: Path) -> Path:
    # The query sweep is the channel count with the most cases.
    channels = Counter(r["shape"]["channels"] for r in op).most_common(1)[0][0]
    sweep = [r for r in op if r["shape"]["channels"] == channels]
    modes = list(dict.fromkeys(r["mode"] for r in sweep))
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for name in PATHS:
            rows = sorted(
                (r for r in sweep if r["mode"] == mode and r["path"] == name),
                key=lambda r: r["queries"],
            )
            if not rows:
                continue
            q = [r["queries"] for r in rows]
            ax.errorbar(
                q,
                [r["median_s"] for r in rows],
                yerr=[r["iqr_s"] / 2 for r in rows],
                marker="o",
                color=COLORS[name],
                label=NAMES[name],
                capsize=3,
            )
            if name == "fused":
                last = rows[-1]
                ax.plot(
                    q,
                    [last["median_s"] * x / last["queries"] for x in q],
                    ":",
                    color=COLORS[name],
                    label="linear in queries",
                )
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="queries",
            ylabel="time per call (s)",
            title=f"{mode}, C={channels}, {device}",
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _bars(records: list[dict], kind: str, path: Path, device: str) -> Path:
    """Grouped bars per bench: speed-ups of the fused path (kind "speedup") or peak MiB."""
    table = {(r["bench"], r["label"], r["mode"], r["path"]): r for r in records}
    # A case gets a group if some bar of it has a value.
    cases = {
        b: [
            c for c in ordered_cases(records, b) if any(_value(table, b, c, p, kind) for p in PATHS)
        ]
        for b in BENCHES
    }
    benches = [b for b in BENCHES if cases[b]]
    fig, axes = plt.subplots(
        1,
        len(benches),
        figsize=(2 + 1.1 * sum(len(cases[b]) for b in benches), 5.2),
        gridspec_kw={"width_ratios": [len(cases[b]) for b in benches]},
        squeeze=False,
    )
    handles = {}
    for ax, bench in zip(axes[0], benches):
        names = [p for p in PATHS if any(_value(table, bench, c, p, kind) for c in cases[bench])]
        step = 0.8 / len(names)
        for i, name in enumerate(names):
            bars = [
                (j + (i - (len(names) - 1) / 2) * step, _value(table, bench, case, name, kind))
                for j, case in enumerate(cases[bench])
            ]
            bars = [(x, y) for x, y in bars if y]
            drawn = ax.bar(
                [x for x, _ in bars], [y for _, y in bars], width=step, color=COLORS[name]
            )
            ax.bar_label(drawn, fmt="%.1f" if kind == "speedup" else "%.0f", fontsize=6)
            handles[name] = drawn
        if kind == "speedup":
            ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(
            range(len(cases[bench])),
            [f"{lbl}\n{mode}" for lbl, mode in cases[bench]],
            rotation=60,
            ha="right",
            fontsize=7,
        )
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{TITLES[bench]}, {device}", fontsize=9)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes[0][0].set_ylabel(
        "time / fused time (above 1: fused faster)"
        if kind == "speedup"
        else "peak memory of one call (MiB)"
    )
    fig.legend(
        handles.values(),
        [NAMES[n] for n in handles],
        loc="upper center",
        ncol=len(handles),
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _value(table: dict, bench: str, case: tuple[str, str], name: str, kind: str) -> float | None:
    """The bar of path ``name`` in ``case``: its time over the fused path's, or its peak MiB."""
    record = table.get((bench, *case, name))
    if record is None:
        return None
    if kind == "peak":
        return record["peak_bytes"] / 2**20 if record["peak_bytes"] else None
    fused = table.get((bench, *case, "fused"))
    return record["median_s"] / fused["median_s"] if fused and name != "fused" else None
