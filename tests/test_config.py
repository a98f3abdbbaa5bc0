"""The typed config: precedence, validation errors a user can act on, bundled files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from abaw_kit.config import (
    CONFIG_DIR,
    TrainConfig,
    all_keys,
    config_to_dict,
    load_config,
    render_default_yaml,
    resolve_config,
    resolve_train_config,
    save_config,
)
from abaw_kit.errors import AbawError
from abaw_kit.workspace import Workspace


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_precedence_defaults_then_file_then_set_and_flags(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "optim:\n  lr: 0.01\n  weight_decay: 0.1\n"
                                      "train:\n  steps: 50\n")
    cfg = resolve_config(path, ["optim.lr=0.02"], {"steps": 70, "backbone": None})
    assert cfg.optim.lr == 0.02  # --set beats the file
    assert cfg.optim.weight_decay == 0.1  # the file beats the default
    assert cfg.train.steps == 70  # a flag beats the file
    assert cfg.model.backbone == TrainConfig().model.backbone  # None = flag not given
    assert cfg.optim.momentum == TrainConfig().optim.momentum


def test_values_are_parsed_into_the_field_type() -> None:
    cfg = resolve_config(None, ["optim.lr=1e-3", "data.crop_scale=[0.5, 1]",
                                "model.pretrained=false", "ssl.params.p_cutoff=0.9"],
                         {"ssl": "fixmatch"})
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float)  # YAML reads 1e-3 as str
    assert cfg.data.crop_scale == [0.5, 1.0]
    assert cfg.model.pretrained == "none"
    assert cfg.ssl.params == {"p_cutoff": 0.9}
    prior = resolve_config(None, ["ssl.params.class_prior=[4, 1, 1, 1, 2, 2, 1, 4]"])
    assert prior.ssl.params == {"class_prior": [4, 1, 1, 1, 2, 2, 1, 4]}  # DTM's target shares


def test_repeated_set_last_wins_but_flag_conflict_fails() -> None:
    assert resolve_config(None, ["train.steps=5", "train.steps=9"]).train.steps == 9
    with pytest.raises(AbawError, match=r"--steps 9 conflicts with --set train.steps=5"):
        resolve_config(None, ["train.steps=5"], {"steps": 9})


def test_unknown_key_in_file_names_file_line_and_closest_key(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "optim:\n  lr: 0.01\n  wieght_decay: 0.1\n")
    with pytest.raises(AbawError) as err:
        resolve_config(path, [])
    message = str(err.value)
    assert f"{path} line 3" in message and "'optim.wieght_decay'" in message
    assert "did you mean 'optim.weight_decay'" in message


def test_unknown_set_key_and_leaf_in_wrong_section() -> None:
    with pytest.raises(AbawError, match=r"--set optim.steps=3: unknown config key "
                                        r"'optim.steps'; did you mean 'train.steps'"):
        resolve_config(None, ["optim.steps=3"])
    with pytest.raises(AbawError, match=r"'data.batchsize'; did you mean 'data.batch_size'"):
        resolve_config(None, ["data.batchsize=3"])
    with pytest.raises(AbawError, match=r"unknown config key 'lr'.*did you mean 'optim.lr'"):
        resolve_config(None, ["lr=0.1"])
    with pytest.raises(AbawError, match=r"'modle.backbone'; did you mean 'model.backbone'"):
        resolve_config(None, ["modle.backbone=x"])


def test_wrong_type_names_file_key_and_expected_type(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "train:\n  steps: many\n")
    with pytest.raises(AbawError, match=rf"{re.escape(str(path))} line 2: 'train.steps' expects "
                                        r"int, got 'many' \(str\)"):
        resolve_config(path, [])
    with pytest.raises(AbawError, match=r"'data.hflip' expects float, got 'often'"):
        resolve_config(None, ["data.hflip=often"])
    with pytest.raises(AbawError, match=r"'data.use_unlabeled_index' expects bool, got 'yes "):
        resolve_config(None, ["data.use_unlabeled_index=yes please"])
    with pytest.raises(AbawError, match=r"'train.steps' expects int, got 2.5"):
        resolve_config(None, ["train.steps=2.5"])
    with pytest.raises(AbawError, match=r"'data.crop_scale' expects list of 2 float"):
        resolve_config(None, ["data.crop_scale=0.5"])


def test_out_of_range_and_bad_choice() -> None:
    with pytest.raises(AbawError, match=r"'optim.lr' must be > 0.0, got 0.0"):
        resolve_config(None, ["optim.lr=0"])
    with pytest.raises(AbawError, match=r"'data.labelled_fraction' must be > 0.0 and <= 1.0"):
        resolve_config(None, ["data.labelled_fraction=1.5"])
    with pytest.raises(AbawError, match=r"'data.balance' must be one of sampler, weights, none, "
                                        r"got 'weight'; did you mean 'weights'"):
        resolve_config(None, ["data.balance=weight"])
    with pytest.raises(AbawError, match=r"crop_scale.*min <= max"):
        resolve_config(None, ["data.crop_scale=[0.9, 0.5]"])
    with pytest.raises(AbawError, match=r"min_lr .* is above optim.lr"):
        resolve_config(None, ["optim.lr=0.001", "optim.min_lr=0.01"])


def test_unknown_ssl_method_and_parameter() -> None:
    with pytest.raises(AbawError, match=r"--ssl: 'ssl.method' must be one of .*dtm.*got "
                                        r"'flexmach'; did you mean 'flexmatch'"):
        resolve_config(None, [], {"ssl": "flexmach"})
    with pytest.raises(AbawError, match=r"threshold 'dtm': unknown parameter 'p_cutoff'"):
        resolve_config(None, ["ssl.params.p_cutoff=0.9"], {"ssl": "dtm"})


def test_bad_yaml_and_bad_set_syntax(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "optim:\n  lr: [0.1\n")
    with pytest.raises(AbawError, match=rf"{re.escape(str(path))} line \d+: not valid YAML"):
        resolve_config(path, [])
    with pytest.raises(AbawError, match=r"section 'optim' must be a mapping"):
        resolve_config(write(tmp_path / "d.yaml", "optim: 3\n"), [])
    with pytest.raises(AbawError, match=r"expected key=value"):
        resolve_config(None, ["optim.lr"])
    with pytest.raises(AbawError, match=r"config file .*nope.yaml not found.*demo"):
        resolve_config(tmp_path / "nope.yaml", [])


def test_save_then_load_roundtrips(tmp_path: Path) -> None:
    cfg = resolve_config("demo", ["ssl.params.gamma=0.25", "data.crop_scale=[0.7, 0.9]"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text())["ssl"]["params"]["gamma"] == 0.25


def test_default_yaml_is_rendered_from_the_dataclasses_and_documents_every_key() -> None:
    text = (CONFIG_DIR / "default.yaml").read_text()
    assert text == render_default_yaml(), "configs/default.yaml is stale: re-render it"
    assert config_to_dict(load_config(CONFIG_DIR / "default.yaml")) == config_to_dict(
        TrainConfig())
    documented = re.findall(r"^  (\w+): .*# \((\w[\w ]*)\) \S", text, flags=re.M)
    assert len(documented) == len(all_keys())
    assert "class-balanced" in text and "data.balance: sampler" in text


@pytest.mark.parametrize("name", ["none", "fixmatch", "flexmatch", "freematch", "dtm", "demo"])
def test_every_bundled_config_loads_and_names_its_method(name: str) -> None:
    cfg = resolve_config(name, [])
    assert cfg.ssl.method == ("dtm" if name == "demo" else name)


def test_demo_config_fits_a_small_cpu() -> None:
    cfg = resolve_config("demo", [])
    assert cfg.model.pretrained == "none"  # nothing to download
    assert cfg.data.input_size <= 112 and cfg.train.steps <= 1000


def test_train_config_choice_follows_ssl_flag_and_demo_workspace(tmp_path: Path) -> None:
    work = Workspace(tmp_path / "w")
    assert resolve_train_config(work, None, [], {"ssl": "flexmatch"}).ssl.method == "flexmatch"
    assert resolve_train_config(work, None, [], {}).ssl.method == "dtm"
    work.root.mkdir()
    work.source_file.write_text(json.dumps({"data_root": str(tmp_path / "demo-data"),
                                            "is_demo": True}))
    demo = resolve_train_config(work, None, [], {"ssl": "none"})
    assert demo.model.backbone == resolve_config("demo", []).model.backbone
    assert demo.ssl.method == "none" and demo.ssl.params == {}  # dtm params left with dtm


def test_resume_config_starts_from_the_saved_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    save_config(resolve_config(None, ["train.steps=123", "optim.lr=0.01"]), run_dir /
                "config.yaml")
    cfg = resolve_train_config(Workspace(tmp_path), None, ["train.steps=200"], {},
                               resume_from=run_dir)
    assert cfg.train.steps == 200 and cfg.optim.lr == 0.01


def test_moved_ssl_key_still_reads_with_a_deprecation_warning(tmp_path: Path) -> None:
    with pytest.warns(FutureWarning, match=r"'ssl.fairness_weight' is deprecated; write it as "
                                           r"'ssl.params.fairness_weight'"):
        cfg = resolve_config(None, ["ssl.fairness_weight=0.01"], {"ssl": "freematch"})
    assert cfg.ssl.params == {"fairness_weight": 0.01}
    assert resolve_config("freematch", []).ssl.params == {"fairness_weight": 0.001}
    # configs saved before the move carry the old default under every method: it did nothing
    old = write(tmp_path / "old.yaml", "ssl:\n  method: dtm\n  fairness_weight: 0.001\n")
    assert load_config(old) == TrainConfig()
    bad = write(tmp_path / "bad.yaml", "ssl:\n  method: dtm\n  fairness_weight: 0.01\n")
    with pytest.raises(AbawError, match=r"bad.yaml line 3: 'ssl.fairness_weight' is a "
                                        r"parameter of freematch only; ssl.method 'dtm' would "
                                        r"ignore it"):
        load_config(bad)
    with pytest.raises(AbawError, match=r"unknown parameter 'fairness_weight'.*freematch"):
        resolve_config(None, ["ssl.params.fairness_weight=0.01"])


def test_a_bool_is_not_a_string_except_for_pretrained(tmp_path: Path) -> None:
    with pytest.raises(AbawError, match=r"--set data.randaugment=true: 'data.randaugment' expects "
                                        r"str, got True \(bool\)"):
        resolve_config(None, ["data.randaugment=true"])
    path = write(tmp_path / "c.yaml", "train:\n  amp: off\n")  # YAML 1.1 reads off as false
    with pytest.raises(AbawError, match=rf"{re.escape(str(path))} line 2: 'train.amp' expects "
                                        r"str, got False \(bool\)"):
        resolve_config(path, [])
    # model.pretrained's own rule: true / false (YAML or --set) read as timm / none
    assert resolve_config(None, ["model.pretrained=true"]).model.pretrained == "timm"
    assert resolve_config(None, ["model.pretrained=false"]).model.pretrained == "none"
    off = write(tmp_path / "p.yaml", "model:\n  pretrained: false\n")
    assert load_config(off).model.pretrained == "none"
    assert resolve_config(None, [], {"pretrained": "imagenet"}).model.pretrained == "imagenet"


def test_a_list_of_the_wrong_length_names_the_expected_length(tmp_path: Path) -> None:
    with pytest.raises(AbawError, match=r"--set data.crop_scale=\[0.5, 0.7, 0.9\]: "
                                        r"'data.crop_scale' expects list of 2 float, got "
                                        r"\[0.5, 0.7, 0.9\] \(list of 3\)"):
        resolve_config(None, ["data.crop_scale=[0.5, 0.7, 0.9]"])
    path = write(tmp_path / "c.yaml", "data:\n  crop_scale: [0.5]\n")
    with pytest.raises(AbawError, match=rf"{re.escape(str(path))} line 2: 'data.crop_scale' "
                                        r"expects list of 2 float"):
        resolve_config(path, [])
    with pytest.raises(AbawError, match=r"--set data.crop_scale=\[0.9, 0.5\]: 'data.crop_scale' "
                                        r"must be \[min, max\] with min <= max"):
        resolve_config(None, ["data.crop_scale=[0.9, 0.5]"])


def test_renamed_key_still_reads_with_a_deprecation_warning(tmp_path: Path) -> None:
    assert resolve_config(None, ["data.use_unlabelled_index=false"]).data.use_unlabelled_index \
        is False
    with pytest.warns(FutureWarning, match=r"--set data.use_unlabeled_index=false: "
                                           r"'data.use_unlabeled_index' is deprecated; write it "
                                           r"as 'data.use_unlabelled_index'"):
        cfg = resolve_config(None, ["data.use_unlabeled_index=false"])
    assert cfg.data.use_unlabelled_index is False
    # a run saved before the rename still loads (and resumes) as it was
    saved = config_to_dict(TrainConfig())
    saved["data"] = {("use_unlabeled_index" if k == "use_unlabelled_index" else k): v
                     for k, v in saved["data"].items()}
    saved["data"]["use_unlabeled_index"] = False
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write(run_dir / "config.yaml", yaml.safe_dump(saved, sort_keys=False))
    with pytest.warns(FutureWarning, match=r"config.yaml line \d+: 'data.use_unlabeled_index' "
                                           r"is deprecated"):
        resumed = resolve_train_config(Workspace(tmp_path), None, [], {}, resume_from=run_dir)
    assert resumed.data.use_unlabelled_index is False
    assert "use_unlabeled_index" not in save_config(resumed, tmp_path / "new.yaml").read_text()
