"""Training curves of a run, drawn from its ``metrics.csv``: losses, share of accepted
pseudo-labels, per-class thresholds, pseudo-label histogram and validation macro-F1.

A figure whose columns are empty (e.g. thresholds of a supervised run) is skipped, not drawn
blank. Figures use the Agg canvas without pyplot state; each PNG is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from abaw_kit.classes import CLASS_NAMES
from abaw_kit.workspace import atomic_path

DPI = 110
LOSSES = {"loss": "total", "sup_loss": "supervised", "unsup_loss": "unlabelled consistency",
          "fair_loss": "fairness (FreeMatch)", "neg_loss": "negative learning"}


PSEUDO_QUALITY = {"mask_ratio": "accepted share",
                  "pseudo_acc": "accepted that are right (where the class is known)"}


def plot_training(metrics_csv: str | Path, out_dir: str | Path) -> list[Path]:
    """Every training PNG that has data; returns the paths written."""
    metrics_csv, out_dir = Path(metrics_csv), Path(out_dir)
    if not metrics_csv.is_file():
        return []
    table = pd.read_csv(metrics_csv)
    if table.empty:
        return []
    table = table.apply(pd.to_numeric, errors="coerce").sort_values("step")
    written = [
        _lines(table, {k: v for k, v in LOSSES.items() if k in table}, out_dir / "losses.png",
               "Training losses", "loss"),
        _lines(table, {k: v for k, v in PSEUDO_QUALITY.items() if k in table},
               out_dir / "mask_ratio.png",
               "Unlabelled images whose pseudo-label passes the threshold", "share", (0, 1.02)),
        _lines(table, {f"thr_{n}": n for n in CLASS_NAMES}, out_dir / "thresholds.png",
               "Per-class pseudo-label thresholds", "confidence threshold", (0, 1.02)),
        _pseudo_histogram(table, out_dir / "pseudo_labels.png"),
        _lines(table, {"val_f1": "val macro-F1 (EMA weights)"}, out_dir / "val_f1.png",
               "Validation macro-F1 (raw frames)", "macro-F1", markers=True),
        _ssl_overview(table, out_dir / "ssl_overview.png"),
    ]
    return [path for path in written if path is not None]


def _ssl_overview(table: pd.DataFrame, path: Path) -> Path | None:
    """The SSL story on one shared step axis: thresholds, what they let through (and how much
    of it is right), and what that does to val macro-F1."""
    thresholds = [f"thr_{n}" for n in CLASS_NAMES if f"thr_{n}" in table]
    if not thresholds or table[thresholds].dropna(how="all").empty:
        return None
    fig = Figure(figsize=(8, 8))
    axes = fig.subplots(3, 1, sharex=True)
    for column, name in zip(thresholds, CLASS_NAMES, strict=False):
        data = table[["step", column]].dropna()
        axes[0].plot(data["step"], data[column], label=name)
    axes[0].set_ylabel("per-class threshold")
    axes[0].set_ylim(0, 1.02)
    axes[0].legend(fontsize=7, ncol=4)
    for column, label in PSEUDO_QUALITY.items():
        if column in table and table[column].notna().any():
            data = table[["step", column]].dropna()
            axes[1].plot(data["step"], data[column], label=label)
    axes[1].set_ylabel("share")
    axes[1].set_ylim(0, 1.02)
    axes[1].legend(fontsize=7)
    if "val_f1" in table and table["val_f1"].notna().any():
        data = table[["step", "val_f1"]].dropna()
        axes[2].plot(data["step"], data["val_f1"], marker="o", markersize=3)
    axes[2].set_ylabel("val macro-F1")
    axes[2].set_xlabel("step")
    axes[0].set_title("Pseudo-labels and validation over training")
    for ax in axes:
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _lines(table: pd.DataFrame, columns: dict[str, str], path: Path, title: str, ylabel: str,
           ylim: tuple[float, float] | None = None, markers: bool = False) -> Path | None:
    series = {label: table[["step", col]].replace([np.inf, -np.inf], np.nan).dropna()
              for col, label in columns.items() if col in table}
    series = {label: data for label, data in series.items() if len(data)}
    if not series:
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for label, data in series.items():
        ax.plot(data["step"], data.iloc[:, 1], label=label, marker="o" if markers else None,
                markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _save(fig, path)


def _pseudo_histogram(table: pd.DataFrame, path: Path) -> Path | None:
    """Share of each class among accepted pseudo-labels over training, and the totals."""
    columns = [f"pl_{name}" for name in CLASS_NAMES]
    if not all(c in table for c in columns):
        return None
    counts = table[["step", *columns]].dropna()
    totals = counts[columns].sum(axis=1)
    if len(counts) == 0 or totals.sum() <= 0:
        return None
    share = counts[columns].div(totals.where(totals > 0), axis=0).fillna(0.0)
    fig = Figure(figsize=(11, 4))
    over_time, overall = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    over_time.stackplot(counts["step"], share.T.to_numpy(), labels=CLASS_NAMES)
    over_time.set_ylim(0, 1)
    over_time.set_xlabel("step")
    over_time.set_ylabel("share of accepted pseudo-labels")
    over_time.set_title("Pseudo-label classes over training")
    over_time.legend(fontsize=7, loc="upper left", ncol=2)
    overall.bar(CLASS_NAMES, counts[columns].sum().to_numpy(),
                color=[f"C{i}" for i in range(len(CLASS_NAMES))])  # same colours as the left
    overall.set_title("Accepted pseudo-labels, whole run")
    overall.tick_params(axis="x", rotation=45)
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path
