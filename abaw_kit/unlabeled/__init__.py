"""Unlabelled face data for semi-supervised training: readers per format and the index.

``abaw_kit.unlabeled.ingest`` builds the index (``ingest``, ``merge``, ``summary_table``);
``UnlabeledIndex`` reads it. The ingest module is not re-exported under its function's name,
so ``from abaw_kit.unlabeled import ingest`` keeps meaning the module.
"""

from __future__ import annotations

from abaw_kit.unlabeled.index import UnlabeledIndex
from abaw_kit.unlabeled.recordio import RecordIORecord, iter_recordio, write_recordio

__all__ = ["RecordIORecord", "UnlabeledIndex", "iter_recordio", "write_recordio"]
