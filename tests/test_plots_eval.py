"""Every evaluation plot renders to a real PNG, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from abaw_kit.classes import CLASS_NAMES
from abaw_kit.plots.eval import (
    _runs,
    plot_confusion,
    plot_f1_vs_window,
    plot_per_class_f1,
    plot_timeline,
)

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


def test_timeline_shades_each_run_without_a_face_once(tmp_path: Path) -> None:
    has_face = np.array([1, 1, 0, 0, 1, 0, 1, 1, 0], bool)
    assert _runs(~has_face) == [(2, 4), (5, 6), (8, 9)]
    probs = np.full((9, len(CLASS_NAMES)), 1 / len(CLASS_NAMES))
    path = plot_timeline(probs, tmp_path / "t.png", fps=25.0, has_face=has_face)
    assert Image.open(path).size[0] > 0
    with pytest.raises(ValueError, match="has_face has 8 frames, probs 9"):
        plot_timeline(probs, tmp_path / "u.png", has_face=has_face[:8])
