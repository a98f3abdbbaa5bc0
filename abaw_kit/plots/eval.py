"""Evaluation and prediction plots: confusion matrix, per-class F1, F1 against the smoothing
window, and the expression probabilities of one video over time.

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas, no pyplot global state), so
plotting is safe in worker threads and never opens a window; each PNG is written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from abaw_kit.classes import CLASS_NAMES, NUM_CLASSES
from abaw_kit.workspace import atomic_path

DPI = 120


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def plot_confusion(cm: Any, path: str | Path, title: str = "Confusion (row-normalised)") -> Path:
    """Row-normalised confusion matrix: each row shows where the frames of one true class went."""
    counts = np.asarray(cm, dtype=np.float64).reshape(NUM_CLASSES, NUM_CLASSES)
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(NUM_CLASSES), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(NUM_CLASSES), CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for (row, col), value in np.ndenumerate(share):
        ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                color="white" if value > 0.5 else "black")
    return _save(fig, path)


def plot_per_class_f1(per_class: dict[str, float], path: str | Path,
                      title: str = "Per-class F1") -> Path:
    """Bar per class with the macro F1 (their mean) as a dashed line."""
    names = list(per_class)
    values = np.array([per_class[name] for name in names], dtype=np.float64)
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    bars = ax.bar(names, values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8)
    if len(values):
        ax.axhline(values.mean(), color="tab:red", linestyle="--")
        title = f"{title} (macro F1 {values.mean():.4f}, dashed)"
    ax.set_ylim(0.0, 1.1)
    ax.set_ylabel("F1")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=45)
    return _save(fig, path)


def plot_f1_vs_window(table: list[dict[str, Any]], path: str | Path,
                      title: str = "Macro F1 against smoothing window") -> Path:
    """One line per filter kind (window or sigma in frames); 'none' as a horizontal line.

    ``table`` is the one ``choose_smoothing`` returns: rows {spec, kind, frames, macro_f1}.
    """
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for kind in dict.fromkeys(row["kind"] for row in table):
        rows = sorted((r for r in table if r["kind"] == kind), key=lambda r: r["frames"])
        if kind == "none":
            ax.axhline(rows[0]["macro_f1"], color="gray", linestyle=":", label="none")
            continue
        label = f"{kind} (sigma)" if kind == "gauss" else f"{kind} (window)"
        ax.plot([r["frames"] for r in rows], [r["macro_f1"] for r in rows], marker="o",
                label=label)
    if table:
        best = max(table, key=lambda r: r["macro_f1"])
        ax.set_title(f"{title}\nbest: {best['spec']} = {best['macro_f1']:.4f}")
        ax.legend(loc="lower right")
    else:
        ax.set_title(title)
    ax.set_xlabel("frames")
    ax.set_ylabel("macro F1")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) frame indices, stop exclusive, of each contiguous run of True in ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def plot_timeline(probs: Any, path: str | Path, fps: float = 30.0, title: str = "", *,
                  has_face: np.ndarray | None = None) -> Path:
    """Expression probabilities of one video over time (stacked), plus the predicted class.

    ``has_face`` (one bool per frame): runs of frames without a face are washed out and hatched
    on both panels (their probabilities are interpolated from the nearest faces; a white wash,
    not grey, so as not to look like the grey of "Other"), and the bottom panel shows no
    predicted class for them.
    """
    values = np.nan_to_num(np.asarray(probs, dtype=np.float64).reshape(-1, NUM_CLASSES))
    face = (np.ones(len(values), bool) if has_face is None
            else np.asarray(has_face, dtype=bool).reshape(-1))
    if len(face) != len(values):
        raise ValueError(f"has_face has {len(face)} frames, probs {len(values)}")
    step = 1.0 / fps if fps > 0 else 1.0
    seconds = np.arange(len(values)) * step
    fig = Figure(figsize=(10, 5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    colors = [f"C{i}" for i in range(NUM_CLASSES)]
    top.stackplot(seconds, values.T, labels=CLASS_NAMES, colors=colors, alpha=0.85)
    missing = _runs(~face)
    for k, (start, stop) in enumerate(missing):  # one legend entry, not one per run
        for ax in (top, bottom):
            ax.axvspan((start - 0.5) * step, (stop - 0.5) * step, facecolor=(1.0, 1.0, 1.0, 0.55),
                       edgecolor=(0.2, 0.2, 0.2, 0.7), hatch="//", linewidth=0,
                       label="no face (interpolated)" if k == 0 and ax is top else None)
    top.set_xlim(0.0, max(seconds[-1] if len(seconds) else 0.0, step))
    top.set_ylim(0.0, 1.0)
    top.set_ylabel("probability (stacked)")
    top.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    no_face = f", {int((~face).sum())} of {len(face)} frames without a face" if missing else ""
    top.set_title(f"{title or 'Expression probabilities'}{no_face}")
    predicted = values.argmax(axis=1) if len(values) else np.zeros(0, dtype=int)
    bottom.scatter(seconds[face], predicted[face], c=[colors[i] for i in predicted[face]], s=4)
    bottom.set_ylim(-0.5, NUM_CLASSES - 0.5)
    bottom.set_yticks(range(NUM_CLASSES), CLASS_NAMES, fontsize=7)
    bottom.set_xlabel("time (s)" if fps > 0 else "frame")
    bottom.set_ylabel("predicted")
    return _save(fig, path)
