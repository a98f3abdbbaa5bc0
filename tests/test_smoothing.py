"""Per-video interpolation of missing faces and temporal filters of class probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from abaw_kit.errors import AbawError
from abaw_kit.smoothing import (
    SmoothSpec,
    choose_smoothing,
    fill_missing,
    groups_without_faces,
    parse_spec,
    smooth,
)


def _noisy_segments(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two videos of 60-frame expression segments; per-frame noise hides the true class often."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.repeat(rng.permutation(8)[:5], 60) for _ in range(2)])
    groups = np.repeat(["v1", "v2"], len(labels) // 2)
    probs = np.eye(8)[labels] * 0.5 + rng.random((len(labels), 8))
    return probs / probs.sum(axis=1, keepdims=True), labels, groups


@pytest.mark.parametrize("spec", ["mean:15", "median:15", "gauss:4", "mean:0.5s"])
def test_each_filter_improves_accuracy_on_noisy_segments(spec: str) -> None:
    probs, labels, groups = _noisy_segments()
    before = np.mean(probs.argmax(1) == labels)
    after = np.mean(smooth(probs, groups, spec, fps=30.0).argmax(1) == labels)
    assert before < 0.8
    assert after > before + 0.1


@pytest.mark.parametrize("spec", ["none", "mean:31", "median:31", "gauss:10"])
def test_group_of_length_one_is_kept(spec: str) -> None:
    one = np.array([[0.1, 0.2, 0.3, 0.1, 0.1, 0.1, 0.05, 0.05]])
    longer = np.random.default_rng(0).random((40, 8))  # the window must fit the longest video
    out = smooth(np.concatenate([one, longer]), ["only"] + ["long"] * 40, spec)
    assert out.shape == (41, 8)
    np.testing.assert_allclose(out[:1], one)


@pytest.mark.parametrize("spec", ["mean:70", "median:69", "gauss:60"])
def test_huge_window_never_mixes_two_videos(spec: str) -> None:
    class_a = np.tile(np.eye(8)[0], (50, 1))
    class_b = np.tile(np.eye(8)[1], (70, 1))
    probs = np.concatenate([class_a, class_b])
    groups = np.array(["a"] * 50 + ["b"] * 70)
    out = smooth(probs, groups, spec)
    np.testing.assert_allclose(out[:50], class_a, atol=1e-12)
    np.testing.assert_allclose(out[50:], class_b, atol=1e-12)
    # Same when the rows of the two videos are interleaved: groups, not positions, decide.
    order = np.argsort(np.arange(120) % 2, kind="stable")
    mixed = smooth(probs[order], groups[order], spec)
    np.testing.assert_allclose(mixed, probs[order], atol=1e-12)


def test_fill_missing_exact_values() -> None:
    nan = np.full(8, np.nan)
    p = np.eye(8)
    probs = np.array([nan, p[0], nan, nan, p[3], nan,   # video a: edge, gap of two, edge
                      nan, nan,                          # video b: no face at all
                      nan, p[5]])                         # video c: leading gap only
    groups = ["a"] * 6 + ["b"] * 2 + ["c"] * 2
    out = fill_missing(probs, groups)
    np.testing.assert_allclose(out[0], p[0])                       # start repeats first face
    np.testing.assert_allclose(out[1], p[0])
    np.testing.assert_allclose(out[2], 2 / 3 * p[0] + 1 / 3 * p[3])
    np.testing.assert_allclose(out[3], 1 / 3 * p[0] + 2 / 3 * p[3])
    np.testing.assert_allclose(out[4], p[3])
    np.testing.assert_allclose(out[5], p[3])                       # end repeats last face
    np.testing.assert_allclose(out[6:8], np.full((2, 8), 1 / 8))   # no face: uniform
    np.testing.assert_allclose(out[8], p[5])                       # not a's value: own group
    assert groups_without_faces(probs, groups) == ["b"]
    assert np.isnan(probs[0]).all()                                # input untouched


def test_fill_missing_keeps_dtype_and_rows_with_faces() -> None:
    probs = np.random.default_rng(1).random((20, 8)).astype(np.float32)
    probs[[3, 4, 10]] = np.nan
    out = fill_missing(probs, ["v"] * 20)
    assert out.dtype == np.float32
    keep = ~np.isnan(probs).any(axis=1)
    np.testing.assert_array_equal(out[keep], probs[keep])
    assert not np.isnan(out).any()


def test_parse_spec_accepts_the_documented_forms() -> None:
    assert parse_spec("none") == SmoothSpec("none")
    assert parse_spec(" AUTO ") == SmoothSpec("auto")
    assert parse_spec("mean:15") == SmoothSpec("mean", 15.0)
    assert parse_spec("median:101") == SmoothSpec("median", 101.0)
    assert parse_spec("gauss:2.5") == SmoothSpec("gauss", 2.5)
    half_second = parse_spec("mean:0.5s")
    assert half_second.in_seconds and half_second.frames(30.0) == pytest.approx(15.0)
    assert str(half_second) == "mean:0.5s" and str(parse_spec("gauss:4")) == "gauss:4"


@pytest.mark.parametrize("text", ["", "mean", "mean:", "box:5", "mean:-3", "mean:0",
                                  "median:2.5", "gauss:abc", "mean:5x"])
def test_parse_spec_rejects_anything_else(text: str) -> None:
    with pytest.raises(AbawError, match="smoothing"):
        parse_spec(text)


def test_smooth_refuses_nan_and_auto() -> None:
    probs = np.full((3, 8), 1 / 8)
    with pytest.raises(AbawError, match="auto"):
        smooth(probs, ["v"] * 3, "auto")
    probs[1] = np.nan
    with pytest.raises(AbawError, match="fill_missing"):
        smooth(probs, ["v"] * 3, "mean:3")
    with pytest.raises(AbawError, match="fps"):
        smooth(np.full((3, 8), 1 / 8), ["v"] * 3, "mean:1s", fps=0)


def test_choose_smoothing_picks_the_best_and_reports_every_candidate() -> None:
    probs, labels, groups = _noisy_segments(seed=3)
    labels = labels.copy()
    labels[::7] = -1  # unannotated frames are ignored by the score
    best, table = choose_smoothing(probs, labels, groups)
    assert table[0]["spec"] == "none"
    assert {row["kind"] for row in table} == {"none", "mean", "median", "gauss"}
    scores = {row["spec"]: row["macro_f1"] for row in table}
    assert scores[str(best)] == max(scores.values())
    assert best.kind != "none" and scores[str(best)] > scores["none"] + 0.1


def test_choose_smoothing_keeps_none_when_nothing_helps() -> None:
    labels = np.repeat(np.arange(8), 5)
    probs = np.eye(8)[labels]  # already perfect: every filter ties or loses
    best, table = choose_smoothing(probs, labels, ["v"] * 40, candidates=["none", "mean:3"])
    assert best == SmoothSpec("none") and len(table) == 2


def test_a_recorded_window_is_shortened_to_a_short_clip_not_refused() -> None:
    from abaw_kit.smoothing import fit_to

    assert str(fit_to(parse_spec("mean:51"), 40)) == "mean:40"
    assert str(fit_to(parse_spec("gauss:2s"), 30, fps=30.0)) == "gauss:30"
    assert str(fit_to(parse_spec("median:9"), 40)) == "median:9"  # fits: unchanged
    assert str(fit_to(parse_spec("none"), 5)) == "none"
