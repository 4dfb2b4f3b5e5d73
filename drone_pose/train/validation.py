"""Validation of a network during training: the papers' metrics of the estimator's own keypoints
and PnP (second pass and flip test as the run trains for), covariance scales fitted on them, and
with the silhouette head the IoU of the silhouettes the estimator returns."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from drone_pose.drones import DroneModel
from drone_pose.geometry.camera import keypoints_in_image
from drone_pose.geometry.metrics import evaluate_poses
from drone_pose.geometry.pose_covariance import fit_covariance_scales, pose_error_vectors
from drone_pose.inference.estimator import keypoint_pnp
from drone_pose.inference.thresholds import EstimatorThresholds
from drone_pose.nets.flip import flip_averaged, validate_flip_test
from drone_pose.nets.heatmap_codec import (
    decode_heatmaps,
    heatmap_to_image,
)
from drone_pose.nets.predictor import HeatmapPredictor, StackedSilhouette
from drone_pose.nets.silhouette import image_grid, on_image, silhouette_iou, zoomed_silhouettes
from drone_pose.nets.zoom import ZoomSettings, locate_heatmaps, merge_zoomed, plan_zoom
from drone_pose.render.image_window import SilhouetteMap
from drone_pose.train.preparation import TrainingRun, zoom_settings


def validate_run(run: TrainingRun, predictor: HeatmapPredictor) -> dict[str, float]:
    """validation_metrics() on the run's validation data with its second pass and flip test."""
    config = run.config
    return validation_metrics(
        predictor,
        run.val_data,
        run.drone,
        config.batch_size,
        run.device,
        zoom_settings(config),
        config.flip_test,
    )


@torch.no_grad()
def validation_metrics(
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
    covariance_rotation_scale, covariance_fit_samples; see fit_covariance_scales). With the
    silhouette head: mask_IoU and mask_soft_IoU (percent), the mean over images showing the drone
    of the IoU between the estimator's silhouettes (second pass where it ran) at image resolution
    and the full masks (drone_pose.nets.silhouette.silhouette_iou)."""
    was_training = predictor.training
    predictor.eval()
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
    x3d = torch.tensor(drone.keypoints, dtype=torch.float64)
    R_all, t_all, R_gt, t_gt, K_all, errors, covariances = [], [], [], [], [], [], []
    ious: list[torch.Tensor] = []
    permutation = validate_flip_test(flip_test, drone.keypoints)
    masked = predictor.has_silhouette
    count = drone.num_keypoints
    single = StackedSilhouette(predictor) if masked else predictor  # [N,K(+1),h,w]
    if permutation is not None and masked:
        permutation = [*permutation, count]  # the silhouette channel mirrors onto itself
    flipped = single if permutation is None else flip_averaged(single, permutation)
    first_pass = flipped if flip_test == "all" else single
    thresholds = EstimatorThresholds()
    minimum = thresholds.min_keypoint_confidence
    for batch in loader:
        images = batch["image"].to(device)
        outputs = first_pass(images)
        heatmaps = outputs[:, :count]
        xy, confidences = decode_heatmaps(heatmaps)
        x2d = heatmap_to_image(xy, images.shape[-1] / heatmaps.shape[-1])
        silhouette = None
        if masked:
            size = (heatmaps.shape[-1], heatmaps.shape[-2])
            grid = image_grid(size, (images.shape[-1], images.shape[-2]), len(images), images.device)
            silhouette = SilhouetteMap(outputs[:, count], grid)
        if zoom is not None:
            plan = plan_zoom(images, images, x2d, confidences, minimum, zoom)
            if plan.index.numel() > 0:
                window_outputs = flipped(plan.crops)
                points, window_confidences = locate_heatmaps(window_outputs[:, :count], plan.crops.shape[-1])
                x2d, confidences = merge_zoomed(plan, x2d, confidences, points, window_confidences)
                if silhouette is not None:
                    silhouette = zoomed_silhouettes(silhouette, plan, window_outputs[:, count])
        if silhouette is not None:
            probability = on_image(silhouette, images.shape[-1], images.shape[-2])
            truth = batch["full_mask"].to(device)
            shown = (truth > 0.5).flatten(1).any(1).float()
            ious.append(torch.stack((*silhouette_iou(probability, truth), shown), -1).cpu())
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
    if ious:
        both = torch.cat(ious)
        shown = both[:, 2] > 0  # images whose true mask is not empty
        metrics["mask_IoU"] = 100.0 * float(both[shown, 0].mean()) if shown.any() else float("nan")
        metrics["mask_soft_IoU"] = 100.0 * float(both[shown, 1].mean()) if shown.any() else float("nan")
    return {key: float(value) for key, value in metrics.items()}
