"""``metrics.csv`` of a run: one row per ``log_every`` steps, fixed columns for every method.

Step logs stay on the device and are summed there; one transfer per logged row keeps the
loop free of per-step host synchronisation.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from abaw_kit.classes import CLASS_NAMES
from abaw_kit.workspace import atomic_write_text

THRESHOLD_COLUMNS = [f"thr_{name}" for name in CLASS_NAMES]
PSEUDO_COLUMNS = [f"pl_{name}" for name in CLASS_NAMES]
COLUMNS = ["step", "loss", "sup_loss", "unsup_loss", "fair_loss", "neg_loss", "mask_ratio",
           "pseudo_acc", "lr", "images_per_s", *THRESHOLD_COLUMNS, *PSEUDO_COLUMNS, "val_f1"]
"""thr_*: per-class pseudo-label threshold; pl_*: accepted pseudo-labels per class in the
interval; neg_loss: selective negative learning; pseudo_acc: share of accepted pseudo-labels
that match the true class, among pool images whose class is known (few-label withheld frames,
the demo's unlabelled faces; this rank's batches); val_f1: validation macro-F1 of the EMA
weights (rows where validation ran)."""


class Meter:
    """Averages scalar logs and sums the pseudo-label histogram over a logging interval."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}  # per key: steps of a supervised warm-up log no SSL keys

    def add(self, logs: dict[str, torch.Tensor]) -> None:
        for key, value in logs.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
            self.counts[key] = self.counts.get(key, 0) + 1

    def flush(self) -> dict[str, Any]:
        """Interval means (histogram: totals) as Python numbers; resets the meter."""
        out: dict[str, Any] = {}
        for key, total in self.sums.items():
            values = total.cpu().tolist()
            if key == "pseudo_hist":
                out.update(zip(PSEUDO_COLUMNS, (int(v) for v in values), strict=True))
            elif key in ("pseudo_correct", "pseudo_checked"):
                continue
            else:
                out[key] = values / max(self.counts[key], 1)
        checked = self.sums.get("pseudo_checked")
        if checked is not None and float(checked) > 0:
            out["pseudo_acc"] = float(self.sums["pseudo_correct"]) / float(checked)
        self.sums, self.counts = {}, {}
        return out


class RunLog:
    """A training session's messages: to the caller's ``log``, else the console (with
    --progress), and appended with a time stamp to the model folder's train.log by the one
    process that writes (``enabled``)."""

    def __init__(self, path: Path, *, console: Console | None,
                 log: Callable[[str], None] | None, enabled: bool) -> None:
        self.path, self.console, self.log, self.enabled = path, console, log, enabled

    def __call__(self, message: str) -> None:
        if self.log is not None:
            self.log(message)
        elif self.console is not None:
            self.console.print(message)
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


class MetricsLog:
    """Append-only CSV with a fixed header; on resume, rows after the checkpoint are dropped."""

    def __init__(self, path: Path, *, enabled: bool = True,
                 columns: list[str] | None = None) -> None:
        self.path, self.enabled = path, enabled
        self.columns = COLUMNS if columns is None else columns

    def start(self, resume_step: int | None) -> None:
        """New file (header only), or keep the rows up to ``resume_step`` of an earlier run."""
        if not self.enabled:
            return
        rows = self.read() if resume_step is not None else []
        kept = [row for row in rows if int(float(row["step"])) <= (resume_step or 0)]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns)
        writer.writeheader()
        writer.writerows({key: row.get(key) or "" for key in self.columns} for row in kept)
        atomic_write_text(self.path, buffer.getvalue())

    def read(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        return [row for row in rows if row.get("step") and _is_number(row["step"])]

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.columns).writerow(
                {key: _cell(row.get(key)) for key in self.columns})


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.6g}"
    return str(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
