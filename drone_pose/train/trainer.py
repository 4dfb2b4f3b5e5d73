"""The training loop: heatmap and PnP losses, validation with the papers' metrics, checkpoints,
resume, logs (CSV, TensorBoard), AMP on CUDA and DistributedDataParallel under torchrun.

Run folder (config.run_dir()): config.yaml (every hyper-parameter), metrics.csv (one row per
epoch), tensorboard/ (losses, metrics, timings), last.pt (training state, for --resume) and
best.pt (a self-describing drone_pose checkpoint that PoseEstimator and the node load); with
swa.start_epoch, also swa.pt (the same kind of checkpoint, of the averaged weights).
Determinism: the sample order of epoch e comes from a generator seeded with (seed, e) and the
augmentation of sample i from (seed, e, i), so a resumed run sees exactly what an uninterrupted one
does, and two CPU runs with one seed give identical losses.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, update_bn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from drone_pose.checkpoint import (
    load_checkpoint,
    make_checkpoint,
    network_from_checkpoint,
    plain_network_config,
    save_checkpoint,
)
from drone_pose.data.augment import AugmentConfig
from drone_pose.data.dataset import ShardDataset
from drone_pose.data.drones import DroneModel, load_drone
from drone_pose.data.uava import UAVADataset
from drone_pose.estimator import EstimatorThresholds, keypoint_pnp
from drone_pose.geometry.camera import keypoints_in_image
from drone_pose.geometry.metrics import evaluate_poses
from drone_pose.geometry.pose_covariance import CovarianceScales, fit_covariance_scales, pose_error_vectors
from drone_pose.nets.build import build_network, count_parameters, network_config
from drone_pose.nets.decoding import decode_heatmaps, heatmap_to_image
from drone_pose.nets.flip import flip_averaged, mirror_permutation, validate_flip_test
from drone_pose.nets.inference import HeatmapPredictor
from drone_pose.nets.widen import is_widening, widen_state_dict
from drone_pose.nets.zoom import ZoomSettings, heatmap_locator, zoom_refine
from drone_pose.train.config import ConfigError, TrainConfig, config_to_dict
from drone_pose.train.objectives import (
    centre_of_mass_keypoints,
    gaussian_targets,
    heatmap_loss,
    pose_losses,
)

log = logging.getLogger(__name__)
STATE_FORMAT = "drone_pose.training_state"


@dataclass
class EpochTimes:
    """Accumulated seconds of the study's Table 1 timings."""

    forward: float = 0.0
    backward: float = 0.0
    step: float = 0.0
    steps: int = 0

    def means_ms(self) -> dict[str, float]:
        n = max(self.steps, 1)
        return {
            "forward_ms": 1e3 * self.forward / n,
            "backward_ms": 1e3 * self.backward / n,
            "optimiser_step_ms": 1e3 * self.step / n,
        }


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


_HIGHER_MODULE_KEYS = ("higher", "deconv_blocks", "deconv_channels")


def initial_weights_fit(network_spec: str | dict[str, Any], checkpoint_network: dict[str, Any]) -> bool:
    """Whether a checkpoint of `checkpoint_network` can start a run of `network_spec`: the same
    network, that network with a HigherHRNet module of any size added (which then starts
    untrained), or a wider HRNet of the same layout (widened so that it starts computing the same
    heatmaps, drone_pose.nets.widen)."""
    wanted = plain_network_config(network_spec)
    if wanted == checkpoint_network or is_widening(checkpoint_network, wanted):
        return True

    def trunk(config: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in config.items() if key not in _HIGHER_MODULE_KEYS}

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
    result = network.load_state_dict(trained, strict=False)
    fresh = [key for key in result.missing_keys if not key.startswith(("deconv.", "final_higher."))]
    if fresh or result.unexpected_keys:
        raise ValueError(f"init: {config.init} does not fit the network ({fresh or result.unexpected_keys})")
    if result.missing_keys:
        log.info("init: %s loaded; the HigherHRNet module starts untrained", config.init)


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
            "emulated: a training step of the shipped Tello network took 8.0 s against 0.85 s in "
            "float32 on such a CPU. Leave cpu_bf16 off here."
        )
    train_data, val_data, drone, image_size = _datasets(config)
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    network = build_network(config.network)
    if config.init is not None:
        load_initial_weights(network, config)
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
        predictor.parameters(),
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


def network_heatmaps(config: TrainConfig) -> int:
    return int(network_config(config.network).get("heatmaps", 9))


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a run; returns a summary with the history and the best metric."""
    run = prepare(config)
    run_dir = config.run_dir()
    main_process = run.rank == 0
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    if resume and (run_dir / "last.pt").is_file():
        _load_state(run, run_dir / "last.pt")
    writer = _tensorboard(run_dir) if main_process else None
    scaler = torch.amp.GradScaler("cuda", enabled=_amp(run))
    started = time.perf_counter()
    for epoch in range(run.start_epoch, config.epochs):
        if epoch > 0 and _phase(config, epoch) != _phase(config, epoch - 1):
            # New loss, new gradient scale: Adam's moments of the heatmap phase would make the first
            # pose steps orders of magnitude too large.
            run.optimizer.state.clear()
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate(config, epoch)
        times = EpochTimes()
        train_loss, losses = _train_epoch(run, epoch, scaler, times, progress and main_process)
        if run.averaged is not None and epoch + 1 >= config.swa.start_epoch:
            run.averaged.update_parameters(run.predictor)
        validation_started = time.perf_counter()
        metrics = _validate(run, run.predictor) if main_process else {}
        row = {
            "epoch": epoch + 1,
            "phase": _phase(config, epoch),
            "train_loss": train_loss,
            **losses,
            **metrics,
            **times.means_ms(),
            "validation_s": time.perf_counter() - validation_started,
            "lr": learning_rate(config, epoch),
        }
        run.history.append(row)
        if main_process:
            score = selection_score(metrics, config.metric)
            if score > run.best or not (run_dir / "best.pt").exists():
                run.best = score
                _save_best(run, row)
            _save_state(run, epoch, run_dir / "last.pt")
            _write_csv(run_dir / "metrics.csv", run.history)
            if writer is not None:
                for key, value in row.items():
                    if isinstance(value, (int, float)) and key != "epoch":
                        writer.add_scalar(key, value, epoch + 1)
                writer.flush()
    swa_metrics = _finish_swa(run, writer) if main_process and run.averaged is not None else None
    if writer is not None:
        writer.close()
    if run.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return {
        "rank": run.rank,
        "run_dir": str(run_dir),
        "history": run.history,
        "best": {config.metric: _metric_value(run.best, config.metric)},
        "swa": swa_metrics,
        "parameters": count_parameters(run.predictor),
        "train_s": time.perf_counter() - started,
    }


def _finish_swa(run: TrainingRun, writer: Any) -> dict[str, float] | None:
    """Recompute the SWA average's BatchNorm statistics on training batches (augmented and zoomed
    like training, under the training autocast), validate it and save it as swa.pt; its metrics,
    or None when no epoch has been averaged yet."""
    config, averaged = run.config, run.averaged
    assert averaged is not None
    if int(averaged.n_averaged) == 0:
        return None
    started = time.perf_counter()
    loader = _loader(run, config.epochs)  # an epoch index of its own: augmentations not seen in training
    batches = len(loader) if config.swa.bn_batches is None else min(config.swa.bn_batches, len(loader))
    images = (batch["image"] for batch in itertools.islice(loader, batches))
    with _autocast(run):
        update_bn(images, TrainingForward(averaged.module), device=run.device)
    metrics = _validate(run, averaged.module)
    last = run.history[-1]
    row = {**last, **metrics, "epoch": config.epochs, "validation_s": time.perf_counter() - started}
    first_epoch = config.swa.start_epoch
    swa = {"first_epoch": first_epoch, "last_epoch": config.epochs, "bn_batches": batches}
    _save_checkpoint(run, averaged.module.network, row, config.run_dir() / "swa.pt", swa=swa)
    log.info(
        "SWA of epochs %d-%d: ACC5 %.2f, ADD5 %.2f, keypoint error %.2f px -> %s",
        first_epoch,
        config.epochs,
        metrics["ACC5"],
        metrics["ADD5"],
        metrics["keypoint_px"],
        config.run_dir() / "swa.pt",
    )
    if writer is not None:
        for key, value in metrics.items():
            writer.add_scalar(f"swa/{key}", value, config.epochs)
    return metrics


def selection_score(metrics: dict[str, float], metric: str) -> list[float]:
    """Checkpoint selection key, larger is better: the metric (keypoint_px negated), then the
    keypoint error as tie-breaker (percentages plateau on small validation sets)."""
    keypoint = metrics.get("keypoint_px", math.inf)
    keypoint = -keypoint if math.isfinite(keypoint) else -math.inf
    primary = keypoint if metric == "keypoint_px" else metrics.get(metric, -math.inf)
    return [float(primary), float(keypoint)]


def _metric_value(score: list[float], metric: str) -> float:
    return -score[0] if metric == "keypoint_px" else score[0]


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The learning rate of an epoch (stateless, so resuming needs no scheduler state)."""
    if config.optim.schedule == "cosine":
        return config.optim.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    return config.optim.lr


def _phase(config: TrainConfig, epoch: int) -> str:
    return "heatmap" if epoch < config.loss.heatmap_only_epochs else config.loss.kind


def _amp(run: TrainingRun) -> bool:
    """Float16 autocast with gradient scaling (CUDA only)."""
    return run.config.amp and run.device.type == "cuda"


def native_cpu_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX; cpu_bf16 pays off only
    there). False when PyTorch cannot tell."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _autocast(run: TrainingRun) -> torch.autocast:
    """The training forward's autocast: float16 on CUDA (amp), bfloat16 on CPU (cpu_bf16)."""
    if run.device.type == "cuda":
        return torch.autocast("cuda", enabled=_amp(run))
    return torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.config.cpu_bf16)


def _train_epoch(
    run: TrainingRun, epoch: int, scaler: torch.amp.GradScaler, times: EpochTimes, progress: bool
) -> tuple[float, dict[str, float]]:
    config = run.config
    loader = _loader(run, epoch)
    run.model.train()
    phase = _phase(config, epoch)
    x3d = torch.tensor(run.drone.keypoints, dtype=torch.float64, device=run.device)
    totals: dict[str, float] = {}
    count = skipped = 0
    bar = tqdm(
        loader, desc=f"epoch {epoch + 1}/{config.epochs} [{phase}]", disable=not progress, unit="batch"
    )
    for batch in bar:
        images = batch["image"].to(run.device, non_blocking=True)
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        keypoints = batch["keypoints"].to(run.device)
        # every in-image keypoint is supervised, self-occluded ones included (as in UAVA): PnP needs
        # them all, e.g. the centroid, which the body always hides
        visibility = keypoints_in_image(keypoints, images.shape[-1], images.shape[-2])
        K = batch["K"].to(run.device)
        t0 = time.perf_counter()
        with _autocast(run):
            outputs = run.model(images)
        loss, parts = _loss(run, outputs, keypoints, visibility, K, x3d, images.shape[-1], phase)
        _sync(run.device)
        t1 = time.perf_counter()
        run.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            skipped += 1  # never let a NaN or inf reach the weights
            log.warning("epoch %d: non-finite loss %s, step skipped", epoch + 1, float(loss))
            continue
        scaler.scale(loss).backward()
        _sync(run.device)
        t2 = time.perf_counter()
        scaler.step(run.optimizer)
        scaler.update()
        _sync(run.device)
        t3 = time.perf_counter()
        times.forward += t1 - t0
        times.backward += t2 - t1
        times.step += t3 - t2
        times.steps += 1
        size = images.shape[0]
        count += size
        for key, value in {"loss": float(loss.detach()), **parts}.items():
            totals[key] = totals.get(key, 0.0) + value * size
        bar.set_postfix(loss=f"{totals['loss'] / count:.4g}", img_s=f"{size / max(t3 - t0, 1e-9):.1f}")
    means = {key: value / max(count, 1) for key, value in totals.items()}
    means["skipped_steps"] = float(skipped)
    return means.pop("loss", math.nan), means


def _loss(
    run: TrainingRun,
    outputs: list[Tensor],
    keypoints: Tensor,
    visibility: Tensor,
    K: Tensor,
    x3d: Tensor,
    image_width: int,
    phase: str,
) -> tuple[Tensor, dict[str, float]]:
    config = run.config
    maps = [o[:, : run.drone.num_keypoints].float() for o in outputs]
    parts: dict[str, float] = {}
    total = maps[0].new_zeros(())
    if phase in ("heatmap", "mixture"):
        l_h = maps[0].new_zeros(())
        for heatmaps in maps:  # multi-resolution supervision (HigherHRNet)
            stride = image_width / heatmaps.shape[-1]
            target = gaussian_targets(keypoints, visibility, heatmaps.shape[-2:], stride, config.loss.sigma)
            l_h = l_h + heatmap_loss(
                heatmaps, target, visibility, config.loss.heatmap, config.loss.foreground_weight
            )
        l_h = l_h / len(maps)
        parts["l_h"] = float(l_h.detach())
        total = total + l_h
    if phase in ("mixture", "pose"):
        combined = run.predictor.combine(outputs)
        x2d = centre_of_mass_keypoints(combined, image_width / combined.shape[-1])
        l_proj, l_reg, dropped = pose_losses(x2d, keypoints, x3d, K, config.loss.pnp)
        parts["l_proj"] = float(l_proj.detach())
        parts["l_reg"] = float(l_reg.detach())
        parts["pnp_failures"] = float(dropped) / keypoints.shape[0]
        total = total + (config.loss.beta * l_proj if phase == "mixture" else l_proj + l_reg)
    return total, parts


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loader(run: TrainingRun, epoch: int) -> DataLoader:
    config = run.config
    dataset = run.train_data
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    if hasattr(base, "set_epoch"):
        base.set_epoch(epoch)
    if run.world > 1:
        sampler = DistributedSampler(
            dataset, num_replicas=run.world, rank=run.rank, shuffle=True, seed=config.seed
        )
        sampler.set_epoch(epoch)
        return DataLoader(
            dataset,
            batch_size=config.batch_size,
            sampler=sampler,
            num_workers=config.data.workers,
            drop_last=False,
            pin_memory=run.device.type == "cuda",
        )
    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        generator=generator,
        num_workers=config.data.workers,
        pin_memory=run.device.type == "cuda",
    )


def _validate(run: TrainingRun, predictor: HeatmapPredictor) -> dict[str, float]:
    """evaluate() on the run's validation data with its second pass and flip test."""
    config = run.config
    return evaluate(
        predictor,
        run.val_data,
        run.drone,
        config.batch_size,
        run.device,
        zoom_settings(config),
        config.flip_test,
    )


@torch.no_grad()
def evaluate(
    predictor: HeatmapPredictor,
    data: Dataset,
    drone: DroneModel,
    batch_size: int,
    device: torch.device,
    zoom: ZoomSettings | None = None,
    flip_test: str = "off",
) -> dict[str, float]:
    """The papers' metrics plus the mean keypoint error (pixels) of the network on `data`; with
    `zoom`, of its keypoints after the estimator's zoomed second pass (flip_test: as the estimator's).
    Poses come from the estimator's PnP (confidence weights, Huber): model selection scores inference.
    Also the variance scales that calibrate PnP's covariance on `data` (covariance_translation_scale,
    covariance_rotation_scale, covariance_fit_samples; see fit_covariance_scales)."""
    was_training = predictor.training
    predictor.eval()
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
    x3d = torch.tensor(drone.keypoints, dtype=torch.float64)
    R_all, t_all, R_gt, t_gt, K_all, errors, covariances = [], [], [], [], [], [], []
    permutation = validate_flip_test(flip_test, drone.keypoints)
    flipped = predictor if permutation is None else flip_averaged(predictor, permutation)
    first_pass = flipped if flip_test == "all" else predictor
    locate, thresholds = heatmap_locator(flipped), EstimatorThresholds()
    minimum = thresholds.min_keypoint_confidence
    for batch in loader:
        images = batch["image"].to(device)
        heatmaps = first_pass(images)
        xy, confidences = decode_heatmaps(heatmaps)
        x2d = heatmap_to_image(xy, images.shape[-1] / heatmaps.shape[-1])
        if zoom is not None:
            x2d, confidences, _ = zoom_refine(locate, images, images, x2d, confidences, minimum, zoom)
        x2d = x2d.cpu().double()
        visible = keypoints_in_image(batch["keypoints"], images.shape[-1], images.shape[-2])
        distance = (x2d - batch["keypoints"].double()).norm(dim=-1)
        errors.append(distance[visible])
        result = keypoint_pnp(x2d, confidences.cpu().double(), x3d, batch["K"].double(), thresholds)
        R_all.append(result.R)
        t_all.append(result.t)
        covariances.append(result.covariance)
        R_gt.append(batch["R"].double())
        t_gt.append(batch["t"].double())
        K_all.append(batch["K"].double())
    predictor.train(was_training)
    metrics = evaluate_poses(
        torch.cat(R_all),
        torch.cat(t_all),
        torch.cat(R_gt),
        torch.cat(t_gt),
        x3d,
        torch.cat(K_all),
        drone.diagonal,
    )
    flat = torch.cat(errors)
    metrics["keypoint_px"] = float(flat.mean()) if flat.numel() else float("nan")
    scales = fit_covariance_scales(
        pose_error_vectors(torch.cat(R_all), torch.cat(t_all), torch.cat(R_gt), torch.cat(t_gt)),
        torch.cat(covariances),
    )
    metrics["covariance_translation_scale"] = scales.translation
    metrics["covariance_rotation_scale"] = scales.rotation
    metrics["covariance_fit_samples"] = scales.samples
    return {key: float(value) for key, value in metrics.items()}


def _augment_config(config: TrainConfig, drone: DroneModel) -> AugmentConfig:
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


def _datasets(config: TrainConfig) -> tuple[Dataset, Dataset, DroneModel, tuple[int, int]]:
    data = config.data
    if data.path is not None:
        val_set = ShardDataset(data.path, data.val_split, augment=None, seed=config.seed)
        drone = load_drone(val_set.drone)
    else:
        val_set = UAVADataset(data.uava_root, data.drone, data.val_split, augment=None, seed=config.seed)
        drone = load_drone(data.drone)
    augment = _augment_config(config, drone) if data.augment else None
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


def _save_state(run: TrainingRun, epoch: int, path: Path) -> None:
    state = {
        "format": STATE_FORMAT,
        "epoch": epoch,
        "config": config_to_dict(run.config),
        "model": run.predictor.network.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        **({} if run.averaged is None else {"swa": run.averaged.state_dict()}),
        "best": run.best,
        "history": run.history,
    }
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    partial.replace(path)


# Settings a resumed run may change: the schedule's length and how the steps execute.
RESUMABLE_CHANGES = ("epochs", "amp", "cpu_bf16", "channels_last")


def _load_state(run: TrainingRun, path: Path) -> None:
    state = torch.load(path, map_location=run.device, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not a drone_pose training state")
    saved, current = dict(state["config"]), config_to_dict(run.config)
    for key in RESUMABLE_CHANGES:
        saved.pop(key, None)
        current.pop(key, None)
    defaults = config_to_dict(TrainConfig())
    for key in set(current) - set(saved):  # sections added since the state was saved, at their defaults
        if current[key] == defaults.get(key):
            saved[key] = current[key]
    if saved != current:
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise ValueError(
            f"{path}: cannot resume with a different configuration (changed: {', '.join(changed)})"
        )
    run.predictor.network.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.averaged is not None and "swa" in state:
        run.averaged.load_state_dict(state["swa"])
    run.best = [float(v) for v in state["best"]]
    run.history = list(state["history"])
    run.start_epoch = int(state["epoch"]) + 1


def _save_best(run: TrainingRun, row: dict[str, Any]) -> None:
    _save_checkpoint(run, run.predictor.network, row, run.config.run_dir() / "best.pt")


def _save_checkpoint(
    run: TrainingRun, network: nn.Module, row: dict[str, Any], path: Path, swa: dict[str, int] | None = None
) -> None:
    """`network` as a drone_pose checkpoint at `path`, with the validation figures of `row` (an
    epoch's metrics.csv row) and, for an SWA average, the epochs it averages."""
    config = run.config
    training = {
        "experiment": config.name,
        "epoch": row["epoch"],
        "data": config.data.path or config.data.uava_root,
        "loss": config_to_dict(config)["loss"],
        "device": str(run.device),
        "world_size": run.world,
        "timings_ms": {k: row[k] for k in ("forward_ms", "backward_ms", "optimiser_step_ms")},
        **({} if swa is None else {"swa": swa}),
    }
    metrics = {
        k: v
        for k, v in row.items()
        if k in ("NPE", "AD", "ACC2", "ACC5", "ADD2", "ADD5", "Proj2", "Proj5", "count", "keypoint_px")
    }
    checkpoint = make_checkpoint(
        network,
        config.network,
        run.drone,
        run.image_size,
        heatmap_sigma=config.loss.sigma,
        training=training,
        metrics=metrics,
        zoom=None if (settings := zoom_settings(config)) is None else settings.to_dict(),
        flip_test=config.flip_test,
        covariance_scales=CovarianceScales(
            row["covariance_translation_scale"],
            row["covariance_rotation_scale"],
            int(row["covariance_fit_samples"]),
        ),
    )
    save_checkpoint(checkpoint, path)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """All epochs so far, columns the union of every row's (phases add loss terms)."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a declared dependency; tolerate a trimmed install
        log.warning("tensorboard is not installed: no TensorBoard logs")
        return None
    with contextlib.suppress(Exception):
        return SummaryWriter(str(run_dir / "tensorboard"))
    return None


__all__ = ["EpochTimes", "TrainingForward", "evaluate", "prepare", "train"]
