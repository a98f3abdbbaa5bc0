"""Seeded per-candidate random numbers: subsets (``limit``, ``fraction``) and the verify sample.

Each candidate gets a uniform number from a hash of (seed, stream, source, item) instead of a
random generator's state, so the choice does not depend on which shard sees the candidate, on
the order of reading, or on where a resumed run starts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MIX1, MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
TO_UNIT = 2.0**-53
SUBSET_STREAM, VERIFY_STREAM = 1, 2
_CHUNK = 1 << 20


def _mix(z: int) -> int:
    """splitmix64's finaliser on a Python int (mod 2**64)."""
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    return z ^ (z >> 31)


def _mix_array(z: np.ndarray) -> np.ndarray:
    """The same finaliser on uint64 arrays (numpy wraps uint64 products mod 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
    return z ^ (z >> np.uint64(31))


def stream_key(seed: int, stream: int, source: int) -> int:
    return _mix((_mix((seed & MASK64) ^ (stream << 56)) + GOLDEN * (source + 1)) & MASK64)


def unit(key: int, item: int) -> float:
    """The candidate's number in [0, 1); ``key`` comes from ``stream_key``."""
    return (_mix((key + GOLDEN * item) & MASK64) >> 11) * TO_UNIT


def unit_array(key: int, items: np.ndarray) -> np.ndarray:
    z = np.uint64(key) + np.uint64(GOLDEN) * items.astype(np.uint64)
    return (_mix_array(z) >> np.uint64(11)).astype(np.float64) * TO_UNIT


def subset_threshold(counts: Sequence[int], seed: int, limit: int | None,
                     fraction: float | None) -> float:
    """Keep a candidate when its subset number is below this: ``fraction``, then at most
    ``limit`` candidates (the ``limit`` smallest numbers, found in chunks: memory O(limit)).
    """
    threshold = 1.0 if fraction is None else float(fraction)
    if limit is None or limit >= sum(counts):
        return threshold
    best = np.empty(0, dtype=np.float64)
    for source, count in enumerate(counts):
        key = stream_key(seed, SUBSET_STREAM, source)
        for start in range(0, count, _CHUNK):
            values = unit_array(key, np.arange(start, min(count, start + _CHUNK)))
            values = np.concatenate((best, values[values < threshold]))
            if len(values) > limit:
                values = np.partition(values, limit - 1)[:limit]
            best = values
    if len(best) < limit:
        return threshold
    return float(np.nextafter(best.max(), np.inf))


def verify_fraction(total: int, mode: str) -> float:
    """Share of images to decode: all ("full"), none, or 1000 + 1% of them ("sample")."""
    if mode == "full":
        return 1.0
    if mode == "none":
        return 0.0
    return 1.0 if total <= 0 else min(1.0, (1000 + 0.01 * total) / total)
