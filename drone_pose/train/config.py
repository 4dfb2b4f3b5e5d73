"""Experiment configuration: typed dataclasses loaded strictly from YAML plus `key=value` overrides.

Unknown keys, wrong types and impossible values fail before training starts, with a message that
names the key (e.g. `loss.kind`). Defaults are the study's: Adam lr 1e-4, betas (0.9, 0.999), no
weight decay, seed 1989, batch 24, 44 epochs, heatmaps at 1/4 resolution with sigma 2.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from drone_pose.errors import UserError
from drone_pose.nets.flip import FLIP_TEST_MODES

HEATMAP_LOSSES = ("l1", "mse", "kl")
LOSS_KINDS = ("heatmap", "mixture", "pose")
PNP_LAYERS = ("bpnp_exact", "bpnp_gauss_newton", "epnp")
METRICS = ("ACC5", "ADD5", "ACC2", "ADD2", "Proj5", "Proj2", "keypoint_px", "mask_IoU")


class ConfigError(UserError):
    """A training configuration that cannot be used; the message names the key."""


@dataclass(frozen=True)
class DataConfig:
    """Training data: a `drone-pose synth` folder (path) or a UAVA root (uava_root + drone)."""

    path: str | None = None
    uava_root: str | None = None
    drone: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    max_train_samples: int | None = None
    max_val_samples: int | None = None
    augment: bool = True
    crop: tuple[int, int] | None = None  # train on (width, height) windows around the drone
    mirror: float = 0.0  # share of training samples flipped left-right (mirror-symmetric drones)
    workers: int = 2


@dataclass(frozen=True)
class LossConfig:
    """kind: heatmap (l_h), mixture (l_h + beta l_proj) or pose (l_reg + l_proj); heatmap: l1, mse
    or kl; pnp: the pose layer; heatmap_only_epochs: first phase trained with l_h alone (Table 5)."""

    kind: str = "heatmap"
    heatmap: str = "l1"
    beta: float = 1e-5
    pnp: str = "bpnp_exact"
    heatmap_only_epochs: int = 0
    sigma: float = 2.0
    foreground_weight: float = 0.0  # l1/mse pixels weighted by 1 + w * target (0: the study's loss)


@dataclass(frozen=True)
class OptimConfig:
    """Adam. schedule: constant (the study) or cosine (lr decays to 0 over the epochs)."""

    lr: float = 1e-4
    schedule: str = "constant"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0


@dataclass(frozen=True)
class ZoomConfig:
    """The estimator's zoomed second pass (drone_pose.nets.zoom). probability > 0: that share of
    training samples is zoomed like the second pass, validation runs the second pass, and the
    checkpoint asks the estimator for it. target_px: drone size (keypoint box diagonal, network px)."""

    probability: float = 0.0
    target_px: float = 110.0
    max_zoom: float = 3.0


@dataclass(frozen=True)
class SWAConfig:
    """Stochastic weight averaging (torch.optim.swa_utils). start_epoch > 0: the weights at the end
    of that epoch (1-based) and of every later one are averaged; after the last epoch the average
    gets its BatchNorm statistics recomputed on bn_batches training batches (None: one epoch's
    worth), is validated and is saved as swa.pt beside best.pt. Pair it with a constant learning
    rate (optim.schedule constant) so that the averaged weights differ."""

    start_epoch: int = 0
    bn_batches: int | None = None


@dataclass(frozen=True)
class MaskConfig:
    """The silhouette head of a network with mask_head: true (drone_pose.nets.mask_head). weight:
    of its loss, binary cross-entropy between its logits and the sample's full mask area-averaged
    to the heatmap grid; head_only: train the head alone, everything else frozen (weights and
    BatchNorm statistics), so that a checkpoint given as init keeps its keypoint heatmaps bit for
    bit (the heatmap and pose losses are then not computed)."""

    weight: float = 1.0
    head_only: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """One experiment. network: a preset name (drone_pose.nets.build.PRESETS) or a config mapping."""

    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    network: str | dict[str, Any] = "hrnet_lite"
    init: str | None = None  # a drone_pose checkpoint whose weights start the run (fine-tuning)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    zoom: ZoomConfig = field(default_factory=ZoomConfig)
    swa: SWAConfig = field(default_factory=SWAConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    seed: int = 1989
    epochs: int = 44
    batch_size: int = 24
    metric: str = "ACC5"  # best.pt selection; keypoint_px (mean error, lower is better) also allowed
    amp: bool = True  # CUDA: float16 autocast with gradient scaling
    cpu_bf16: bool = False  # CPU: bfloat16 autocast (faster where the CPU has AVX512-BF16 or AMX)
    channels_last: bool = True  # NHWC memory format for the network's training steps
    # validation and the checkpoint's input.flip_test: off, zoom or all (drone_pose.nets.flip)
    flip_test: str = "off"
    output: str = "runs"
    log_every: int = 10

    def run_dir(self) -> Path:
        return Path(self.output) / self.name


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The TrainConfig of a YAML file (or the defaults) with `a.b=value` overrides (YAML values)."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from error
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r} must look like key.sub=value")
        target = raw
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {override!r}: {part} is not a section")
        target[parts[-1]] = yaml.safe_load(value)
    config = _build(TrainConfig, raw, "")
    validate(config)
    return config


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain dict of a config (for YAML, logs and checkpoints)."""
    return _plain(dataclasses.asdict(config))


def validate(config: TrainConfig) -> None:
    """Value checks beyond types; ConfigError naming the key."""
    checks = [
        ("loss.kind", config.loss.kind in LOSS_KINDS, f"one of {LOSS_KINDS}"),
        ("loss.heatmap", config.loss.heatmap in HEATMAP_LOSSES, f"one of {HEATMAP_LOSSES}"),
        ("loss.pnp", config.loss.pnp in PNP_LAYERS, f"one of {PNP_LAYERS}"),
        ("loss.beta", config.loss.beta >= 0, "a non-negative number"),
        ("loss.sigma", config.loss.sigma > 0, "positive"),
        ("loss.heatmap_only_epochs", config.loss.heatmap_only_epochs >= 0, "a non-negative integer"),
        ("optim.lr", config.optim.lr > 0, "positive"),
        ("optim.schedule", config.optim.schedule in ("constant", "cosine"), "constant or cosine"),
        ("optim.betas", all(0 <= b < 1 for b in config.optim.betas), "two numbers in [0, 1)"),
        ("optim.weight_decay", config.optim.weight_decay >= 0, "non-negative"),
        ("epochs", config.epochs >= 1, "at least 1"),
        ("batch_size", config.batch_size >= 1, "at least 1"),
        ("metric", config.metric in METRICS, f"one of {METRICS}"),
        ("data.workers", config.data.workers >= 0, "non-negative"),
        ("data.crop", config.data.crop is None or min(config.data.crop) >= 16, "a (width, height) >= 16 px"),
        ("data.mirror", 0 <= config.data.mirror <= 1, "in [0, 1]"),
        ("data.mirror", config.data.mirror == 0 or config.data.augment, "0 when data.augment is false"),
        ("loss.foreground_weight", config.loss.foreground_weight >= 0, "non-negative"),
        ("log_every", config.log_every >= 1, "at least 1"),
        ("zoom.probability", 0 <= config.zoom.probability <= 1, "in [0, 1]"),
        ("zoom.target_px", config.zoom.target_px > 0, "positive"),
        ("zoom.max_zoom", config.zoom.max_zoom >= 1, "at least 1"),
        ("swa.start_epoch", 0 <= config.swa.start_epoch <= config.epochs, "in [0, epochs] (0: off)"),
        ("flip_test", config.flip_test in FLIP_TEST_MODES, f"one of {FLIP_TEST_MODES}"),
        (
            "flip_test",
            config.flip_test != "zoom" or config.zoom.probability > 0,
            "off or all when the run does not train for the second pass (zoom.probability 0)",
        ),
        ("swa.bn_batches", config.swa.bn_batches is None or config.swa.bn_batches >= 1, "at least 1"),
        ("mask.weight", config.mask.weight >= 0, "non-negative"),
        ("mask.head_only", not config.mask.head_only or config.init is not None, "false without init"),
        (
            "mask.head_only",
            not config.mask.head_only or config.swa.start_epoch == 0,
            "false with swa (recomputing the averaged BatchNorm statistics would change the frozen layers)",
        ),
    ]
    for key, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{key} must be {expected}")
    data = config.data
    if (data.path is None) == (data.uava_root is None):
        raise ConfigError("data: set exactly one of data.path (synthetic dataset) or data.uava_root")
    root = Path(data.path or data.uava_root)
    if not root.is_dir():
        key = "data.path" if data.path is not None else "data.uava_root"
        raise ConfigError(f"{key}: dataset folder not found: {root}")
    if data.uava_root is not None and not data.drone:
        raise ConfigError("data.drone must name the drone model when data.uava_root is used")
    if config.init is not None and not Path(config.init).is_file():
        raise ConfigError(f"init: checkpoint not found: {config.init}")
    for key in ("max_train_samples", "max_val_samples"):
        value = getattr(data, key)
        if value is not None and value < 1:
            raise ConfigError(f"data.{key} must be at least 1")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown key {prefix}{key}; known: {', '.join(sorted(known))}")
    values = {key: _coerce(hints[key], value, f"{prefix}{key}") for key, value in raw.items()}
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{key}.")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key} has the wrong type: {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key} must be a number, got {value!r}") from None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
