"""Shared test settings: quiet, deterministic, small."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.pop("ABAW_DATA", None)
os.environ.pop("ABAW_WORK", None)
