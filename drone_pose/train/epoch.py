"""One training epoch: the loader (sample order from (seed, epoch)), autocast, the loss of the
epoch's phase (heatmap, mixture or pose), the optimiser steps and the Table 1 step timings."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from drone_pose.geometry.camera import keypoints_in_image
from drone_pose.nets.heatmap_codec import (
    centre_of_mass_keypoints,
    gaussian_targets,
)
from drone_pose.nets.mask_head import freeze_all_but_mask_head, has_mask_head, mask_logits
from drone_pose.train.config import TrainConfig
from drone_pose.train.losses import heatmap_loss, mask_loss, pose_losses
from drone_pose.train.preparation import TrainingRun

log = logging.getLogger(__name__)


@dataclass
class EpochTimes:
    """Accumulated seconds of the study's Table 1 timings."""

    forward: float = 0.0
    backward: float = 0.0
    step: float = 0.0
    steps: int = 0

    def means_ms(self) -> dict[str, float]:
        """Mean milliseconds per step of forward (with the loss), backward and optimiser step."""
        n = max(self.steps, 1)
        return {
            "forward_ms": 1e3 * self.forward / n,
            "backward_ms": 1e3 * self.backward / n,
            "optimiser_step_ms": 1e3 * self.step / n,
        }


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The learning rate of an epoch (stateless, so resuming needs no scheduler state)."""
    if config.optim.schedule == "cosine":
        return config.optim.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    return config.optim.lr


def loss_phase(config: TrainConfig, epoch: int) -> str:
    """The loss of an epoch: heatmap during loss.heatmap_only_epochs, then loss.kind."""
    return "heatmap" if epoch < config.loss.heatmap_only_epochs else config.loss.kind


def amp_enabled(run: TrainingRun) -> bool:
    """Float16 autocast with gradient scaling (CUDA only)."""
    return run.config.amp and run.device.type == "cuda"


def training_autocast(run: TrainingRun) -> torch.autocast:
    """The training forward's autocast: float16 on CUDA (amp), bfloat16 on CPU (cpu_bf16)."""
    if run.device.type == "cuda":
        return torch.autocast("cuda", enabled=amp_enabled(run))
    return torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.config.cpu_bf16)


def train_epoch(
    run: TrainingRun, epoch: int, scaler: torch.amp.GradScaler, times: EpochTimes, progress: bool
) -> tuple[float, dict[str, float]]:
    """One epoch of training steps; returns the mean loss and the mean loss terms (plus
    skipped_steps), and adds the step timings to `times`."""
    config = run.config
    loader = epoch_loader(run, epoch)
    run.model.train()
    if config.mask.head_only:  # train() woke the frozen BatchNorm layers: back to their statistics
        freeze_all_but_mask_head(run.predictor.network)
    masked = has_mask_head(run.predictor.network)
    phase = loss_phase(config, epoch)
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
        full_mask = batch["full_mask"].to(run.device) if masked else None
        step = training_step(run, scaler, images, keypoints, visibility, K, x3d, phase, full_mask)
        if step.skipped:
            skipped += 1  # never let a NaN or inf reach the weights
            log.warning("epoch %d: non-finite loss %s, step skipped", epoch + 1, float(step.loss))
            continue
        forward_s, backward_s, optimiser_s = step.seconds
        times.forward += forward_s
        times.backward += backward_s
        times.step += optimiser_s
        times.steps += 1
        size = images.shape[0]
        count += size
        for key, value in {"loss": float(step.loss), **step.parts}.items():
            totals[key] = totals.get(key, 0.0) + value * size
        bar.set_postfix(
            loss=f"{totals['loss'] / count:.4g}", img_s=f"{size / max(sum(step.seconds), 1e-9):.1f}"
        )
    means = {key: value / max(count, 1) for key, value in totals.items()}
    means["skipped_steps"] = float(skipped)
    return means.pop("loss", math.nan), means


@dataclass(frozen=True)
class StepResult:
    """One training step: its loss (detached), the loss terms, the seconds of forward (with the
    loss), backward and optimiser step, and whether it was skipped for a non-finite loss."""

    loss: Tensor
    parts: dict[str, float]
    seconds: tuple[float, float, float]
    skipped: bool


def training_step(
    run: TrainingRun,
    scaler: torch.amp.GradScaler,
    images: Tensor,
    keypoints: Tensor,
    visibility: Tensor,
    K: Tensor,
    x3d: Tensor,
    phase: str,
    full_mask: Tensor | None = None,
) -> StepResult:
    """One optimiser step of the run's model on a batch: images [B,3,H,W] in [0, 1] (channels_last
    when the run trains so), keypoints [B,K,2] px with visibility [B,K], K [B,3,3], model keypoints
    x3d [K,3] metres, full_mask [B,H,W] in [0, 1] (the mask head's target; None without one), all
    on the run's device. A non-finite loss skips the update (no weight sees a NaN). Times are
    synchronised with the device."""
    t0 = time.perf_counter()
    with training_autocast(run):
        outputs = run.model(images)
    loss, parts = training_loss(
        run, outputs, keypoints, visibility, K, x3d, images.shape[-1], phase, full_mask
    )
    synchronize(run.device)
    t1 = time.perf_counter()
    run.optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        return StepResult(loss.detach(), parts, (t1 - t0, 0.0, 0.0), True)
    scaler.scale(loss).backward()
    synchronize(run.device)
    t2 = time.perf_counter()
    scaler.step(run.optimizer)
    scaler.update()
    synchronize(run.device)
    t3 = time.perf_counter()
    return StepResult(loss.detach(), parts, (t1 - t0, t2 - t1, t3 - t2), False)


def training_loss(
    run: TrainingRun,
    outputs: list[Tensor],
    keypoints: Tensor,
    visibility: Tensor,
    K: Tensor,
    x3d: Tensor,
    image_width: int,
    phase: str,
    full_mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The loss of `phase` for the raw network outputs (every resolution) and its terms: l_h over
    every output resolution, and/or the pose loss on the centre-of-mass keypoints through the
    config's PnP layer (l_proj + l_reg, or beta l_proj in the mixture); plus, with the silhouette
    head and full_mask [B,H,W], mask.weight x l_mask. With mask.head_only only l_mask."""
    config = run.config
    maps = [o[:, : run.drone.num_keypoints].float() for o in outputs]
    parts: dict[str, float] = {}
    total = maps[0].new_zeros(())
    if full_mask is not None:
        l_mask = mask_loss(mask_logits(outputs), full_mask)
        parts["l_mask"] = float(l_mask.detach())
        total = total + config.mask.weight * l_mask
        if config.mask.head_only:  # the keypoint layers are frozen: their losses would train nothing
            return total, parts
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


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that host timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epoch_loader(run: TrainingRun, epoch: int) -> DataLoader:
    """The training loader of an epoch: the augmentation stream set to the epoch and the sample order
    from (seed, epoch), or a DistributedSampler's share under torchrun."""
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
