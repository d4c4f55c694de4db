"""The report's charts (matplotlib's object API: no pyplot global state, no GUI backend).

* ``ablation.png``: test mAP per variant, one panel per table: bars of the mean with 95% CI error bars, the
  per-seed values as dots, the reference as a diamond. The y axis is zoomed to the values.
* ``ablation_curves.png``: val mAP against epoch per variant: the mean over seeds and the band from the lowest
  to the highest seed.
* ``ablation_buckets.png``: test AP per class-frequency bucket and variant, with 95% CIs.
"""
import textwrap

import numpy as np

from yolo.ablate.spec import METRIC


def _figure(width: float, height: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height))


def write_map_chart(summary: list[dict], path):
    widths = [max(3.0, 1.6 * len(t["rows"])) for t in summary]
    fig = _figure(sum(widths) + 1, 4.5)
    axes = fig.subplots(1, len(summary), squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    for ax, table in zip(axes, summary):
        stats = [row[METRIC] for row in table["rows"]]
        means = [s["mean"] if s["mean"] is not None else np.nan for s in stats]
        colours = ["tab:grey" if row["is_baseline"] else "tab:blue" for row in table["rows"]]
        ax.bar(range(len(stats)), means, yerr=_errors(stats), capsize=4, color=colours, alpha=0.8,
               label="mean, 95% CI")
        for i, row in enumerate(table["rows"]):
            ax.plot([i] * len(row["per_seed"]), list(row["per_seed"].values()), "k.", ms=5,
                    label="seeds" if i == 0 else None)
            if row["reference"] is not None:
                ax.plot(i, row["reference"], "D", color="tab:red", label="reference" if i == 0 else None)
        ax.set_ylim(*_zoomed_limits(table["rows"]))
        _labels(ax, table)
        ax.set_ylabel("test VOC07 mAP@0.5 (axis not from 0)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_curves_chart(summary: list[dict], rows: list[dict], path):
    fig = _figure(6.5 * len(summary), 4.5)
    axes = fig.subplots(1, len(summary), squeeze=False)[0]
    for ax, table in zip(axes, summary):
        for row in table["rows"]:
            curves = [r["history"] for r in rows if r["variant"] == row["variant"] and r["table"] == table["title"]]
            epochs = sorted({h["epoch"] for curve in curves for h in curve})
            if not epochs:
                continue
            values = np.array([[_at(curve, e) for e in epochs] for curve in curves], dtype=float)
            line, = ax.plot(epochs, np.nanmean(values, axis=0), marker=".", label=f"{row['label']} (n={len(curves)})")
            ax.fill_between(epochs, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=line.get_color(),
                            alpha=0.15)
        ax.set(xlabel="epoch", ylabel="val VOC07 mAP@0.5 (mean, band: min-max over seeds)", title=table["title"])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_bucket_chart(summary: list[dict], path):
    fig = _figure(6.5 * len(summary), 4.5)
    axes = fig.subplots(1, len(summary), squeeze=False)[0]
    for ax, table in zip(axes, summary):
        buckets = [m for m in table["metrics"] if m.startswith("ap_")]
        width = 0.8 / max(len(table["rows"]), 1)
        for i, row in enumerate(table["rows"]):
            stats = [row[b] for b in buckets]
            x = np.arange(len(buckets)) + (i - (len(table["rows"]) - 1) / 2) * width
            ax.bar(x, [s["mean"] if s["mean"] is not None else np.nan for s in stats], width, yerr=_errors(stats),
                   capsize=3, label=row["label"], alpha=0.85)
        ax.set_xticks(range(len(buckets)), [b[3:] for b in buckets])
        ax.set(ylabel="test AP of the bucket's classes (mean, 95% CI)", title=table["title"])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _at(curve: list[dict], epoch: int) -> float:
    values = [h[METRIC] for h in curve if h["epoch"] == epoch and h[METRIC] is not None]
    return values[0] if values else np.nan


def _errors(stats: list[dict]) -> np.ndarray:
    return np.array([[s["mean"] - s["ci_low"], s["ci_high"] - s["mean"]] if s["ci_low"] is not None
                     else [0.0, 0.0] for s in stats]).T


def _labels(ax, table: dict):
    ax.set_xticks(range(len(table["rows"])), [textwrap.fill(row["label"], 22) for row in table["rows"]], fontsize=7)
    ax.set_title(table["title"], fontsize=10)


def _zoomed_limits(rows: list[dict]) -> tuple[float, float]:
    values = [v for row in rows for v in row["per_seed"].values()]
    values += [row["reference"] for row in rows if row["reference"] is not None]
    values += [row[METRIC][k] for row in rows for k in ("ci_low", "ci_high") if row[METRIC][k] is not None]
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    margin = max(0.2 * (high - low), 0.005)
    return max(0.0, low - margin), min(1.0, high + margin)
