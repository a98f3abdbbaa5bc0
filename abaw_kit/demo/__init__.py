"""The built-in demo release: a small synthetic Aff-Wild2 in exactly the official layout.

``generate.py`` writes it (``generate_demo``), ``faces.py`` draws its faces. This module holds
what the rest of the toolkit needs to know about a demo release (its marker, the files only a
demo has, the config it trains with) and imports nothing heavy, so reading a workspace's source
record does not load the generator.
"""

from __future__ import annotations

from pathlib import Path

DEMO_MARKER = "DEMO.json"
"""Marks a demo release (seed, version, counts)."""
DEMO_CONFIG = "demo"
"""The bundled config a demo workspace trains with when ``--config`` is not given."""
TEST_LABELS_FILE = "demo_test_labels.txt"
"""The demo's hidden test labels, in the prediction format."""
UNLABELED_LABELS_FILE = "demo_unlabeled_labels.csv"
"""path,label,hash: the expression each unlabelled face was drawn with, for measuring how right
pseudo-labels are (``unlabeled/folder/<id>/<n>.jpg`` or ``unlabeled/recordio/train.rec#<i>``;
``hash`` is the content hash `abaw ingest` stores, so the trainer can match index rows)."""
UNLABELED_FOLDER = "unlabeled/folder"
UNLABELED_RECORDIO = "unlabeled/recordio"


def is_demo(root: str | Path) -> bool:
    """True if ``root`` is a demo release made by ``generate_demo``."""
    return (Path(root) / DEMO_MARKER).is_file()


def unlabeled_sources(root: str | Path) -> tuple[Path, ...]:
    """The demo's unlabelled faces under ``root``, as `abaw ingest` sources (folder, RecordIO)."""
    return (Path(root) / UNLABELED_FOLDER, Path(root) / UNLABELED_RECORDIO)
