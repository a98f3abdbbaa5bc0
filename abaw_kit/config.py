"""The typed training configuration: one source of defaults, validated on load.

Defaults live in the dataclasses below (each field carries its help text, range and choices), and
``configs/default.yaml`` is rendered from them (a test keeps the two identical). Precedence:
defaults < ``--config FILE`` < ``--set key=value`` / explicit CLI flags. Every value is checked
on load: an unknown key fails with the closest valid key, a wrong type or an out-of-range value
fails naming the file (and line), the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from abaw_kit.errors import AbawError
from abaw_kit.run_dir import RunDir
from abaw_kit.workspace import Workspace, atomic_write_text

CONFIG_DIR = Path(str(resources.files("abaw_kit") / "configs"))  # the bundled YAML files


def ssl_methods() -> tuple[str, ...]:
    """The SSL methods of the registry (abaw_kit/ssl/registry.py; read without torch)."""
    from abaw_kit.ssl.registry import available_thresholds

    return tuple(available_thresholds())


def opt(default: Any, help: str, *,
        choices: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
        min: float | None = None, max: float | None = None,
        min_open: bool = False, max_open: bool = False, length: int | None = None,
        convert: Callable[[Any], Any] | None = None,
        check: Callable[[Any], str | None] | None = None) -> Any:
    """A config field: its default, one-line help, and the allowed values / closed-open range.

    A field's own rules go here, not in the generic converter: ``length`` (a list's exact
    length), ``convert`` (maps a raw YAML value before the type check, e.g. a bool to a name)
    and ``check`` (the checked value -> what was expected when it is wrong, else None).
    """
    if choices is not None and not callable(choices):
        choices = tuple(choices)
    meta = {"help": help, "choices": choices, "min": min, "max": max, "min_open": min_open,
            "max_open": max_open, "length": length, "convert": convert, "check": check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _min_max(value: list[float]) -> str | None:
    """A [min, max] range."""
    return "[min, max] with min <= max" if value[0] > value[1] else None


def _pretrained_flag(value: Any) -> Any:
    """``pretrained: true / false`` (YAML or --set) reads as timm / none."""
    if isinstance(value, bool):
        return "timm" if value else "none"
    return value


@dataclass
class DataConfig:
    """What the network sees: labelled and unlabelled streams, views, loader workers."""

    input_size: int = opt(112, "side (pixels) the 112x112 aligned faces are resized to",
                          min=16, max=1024)
    batch_size: int = opt(64, "labelled images per step and per process", min=1)
    num_workers: int = opt(4, "DataLoader worker processes of the unlabelled stream (0 = in the "
                           "main process); see labelled_workers for the labelled one", min=0,
                           max=64)
    labelled_workers: int = opt(-1, "DataLoader worker processes of the labelled stream; -1 = "
                                "auto: 1 beside an unlabelled stream (its weak views are a small "
                                "share of a step's work), 0 when num_workers is 0, num_workers "
                                "with ssl none (the only stream)", min=-1, max=64)
    balance: str = opt("sampler", "class-imbalance remedy: sampler = class-balanced sampling, "
                       "weights = class-weighted cross-entropy, none",
                       choices=("sampler", "weights", "none"))
    balance_power: float = opt(1.0, "strength of the remedy: per-class weight count^-power "
                               "(1 = fully balanced, 0.5 = square-root, 0 = off)", min=0.0, max=1.0)
    labelled_fraction: float = opt(1.0, "few-label protocol: keep this stratified fraction of "
                                   "the labelled train frames; the rest join the unlabelled pool",
                                   min=0.0, max=1.0, min_open=True)
    use_unlabelled_index: bool = opt(True, "add the unlabelled index built by `abaw ingest` to "
                                     "the unlabelled pool")
    use_affwild_unlabelled: bool = opt(True, "add the Aff-Wild2 train frames labelled -1 (with a "
                                       "face) to the unlabelled pool")
    crop_scale: list[float] = opt([0.8, 1.0], "weak view: random-resized-crop area range "
                                  "[min, max] (fractions of the face)", min=0.05, max=1.0,
                                  length=2, check=_min_max)
    hflip: float = opt(0.5, "weak view: probability of a horizontal flip", min=0.0, max=1.0)
    randaugment: str = opt("rand-m9-n2-mstd0.5", "strong view: timm RandAugment spec "
                           "(rand-m<magnitude>-n<ops>...)")
    views: str = opt("worker", "where the weak and strong views are made: worker = PIL in the "
                     "loader workers; device = the workers only decode and draw each image's "
                     "crop, flip and RandAugment parameters (the same draws), the training step "
                     "applies them as batched tensor ops on the model's device (frees the "
                     "workers' CPU on a GPU server; bilinear where timm picks bilinear or "
                     "bicubic)", choices=("worker", "device"))


@dataclass
class ModelConfig:
    """The timm backbone with an 8-way head."""

    backbone: str = opt("resnet50", "any timm model name (timm.list_models())")
    pretrained: str = opt("timm", "initial weights: timm = timm's download (needs internet), "
                          "imagenet = torchvision's ImageNet file for mobilenetv2_100, "
                          "resnet18 or resnet50 (hub cache, offline package, else download), "
                          "none = random, or a local .safetensors / state-dict file: timm's, "
                          "or torchvision's ImageNet weights for mobilenetv2_100 and "
                          "resnet18/34/50/101/152; true / false read as timm / none",
                          convert=_pretrained_flag)
    drop_rate: float = opt(0.0, "dropout before the classifier", min=0.0, max=1.0, max_open=True)
    drop_path_rate: float = opt(0.05, "stochastic depth (models that support it)", min=0.0,
                                max=1.0, max_open=True)


@dataclass
class OptimConfig:
    """Optimiser (timm.optim), schedule (timm.scheduler) and weight EMA (timm.utils)."""

    name: str = opt("adamw", "optimiser", choices=("adamw", "sgd"))
    lr: float = opt(3e-4, "peak learning rate (after warm-up)", min=0.0, min_open=True)
    weight_decay: float = opt(0.05, "decoupled weight decay (not on biases and norms)", min=0.0)
    momentum: float = opt(0.9, "SGD momentum", min=0.0, max=1.0, max_open=True)
    warmup_steps: int = opt(500, "linear warm-up steps before the cosine decay", min=0)
    min_lr: float = opt(1e-6, "learning rate at the end of the cosine decay", min=0.0)
    clip_grad: float = opt(5.0, "gradient-norm clipping (0 = off)", min=0.0)
    label_smoothing: float = opt(0.0, "label smoothing of the supervised loss", min=0.0,
                                 max=1.0, max_open=True)
    ema_decay: float = opt(0.999, "weight EMA decay (with timm's warm-up); the EMA weights are "
                           "validated, kept as best and used by `abaw evaluate`", min=0.0,
                           max=1.0, max_open=True)


DIST_ALIGN_TARGETS = ("off", "labelled", "uniform")
"""Values of ``ssl.dist_align`` (``ssl/alignment.py``): no alignment, the labelled class
frequencies, 1/C."""


@dataclass
class SslConfig:
    """Semi-supervised learning: pseudo-labels on strong views where the threshold allows."""

    method: str = opt("dtm", f"pseudo-label method: {' | '.join(ssl_methods())} (its own "
                      "parameters go in ssl.params)", choices=ssl_methods)
    uratio: int = opt(7, "unlabelled images per labelled image in a step (mu)", min=1, max=64)
    lambda_u: float = opt(1.0, "weight of the unlabelled consistency loss", min=0.0)
    teacher: str = opt("student", "who labels the weak views: student = the network being "
                       "trained (FixMatch), ema = its weight EMA in eval mode (mean teacher: "
                       "steadier labels, and the student skips the weak forward)",
                       choices=("student", "ema"))
    dist_align: str = opt("off", "distribution alignment of the teacher's probabilities on "
                          "unlabelled images before the threshold: divided by their running "
                          "mean and multiplied by the labelled frames' class frequencies "
                          "(labelled) or by 1/C (uniform), so the teacher's class bias is not "
                          "what gets pseudo-labelled (off = none)",
                          choices=DIST_ALIGN_TARGETS)
    dist_align_momentum: float = opt(0.99, "momentum of the running mean prediction that "
                                     "dist_align divides by (0.99: about the last 100 batches)",
                                     min=0.0, max=1.0, max_open=True)
    unsup_start: int = opt(0, "supervised warm-up: steps before the unlabelled loss starts (the "
                           "unlabelled stream is not forwarded before)", min=0)
    unsup_ramp: int = opt(0, "steps over which lambda_u rises linearly from 0 after "
                          "unsup_start (0 = full weight at once)", min=0)
    unsup_balance: float = opt(0.0, "class-balance the unlabelled loss: accepted pseudo-labels "
                               "weighted count(class)^-power within the batch (1 = every class "
                               "the same total weight, 0 = off), as the labelled batches are "
                               "balanced", min=0.0, max=1.0)
    negative_weight: float = opt(0.0, "weight of selective negative learning on rejected "
                                 "images: classes the teacher gives < negative_threshold are "
                                 "complementary labels (0 = off)", min=0.0)
    negative_threshold: float = opt(0.05, "teacher probability below which a class of a "
                                    "rejected image counts as 'not this class'", min=0.0,
                                    max=1.0, min_open=True)
    unsup_logit_adjust: float = opt(0.0, "logit-adjusted unlabelled loss: the strong logits get "
                                    "+ tau * log(share of each class among accepted pseudo-"
                                    "labels) before the cross-entropy, so majority-class FR "
                                    "photos teach features, not the FR class prior (tau; 0 = "
                                    "off)", min=0.0, max=2.0)
    oracle: bool = opt(False, "diagnostic, demo only: train on the true class of each "
                       "unlabelled image instead of pseudo-labels (every image with a known "
                       "class accepted), an upper bound of what the unlabelled data can give")
    weak_no_grad: bool = opt(False, "student teacher: forward the weak views in a pass of their "
                             "own without a graph (backward then covers only the labelled and "
                             "strong rows: less memory and time). BatchNorm then normalises "
                             "the weak views with their own batch statistics, not the joint "
                             "batch's, and updates its running statistics twice a step; "
                             "ignored with teacher ema")
    params: dict[str, Any] = opt({}, "the method's own parameters (its DEFAULTS in "
                                 "abaw_kit/ssl/<method>.py), e.g. {p_cutoff: 0.9}, or "
                                 "freematch's {fairness_weight: 0.001}; unset ones keep the "
                                 "method's defaults, one the method does not have is an error; "
                                 "cleared when --ssl/--set picks another method than the file's")


SSL_MOVED_KEYS: dict[str, Any] = {"fairness_weight": 0.001}
"""``ssl.<key>`` keys that became method parameters (``ssl.params.<key>``), with the default
that every config saved before the move carries, for every method. Still read: moved into
``ssl.params`` with a deprecation warning where the method has the parameter, dropped where it
holds that old default (it never did anything there), else an error."""


@dataclass
class LoopConfig:
    """Length, precision, seeding, logging and checkpoint cadence."""

    steps: int = opt(20000, "optimiser steps", min=1)
    seed: int = opt(0, "seed of sampling, augmentation and initialisation", min=0)
    device: str = opt("auto", "auto (cuda when available, else cpu), cpu, cuda, cuda:1 ...; "
                      "under torchrun every rank takes GPU LOCAL_RANK % visible GPUs, and "
                      "cuda:N is refused when a rank sees more than one GPU")
    threads: int = opt(0, "CPU threads of the model's forward/backward (0 = torch's default); "
                       "on a small or shared CPU, fewer threads than cores leave room for the "
                       "loader workers and avoid threads spinning while they wait", min=0,
                       max=256)
    amp: str = opt("auto", "mixed precision on CUDA (CPU always runs float32): auto = bf16 "
                   "on GPUs with bf16 tensor cores (compute capability >= 8.0: A100, H100, "
                   "RTX 30xx+), fp16 with loss scaling on older ones (V100, T4), which "
                   "emulate bf16 far slower than fp16; bf16/fp16 force one, none = float32",
                   choices=("auto", "bf16", "fp16", "none"))
    channels_last: bool = opt(True, "channels-last memory format on CUDA")
    deterministic: bool = opt(False, "deterministic kernels (slower on CUDA): sets "
                              "CUBLAS_WORKSPACE_CONFIG when unset, turns cuDNN autotuning "
                              "off; train.log names the ops that have no deterministic kernel")
    log_every: int = opt(50, "steps between rows of metrics.csv", min=1)
    ckpt_every: int = opt(1000, "steps between `last` checkpoints (also written at the end)",
                          min=1)


@dataclass
class EvalConfig:
    """Validation during training: macro-F1 of the EMA weights on raw val frames with a face."""

    every: int = opt(2000, "steps between validations (0 = only at the end); the best "
                     "macro-F1 is kept as the `best` checkpoint", min=0)
    batch_size: int = opt(256, "frames per inference batch", min=1)
    num_workers: int = opt(2, "DataLoader workers for validation", min=0, max=64)
    max_frames: int = opt(0, "validate on an evenly spaced subset of this many frames "
                          "(0 = all labelled val frames with a face)", min=0)


TEMPORAL_MODELS = ("transformer", "tcn")
TEMPORAL_POSITIONAL = ("sinusoidal", "learned", "none")
TEMPORAL_CENTRE_OVER = ("window", "video")


@dataclass
class TemporalConfig:
    """`abaw train-temporal`: a sequence model over the run's frame embeddings (abaw embed)."""

    model: str = opt("transformer", "sequence network over a window of frame embeddings",
                     choices=TEMPORAL_MODELS)
    window: int = opt(128, "frames per window (128 = 4.3 s at 30 fps: a few expression "
                      "segments of one subject); clipped to the longest video", min=2, max=1024)
    stride: int = opt(32, "frames between training window starts (each epoch also shifts "
                      "every start by a random offset below the stride)", min=1)
    predict_stride: int = opt(0, "frames between window starts at validation and prediction; "
                              "overlapping outputs are averaged (0 = window / 4)", min=0)
    width: int = opt(256, "hidden width (Transformer: model dimension; TCN: channels)", min=8,
                     max=4096)
    depth: int = opt(2, "Transformer layers, or TCN blocks (receptive field 2^(depth+1)-1 "
                     "frames)", min=1, max=24)
    heads: int = opt(4, "attention heads (transformer; must divide width)", min=1, max=64)
    dropout: float = opt(0.3, "dropout inside the network", min=0.0, max=1.0, max_open=True)
    input_dropout: float = opt(0.3, "dropout on the input embeddings: the frame model has "
                               "seen the train frames, so their embeddings are cleaner than "
                               "those of new people", min=0.0, max=1.0, max_open=True)
    positional: str = opt("sinusoidal", "positional encoding of the transformer",
                          choices=TEMPORAL_POSITIONAL)
    centre: bool = opt(True, "also feed each frame's offset from the window's mean embedding "
                       "(the window is one subject: the mean carries identity, the offset "
                       "expression)")
    centre_over: str = opt("window", "the mean that `centre` subtracts: of the window's frames "
                           "with a face, or of the whole video's (one subject; a steadier "
                           "estimate of who it is than a window that may hold one long "
                           "expression)", choices=TEMPORAL_CENTRE_OVER)
    residual: bool = opt(True, "output the frame model's own logits (its classifier on each "
                         "embedding, frozen) plus a learned correction that starts at zero")
    batch_size: int = opt(32, "windows per step and per process", min=1)
    steps: int = opt(2000, "optimiser steps", min=1)
    lr: float = opt(5e-4, "peak learning rate (AdamW, warm-up then cosine)", min=0.0,
                    min_open=True)
    weight_decay: float = opt(0.05, "decoupled weight decay", min=0.0)
    warmup_steps: int = opt(100, "linear warm-up steps", min=0)
    balance_power: float = opt(1.0, "class-weighted cross-entropy over labelled frames: weight "
                               "count^-power (1 = balanced, 0 = off), as data.balance_power",
                               min=0.0, max=1.0)
    ema_decay: float = opt(0.99, "weight EMA decay; the EMA is validated and kept as best",
                           min=0.0, max=1.0, max_open=True)
    seed: int = opt(0, "seed of initialisation, window order and dropout", min=0)
    eval_every: int = opt(250, "steps between validations (0 = only at the end); the best "
                          "val macro-F1 is kept", min=0)
    log_every: int = opt(50, "steps between rows of temporal/metrics.csv", min=1)
    ckpt_every: int = opt(500, "steps between `last` checkpoints", min=1)


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved resolved as <run>/config.yaml."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ssl: SslConfig = field(default_factory=SslConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)


DEFAULTS_HEADER = """
abaw-kit training defaults: every key, its default and what it does.
Rendered from abaw_kit/config.py (the one source of defaults; a test keeps them equal).
Precedence: these defaults < --config FILE < --set key=value / CLI flags.

Class imbalance (Fear is 1.6% of the train frames): the default remedy is class-balanced
sampling (data.balance: sampler). The challenge metric is the unweighted mean of the per-class
F1, so the argmax decision should not carry the train prior; balanced batches give every class
the same number of gradient steps, and - unlike a weighted loss - they also make the weak-view
predictions on unlabelled faces less biased to Neutral/Other, so the per-class thresholds of
FlexMatch/FreeMatch/DTM do not starve the rare classes. Class-weighted cross-entropy
(data.balance: weights) is the alternative; with either, data.balance_power < 1 softens the
correction (0.5 = square-root frequencies).
"""

FLAG_KEYS = {
    "ssl": "ssl.method", "steps": "train.steps", "backbone": "model.backbone",
    "pretrained": "model.pretrained", "device": "train.device", "seed": "train.seed",
    "batch_size": "data.batch_size", "lr": "optim.lr", "workers": "data.num_workers",
}
"""Short CLI flag names -> config keys (a flag may also be given by its dotted key)."""

RESUME_MUTABLE = frozenset({"train.steps", "train.device", "train.threads", "data.num_workers",
                            "data.labelled_workers", "eval.num_workers", "eval.batch_size"})
"""Keys a resumed run may change; anything else would make the resumed run a different run."""

RENAMED_KEYS: dict[str, str] = {"data.use_unlabeled_index": "data.use_unlabelled_index"}
"""Old dotted key -> its current name. Still read (configs saved before the rename keep
loading), with a deprecation warning; an error names the key as it was written."""


# ---------------------------------------------------------------------------------------------
# Public API


def resolve_config(config_path: str | Path | None, overrides: list[str],
                   flags: Mapping[str, Any] | None = None, *,
                   base: TrainConfig | None = None) -> TrainConfig:
    """defaults (or ``base``) < config file < ``--set key=value`` and flags (None = not given).

    ``config_path`` may also name a bundled config (``dtm``, ``demo`` ...). A key given both by
    ``--set`` and by a flag with different values is an error, never a silent choice.
    """
    cfg = _copy(base) if base is not None else TrainConfig()
    if config_path is not None:
        path = find_config_file(config_path)
        text = _read_text(path)
        data = _safe_load(text, str(path))
        _apply_mapping(cfg, data, source=str(path), lines=_key_lines(text))
    explicit = _explicit_values(overrides, flags or {})
    method_before = cfg.ssl.method
    for key, (value, source) in explicit.items():
        _set_key(cfg, key, value, source=source)
    if cfg.ssl.method != method_before and not any(k.startswith("ssl.params") for k in explicit):
        cfg.ssl.params = {}  # they were written for the method the file named
    _check_consistency(cfg)
    return cfg


def resolve_train_config(work: Workspace, config: str | Path | None, overrides: list[str],
                         flags: Mapping[str, Any] | None = None, *,
                         resume_from: Path | None = None) -> TrainConfig:
    """What ``abaw train`` uses: picks the config file when none is given.

    ``resume_from`` (a run folder): start from that run's saved config, so ``--resume`` alone
    continues the run as it was. Otherwise without ``--config``: the config the workspace's
    source record names (``demo.yaml`` on the demo), else ``configs/<ssl>.yaml``.
    """
    flags = dict(flags or {})
    if resume_from is not None:
        base = load_config(RunDir(resume_from).config)
        return resolve_config(config, overrides, flags, base=base)
    if config is None:
        record = work.read_source()
        config = (record.default_config if record else None) or str(
            flags.get("ssl") or flags.get("ssl.method") or SslConfig.method)
        if not (CONFIG_DIR / f"{config}.yaml").is_file():
            config = None  # an unknown --ssl name is reported by validation below
    return resolve_config(config, overrides, flags)


def load_config(path: str | Path) -> TrainConfig:
    """A saved (or hand-written) config file on top of the defaults."""
    return resolve_config(Path(path), [])


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically), loadable by ``load_config``."""
    text = "# resolved training config (defaults < --config < --set/flags)\n"
    text += yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    atomic_write_text(path, text)
    return Path(path)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (YAML/JSON ready)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_diff(old: TrainConfig, new: TrainConfig) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every leaf that differs."""
    flat_old, flat_new = _flatten(config_to_dict(old)), _flatten(config_to_dict(new))
    return [(key, flat_old.get(key), flat_new.get(key))
            for key in sorted(set(flat_old) | set(flat_new))
            if flat_old.get(key) != flat_new.get(key)]


def changed_keys(old: TrainConfig, new: TrainConfig, allowed: Callable[[str], bool]) -> str:
    """"key: old -> new; ..." (at most three) for the keys that differ and ``allowed`` does
    not accept; "" when there are none: what a resume or a fixed-run refusal shows."""
    changed = [(k, a, b) for k, a, b in config_diff(old, new) if not allowed(k)]
    return "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changed[:3])


def find_config_file(name: str | Path) -> Path:
    """A path, or the name of a bundled config (``dtm``, ``demo.yaml``)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    bundled = CONFIG_DIR / f"{stem}.yaml"
    if path.parent == Path(".") and bundled.is_file():
        return bundled
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise AbawError(f"config file {path} not found; pass a YAML path or one of the bundled "
                    f"configs: {', '.join(names)}")


def all_keys() -> list[str]:
    """Every dotted key, in declaration order."""
    sections = _hints(TrainConfig)
    return [f"{name}.{leaf.name}" for name, cls in sections.items() for leaf in fields(cls)]


def render_default_yaml() -> str:
    """``configs/default.yaml``: every key with its default and ``# (type) description``."""
    lines = [f"# {line}".rstrip() for line in DEFAULTS_HEADER.strip().splitlines()]
    hints = _hints(TrainConfig)
    for section in fields(TrainConfig):
        section_cls = hints[section.name]
        lines += ["", f"{section.name}:  # {section_cls.__doc__}"]
        for leaf in fields(section_cls):
            value = yaml.safe_dump(getattr(section_cls(), leaf.name), default_flow_style=True)
            value = value.strip().removesuffix("...").strip()
            kind = _type_name(_hints(section_cls)[leaf.name], leaf.metadata)
            lines.append(f"  {leaf.name}: {value}  # ({kind}) {_describe(leaf)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Loading and validation


def _copy(cfg: TrainConfig) -> TrainConfig:
    return _build(config_to_dict(cfg))


def _build(data: Mapping[str, Any]) -> TrainConfig:
    hints = _hints(TrainConfig)
    return TrainConfig(**{name: hints[name](**data[name]) for name in data})


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AbawError(f"cannot read config file {path}: {exc}") from exc


def _safe_load(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise AbawError(f"{source}{where}: not valid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AbawError(f"{source}: expected a mapping of sections (data:, model:, ...), "
                        f"got {type(data).__name__}")
    return data


def _key_lines(text: str) -> dict[str, int]:
    """Dotted key -> 1-based line in the YAML text (for error messages); best effort."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    found: dict[str, int] = {}

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            found[key] = key_node.start_mark.line + 1
            walk(value_node, key + ".")

    walk(root, "")
    return found


def _apply_mapping(cfg: TrainConfig, data: Mapping[str, Any], *, source: str,
                   lines: Mapping[str, int]) -> None:
    for section_name, section_data in data.items():
        section_name = str(section_name)
        where = _where(source, lines, section_name)
        if _section_class(section_name) is None:
            raise _unknown_key(section_name, where)
        if not isinstance(section_data, dict):
            raise AbawError(f"{where}: section '{section_name}' must be a mapping of keys, "
                            f"got {section_data!r}")
        for key, value in section_data.items():
            dotted = f"{section_name}.{key}"
            _set_key(cfg, dotted, value, source=_where(source, lines, dotted))


def _where(source: str, lines: Mapping[str, int], key: str) -> str:
    line = lines.get(key)
    return f"{source} line {line}" if line else source


def _explicit_values(overrides: list[str],
                     flags: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    """--set values (a repeated key: the last wins) and flags, by dotted key.

    A flag and a --set that set the same key to different values is an error.
    """
    explicit: dict[str, tuple[Any, str]] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise AbawError(f"--set '{item}': expected key=value, e.g. --set optim.lr=0.001")
        explicit[key] = (_parse_override_value(raw, item), f"--set {item}")
    for name, value in flags.items():
        if value is None:
            continue
        key = FLAG_KEYS.get(name, name)
        source = f"--{name.replace('_', '-')}"
        if key in explicit and explicit[key][0] != value:
            raise AbawError(f"{source} {value} conflicts with {explicit[key][1]} (both set "
                            f"'{key}'); give it once")
        explicit[key] = (value, source)
    return explicit


def _parse_override_value(raw: str, item: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise AbawError(f"--set '{item}': the value is not valid YAML") from None


def _set_key(cfg: TrainConfig, key: str, value: Any, *, source: str) -> None:
    written, key = key, _current_key(key, source)
    section_name, _, leaf_name = key.partition(".")
    section_cls = _section_class(section_name)
    if section_cls is None:
        raise _unknown_key(key, source)
    if section_name == "ssl" and (leaf_name.startswith("params.") or leaf_name in SSL_MOVED_KEYS):
        _set_ssl_param(cfg.ssl, leaf_name, value, source)
        return
    leaf = {f.name: f for f in fields(section_cls)}.get(leaf_name)
    if leaf is None:
        raise _unknown_key(key, source)
    expected = _hints(section_cls)[leaf_name]
    checked = _check_value(written, value, expected, leaf, source)
    setattr(getattr(cfg, section_name), leaf_name, checked)


def _current_key(key: str, source: str) -> str:
    """``key`` under its current name (``RENAMED_KEYS``), warning where it was renamed."""
    new = RENAMED_KEYS.get(key)
    if new is None:
        return key
    _warn_deprecated(source, key, new)
    return new


def _warn_deprecated(source: str, old: str, new: str, why: str = "") -> None:
    """The one deprecation notice of a key that still reads under an old name or place."""
    import warnings

    warnings.warn(f"{source}: '{old}' is deprecated; write it as '{new}'{why}", FutureWarning,
                  stacklevel=4)


def _set_ssl_param(ssl: SslConfig, leaf: str, value: Any, source: str) -> None:
    """``ssl.params.<name>``, or a key of ``SSL_MOVED_KEYS`` (kept for ``_check_ssl_params``,
    which knows the final method)."""
    if leaf in SSL_MOVED_KEYS:
        vars(ssl).setdefault("_moved", {})[leaf] = (value, source)
        return
    name = leaf.removeprefix("params.")
    if not name or "." in name:
        raise AbawError(f"{source}: 'ssl.params.{name}' is not a threshold parameter name")
    if not _is_param_value(value):
        raise AbawError(f"{source}: 'ssl.params.{name}' expects a number, bool, string or a "
                        f"list of numbers, got {value!r}")
    ssl.params = {**ssl.params, name: value}


def _unknown_key(key: str, source: str) -> AbawError:
    keys = all_keys()
    leaves: dict[str, str] = {}
    for known in keys:  # a leaf in several sections (steps, lr): the first declared
        leaves.setdefault(known.rpartition(".")[2], known)
    leaf = key.rpartition(".")[2]
    close = [leaves[leaf]] if leaf in leaves else difflib.get_close_matches(key, keys, n=1,
                                                                             cutoff=0.6)
    if not close:  # a misspelt leaf, with or without its section
        near = difflib.get_close_matches(leaf, leaves, n=1, cutoff=0.7)
        close = [leaves[near[0]]] if near else []
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return AbawError(f"{source}: unknown config key '{key}'{hint} (all keys: configs/default.yaml)")


def _check_value(key: str, value: Any, expected: Any, leaf: dataclasses.Field,
                 source: str) -> Any:
    """``value`` for the field: its own ``convert``, the type, ``length``, choices, range and
    its own ``check`` (see ``opt``); anything wrong is one line naming source, key, expectation."""
    meta = leaf.metadata
    raw = meta["convert"](value) if meta.get("convert") else value
    converted = _convert(raw, expected)
    length = meta.get("length")
    if converted is _INVALID or (length is not None and len(converted) != length):
        raise AbawError(f"{source}: '{key}' expects {_type_name(expected, meta)}, got "
                        f"{value!r} ({_kind(value)})")
    items = converted if isinstance(converted, list) else [converted]
    choices = _choices(meta)
    if choices and converted not in choices:
        close = difflib.get_close_matches(str(converted), [str(c) for c in choices], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise AbawError(f"{source}: '{key}' must be one of {', '.join(map(str, choices))}"
                        f", got {converted!r}{hint}")
    for item in items:
        if isinstance(item, (int, float)) and not _in_range(item, meta):
            raise AbawError(f"{source}: '{key}' must be {_range_text(meta)}, got {item!r}")
    wanted = meta["check"](converted) if meta.get("check") else None
    if wanted:
        raise AbawError(f"{source}: '{key}' must be {wanted}, got {converted!r}")
    return converted


def _kind(value: Any) -> str:
    """What a wrong value is, for messages: its type, and a list's length."""
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


_INVALID = object()
_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _convert(value: Any, expected: Any) -> Any:
    """``value`` as ``expected`` (bool, int, float, str, list[float], dict) or _INVALID."""
    origin = get_origin(expected)
    if origin in (Union, types.UnionType):
        for option in get_args(expected):
            converted = _convert(value, option)
            if converted is not _INVALID:
                return converted
        return _INVALID
    if expected is bool:
        return value if isinstance(value, bool) else _INVALID
    if expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return value if ok else _INVALID
    if expected is float:
        if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 as a string
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        return _INVALID
    if expected is str:
        return value if isinstance(value, str) and value.strip() else _INVALID
    if origin is list:
        (item_type,) = get_args(expected)
        if not isinstance(value, (list, tuple)):
            return _INVALID
        items = [_convert(v, item_type) for v in value]
        return _INVALID if any(v is _INVALID for v in items) else items
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return _INVALID
        return dict(value) if all(_is_param_value(v) for v in value.values()) else _INVALID
    return _INVALID


def _is_param_value(value: Any) -> bool:
    """A threshold parameter: a scalar, or a list of numbers (e.g. DTM's class_prior)."""
    if isinstance(value, list):
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return isinstance(value, (bool, int, float, str, type(None)))


def _choices(meta: Mapping[str, Any]) -> tuple[Any, ...]:
    choices = meta.get("choices")
    return tuple(choices()) if callable(choices) else tuple(choices or ())


def _in_range(value: float, meta: Mapping[str, Any]) -> bool:
    low, high = meta.get("min"), meta.get("max")
    if low is not None and (value < low or (meta.get("min_open") and value == low)):
        return False
    return not (high is not None and (value > high or (meta.get("max_open") and value == high)))


def _range_text(meta: Mapping[str, Any]) -> str:
    parts = []
    if meta.get("min") is not None:
        parts.append(f"{'>' if meta.get('min_open') else '>='} {meta['min']}")
    if meta.get("max") is not None:
        parts.append(f"{'<' if meta.get('max_open') else '<='} {meta['max']}")
    return " and ".join(parts)


def _check_consistency(cfg: TrainConfig) -> None:
    """Rules that involve more than one key."""
    if cfg.optim.min_lr > cfg.optim.lr:
        raise AbawError(f"optim.min_lr ({cfg.optim.min_lr}) is above optim.lr ({cfg.optim.lr})")
    temporal = cfg.temporal
    if temporal.model == "transformer" and temporal.width % temporal.heads:
        raise AbawError(f"temporal.width ({temporal.width}) must be a multiple of "
                        f"temporal.heads ({temporal.heads})")
    if temporal.stride > temporal.window or temporal.predict_stride > temporal.window:
        raise AbawError(f"temporal.stride ({temporal.stride}) and temporal.predict_stride "
                        f"({temporal.predict_stride}) must not exceed temporal.window "
                        f"({temporal.window}): frames between windows would get no output")
    _check_ssl_params(cfg.ssl)


def _check_ssl_params(ssl: SslConfig) -> None:
    """Threshold parameters are validated by the method itself (unknown names, types)."""
    _apply_moved_ssl_keys(ssl)
    if not ssl.params:
        return
    from abaw_kit.ssl import make_threshold

    make_threshold(ssl.method, 8, num_unlabeled=1, **ssl.params)


def _apply_moved_ssl_keys(ssl: SslConfig) -> None:
    """The ``SSL_MOVED_KEYS`` given as ``ssl.<key>``, now that the method is known."""
    moved: dict[str, tuple[Any, str]] = vars(ssl).pop("_moved", {})
    if not moved:
        return
    from abaw_kit.ssl.registry import parameter_owners, threshold_class

    for key, (value, source) in moved.items():
        if key in threshold_class(ssl.method).DEFAULTS:
            _warn_deprecated(source, f"ssl.{key}", f"ssl.params.{key}",
                             f" (a parameter of {ssl.method})")
            ssl.params = {key: value, **ssl.params}  # an explicit ssl.params.<key> wins
        elif value != SSL_MOVED_KEYS[key]:
            owners = ", ".join(parameter_owners(key))
            raise AbawError(f"{source}: 'ssl.{key}' is a parameter of {owners} only; ssl.method "
                            f"'{ssl.method}' would ignore it (remove it, or pick {owners})")


def _section_class(name: str) -> type | None:
    cls = _hints(TrainConfig).get(name)
    return cls if is_dataclass(cls) else None


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _type_name(expected: Any, meta: Mapping[str, Any] | None = None) -> str:
    origin = get_origin(expected)
    if origin is list:
        length = (meta or {}).get("length")
        return f"list of {f'{length} ' if length else ''}{get_args(expected)[0].__name__}"
    if origin is dict:
        return "mapping"
    return getattr(expected, "__name__", str(expected))


def _describe(leaf: dataclasses.Field) -> str:
    meta = leaf.metadata
    text = meta["help"]
    if meta.get("choices") and not callable(meta["choices"]):
        text += f"; one of: {', '.join(map(str, meta['choices']))}"
    elif meta.get("min") is not None or meta.get("max") is not None:
        text += f"; {_range_text(meta)}"
    return text


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and not (prefix == "ssl." and key == "params"):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
