"""A training run set up: datasets and their augmentation, network (fresh, or started from a
checkpoint: same network, an added HigherHRNet module or silhouette head, or widened), optimiser,
device and the process group under torchrun."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import Dataset, Subset

from drone_pose.data.augment import AugmentConfig
from drone_pose.data.dataset import ShardDataset
from drone_pose.data.uava import UAVADataset
from drone_pose.drones import DroneModel, load_drone
from drone_pose.inference.checkpoint import (
    load_checkpoint,
    network_from_checkpoint,
    plain_network_config,
)
from drone_pose.nets.build import build_network, network_config
from drone_pose.nets.flip import mirror_permutation, validate_flip_test
from drone_pose.nets.mask_head import MASK_HEAD_PREFIX, freeze_all_but_mask_head, has_mask_head
from drone_pose.nets.predictor import HeatmapPredictor
from drone_pose.nets.widen import is_widening, widen_state_dict
from drone_pose.nets.zoom import ZoomSettings
from drone_pose.train.config import ConfigError, TrainConfig

log = logging.getLogger(__name__)


class TrainingForward(nn.Module):
    """images [B,3,H,W] RGB in [0, 1] -> the network's raw outputs (every resolution), the module
    that DistributedDataParallel wraps so that gradients are synchronised across ranks."""

    def __init__(self, predictor: HeatmapPredictor) -> None:
        super().__init__()
        self.predictor = predictor

    def forward(self, images: Tensor) -> list[Tensor]:
        return self.predictor.network(self.predictor.normalise(images))


@dataclass
class TrainingRun:
    """Everything one run needs; built by `prepare`."""

    config: TrainConfig
    drone: DroneModel
    train_data: Dataset
    val_data: Dataset
    image_size: tuple[int, int]
    predictor: HeatmapPredictor
    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    rank: int = 0
    world: int = 1
    averaged: AveragedModel | None = None  # the SWA average of predictor (swa.start_epoch > 0)
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    best: list[float] = field(default_factory=lambda: [-math.inf, -math.inf])  # (metric, -keypoint_px)


HIGHER_MODULE_KEYS = ("higher", "deconv_blocks", "deconv_channels")


def adds_mask_head(network_spec: str | dict[str, Any], checkpoint_network: dict[str, Any]) -> bool:
    """Whether the run's network has the silhouette head and the checkpoint's has not."""
    return bool(plain_network_config(network_spec).get("mask_head")) and not checkpoint_network.get(
        "mask_head"
    )


def initial_weights_fit(network_spec: str | dict[str, Any], checkpoint_network: dict[str, Any]) -> bool:
    """Whether a checkpoint of `checkpoint_network` can start a run of `network_spec`: the same
    network, that network with a HigherHRNet module of any size or the silhouette head added (which
    then start untrained), or a wider HRNet of the same layout (widened so that it starts computing
    the same heatmaps, drone_pose.nets.widen)."""
    wanted = plain_network_config(network_spec)
    if adds_mask_head(wanted, checkpoint_network):
        wanted = {key: value for key, value in wanted.items() if key != "mask_head"}
        checkpoint_network = {key: value for key, value in checkpoint_network.items() if key != "mask_head"}
        if is_widening(checkpoint_network, wanted):  # widening does not add layers
            return False
    if wanted == checkpoint_network or is_widening(checkpoint_network, wanted):
        return True

    def trunk(config: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in config.items() if key not in HIGHER_MODULE_KEYS}

    adds_module = bool(wanted.get("higher")) and not checkpoint_network.get("higher")
    return adds_module and trunk(wanted) == trunk(checkpoint_network)


def load_initial_weights(network: nn.Module, config: TrainConfig) -> None:
    """Load config.init into the network (see initial_weights_fit); anything else raises."""
    initial = load_checkpoint(config.init)
    if not initial_weights_fit(config.network, initial["network"]):
        raise ValueError(f"init: {config.init} holds a different network than the config's")
    trained = network_from_checkpoint(initial, str(config.init)).state_dict()
    if is_widening(initial["network"], plain_network_config(config.network)):
        network.load_state_dict(widen_state_dict(trained, network, seed=config.seed))
        log.info("init: %s widened to the config's channel widths", config.init)
        return
    wanted = plain_network_config(config.network)
    if wanted.get("higher") and not initial["network"].get("higher"):  # the head moves to new features
        trained = {key: value for key, value in trained.items() if not key.startswith(MASK_HEAD_PREFIX)}
    result = network.load_state_dict(trained, strict=False)
    new_modules = ("deconv.", "final_higher.", MASK_HEAD_PREFIX)
    fresh = [key for key in result.missing_keys if not key.startswith(new_modules)]
    if fresh or result.unexpected_keys:
        raise ValueError(f"init: {config.init} does not fit the network ({fresh or result.unexpected_keys})")
    if result.missing_keys:
        added = sorted({key.split(".")[0] for key in result.missing_keys})
        log.info("init: %s loaded; %s start untrained", config.init, ", ".join(added))


def prepare(config: TrainConfig) -> TrainingRun:
    """Datasets, network, optimiser and device (and the process group under torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if device.type == "cpu" and config.cpu_bf16 and not native_cpu_bfloat16():
        log.warning(
            "cpu_bf16: this CPU has no native bfloat16 (oneDNN reports none), so bfloat16 autocast is "
            "emulated and several times slower than float32 (docs/experiments.md). Leave cpu_bf16 off here."
        )
    train_data, val_data, drone, image_size = build_datasets(config)
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    network = build_network(config.network)
    check_mask_head(config, network, train_data)
    if config.init is not None:
        load_initial_weights(network, config)
    if config.mask.head_only:
        freeze_all_but_mask_head(network)
    if network_heatmaps(config) != drone.num_keypoints:
        raise ValueError(
            f"network predicts {network_heatmaps(config)} heatmaps; {drone.name} has "
            f"{drone.num_keypoints} keypoints"
        )
    try:
        validate_flip_test(config.flip_test, drone.keypoints)
    except ValueError as error:
        raise ConfigError(f"flip_test: {drone.name}: {error}") from error
    predictor = HeatmapPredictor(network, drone.num_keypoints).to(device)
    if config.channels_last:
        predictor = predictor.to(memory_format=torch.channels_last)
    model: nn.Module = TrainingForward(predictor)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    optimizer = torch.optim.Adam(
        [parameter for parameter in predictor.parameters() if parameter.requires_grad],
        lr=config.optim.lr,
        betas=config.optim.betas,
        weight_decay=config.optim.weight_decay,
    )
    averaged = AveragedModel(predictor) if config.swa.start_epoch > 0 else None
    return TrainingRun(
        config,
        drone,
        train_data,
        val_data,
        image_size,
        predictor,
        model,
        optimizer,
        device,
        rank,
        world,
        averaged,
    )


def check_mask_head(config: TrainConfig, network: nn.Module, train_data: Dataset) -> None:
    """ConfigError for settings that need the silhouette head on a network without it, or for a mask
    head trained on synthetic data without whole-silhouette masks (rendered before they were stored)."""
    if not has_mask_head(network):
        for key, needed in (
            ("mask.head_only", config.mask.head_only),
            ("metric", config.metric == "mask_IoU"),
        ):
            if needed:
                raise ConfigError(f"{key}: the network has no silhouette head (network mask_head: true)")
        return
    base = train_data.dataset if isinstance(train_data, Subset) else train_data
    if isinstance(base, ShardDataset) and not base.has_full_mask and config.mask.weight > 0:
        raise ConfigError(
            f"data.path: {base.root} holds no full masks (the mask head's target; rendered before they "
            "were stored): render it again with drone-pose synth"
        )
    if not getattr(base, "has_full_mask", False) and config.mask.weight > 0:
        log.warning("the training data has no full masks: the mask head learns the visible silhouettes")


def network_heatmaps(config: TrainConfig) -> int:
    """The number of heatmaps the config's network predicts."""
    return int(network_config(config.network).get("heatmaps", 9))


def native_cpu_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX; cpu_bf16 pays off only
    there). False when PyTorch cannot tell."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def augment_config(config: TrainConfig, drone: DroneModel) -> AugmentConfig:
    """The run's training augmentation; ConfigError when data.mirror asks a drone without a mirror
    symmetry to be flipped."""
    permutation = mirror_permutation(drone.keypoints)
    if config.data.mirror > 0 and permutation is None:
        raise ConfigError(
            f"data.mirror: {drone.name} is not mirror-symmetric about its body x-z plane (y -> -y); "
            "set data.mirror to 0"
        )
    zoom = config.zoom
    return AugmentConfig(
        crop=config.data.crop,
        zoom_probability=zoom.probability,
        zoom_target_px=zoom.target_px,
        max_zoom=zoom.max_zoom,
        mirror_probability=config.data.mirror,
        mirror_permutation=None if permutation is None else tuple(permutation),
    )


def build_datasets(config: TrainConfig) -> tuple[Dataset, Dataset, DroneModel, tuple[int, int]]:
    """Training and validation sets (synthetic shards or UAVA), the drone and the image size
    (width, height); the training set augmented as the config says."""
    data = config.data
    if data.path is not None:
        val_set = ShardDataset(data.path, data.val_split, augment=None, seed=config.seed)
        drone = load_drone(val_set.drone)
    else:
        val_set = UAVADataset(data.uava_root, data.drone, data.val_split, augment=None, seed=config.seed)
        drone = load_drone(data.drone)
    augment = augment_config(config, drone) if data.augment else None
    if data.path is not None:
        train_set = ShardDataset(data.path, data.train_split, augment=augment, seed=config.seed)
    else:
        train_set = UAVADataset(
            data.uava_root, data.drone, data.train_split, augment=augment, seed=config.seed
        )
    size = (train_set.width, train_set.height)
    if data.max_train_samples is not None:
        train_set = Subset(train_set, range(min(data.max_train_samples, len(train_set))))
    if data.max_val_samples is not None:
        val_set = Subset(val_set, range(min(data.max_val_samples, len(val_set))))
    return train_set, val_set, drone, size


def zoom_settings(config: TrainConfig) -> ZoomSettings | None:
    """The second pass a run trains for (zoom.probability > 0), else None; its window is the
    training crop (the zoomed windows the network learnt on), else the full input."""
    if config.zoom.probability <= 0:
        return None
    crop = config.data.crop
    return ZoomSettings(
        target_px=config.zoom.target_px,
        max_zoom=config.zoom.max_zoom,
        window=None if crop is None else (int(crop[0]), int(crop[1])),
    )
