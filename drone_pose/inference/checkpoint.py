"""Self-describing checkpoints: weights plus everything needed to use them.

A checkpoint is a dict saved with torch.save and loaded with weights_only=True (a checkpoint is
untrusted input; no pickled code). Fields:
    format: "drone_pose.checkpoint", version: 1
    network: network configuration (drone_pose.nets.build), plain types only
    drone: {name, keypoint_names, keypoints [K][3] metres, diagonal_m}
    input: {width, height, mean [3], std [3]} (RGB in [0, 1], normalised by mean/std), and
        optionally zoom: {target_px, max_zoom[, window [width, height]]}, the zoomed second pass
        the network was trained for (drone_pose.nets.zoom), and flip_test: "off" | "zoom" | "all"
        (drone_pose.nets.flip; absent: off)
    heatmaps: {sigma} (std of the training target Gaussians, heatmap pixels)
    training: free-form summary (data, epochs, hardware, timings); metrics: evaluation table
    pose_covariance (optional): {translation, rotation, samples}, variance scales for the PnP
        covariance fitted on validation data (drone_pose.geometry.pose_covariance); absent: 1
    state_dict: network weights
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from drone_pose.atomic_files import write_bytes
from drone_pose.errors import UserError
from drone_pose.geometry.pose_covariance import CovarianceScales
from drone_pose.nets.build import NetworkConfigError, build_network, network_config
from drone_pose.nets.flip import validate_flip_test
from drone_pose.nets.hrnet import StageConfig
from drone_pose.nets.predictor import IMAGENET_MEAN, IMAGENET_STD
from drone_pose.nets.zoom import ZoomSettings

ZOOM_NUMBERS = ("target_px", "max_zoom")  # input.zoom's numeric entries

FORMAT = "drone_pose.checkpoint"
VERSION = 1
DEFAULT_DRONE = "m2ed"
# The shipped checkpoint of each built-in drone, in models/checkpoints (a model card next to each).
SHIPPED_CHECKPOINTS = {"m2ed": "m2ed_hrnet_lite.pt", "tello": "tello_hrnet_small.pt"}


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, or whose contents do not describe a usable model."""


def plain_network_config(name_or_config: str | Path | dict[str, Any]) -> dict[str, Any]:
    """The network configuration with StageConfig objects turned into plain dicts (serialisable)."""
    config = dict(network_config(name_or_config))
    if "stages" in config:
        config["stages"] = [
            {"modules": s.modules, "blocks": list(s.blocks), "channels": list(s.channels)}
            if isinstance(s, StageConfig)
            else s
            for s in config["stages"]
        ]
    return config


def make_checkpoint(
    network: nn.Module,
    network_spec: str | dict[str, Any],
    drone: Any,
    input_size: tuple[int, int],
    heatmap_sigma: float = 2.0,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    zoom: dict[str, Any] | None = None,
    covariance_scales: CovarianceScales | None = None,
    flip_test: str = "off",
) -> dict[str, Any]:
    """A checkpoint dict for `network` built from `network_spec`, trained for `drone` (a DroneModel).

    zoom: {target_px, max_zoom[, window]} of the zoomed second pass the network was trained for
    (stored as input.zoom; the estimator runs it by default), or None. covariance_scales: fitted on
    validation data (stored as pose_covariance; the estimator applies them), or None. flip_test:
    the network passes the estimator averages with their mirror image (input.flip_test).
    """
    width, height = input_size
    checkpoint = {
        "format": FORMAT,
        "version": VERSION,
        "network": plain_network_config(network_spec),
        "drone": {
            "name": drone.name,
            "keypoint_names": list(drone.keypoint_names),
            "keypoints": drone.keypoints.tolist(),
            "diagonal_m": float(drone.diagonal),
        },
        "input": {
            "width": int(width),
            "height": int(height),
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "heatmaps": {"sigma": float(heatmap_sigma)},
        "training": training or {},
        "metrics": metrics or {},
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
    }
    if zoom is not None:
        checkpoint["input"]["zoom"] = ZoomSettings.from_dict(zoom).to_dict()
    if flip_test != "off":
        checkpoint["input"]["flip_test"] = flip_test
    if covariance_scales is not None:
        checkpoint["pose_covariance"] = covariance_scales.to_dict()
    return checkpoint


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Validate and write a checkpoint, whole or not at all (drone_pose.atomic_files); returns the path."""
    validate_checkpoint(checkpoint, str(path))
    path = Path(path)
    write_torch(checkpoint, path)
    return path


def write_torch(document: Any, path: str | Path) -> Path:
    """torch.save of `document` to `path`, whole or not at all: serialised in memory, then written
    by Python (a full disk is an OSError naming `path`; torch's own writer reports it as a bare
    RuntimeError) through drone_pose.atomic_files."""
    buffer = io.BytesIO()
    torch.save(document, buffer)
    return write_bytes(path, buffer.getbuffer())


def _load_failure(error: Exception) -> str:
    """torch.load's reason in one short line: for a weights-only refusal the unpickler's finding,
    not torch's advice to load with weights_only=False (which would run the file's code)."""
    text = str(error)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, flags=re.S)
    line = " ".join((found.group(1) if found else text).split())
    return line if len(line) <= 160 else line[:157] + "..."


def default_checkpoint(drone: str = DEFAULT_DRONE) -> Path:
    """The shipped checkpoint for a built-in drone (models/checkpoints); CheckpointError when absent."""
    from drone_pose.resources import models_dir

    if drone not in SHIPPED_CHECKPOINTS:
        raise CheckpointError(
            f"no shipped checkpoint for drone {drone!r} (shipped: {', '.join(SHIPPED_CHECKPOINTS)}); "
            "name a checkpoint trained with `drone-pose train`"
        )
    path = models_dir() / "checkpoints" / SHIPPED_CHECKPOINTS[drone]
    if not path.is_file():
        raise CheckpointError(f"the default checkpoint for {drone} is missing: {path}")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint with weights_only=True; raises CheckpointError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"{path}: not a readable drone_pose checkpoint ({type(error).__name__}: {_load_failure(error)}); "
            "give a checkpoint written by drone-pose train"
        ) from error
    validate_checkpoint(checkpoint, str(path))
    return checkpoint


def validate_checkpoint(checkpoint: Any, where: str) -> None:
    """Check every field a checkpoint must carry; raises CheckpointError naming the first bad one."""
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a drone_pose checkpoint (format field missing or wrong)")
    if checkpoint.get("version") != VERSION:
        raise CheckpointError(f"{where}: unsupported checkpoint version {checkpoint.get('version')!r}")
    for key in ("network", "drone", "input", "heatmaps", "state_dict"):
        if not isinstance(checkpoint.get(key), dict):
            raise CheckpointError(f"{where}: field {key!r} missing or not a mapping")
    try:
        network_config(checkpoint["network"])
    except NetworkConfigError as error:
        raise CheckpointError(f"{where}: network: {error}") from error
    drone = checkpoint["drone"]
    keypoints = drone.get("keypoints")
    if not (
        isinstance(keypoints, list)
        and len(keypoints) >= 4
        and all(isinstance(p, list) and len(p) == 3 for p in keypoints)
    ):
        raise CheckpointError(f"{where}: drone.keypoints must be a list of at least 4 [x, y, z] points")
    if not all(math.isfinite(float(c)) for p in keypoints for c in p):
        raise CheckpointError(f"{where}: drone.keypoints must be finite")
    heatmaps = checkpoint["network"].get("heatmaps")
    if heatmaps != len(keypoints):
        raise CheckpointError(
            f"{where}: network predicts {heatmaps} heatmaps but drone has {len(keypoints)} keypoints"
        )
    diagonal = drone.get("diagonal_m")
    if not (isinstance(diagonal, (int, float)) and diagonal > 0):
        raise CheckpointError(f"{where}: drone.diagonal_m must be a positive length")
    spec = checkpoint["input"]
    for key in ("width", "height"):
        if not (isinstance(spec.get(key), int) and spec[key] >= 16):
            raise CheckpointError(f"{where}: input.{key} must be an integer >= 16")
    for key in ("mean", "std"):
        if not (isinstance(spec.get(key), list) and len(spec[key]) == 3):
            raise CheckpointError(f"{where}: input.{key} must be a list of 3 numbers")
    zoom = spec.get("zoom")
    if zoom is not None and not (
        isinstance(zoom, dict)
        and set(zoom) in (set(ZOOM_NUMBERS), {*ZOOM_NUMBERS, "window"})
        and all(isinstance(zoom[k], (int, float)) and math.isfinite(zoom[k]) for k in ZOOM_NUMBERS)
        and _zoom_settings_accept(zoom)
    ):
        raise CheckpointError(
            f"{where}: input.zoom must be {{target_px > 0, max_zoom >= 1[, window: [width, height] >= 16]}}, "
            f"got {zoom!r}"
        )
    try:
        validate_flip_test(spec.get("flip_test", "off"), np.asarray(keypoints, dtype=np.float64))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: input.flip_test: {error}") from error
    scales = checkpoint.get("pose_covariance")
    try:
        if scales is not None:
            CovarianceScales.from_dict(dict(scales))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{where}: pose_covariance must be {{translation > 0, rotation > 0, samples}}, got {scales!r}"
        ) from error
    if not all(isinstance(v, torch.Tensor) for v in checkpoint["state_dict"].values()):
        raise CheckpointError(f"{where}: state_dict must map names to tensors")


def _zoom_settings_accept(zoom: dict[str, Any]) -> bool:
    """Whether ZoomSettings takes a checkpoint's input.zoom (its ranges and window rules)."""
    try:
        ZoomSettings.from_dict(zoom)
    except (TypeError, ValueError):
        return False
    return True


def network_from_checkpoint(checkpoint: dict[str, Any], where: str = "checkpoint") -> nn.Module:
    """Build the network and load its weights; mismatched weights raise CheckpointError."""
    network = build_network(checkpoint["network"])
    try:
        result = network.load_state_dict(checkpoint["state_dict"], strict=False)
    except RuntimeError as error:  # tensor shapes differ from the configuration
        raise CheckpointError(f"{where}: weights do not match the network: {error}") from error
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{where}: weights do not match the network: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return network


__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "make_checkpoint",
    "network_from_checkpoint",
    "plain_network_config",
    "save_checkpoint",
    "validate_checkpoint",
    "write_torch",
]
