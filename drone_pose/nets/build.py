"""Build keypoint networks by preset name or from a configuration (dict or YAML file).

A configuration names the architecture and its fields, e.g.
    architecture: hrnet
    heatmaps: 9
    higher: true
    stages:
      - {modules: 1, blocks: [4, 4], channels: [48, 96]}
      - {modules: 4, blocks: [4, 4, 4], channels: [48, 96, 192]}
A mapping may start from a preset and change some of its fields, e.g. a preset with the silhouette
head (drone_pose.nets.mask_head): {preset: hrnet_lite, mask_head: true}.
Unknown keys and wrong types fail with a message naming the key.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from drone_pose.errors import UserError
from drone_pose.nets.hourglass import HourglassConfig, StackedHourglass
from drone_pose.nets.hrnet import HRNet, HRNetConfig, StageConfig


def _w(
    width: int, stages: int, modules: tuple[int, ...] = (1, 4, 3), blocks: int = 4
) -> tuple[StageConfig, ...]:
    """HRNet stages 2..(stages+1) of the given width: branch channels w, 2w, 4w, 8w."""
    return tuple(
        StageConfig(modules[i], (blocks,) * (i + 2), tuple(width * 2**b for b in range(i + 2)))
        for i in range(stages)
    )


PRESETS: dict[str, dict[str, Any]] = {
    # The reproduction study's HRNet-W48: 3 stages (stage 2: 1 unit, stage 3: 4 units), 9 heatmaps at 1/4.
    "hrnet_w48": {"architecture": "hrnet", "heatmaps": 9, "stages": _w(48, 2)},
    "higher_hrnet_w48": {"architecture": "hrnet", "heatmaps": 9, "stages": _w(48, 2), "higher": True},
    # The original 4-stage COCO HigherHRNet-W48 (17 joints + 17 tag maps), for fidelity checks only.
    "higher_hrnet_w48_coco": {
        "architecture": "hrnet",
        "heatmaps": 17,
        "tag_maps": 17,
        "stages": _w(48, 3),
        "higher": True,
    },
    "hourglass": {"architecture": "hourglass", "heatmaps": 9, "stacks": 2, "depth": 4, "features": 128},
    # Light configurations for CPU-only machines (0.54 M and 0.55 M parameters).
    "hourglass_lite": {"architecture": "hourglass", "heatmaps": 9, "stacks": 2, "depth": 4, "features": 64},
    "hrnet_lite": {
        "architecture": "hrnet",
        "heatmaps": 9,
        "stem_channels": 32,
        "stem_planes": 16,
        "stem_blocks": 1,
        "stages": (StageConfig(1, (2, 2), (16, 32)), StageConfig(2, (2, 2, 2), (16, 32, 64))),
    },
    # hrnet_lite at twice the width (2.17 M parameters).
    "hrnet_small": {
        "architecture": "hrnet",
        "heatmaps": 9,
        "stem_channels": 64,
        "stem_planes": 32,
        "stem_blocks": 1,
        "stages": (StageConfig(1, (2, 2), (32, 64)), StageConfig(2, (2, 2, 2), (32, 64, 128))),
    },
}


class NetworkConfigError(UserError):
    """A network configuration that names an unknown architecture, key or value."""


def network_config(name_or_config: str | Path | dict[str, Any]) -> dict[str, Any]:
    """The configuration dict of a preset name, a YAML file path or a dict (validated)."""
    if isinstance(name_or_config, dict):
        config = dict(name_or_config)
    elif isinstance(name_or_config, (str, Path)) and str(name_or_config) in PRESETS:
        config = dict(PRESETS[str(name_or_config)])
    elif Path(name_or_config).suffix in (".yaml", ".yml"):
        path = Path(name_or_config)
        if not path.is_file():
            raise NetworkConfigError(f"network config file not found: {path}")
        config = yaml.safe_load(path.read_text())
        if not isinstance(config, dict):
            raise NetworkConfigError(f"{path}: expected a mapping")
    else:
        raise NetworkConfigError(f"unknown network {name_or_config!r}; presets: {', '.join(PRESETS)}")
    if "preset" in config:  # a preset with some fields changed
        preset = config.pop("preset")
        if not isinstance(preset, str) or preset not in PRESETS:
            raise NetworkConfigError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        config = {**PRESETS[preset], **config}
    _config_dataclass(config)  # validates
    return config


def _config_dataclass(config: dict[str, Any]) -> HRNetConfig | HourglassConfig:
    fields = dict(config)
    architecture = fields.pop("architecture", None)
    classes = {"hrnet": HRNetConfig, "hourglass": HourglassConfig}
    if architecture not in classes:
        raise NetworkConfigError(f"architecture must be one of {', '.join(classes)}, got {architecture!r}")
    cls = classes[architecture]
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in fields.items():
        if key not in known:
            raise NetworkConfigError(
                f"unknown key {key!r} for architecture {architecture}; known: {', '.join(known)}"
            )
        if key == "stages":
            continue
        expected = {int: int, bool: bool}.get(type(known[key].default))
        if known[key].default is None and value is not None and not isinstance(value, int):
            raise NetworkConfigError(f"{key} must be an integer, got {value!r}")
        if expected is int and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise NetworkConfigError(f"{key} must be a positive integer, got {value!r}")
        if expected is bool and not isinstance(value, bool):
            raise NetworkConfigError(f"{key} must be true or false, got {value!r}")
    if architecture == "hrnet":
        if "stages" not in fields:
            raise NetworkConfigError("hrnet config needs 'stages'")
        fields["stages"] = tuple(_stage(stage, index) for index, stage in enumerate(fields["stages"]))
    return cls(**fields)


def _stage(stage: Any, index: int) -> StageConfig:
    if isinstance(stage, StageConfig):
        return stage
    if not isinstance(stage, dict) or set(stage) != {"modules", "blocks", "channels"}:
        raise NetworkConfigError(f"stages[{index}] must have exactly the keys modules, blocks, channels")
    blocks, channels = tuple(stage["blocks"]), tuple(stage["channels"])
    if len(blocks) != len(channels) or len(channels) != index + 2:
        raise NetworkConfigError(f"stages[{index}] needs {index + 2} branches in blocks and channels")
    values = (stage["modules"], *blocks, *channels)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise NetworkConfigError(f"stages[{index}] values must be positive integers")
    return StageConfig(stage["modules"], blocks, channels)


def preset_name(name_or_config: str | Path | dict[str, Any]) -> str | None:
    """The preset that a network name, YAML path or mapping describes, or None for a custom one."""
    config = _config_dataclass(network_config(name_or_config))
    return next((name for name, preset in PRESETS.items() if _config_dataclass(preset) == config), None)


def build_network(name_or_config: str | Path | dict[str, Any]) -> nn.Module:
    """A keypoint network: images [B,3,H,W] (normalised RGB) -> list of heatmaps, finest last (with
    mask_head: true, the finest with the silhouette logits as its last channel)."""
    config = _config_dataclass(network_config(name_or_config))
    return HRNet(config) if isinstance(config, HRNetConfig) else StackedHourglass(config)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of a model."""
    return sum(p.numel() for p in model.parameters())
