"""`drone-pose eval`: a checkpoint through the real inference path (PoseEstimator on uint8 images)
over a dataset split, scored as `drone-pose eval-bag` scores a bag (drone_pose.evaluation.scoring),
written as a report with plots and overlays. A checkpoint with the silhouette head on a dataset with
full masks is also scored on its silhouettes (silhouette_scores).
"""

from __future__ import annotations

import dataclasses
import errno
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from drone_pose.atomic_files import atomic_path
from drone_pose.data.dataset import ShardDataset
from drone_pose.data.uava import UAVADataset
from drone_pose.drones import DroneModel
from drone_pose.evaluation.drone_pairing import data_drone, refuse_other_drone
from drone_pose.evaluation.reports import markdown_table, size_table, write_report
from drone_pose.evaluation.scoring import score_estimates
from drone_pose.geometry.metrics import size_bins
from drone_pose.inference.estimator import PoseEstimate, PoseEstimator
from drone_pose.inference.overlay import draw_pose_overlay
from drone_pose.nets.silhouette import on_image, silhouette_iou
from drone_pose.nets.zoom import ZoomSettings


def open_dataset(data: str | Path, split: str, drone: str | None = None, limit: int | None = None) -> Dataset:
    """A synthetic dataset folder, or a UAVA root when `drone` is given; with `limit`, its first
    `limit` samples only."""
    dataset = (
        UAVADataset(data, drone, split, require_all_inside=True)
        if drone is not None
        else ShardDataset(data, split)
    )
    return dataset if limit is None else Subset(dataset, range(min(limit, len(dataset))))


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    uava_drone: str | None = None,
    device: str | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    overlays: int = 6,
    zoom: ZoomSettings | Literal["checkpoint"] | None = "checkpoint",
    flip_test: str = "checkpoint",
) -> dict[str, Any]:
    """Metrics of a checkpoint on a split; with `out`, also the report files. Returns a summary.
    zoom, flip_test: the estimator's second pass and flip test (see PoseEstimator.from_checkpoint)."""
    estimator = PoseEstimator.from_checkpoint(checkpoint, device=device, zoom=zoom, flip_test=flip_test)
    dataset = open_dataset(data, split, uava_drone, limit)
    drone = _drone_of(estimator)
    refuse_other_drone(drone.name, data_drone(dataset), str(data))
    truth: dict[str, list[Tensor]] = {key: [] for key in ("R", "t", "K", "keypoints", "image_sizes")}
    estimates: list[PoseEstimate] = []
    ious: list[Tensor] = []  # per image: IoU, soft IoU, whether the drone is in view
    source = dataset.dataset if isinstance(dataset, Subset) else dataset
    full_masks = bool(getattr(source, "has_full_mask", False))
    kept_images = []
    started = time.perf_counter()
    for batch, images, K, result in estimate_batches(estimator, dataset, batch_size):
        if result.silhouette is not None and full_masks:
            probability = on_image(result.silhouette, images.shape[2], images.shape[1])
            truth_mask = batch["full_mask"]
            shown = (truth_mask > 0.5).flatten(1).any(1).float()
            ious.append(torch.stack((*silhouette_iou(probability, truth_mask), shown), -1))
        estimates.append(dataclasses.replace(result, silhouette=None))  # scored: not kept
        truth["R"].append(batch["R"].double())
        truth["t"].append(batch["t"].double())
        truth["K"].append(K)
        truth["keypoints"].append(batch["keypoints"].double())
        truth["image_sizes"].append(torch.tensor([[images.shape[2], images.shape[1]]]).expand(len(images), 2))
        for i in range(min(overlays - len(kept_images), len(images))):
            kept_images.append(
                (
                    images[i],
                    result.keypoints[i],
                    batch["keypoints"][i].double(),
                    result.R[i],
                    result.t[i],
                    K[i],
                )
            )
    elapsed = time.perf_counter() - started
    estimate = PoseEstimate.concatenate(estimates)
    R_gt, t_gt, K_all, keypoints_gt, image_sizes = (torch.cat(truth[key]) for key in truth)
    scores = score_estimates(drone, estimate, R_gt, t_gt, K_all, keypoints_gt, image_sizes)
    metrics = scores.metrics
    label = f"{Path(checkpoint).name} on {Path(data).name}/{split}"
    samples = len(R_gt)
    summary: dict[str, Any] = {
        "label": label,
        "metrics": metrics,
        "metrics_valid_frames": scores.metrics_valid,
        "samples": samples,
        "zoom": None if estimator.zoom is None else estimator.zoom.to_dict(),
        "flip_test": estimator.flip_test,
        "seconds": round(elapsed, 2),
        "images_per_s": round(samples / max(elapsed, 1e-9), 1),
        "table": markdown_table([(label, metrics)]),
        "by_size": scores.by_size,
        "size_table": size_table(scores.by_size),
    }
    if ious:
        summary["silhouette"] = silhouette_scores(torch.cat(ious), torch.as_tensor(scores.samples["size_px"]))
    if out is not None:
        summary["files"] = write_report(
            out,
            label,
            metrics,
            scores.samples,
            scores.keypoint_errors_px.numpy(),
            drone.keypoint_names,
            scores.by_size,
        )
        for i, item in enumerate(kept_images):
            path = Path(out) / f"overlay_{i:02d}.png"
            image, keypoints, truth_keypoints, R, t, K = item
            overlay = draw_pose_overlay(
                image,
                drone,
                R.numpy(),
                t.numpy(),
                K.numpy(),
                keypoints.numpy(),
                truth=truth_keypoints.numpy(),
                scale=2,
            )
            with atomic_path(path) as temporary:
                if not cv2.imwrite(str(temporary), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR)):
                    raise OSError(errno.EIO, "OpenCV could not write the image", str(path))
            summary["files"][f"overlay_{i:02d}"] = str(path)
    return summary


def silhouette_scores(ious: Tensor, size_px: Tensor) -> dict[str, Any]:
    """Mean IoU and soft IoU (percent) of the estimator's silhouettes at image resolution against the
    full masks, over the images showing the drone, overall and per apparent-size bin (the bins of
    the pose table). ious [B,3]: IoU, soft IoU (drone_pose.nets.silhouette.silhouette_iou) and
    whether the image shows the drone (1/0); size_px [B]."""

    def means(rows: Tensor) -> dict[str, float]:
        shown = rows[rows[:, 2] > 0]
        return {
            "mask_IoU": 100.0 * float(shown[:, 0].nanmean()) if len(shown) else float("nan"),
            "mask_soft_IoU": 100.0 * float(shown[:, 1].nanmean()) if len(shown) else float("nan"),
            "count": float(len(shown)),
        }

    by_size = [{"size_px": [low, high], **means(ious[inside])} for low, high, inside in size_bins(size_px)]
    return {**means(ious), "by_size": by_size}


def estimate_batches(
    estimator: PoseEstimator, dataset: Dataset, batch_size: int
) -> Iterator[tuple[dict[str, Tensor], np.ndarray, Tensor, PoseEstimate]]:
    """(batch, uint8 images [B,H,W,3], K [B,3,3] float64, estimate) over a dataset, in order: the
    dataset's [0, 1] float images are quantised to what a camera driver delivers."""
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
        images = (batch["image"].permute(0, 2, 3, 1) * 255.0).round().to(torch.uint8).numpy()
        K = batch["K"].double()
        yield batch, images, K, estimator.estimate(images, K)


def _drone_of(estimator: PoseEstimator) -> DroneModel:
    """The drone model described by the checkpoint (its name, or a model from its own keypoints)."""
    from drone_pose.drones import load_drone

    description = estimator.description.get("drone", {})
    drone = load_drone(description.get("name", ""))
    if not np.allclose(drone.keypoints, np.asarray(description.get("keypoints", drone.keypoints))):
        raise ValueError(f"checkpoint keypoints differ from the built-in {drone.name} model")
    return drone
