"""RetinaFace: the released weights' key layout, weight files of every kind, priors, decoding.

No real weights can be downloaded in tests: the network gets random weights, saved and reloaded.
Both variants (ResNet-50, MobileNet-0.25) share these checks; the real MobileNet weights on real
faces are in test_faces_real.py.
"""

from __future__ import annotations

import math
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from abaw_kit.errors import AbawError
from abaw_kit.faces import DEFAULT_DETECTOR, Detections, make_detector
from abaw_kit.faces.retinaface import (
    MOBILENET,
    RESNET50,
    RetinaFaceDetector,
    hub_cache_path,
    load_retinaface_weights,
)
from abaw_kit.faces.retinaface_net import (
    RetinaFaceNet,
    decode_boxes,
    decode_landmarks,
    prior_boxes,
)

# Key names of ternaus/retinaface's resnet50_2020-07-20 state dict (from its network.py/net.py).
RELEASED_KEYS = [
    "body.conv1.weight", "body.bn1.running_var", "body.layer1.0.downsample.0.weight",
    "body.layer4.2.bn3.bias", "fpn.output1.0.weight", "fpn.output3.1.running_mean",
    "fpn.merge1.0.weight", "fpn.merge2.1.bias", "ssh1.conv3X3.0.weight",
    "ssh2.conv5X5_1.1.weight", "ssh3.conv5X5_2.0.weight", "ssh1.conv7X7_2.0.weight",
    "ssh3.conv7x7_3.1.running_var", "ClassHead.0.conv1x1.weight", "ClassHead.2.conv1x1.bias",
    "BboxHead.1.conv1x1.weight", "LandmarkHead.2.conv1x1.weight",
]
SHAPES = {
    "ClassHead.0.conv1x1.weight": (4, 256, 1, 1),  # 2 anchors x 2 classes
    "BboxHead.0.conv1x1.weight": (8, 256, 1, 1),
    "LandmarkHead.0.conv1x1.weight": (20, 256, 1, 1),
    "fpn.output1.0.weight": (256, 512, 1, 1),
    "fpn.output3.0.weight": (256, 2048, 1, 1),
    "ssh1.conv3X3.0.weight": (128, 256, 3, 3),
    "ssh1.conv7x7_3.0.weight": (64, 64, 3, 3),
}
KEYS_WITH_BN_COUNTERS = 456  # ResNet-50 without fc (318) + FPN (30) + 3 SSH (3x30) + heads (18)
KEYS_WITHOUT_BN_COUNTERS = 383
# biubug6's mobilenet0.25_Final.pth holds exactly these 300 tensors (BatchNorm counters included)
MOBILENET_KEYS = 300
MOBILENET_SHAPES = {
    "body.stage1.0.0.weight": (8, 3, 3, 3),
    "body.stage1.1.0.weight": (8, 1, 3, 3),  # depthwise
    "body.stage1.1.3.weight": (16, 8, 1, 1),  # pointwise
    "body.stage2.5.3.weight": (128, 128, 1, 1),
    "body.stage3.1.4.running_var": (256,),
    "fpn.output1.0.weight": (64, 64, 1, 1),
    "fpn.output3.0.weight": (64, 256, 1, 1),
    "ssh1.conv3X3.0.weight": (32, 64, 3, 3),
    "ssh3.conv7x7_3.0.weight": (16, 16, 3, 3),
    "ClassHead.0.conv1x1.weight": (4, 64, 1, 1),
    "LandmarkHead.2.conv1x1.weight": (20, 64, 1, 1),
}


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = RetinaFaceNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong load would show
        for name, buffer in net.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    return net.state_dict()


@pytest.fixture(scope="module")
def mobilenet_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return RetinaFaceNet("mobilenet0.25").state_dict()


@pytest.fixture(scope="module")
def weight_files(state: dict[str, torch.Tensor], tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("weights")
    pth = folder / "retinaface.pth"
    torch.save(state, pth)
    released_zip = folder / "retinaface_resnet50.zip"  # one torch file inside, as released
    with zipfile.ZipFile(released_zip, "w") as archive:
        archive.write(pth, arcname="retinaface_resnet50_2020-07-20.pth")
    safetensors = folder / "retinaface.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(safetensors))
    return {"pth": pth, "zip": released_zip, "safetensors": safetensors}


def test_key_layout_matches_the_release(state: dict[str, torch.Tensor]) -> None:
    assert all(key in state for key in RELEASED_KEYS)
    assert not any(key.startswith(("body.fc", "body.avgpool")) for key in state)
    assert len(state) == KEYS_WITH_BN_COUNTERS
    assert sum(not k.endswith("num_batches_tracked") for k in state) == KEYS_WITHOUT_BN_COUNTERS
    for key, shape in SHAPES.items():
        assert tuple(state[key].shape) == shape, key


def test_mobilenet_key_layout_matches_the_release(
        mobilenet_state: dict[str, torch.Tensor]) -> None:
    assert len(mobilenet_state) == MOBILENET_KEYS
    assert not any(key.startswith(("body.fc", "body.avg")) for key in mobilenet_state)
    for key, shape in MOBILENET_SHAPES.items():
        assert tuple(mobilenet_state[key].shape) == shape, key


def test_the_default_detector_is_the_mobilenet() -> None:
    assert DEFAULT_DETECTOR == "retinaface-mobilenet"


def test_mobilenet_loads_and_detects(tmp_path: Path,
                                     mobilenet_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "mobilenet0.25_Final.pth"
    torch.save(mobilenet_state, path)
    detector = make_detector("retinaface-mobilenet", weights=path, max_size=96,
                             score_threshold=0.0, max_faces=3)
    assert detector.name == "retinaface-mobilenet"
    torch.testing.assert_close(detector.net.state_dict()["ssh2.conv5X5_1.1.running_mean"],
                               mobilenet_state["ssh2.conv5X5_1.1.running_mean"])
    found = detector.detect(np.zeros((2, 64, 80, 3), np.uint8))
    assert [len(f) for f in found] == [3, 3]


def test_weights_of_the_other_variant_name_the_detector_they_fit(
        tmp_path: Path, state: dict[str, torch.Tensor],
        mobilenet_state: dict[str, torch.Tensor]) -> None:
    resnet_path, mobilenet_path = tmp_path / "resnet.pth", tmp_path / "mobilenet.pth"
    torch.save(state, resnet_path)
    torch.save(mobilenet_state, mobilenet_path)
    with pytest.raises(AbawError) as info:
        make_detector("retinaface-mobilenet", weights=resnet_path)
    assert str(info.value) == (f"{resnet_path} holds RetinaFace-ResNet50 weights, not "
                               "RetinaFace-MobileNet0.25: use --detector retinaface")
    with pytest.raises(AbawError, match=r"holds RetinaFace-MobileNet0\.25 weights, not "
                                        r"RetinaFace-ResNet50: use --detector "
                                        r"retinaface-mobilenet$"):
        make_detector("retinaface", weights=mobilenet_path)
    partial = {k: v for k, v in mobilenet_state.items() if not k.startswith("ssh3.")}
    partial["head.extra"] = torch.zeros(1)
    partial_path = tmp_path / "partial.pth"
    torch.save(partial, partial_path)
    with pytest.raises(AbawError) as info:
        make_detector("retinaface-mobilenet", weights=partial_path)
    message = str(info.value)
    assert ("does not hold RetinaFace-MobileNet0.25 weights: key 'head.extra' is not part of "
            "it (25 keys missing, 1 unexpected)") in message
    assert "supported: RetinaFace-MobileNet0.25 (--detector retinaface-mobilenet), " in message
    assert "RetinaFace-ResNet50 (--detector retinaface)" in message and "\n" not in message


def test_mobilenet_download_is_hash_checked_and_offline_says_how(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []

    def offline(url: str, **kwargs: object) -> None:
        calls.append({"url": url, **kwargs})
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(AbawError) as info:
        make_detector("retinaface-mobilenet")
    assert calls[0]["url"] == ("https://github.com/biubug6/Face-Detector-1MB-with-landmark/raw/"
                               "master/weights/mobilenet0.25_Final.pth")
    # torch.hub checks the sha256 prefix written after the last "-" of the file name
    assert calls[0]["check_hash"] is True
    assert calls[0]["file_name"] == "retinaface_mobilenet0.25_biubug6-ed6fa7d4.pth"
    message = str(info.value)
    assert message.startswith(f"could not download RetinaFace-MobileNet0.25 weights from "
                              f"{MOBILENET.url}")
    assert "--detector-weights PATH" in message and str(hub_cache_path(MOBILENET)) in message
    assert "\n" not in message

    def corrupted(url: str, **kwargs: object) -> None:
        raise RuntimeError('invalid hash value (expected "ed6fa7d4", got "0000")')

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", corrupted)
    with pytest.raises(AbawError, match=r"is not the released RetinaFace-MobileNet0\.25 "
                                        r"\(sha256 does not start with ed6fa7d4\)"):
        make_detector("retinaface-mobilenet")


def test_mobilenet_priors_use_its_own_anchor_sizes() -> None:
    pixels = prior_boxes(320, 320, "mobilenet0.25").numpy() * 320
    np.testing.assert_allclose(pixels[0], [4, 4, 10, 10], rtol=1e-5)
    np.testing.assert_allclose(pixels[1], [4, 4, 20, 20], rtol=1e-5)
    np.testing.assert_allclose(pixels[2 * 40 * 40], [8, 8, 32, 32], rtol=1e-5)
    np.testing.assert_allclose(pixels[-1], [304, 304, 256, 256], rtol=1e-5)  # 10x10 cells


def test_4k_frames_are_resized_in_bounded_chunks(tmp_path: Path,
                                                 mobilenet_state: dict[str, torch.Tensor]
                                                 ) -> None:
    """A 4K batch must not become one float tensor of the full frames (1.6 GB for 16)."""
    path = tmp_path / "mobilenet.pth"
    torch.save(mobilenet_state, path)
    detector = make_detector("retinaface-mobilenet", weights=path, max_size=320)
    seen: list[tuple[int, ...]] = []
    original = torch.nn.functional.interpolate

    def spy(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        seen.append(tuple(tensor.shape))
        return original(tensor, *args, **kwargs)

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr("abaw_kit.faces.retinaface.F.interpolate", spy)
    try:
        batch = detector._prepare(np.zeros((6, 2160, 3840, 3), np.uint8))
    finally:
        monkeypatch.undo()
    assert tuple(batch.shape) == (6, 3, 180, 320)
    assert max(shape[0] for shape in seen) <= 4 and sum(shape[0] for shape in seen) == 6


@pytest.mark.parametrize("kind", ["pth", "zip", "safetensors"])
def test_every_weight_file_kind_loads_and_detects(kind: str, weight_files: dict[str, Path],
                                                 state: dict[str, torch.Tensor]) -> None:
    detector = make_detector("retinaface", weights=weight_files[kind], max_size=128,
                             score_threshold=0.0, max_faces=7, device="auto")
    loaded = detector.net.state_dict()
    for key in ("body.conv1.weight", "ssh2.conv7x7_3.1.running_var", "LandmarkHead.1.conv1x1.bias"):
        torch.testing.assert_close(loaded[key], state[key])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 90, 120, 3), dtype=np.uint8)
    results = detector.detect(images)
    assert len(results) == 2
    for found in results:
        assert isinstance(found, Detections) and 0 < len(found) <= 7
        assert found.boxes.dtype == np.float32 and found.boxes.shape[1] == 4
        assert found.landmarks.shape == (len(found), 5, 2)
        assert np.all(np.diff(found.scores) <= 0)  # best first
        assert np.all(found.boxes[:, [0, 2]] <= 120) and np.all(found.boxes[:, [1, 3]] <= 90)
        assert np.all(found.boxes[:, :2] >= 0) and np.all(found.boxes[:, 2:] > found.boxes[:, :2])


def test_zip_holding_a_legacy_torch_file(tmp_path: Path) -> None:
    """2020-era torch wrote the pre-zip serialisation; the release zips one such file."""
    inner = tmp_path / "inner.pth"
    torch.save({"fpn.merge1.0.weight": torch.arange(6.0)}, inner,
               _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(inner)
    archive_path = tmp_path / "release.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.write(inner, arcname="retinaface.pth")
    loaded = load_retinaface_weights(archive_path)
    torch.testing.assert_close(loaded["fpn.merge1.0.weight"], torch.arange(6.0))


def test_wrapped_and_prefixed_checkpoints_load(tmp_path: Path,
                                               state: dict[str, torch.Tensor]) -> None:
    lightning = {"state_dict": {f"model.{k}": v for k, v in state.items()
                                if not k.endswith("num_batches_tracked")}, "epoch": 3}
    path = tmp_path / "lightning.ckpt"
    torch.save(lightning, path)
    loaded = load_retinaface_weights(path)
    assert "fpn.merge1.0.weight" in loaded and len(loaded) == KEYS_WITHOUT_BN_COUNTERS
    RetinaFaceDetector(weights=path)  # BatchNorm counters may be absent


def test_bad_weight_files_are_one_line_errors(tmp_path: Path,
                                              state: dict[str, torch.Tensor]) -> None:
    with pytest.raises(AbawError, match=r"weights file not found: .*missing\.pth"):
        make_detector("retinaface", weights=tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(AbawError, match=r"cannot read RetinaFace weights .*garbage\.pth"):
        make_detector("retinaface", weights=garbage)
    other = tmp_path / "other.pth"
    torch.save({"backbone.weight": torch.zeros(3)}, other)
    with pytest.raises(AbawError, match=r"other\.pth does not hold RetinaFace-ResNet50 weights"):
        make_detector("retinaface", weights=other)
    wrong = dict(state)
    wrong["ClassHead.0.conv1x1.weight"] = torch.zeros(6, 256, 1, 1)  # 3 anchors: other model
    wrong_path = tmp_path / "wrong.pth"
    torch.save(wrong, wrong_path)
    with pytest.raises(AbawError, match=r"ClassHead\.0\.conv1x1\.weight has shape \(6, 256"):
        make_detector("retinaface", weights=wrong_path)


def test_offline_download_names_url_and_fixes(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(AbawError) as info:
        make_detector("retinaface")
    message = str(info.value)
    assert RESNET50.url == ("https://github.com/ternaus/retinaface/releases/download/0.01/"
                           "retinaface_resnet50_2020-07-20-f168fae3c.zip")
    assert message.startswith(f"could not download RetinaFace-ResNet50 weights from {RESNET50.url}")
    assert "--detector-weights PATH" in message and "--detector cascade" in message
    assert "\n" not in message


def test_prior_boxes_for_640() -> None:
    priors = prior_boxes(640, 640)
    assert priors.shape == (2 * (80 * 80 + 40 * 40 + 20 * 20), 4) == (16800, 4)
    pixels = priors.numpy() * 640  # (cx, cy, w, h) in pixels of the 640x640 input
    np.testing.assert_allclose(pixels[0], [4, 4, 16, 16], rtol=1e-5)
    np.testing.assert_allclose(pixels[1], [4, 4, 32, 32], rtol=1e-5)  # second anchor size
    np.testing.assert_allclose(pixels[2], [12, 4, 16, 16], rtol=1e-5)  # next column
    np.testing.assert_allclose(pixels[2 * 80], [4, 12, 16, 16], rtol=1e-5)  # next row
    np.testing.assert_allclose(pixels[12800], [8, 8, 64, 64], rtol=1e-5)  # stride 16 starts
    np.testing.assert_allclose(pixels[-1], [624, 624, 512, 512], rtol=1e-5)
    assert prior_boxes(85, 128).shape[0] == 2 * (11 * 16 + 6 * 8 + 3 * 4)  # ceil(size / step)


def test_decode_known_box_and_landmarks() -> None:
    priors = torch.tensor([[0.5, 0.5, 0.1, 0.2]])
    offsets = torch.tensor([[1.0, -1.0, math.log(2) / 0.2, 0.0]])
    # centre moves by offset * 0.1 * prior size; width doubles (exp(log 2)); height stays
    torch.testing.assert_close(decode_boxes(offsets, priors),
                               torch.tensor([[0.41, 0.48 - 0.1, 0.61, 0.48 + 0.1]]))
    marks = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0, 1.0, -1.0, -1.0, 2.0, 2.0]])
    expected = torch.tensor([[[0.5, 0.5], [0.51, 0.5], [0.5, 0.52], [0.49, 0.48], [0.52, 0.54]]])
    torch.testing.assert_close(decode_landmarks(marks, priors), expected)


def test_detections_map_back_to_original_pixels(weight_files: dict[str, Path]) -> None:
    """A net that fires on exactly one prior: its box must come back in the 96x64 input's pixels."""
    detector = RetinaFaceDetector(weights=weight_files["pth"], max_size=128)
    # 96x64 is resized to 128x85 (scale 4/3); level-0 prior at row 3, column 5, anchor 0
    priors = prior_boxes(85, 128)
    index = (3 * 16 + 5) * 2

    def fake_net(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert tuple(batch.shape) == (1, 3, 85, 128)
        logits = torch.zeros(1, len(priors), 2)
        logits[0, :, 0] = 10.0
        logits[0, index] = torch.tensor([0.0, 10.0])
        return torch.zeros(1, len(priors), 4), logits, torch.zeros(1, len(priors), 10)

    detector.net = fake_net
    found = detector.detect(np.zeros((1, 64, 96, 3), np.uint8))[0]
    assert len(found) == 1 and found.scores[0] > 0.99
    # the resize maps 96 -> 128 columns and 64 -> 85 rows: each axis scales back on its own
    centre = np.array([(5 + 0.5) * 8 * 96 / 128, (3 + 0.5) * 8 * 64 / 85])
    half = np.array([8 * 96 / 128, 8 * 64 / 85])  # a 16-pixel anchor in the resized frame
    np.testing.assert_allclose(found.boxes[0], [*(centre - half), *(centre + half)], atol=0.01)
    np.testing.assert_allclose(found.landmarks[0], np.tile(centre, (5, 1)), atol=0.01)

