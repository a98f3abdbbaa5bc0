"""Every evaluation plot renders to a real PNG, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from abaw_kit.classes import CLASS_NAMES
from abaw_kit.plots.eval import plot_confusion, plot_f1_vs_window, plot_per_class_f1, plot_timeline

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 5_000
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.width > 300 and image.height > 200
    assert not list(path.parent.glob(f".{path.name}*"))  # no temporary left behind


def test_every_plot_writes_a_valid_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 50, size=(8, 8))
    cm[3] = 0  # a class with no frames must not divide by zero
    per_class = {name: float(v) for name, v in zip(CLASS_NAMES, rng.random(8), strict=True)}
    table = [{"spec": "none", "kind": "none", "frames": 0.0, "macro_f1": 0.30}]
    table += [{"spec": f"mean:{w}", "kind": "mean", "frames": float(w), "macro_f1": 0.3 + w / 1e3}
              for w in (5, 15, 51)]
    table += [{"spec": f"gauss:{s}", "kind": "gauss", "frames": float(s), "macro_f1": 0.32}
              for s in (2, 8)]
    probs = rng.dirichlet(np.ones(8), size=300)
    outputs = [
        plot_confusion(cm, tmp_path / "plots" / "confusion.png"),
        plot_per_class_f1(per_class, tmp_path / "plots" / "per_class_f1.png"),
        plot_f1_vs_window(table, tmp_path / "plots" / "f1_vs_window.png"),
        plot_timeline(probs, tmp_path / "plots" / "timeline.png", fps=30.0, title="video45_1"),
    ]
    for path in outputs:
        _assert_png(Path(path))
