"""Temporal model building blocks: window planning, masking, stitching, the two networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from abaw_kit.config import TEMPORAL_MODELS as ARCHITECTURES
from abaw_kit.temporal.models import WindowCentred, make_temporal_model
from abaw_kit.temporal.windows import gather_window, plan_windows, stitch, window_labels


def test_every_frame_is_covered_and_windows_stay_inside_one_video() -> None:
    lengths = [10, 3, 0, 7]
    plan = plan_windows(lengths, window=4, stride=3)
    assert plan.videos.tolist() == [0, 0, 0, 1, 3, 3]  # the empty video has no window
    assert plan.starts.tolist() == [0, 3, 6, 0, 0, 3]
    covered = [np.zeros(n, int) for n in lengths]
    for video, start in zip(plan.videos, plan.starts, strict=True):
        stop = min(start + plan.window, lengths[video])
        assert start >= 0 and (start + plan.window <= lengths[video] or start == 0)
        covered[video][start:stop] += 1
    assert all((c >= 1).all() for c in covered)
    assert plan_windows([10], 4, 3).starts.tolist() == [0, 3, 6]  # the last one ends on frame 9
    assert plan_windows([9], 4, 4).starts.tolist() == [0, 4, 5]
    assert plan_windows([3], 8, 4).starts.tolist() == [0]  # shorter than a window: padded
    with pytest.raises(ValueError, match="would skip frames"):
        plan_windows([10], 4, 5)


def test_frames_without_a_face_are_masked_zeros_and_get_no_label() -> None:
    embeddings = np.arange(12, dtype=np.float16).reshape(4, 3)  # the 4 frames with a face
    face_rows = np.array([0, -1, 1, 2, -1, 3])  # 6 frames, 2 without a face
    x, mask = gather_window(embeddings, face_rows, start=1, window=8)
    assert mask.tolist() == [False, True, True, False, True, False, False, False]
    np.testing.assert_array_equal(x[1], embeddings[1])
    np.testing.assert_array_equal(x[4], embeddings[3])
    assert not x[~mask].any() and x.dtype == np.float32
    labels = np.array([3, 3, -1, 5, 5, 1])
    assert window_labels(labels, mask, 1, 8).tolist() == [-1, -1, 5, -1, 1, -1, -1, -1]


def test_stitching_averages_overlaps_per_video_and_never_mixes_videos() -> None:
    lengths = [5, 3]
    plan = plan_windows(lengths, window=3, stride=2)  # video 0: starts 0, 2; video 1: 0
    assert plan.videos.tolist() == [0, 0, 1] and plan.starts.tolist() == [0, 2, 0]
    outputs = np.zeros((3, 3, 2))
    outputs[0, :, 0] = 1.0  # window 0 says class 0 on frames 0-2
    outputs[1, :, 1] = 1.0  # window 1 says class 1 on frames 2-4
    outputs[2, :, :] = 7.0  # video 1: must not leak into video 0
    masks = np.ones((3, 3), bool)
    masks[1, 2] = False  # frame 4 of video 0 has no face
    first, second = stitch(outputs, masks, plan, lengths)
    np.testing.assert_allclose(first[:4], [[1, 0], [1, 0], [0.5, 0.5], [0, 1]])
    assert np.isnan(first[4]).all()  # no window saw a face there: left to interpolation
    np.testing.assert_allclose(second, np.full((3, 2), 7.0))
    with pytest.raises(ValueError, match="do not match a plan"):
        stitch(outputs[:2], masks[:2], plan, lengths)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_models_label_every_frame_and_ignore_masked_inputs(architecture: str) -> None:
    torch.manual_seed(0)
    model = make_temporal_model(architecture, 16, width=32, depth=2, heads=4, dropout=0.0,
                                max_len=64, positional="sinusoidal").eval()
    x = torch.randn(3, 20, 16)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 5:9] = False
    mask[2] = False  # a window without any face must not produce NaN
    logits = model(x, mask)
    assert logits.shape == (3, 20, 8) and torch.isfinite(logits).all()
    changed = x.clone()
    changed[1, 5:9] = 100.0  # what lies under the mask must not change the other frames
    valid = mask[1]
    torch.testing.assert_close(model(changed, mask)[1][valid], logits[1][valid])
    # ... and each frame's output depends on its neighbours (it is a sequence model)
    nudged = x.clone()
    nudged[0, 10, 0] += 1.0  # one feature: a shift of all of them is what LayerNorm removes
    assert not torch.allclose(model(nudged, mask)[0, 9], logits[0, 9])


def test_transformer_refuses_a_window_longer_than_its_positions() -> None:
    model = make_temporal_model("transformer", 8, width=16, depth=1, heads=2, dropout=0.0,
                                max_len=10, positional="learned")
    with pytest.raises(ValueError, match="window of 12 frames > max_len 10"):
        model(torch.zeros(1, 12, 8), torch.ones(1, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown temporal model 'lstm'"):
        make_temporal_model("lstm", 8, width=16, depth=1, heads=2, dropout=0.0, max_len=10,
                            positional="none")


def test_window_centring_feeds_offsets_from_the_mean_of_the_faces_only() -> None:
    seen: list[torch.Tensor] = []

    class Record(torch.nn.Module):
        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return x

    x = torch.randn(2, 5, 3)
    mask = torch.tensor([[True, True, False, True, False], [False] * 5])
    x[~mask] = 0.0  # masked frames are zero inputs (gather_window)
    WindowCentred(Record())(x + 0.0, mask)
    given = seen[0]
    assert given.shape == (2, 5, 6) and torch.equal(given[..., :3], x)
    offsets = given[..., 3:]
    face_mean = x[0, mask[0]].mean(0)
    torch.testing.assert_close(offsets[0, mask[0]], x[0, mask[0]] - face_mean)
    assert not offsets[~mask].any()  # masked frames and an all-masked window stay zero
    shifted = torch.where(mask[..., None], x + torch.tensor([5.0, -2.0, 1.0]), x)
    WindowCentred(Record())(shifted, mask)  # the same person in other light: same offsets
    torch.testing.assert_close(seen[1][..., 3:], offsets)
    centre = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])  # centre_over: video
    WindowCentred(Record())(x + 0.0, mask, centre)
    torch.testing.assert_close(seen[2][0, mask[0], 3:], x[0, mask[0]] - centre[0])
    assert not seen[2][..., 3:][~mask].any()
    model = make_temporal_model("tcn", 3, width=8, depth=1, heads=1, dropout=0.0, max_len=5,
                                positional="none", centre=True)
    assert model(x, mask).shape == (2, 5, 8)
