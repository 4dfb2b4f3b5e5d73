"""`drone-pose eval-bag BAG` on a multi-camera bag: the fused pose of every group of frames, offline
and deterministic (no DDS), scored against the bag's ground truth.

Groups are the cameras' frames of one stamp (drone_pose.bags.rig_frames; a camera without a frame at
that stamp is absent from the group). Each group goes through FusedEstimator.estimate as a fusion
node would give it, one group at a time; runs of complete groups with images of one size are
batched, which gives the same poses (see test/evaluation/test_fused_bag_evaluation.py). Extrinsics
come from /tf_static (rig frame: the frame of /ground_truth/pose) or a rig file.

Scoring, with the rows of `drone-pose eval` on a multi-camera set (drone_pose.evaluation.
fusion_evaluation): each camera alone (its frames, in its own frame, against its own ground truth),
the most certain single view per group, and the fused pose against /ground_truth/pose. The fused
pose is scored in the group's first present camera (NPE and Proj need a camera; rotation,
translation, ADD and NEES errors are those in the rig frame).

Output folder: results.md/json, samples.csv and plots of the fused poses; fusion.md/json with the
rows; fusion.png (position error against time, each camera alone and fused); frames.csv (per
group: stamp, valid, reason, views present, used and gated, NEES, errors and the fused pose in the
rig frame); estimates/ (an MCAP bag of the fused poses in the rig frame).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from drone_pose.atomic_files import atomic_path
from drone_pose.bags.estimates_bag import EstimatedFrame, write_estimates_bag
from drone_pose.bags.frames import bag_drone
from drone_pose.bags.rig_frames import FrameGroup, RigFrames, read_rig_frames
from drone_pose.drones import DroneModel, load_drone
from drone_pose.errors import UserError
from drone_pose.evaluation.bag_evaluation import score_frames, write_frames_csv
from drone_pose.evaluation.drone_pairing import refuse_other_drone
from drone_pose.evaluation.fusion_scoring import (
    fusion_table,
    in_first_camera,
    most_certain_view,
    with_errors,
    write_fusion_documents,
)
from drone_pose.evaluation.reports import write_report
from drone_pose.evaluation.scoring import Scores
from drone_pose.fusion.fused_estimator import DEFAULT_GATE_MAHALANOBIS, FusedEstimate, FusedEstimator
from drone_pose.fusion.rig_file import invert_rigid, load_rig_file
from drone_pose.geometry.pose_covariance import mahalanobis_squared, pose_error_vectors
from drone_pose.inference.checkpoint import DEFAULT_DRONE, default_checkpoint
from drone_pose.inference.estimator import PoseEstimate, PoseEstimator


@dataclass(frozen=True)
class BagRig:
    """The rig a bag is fused with: rig_frame, cam_from_rig [V,4,4] float64 (p_cam = T p_rig,
    metres, in the bag's camera order), truth_from_rig [4,4] (the rig frame in the frame of
    /ground_truth/pose) and source ("/tf_static" or the rig file's path)."""

    rig_frame: str
    cam_from_rig: np.ndarray
    truth_from_rig: np.ndarray
    source: str


def bag_rig(frames: RigFrames, rig_file: str | Path | None = None) -> BagRig:
    """The extrinsics of the bag's cameras: /tf_static, or the rig file's cameras of the same names
    (frame ids must match the images'; its rig frame must be the truth frame or one /tf_static
    connects to it). UserError (one line) otherwise."""
    if rig_file is None:
        rig_frame, cam_from_rig = frames.tf_extrinsics()
        return BagRig(rig_frame, cam_from_rig, np.eye(4), "/tf_static")
    rig = load_rig_file(rig_file)
    for camera, frame_id in zip(frames.cameras, frames.frame_ids, strict=True):
        if camera not in rig.camera_names:
            raise UserError(
                f"{rig_file}: no camera {camera!r} (it lists {', '.join(rig.camera_names)}); the rig file "
                "must name every fused camera"
            )
        listed = rig.frame_ids[rig.camera_names.index(camera)]
        if listed != frame_id:
            raise UserError(
                f"{rig_file}: cameras.{camera}.frame_id is {listed!r} but the bag's /{camera} images are "
                f"in {frame_id!r}"
            )
    cam_from_rig = np.stack([rig.cam_from_rig[rig.camera_names.index(camera)] for camera in frames.cameras])
    if rig.rig_frame == frames.truth_frame:
        truth_from_rig = np.eye(4)
    else:
        truth_from_rig = frames.static.lookup(frames.truth_frame, rig.rig_frame, f"{frames.bag}: ")
    return BagRig(rig.rig_frame, cam_from_rig, truth_from_rig, str(rig_file))


@dataclass(frozen=True)
class _GroupResult:
    """One group's fusion: the fused pose R [3,3], t [3] (rig <- drone) and covariance [6,6] (rig
    axes, ROS order), valid, reason; views_used and gated [V] bool (absent views: False); views:
    the present views' single-view estimates; in_camera: the fused pose as its first present camera
    sees it (in_first_camera); chosen: the camera of the most certain view; fusion_ms: the fusion's
    share of its batch's fusion time."""

    group: FrameGroup
    R: np.ndarray
    t: np.ndarray
    covariance: np.ndarray
    valid: bool
    reason: str
    views_used: np.ndarray
    gated: np.ndarray
    views: PoseEstimate
    in_camera: PoseEstimate
    chosen: int
    fusion_ms: float

    def view(self, camera: int) -> PoseEstimate:
        """The single-view estimate of camera `camera` (present in the group)."""
        return self.views.take(torch.tensor([self.group.present().index(camera)]))


def evaluate_fused_bag(
    bag: str | Path,
    checkpoint: str | Path | None,
    out: str | Path,
    cameras: Sequence[str] | None = None,
    rig_file: str | Path | None = None,
    device: str | None = None,
    gate_mahalanobis: float = DEFAULT_GATE_MAHALANOBIS,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Fuse the bag's cameras (default: all) group by group and write the report to `out`; returns
    the summary. batch_size: complete groups per network pass. checkpoint None: the shipped
    checkpoint of the bag's drone (custom metadata), else of m2ed."""
    shown_drone = bag_drone(bag)
    frames = read_rig_frames(bag, cameras)
    rig = bag_rig(frames, rig_file)
    if checkpoint is None:
        checkpoint = default_checkpoint(shown_drone or DEFAULT_DRONE)
    estimator = PoseEstimator.from_checkpoint(checkpoint, device=device)
    drone = load_drone(estimator.description["drone"]["name"])
    refuse_other_drone(drone.name, shown_drone, str(bag))
    fuser = FusedEstimator(estimator, gate_mahalanobis)
    started = time.perf_counter()
    results = [result for batch in _batches(frames.groups, batch_size) for result in _fuse(fuser, batch, rig)]
    elapsed = time.perf_counter() - started
    rows, fused_scores, series = _rows(drone, frames, rig, results)
    out = Path(out)
    label = f"{Path(checkpoint).name} on {Path(bag).name}, fused {'+'.join(frames.cameras)}"
    nees = _nees(results, rig)
    samples = {
        "stamp_ns": np.array([r.group.stamp for r in results]),
        **fused_scores.samples,
        "views_used": np.array([int(r.views_used.sum()) for r in results]),
    }
    files = write_report(
        out,
        label,
        fused_scores.metrics,
        samples,
        fused_scores.keypoint_errors_px.numpy(),
        drone.keypoint_names,
        fused_scores.by_size,
    )
    files["frames"] = str(_write_frames(out / "frames.csv", results, fused_scores, nees))
    files["estimates"] = str(
        write_estimates_bag(
            out / "estimates",
            [EstimatedFrame(r.group.stamp, rig.rig_frame, r.valid, r.R, r.t, r.covariance) for r in results],
        )
    )
    summary: dict[str, Any] = {
        "label": label,
        "cameras": list(frames.cameras),
        "rig_frame": rig.rig_frame,
        "extrinsics": rig.source,
        "gate_mahalanobis": gate_mahalanobis,
        "groups": len(results),
        "complete_groups": sum(len(r.group.present()) == len(frames.cameras) for r in results),
        "skipped": frames.skipped,
        "rows": [{"label": row_label, **metrics} for row_label, metrics in rows],
        "metrics": fused_scores.metrics,
        "metrics_valid_groups": fused_scores.metrics_valid,
        "nees_median": float(np.nanmedian(nees)) if np.isfinite(nees).any() else float("nan"),
        "groups_per_s": round(len(results) / max(elapsed, 1e-9), 2),
        "table": fusion_table(rows),
    }
    heading = (
        f"{summary['groups']} groups ({summary['complete_groups']} complete) of "
        f"{len(frames.cameras)} cameras, extrinsics from {rig.source}, poses in {rig.rig_frame!r}"
    )
    files["fusion_png"] = str(_plot_errors(out / "fusion.png", series))
    files.update(write_fusion_documents(out, {**summary, "files": files}, heading))
    summary["files"] = files
    return summary


def _batches(groups: Sequence[FrameGroup], batch_size: int) -> Iterator[list[FrameGroup]]:
    """Consecutive groups, batch_size at most a batch: complete groups whose views have the same
    image sizes share a batch; a partial group is a batch of its own."""
    batch: list[FrameGroup] = []

    def shapes(group: FrameGroup) -> tuple[tuple[int, ...], ...] | None:
        if any(view is None for view in group.views):
            return None
        return tuple(view["rgb"].shape for view in group.views)

    for group in groups:
        if batch and (len(batch) >= batch_size or shapes(group) is None or shapes(group) != shapes(batch[0])):
            yield batch
            batch = []
        batch.append(group)
        if shapes(group) is None:
            yield batch
            batch = []
    if batch:
        yield batch


def _fuse(fuser: FusedEstimator, batch: list[FrameGroup], rig: BagRig) -> list[_GroupResult]:
    """FusedEstimator.estimate on one group (its present views), or on B complete groups at once."""
    present = batch[0].present()
    views = [[group.views[v] for v in present] for group in batch]
    distortion = [view["distortion"] for group in views for view in group]
    if len(batch) == 1:
        images: Any = [view["rgb"] for view in views[0]]
        K = np.stack([view["K"] for view in views[0]])
        cam_from_rig = rig.cam_from_rig[present]
    else:
        images = np.stack([np.stack([view["rgb"] for view in group]) for group in views])
        K = np.stack([np.stack([view["K"] for view in group]) for group in views])
        cam_from_rig = np.broadcast_to(rig.cam_from_rig, (len(batch), *rig.cam_from_rig.shape)).copy()
    fused = fuser.estimate(images, K, cam_from_rig, distortion)
    count = len(present)
    first_views = fused.views.take(torch.arange(len(batch)) * count)
    first_camera = torch.from_numpy(rig.cam_from_rig[present[0]]).expand(len(batch), 4, 4)
    in_camera = in_first_camera(fused, first_camera, first_views)
    return [_group_result(fused, b, group, present, in_camera, rig) for b, group in enumerate(batch)]


def _group_result(
    fused: FusedEstimate,
    b: int,
    group: FrameGroup,
    present: list[int],
    in_camera: PoseEstimate,
    rig: BagRig,
) -> _GroupResult:
    """The result of group b of a FusedEstimate of len(present) views per group."""
    count, cameras = len(present), len(rig.cam_from_rig)
    views = fused.views.take(torch.arange(b * count, (b + 1) * count))
    _, chosen = most_certain_view(views, 1, count)
    used, gated = np.zeros(cameras, dtype=bool), np.zeros(cameras, dtype=bool)
    used[present] = fused.views_used[b].numpy()
    gated[present] = fused.gated[b].numpy()
    groups = fused.R.shape[0]
    return _GroupResult(
        group=group,
        R=fused.R[b].double().numpy(),
        t=fused.t[b].double().numpy(),
        covariance=fused.covariance[b].double().numpy(),
        valid=bool(fused.valid[b]),
        reason=fused.reasons[b],
        views_used=used,
        gated=gated,
        views=views,
        in_camera=in_camera.take(torch.tensor([b])),
        chosen=present[int(chosen[0])],
        fusion_ms=fused.timings_ms["fusion"] / groups,
    )


def _truth_in_rig(group: FrameGroup, rig: BagRig) -> np.ndarray:
    """rig_from_drone [4,4]: the group's ground truth moved from the truth frame into the rig frame."""
    truth = np.eye(4)
    truth[:3, :3], truth[:3, 3] = group.R, group.t
    return invert_rigid(rig.truth_from_rig) @ truth


_Series = tuple[str, np.ndarray, np.ndarray]  # a row's label, stamps [S] ns, position errors [S] cm


def _rows(
    drone: DroneModel, frames: RigFrames, rig: BagRig, results: list[_GroupResult]
) -> tuple[list[tuple[str, dict[str, float]]], Scores, list[_Series]]:
    """The table's rows (each camera alone, the most certain view, the fusion), the fused scores and
    the position errors of each camera alone and of the fusion over time."""
    rows, series = [], []
    for v, camera in enumerate(frames.cameras):
        seen = [r for r in results if r.group.views[v] is not None]
        if seen:
            estimate = PoseEstimate.concatenate([r.view(v) for r in seen])
            scores = score_frames(drone, estimate, [r.group.views[v] for r in seen])
            rows.append((f"{camera} alone", with_errors(scores)))
            series.append(
                (rows[-1][0], np.array([r.group.stamp for r in seen]), scores.samples["translation_cm"])
            )
    certain = PoseEstimate.concatenate([r.view(r.chosen) for r in results])
    certain_scores = score_frames(drone, certain, [r.group.views[r.chosen] for r in results])
    rows.append(("most certain single view", with_errors(certain_scores)))
    truths = []
    for r in results:
        first = r.group.present()[0]
        camera_truth = rig.cam_from_rig[first] @ _truth_in_rig(r.group, rig)
        truths.append({**r.group.views[first], "R": camera_truth[:3, :3], "t": camera_truth[:3, 3]})
    fused_scores = score_frames(drone, PoseEstimate.concatenate([r.in_camera for r in results]), truths)
    metrics = with_errors(fused_scores)
    metrics["views_used"] = float(np.mean([r.views_used.sum() for r in results]))
    metrics["views_gated"] = float(np.mean([r.gated.sum() for r in results]))
    metrics["fusion_ms_per_group"] = float(np.mean([r.fusion_ms for r in results]))
    count = len(frames.cameras)
    rows.append((f"fused, {count} camera{'s' if count > 1 else ''}", metrics))
    stamps = np.array([r.group.stamp for r in results])
    series.append((rows[-1][0], stamps, fused_scores.samples["translation_cm"]))
    return rows, fused_scores, series


def _plot_errors(path: Path, series: list[_Series]) -> Path:
    """fusion.png: the position error of each camera alone and of the fusion against time."""
    start = min(int(stamps[0]) for _, stamps, _ in series)
    figure, axes = plt.subplots(figsize=(8, 4))
    for label, stamps, errors in series:
        fused = label.startswith("fused")
        axes.plot(
            (stamps - start) / 1e9,
            errors,
            marker=".",
            label=label,
            linewidth=2 if fused else 1,
            zorder=3 if fused else 2,
        )
    axes.set_xlabel("time (s)")
    axes.set_ylabel("position error (cm)")
    axes.set_yscale("log")
    axes.legend()
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    return path


def _nees(results: list[_GroupResult], rig: BagRig) -> np.ndarray:
    """Per group, the squared Mahalanobis distance [G] of the fused pose's error under its covariance
    (rig frame; NaN without a positive-definite covariance)."""
    truth = torch.from_numpy(np.stack([_truth_in_rig(r.group, rig) for r in results]))
    R = torch.from_numpy(np.stack([r.R for r in results]))
    t = torch.from_numpy(np.stack([r.t for r in results]))
    covariance = torch.from_numpy(np.stack([r.covariance for r in results]))
    errors = pose_error_vectors(R, t, truth[:, :3, :3], truth[:, :3, 3])
    return mahalanobis_squared(errors, covariance).numpy()


def _write_frames(path: Path, results: list[_GroupResult], scores: Scores, nees: np.ndarray) -> Path:
    """frames.csv: per group, write_frames_csv's columns with views (present), views_used, gated
    and nees, the pose in the rig frame."""
    return write_frames_csv(
        path,
        [r.group.stamp for r in results],
        torch.tensor([r.valid for r in results]),
        [r.reason for r in results],
        scores,
        torch.from_numpy(np.stack([r.R for r in results])),
        torch.from_numpy(np.stack([r.t for r in results])),
        extra={
            "views": [len(r.group.present()) for r in results],
            "views_used": [int(r.views_used.sum()) for r in results],
            "gated": [int(r.gated.sum()) for r in results],
            "nees": [f"{value:.4f}" for value in nees],
        },
    )
