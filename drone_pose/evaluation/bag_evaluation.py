"""`drone-pose eval-bag BAG`: the estimator over a bag's frames, offline and deterministic (no DDS),
scored against the bag's ground-truth poses by the same scoring as `drone-pose eval`.

Frames are the images of `camera` paired by stamp with its CameraInfo and ground truth
(drone_pose.bags.frames). Output folder: results.md/json, samples.csv and plots (as `drone-pose
eval`), frames.csv (per frame: stamp, valid, reason, errors, pose) and estimates/ (an MCAP bag with
the estimated poses, covariances, TF and overlay images, for RViz or Foxglove).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from drone_pose.atomic_files import atomic_open
from drone_pose.bags.estimates_bag import EstimatedFrame, write_estimates_bag
from drone_pose.bags.frames import bag_drone, read_frames
from drone_pose.drones import DroneModel, load_drone
from drone_pose.errors import UserError
from drone_pose.evaluation.drone_pairing import refuse_other_drone
from drone_pose.evaluation.reports import markdown_table, size_table, write_report
from drone_pose.evaluation.scoring import Scores, score_estimates
from drone_pose.geometry.camera import project_points
from drone_pose.geometry.distortion import distort_pixels
from drone_pose.geometry.rotations import matrix_to_quaternion_xyzw
from drone_pose.inference.checkpoint import DEFAULT_DRONE, default_checkpoint
from drone_pose.inference.estimator import PoseEstimate, PoseEstimator
from drone_pose.inference.overlay import draw_pose_overlay


def evaluate_bag(
    bag: str | Path,
    checkpoint: str | Path | None,
    out: str | Path,
    camera: str = "camera",
    device: str | None = None,
    batch_size: int = 8,
    overlay_every: int = 1,
) -> dict[str, Any]:
    """Run the estimator over the bag's frames and write the report; returns the summary.
    checkpoint None: the shipped checkpoint of the bag's drone (custom metadata), else of m2ed."""
    shown_drone = bag_drone(bag)
    if checkpoint is None:
        checkpoint = default_checkpoint(shown_drone or DEFAULT_DRONE)
    estimator = PoseEstimator.from_checkpoint(checkpoint, device=device)
    drone = load_drone(estimator.description["drone"]["name"])
    refuse_other_drone(drone.name, shown_drone, str(bag))
    frames, skipped = read_frames(bag, camera)
    if not frames:
        raise UserError(
            f"{bag}: no frame of /{camera} has camera_info and ground truth; check the bag and --camera"
        )
    started = time.perf_counter()
    estimates = [
        estimator.estimate(
            np.stack([f["rgb"] for f in group]),
            np.stack([f["K"] for f in group]),
            distortion=[f["distortion"] for f in group],
        )
        for group in _same_size_batches(frames, batch_size)
    ]
    elapsed = time.perf_counter() - started
    estimate = PoseEstimate.concatenate(estimates)
    scores = score_frames(drone, estimate, frames)
    out = Path(out)
    label = f"{Path(checkpoint).name} on {Path(bag).name}/{camera}"
    samples = {"stamp_ns": np.array([f["stamp"] for f in frames]), **scores.samples}
    files = write_report(
        out,
        label,
        scores.metrics,
        samples,
        scores.keypoint_errors_px.numpy(),
        drone.keypoint_names,
        scores.by_size,
    )
    files["frames"] = str(
        write_frames_csv(
            out / "frames.csv",
            [f["stamp"] for f in frames],
            estimate.valid,
            estimate.reasons,
            scores,
            estimate.R,
            estimate.t,
        )
    )

    def overlay(index: int) -> np.ndarray | None:
        if index % overlay_every != 0:
            return None
        frame = frames[index]
        return draw_pose_overlay(
            frame["rgb"],
            drone,
            estimate.R[index].double().numpy(),
            estimate.t[index].double().numpy(),
            frame["K"],
            estimate.keypoints[index].numpy(),
            distortion=frame["distortion"],
        )

    estimated = [
        EstimatedFrame(
            frame["stamp"],
            frame["frame_id"],
            bool(estimate.valid[index]),
            estimate.R[index].double().numpy(),
            estimate.t[index].double().numpy(),
            estimate.covariance[index].double().numpy(),
        )
        for index, frame in enumerate(frames)
    ]
    files["estimates"] = str(write_estimates_bag(out / "estimates", estimated, overlay))
    return {
        "label": label,
        "frames": len(frames),
        "skipped": skipped,
        "metrics": scores.metrics,
        "metrics_valid_frames": scores.metrics_valid,
        "frames_per_s": round(len(frames) / max(elapsed, 1e-9), 1),
        "table": markdown_table([(label, scores.metrics)]),
        "by_size": scores.by_size,
        "size_table": size_table(scores.by_size),
        "files": files,
    }


def score_frames(drone: DroneModel, estimate: PoseEstimate, frames: Sequence[dict[str, Any]]) -> Scores:
    """Scores of the estimates of S frames (read_frames dicts: their true pose R, t in the camera,
    K, distortion and rgb image) against their ground truth."""
    R_gt = torch.tensor(np.stack([f["R"] for f in frames]))
    t_gt = torch.tensor(np.stack([f["t"] for f in frames]))
    K = torch.tensor(np.stack([f["K"] for f in frames]))
    pinhole_keypoints, _ = project_points(torch.tensor(drone.keypoints, dtype=torch.float64), R_gt, t_gt, K)
    # the estimator's keypoints are where the (distorted) image shows them: so are the true ones
    keypoints_gt = distort_pixels(pinhole_keypoints, K, [f["distortion"] for f in frames])
    image_sizes = torch.tensor([[f["rgb"].shape[1], f["rgb"].shape[0]] for f in frames])
    return score_estimates(drone, estimate, R_gt, t_gt, K, keypoints_gt, image_sizes)


def _same_size_batches(frames: list[dict[str, Any]], batch_size: int) -> list[list[dict[str, Any]]]:
    """Consecutive frames in groups of at most batch_size whose images share one size."""
    groups: list[list[dict[str, Any]]] = []
    for frame in frames:
        if groups and len(groups[-1]) < batch_size and groups[-1][0]["rgb"].shape == frame["rgb"].shape:
            groups[-1].append(frame)
        else:
            groups.append([frame])
    return groups


def write_frames_csv(
    path: Path,
    stamps: Sequence[int],
    valid: Tensor,
    reasons: Sequence[str],
    scores: Scores,
    R: Tensor,
    t: Tensor,
    extra: dict[str, Sequence[Any]] | None = None,
) -> Path:
    """Per frame (or group) S: stamp (ns), valid, reason, the `extra` columns (name -> S values),
    rotation/translation/reprojection errors and the pose R [S,3,3], t [S,3] metres as t and
    quaternion x, y, z, w at full float64 precision."""
    extra = extra or {}
    quaternions = matrix_to_quaternion_xyzw(R.double()).tolist()
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                *("stamp_ns", "valid", "reason", *extra, "rotation_deg", "translation_cm", "proj_px"),
                *("tx", "ty", "tz", "qx", "qy", "qz", "qw"),
            ]
        )
        for index, stamp in enumerate(stamps):
            writer.writerow(
                [
                    stamp,
                    int(valid[index]),
                    reasons[index],
                    *(column[index] for column in extra.values()),
                    f"{scores.samples['rotation_deg'][index]:.4f}",
                    f"{scores.samples['translation_cm'][index]:.4f}",
                    f"{scores.samples['proj_px'][index]:.4f}",
                    *(repr(v) for v in t[index].double().tolist()),
                    *(repr(v) for v in quaternions[index]),
                ]
            )
    return path
