"""The pieces ingest's guarantees rest on: digest dedup, seeded sampling, the shard merge, and
the verify modes."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
from test_unlabeled_ingest import build_rec, index_table
from test_unlabeled_recordio import make_jpeg

from abaw_kit.unlabeled import ingest as ingest_mod
from abaw_kit.unlabeled.dedup import DigestSet, digests_from_hex_column, hex_column
from abaw_kit.unlabeled.parts import INDEX_SCHEMA, ordered_rows
from abaw_kit.unlabeled.sampling import (
    stream_key,
    subset_threshold,
    unit,
    unit_array,
    verify_fraction,
)


def test_digest_set_matches_a_python_set_over_many_batches():
    rng = np.random.default_rng(0)
    pool = [os.urandom(16) for _ in range(300)] + [bytes(16), b"\0" * 15 + b"\1"]
    reference: set[bytes] = set()
    seen = DigestSet()
    for _ in range(40):
        batch = [pool[i] for i in rng.integers(0, len(pool), rng.integers(0, 30))]
        expected = []
        for digest in batch:
            expected.append(digest not in reference)
            reference.add(digest)
        assert seen.add(batch).tolist() == expected
    assert len(seen) == len(reference)
    assert all(d in seen for d in reference) and os.urandom(16) not in seen
    assert len(seen._runs) <= 2 * int(np.log2(len(reference)) + 1)  # runs stay logarithmic
    column = hex_column(b"".join(pool[:3]))
    assert column.to_pylist() == [d.hex() for d in pool[:3]]
    back = digests_from_hex_column(pa.chunked_array([column.slice(1), column.slice(0, 1)]))
    assert [bytes(d).ljust(16, b"\0") for d in back] == [pool[1], pool[2], pool[0]]


def test_sampling_numbers_are_the_same_scalar_or_vectorised_and_limits_are_exact():
    key = stream_key(7, 1, 3)
    items = np.arange(0, 5000, 7)
    assert np.array_equal(unit_array(key, items), [unit(key, int(i)) for i in items])
    values = unit_array(key, np.arange(100_000))
    assert 0.49 < values.mean() < 0.51 and values.min() >= 0 and values.max() < 1
    counts = [1000, 2500]
    threshold = subset_threshold(counts, seed=5, limit=123, fraction=None)
    kept = sum(int((unit_array(stream_key(5, 1, s), np.arange(c)) < threshold).sum())
               for s, c in enumerate(counts))
    assert kept == 123
    assert subset_threshold(counts, seed=5, limit=10_000, fraction=0.3) == 0.3
    assert verify_fraction(1_000_000, "sample") == (1000 + 10_000) / 1_000_000
    assert verify_fraction(500, "sample") == 1.0
    assert verify_fraction(10, "full") == 1.0 and verify_fraction(10, "none") == 0.0


def _rows(source: int, items: list[int]) -> pa.Table:
    n = len(items)
    return pa.table({"source": [source] * n, "item": items, "kind": ["folder"] * n,
                     "file": [f"{i}.jpg" for i in items], "member": [""] * n, "offset": [0] * n,
                     "length": [1] * n, "row_group": [-1] * n, "row": [-1] * n,
                     "chunked": [False] * n, "hash": [f"{source:016x}{i:016x}" for i in items],
                     "width": [1] * n, "height": [1] * n}, schema=INDEX_SCHEMA)


def test_ordered_rows_merges_shard_streams_in_candidate_order():
    shard0 = [_rows(0, [0, 2, 4]), _rows(0, [6]), _rows(1, [1, 3])]
    shard1 = [_rows(0, [1, 3]), _rows(0, [5, 7]), _rows(1, [0, 2, 4])]
    merged = pa.concat_tables(ordered_rows([iter(shard0), iter(shard1)]))
    pairs = list(zip(merged.column("source").to_pylist(), merged.column("item").to_pylist(),
                     strict=True))
    assert pairs == [(0, i) for i in range(8)] + [(1, i) for i in range(5)]


def test_verify_modes_decide_what_is_decoded(tmp_path, monkeypatch):
    cut = make_jpeg(1)[:-300]  # header intact, pixels missing
    rec = build_rec(tmp_path / "rec", [make_jpeg(0), cut, b"not an image", make_jpeg(2)])
    full = ingest_mod.ingest([rec], tmp_path / "full", verify="sample", progress=True)
    assert full["skipped_by_reason"] == {"corrupt image": 1, "not an image": 1}  # tiny: all
    monkeypatch.setattr(ingest_mod, "verify_fraction", lambda total, mode: 0.0)
    headers = ingest_mod.ingest([rec], tmp_path / "headers", verify="sample")
    assert headers["ingested"] == 3 and headers["skipped_by_reason"] == {"not an image": 1}
    assert (index_table(tmp_path / "headers")["width"] == 24).all()  # sizes from headers
    trusting = ingest_mod.ingest([rec], tmp_path / "none", verify="none")
    assert trusting["ingested"] == 4 and trusting["skipped"] == 0


def test_digest_set_contains_answers_without_adding():
    seen = DigestSet()
    a, b, c = (bytes([i]) * 16 for i in range(3))
    seen.add([a, b])
    assert seen.contains([c, a, c, b]).tolist() == [False, True, False, True]
    assert seen.contains([]).tolist() == [] and len(seen) == 2 and c not in seen
