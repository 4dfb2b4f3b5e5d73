"""Stage-1 rig self-calibration of a recorded multi-camera flight: every view of every group through
the single-camera estimator, then RigAccumulator (drone_pose.fusion.rig_initialisation).

calibrate_rig_bag is `drone-pose calibrate-rig BAG`; `tools/rig_stage1_flight.py` measures the
same steps on synthetic flights against their true rig. Views take part when their own verdict is valid
or only uncertain_pose (as in FusedEstimator: an uncertain depth is down-weighted by its
covariance, not dropped); a camera without a frame at a stamp is an unusable view of that group.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from drone_pose.bags.frames import BagError, bag_drone
from drone_pose.bags.rig_frames import FrameGroup, RigFrames, read_rig_frames
from drone_pose.errors import UserError
from drone_pose.fusion.fused_estimator import TAKING_PART
from drone_pose.fusion.rig_file import Rig
from drone_pose.fusion.rig_initialisation import RigAccumulator, RigEstimate, extrinsics_errors
from drone_pose.inference.checkpoint import DEFAULT_DRONE, default_checkpoint
from drone_pose.inference.estimator import PoseEstimator


@dataclass(frozen=True)
class ViewPoses:
    """Single-view poses of B groups of V cameras: R [B,V,3,3], t [B,V,3] (camera optical <- drone,
    metres), covariance [B,V,6,6] (the estimator's, PnP convention), taking_part [B,V] bool,
    reasons [B][V] (the estimator's verdicts; "absent" where the camera had no frame)."""

    R: Tensor
    t: Tensor
    covariance: Tensor
    taking_part: Tensor
    reasons: list[list[str]]


def view_poses(estimator: PoseEstimator, groups: Sequence[FrameGroup], cameras: int) -> ViewPoses:
    """The single-camera estimator on every present view of `groups` (one batch per camera)."""
    batch = len(groups)
    R = torch.eye(3, dtype=torch.float64).repeat(batch, cameras, 1, 1)
    t = torch.zeros(batch, cameras, 3, dtype=torch.float64)
    covariance = torch.eye(6, dtype=torch.float64).repeat(batch, cameras, 1, 1)
    taking_part = torch.zeros(batch, cameras, dtype=torch.bool)
    reasons = [["absent"] * cameras for _ in groups]
    for v in range(cameras):
        rows = [b for b, group in enumerate(groups) if group.views[v] is not None]
        if not rows:
            continue
        frames = [groups[b].views[v] for b in rows]
        estimate = estimator.estimate(
            np.stack([frame["rgb"] for frame in frames]),
            np.stack([frame["K"] for frame in frames]),
            [frame.get("distortion") for frame in frames],
        )
        index = torch.tensor(rows)
        R[index, v], t[index, v] = estimate.R.double(), estimate.t.double()
        covariance[index, v] = estimate.covariance.double()
        taking_part[index, v] = torch.tensor([reason in TAKING_PART for reason in estimate.reasons])
        for b, reason in zip(rows, estimate.reasons, strict=True):
            reasons[b][v] = reason
    return ViewPoses(R, t, covariance, taking_part, reasons)


def accumulate_groups(
    estimator: PoseEstimator,
    groups: Sequence[FrameGroup],
    accumulator: RigAccumulator,
    batch_groups: int = 8,
    on_batch: Callable[[int, RigAccumulator], None] | None = None,
) -> dict[str, float | int]:
    """Feed the groups to the accumulator batch by batch (as a fusion node would, group by group);
    on_batch(groups done, accumulator) after each batch. Returns timing and verdict counts."""
    started = time.perf_counter()
    estimator_s, views, taking = 0.0, 0, 0
    for start in range(0, len(groups), batch_groups):
        chunk = groups[start : start + batch_groups]
        tick = time.perf_counter()
        poses = view_poses(estimator, chunk, accumulator.views)
        estimator_s += time.perf_counter() - tick
        accumulator.add(poses.R, poses.t, poses.covariance, poses.taking_part)
        views += sum(reason != "absent" for row in poses.reasons for reason in row)
        taking += int(poses.taking_part.sum())
        if on_batch is not None:
            on_batch(start + len(chunk), accumulator)
    return {
        "groups": len(groups),
        "views": views,
        "views_taking_part": taking,
        "estimator_s": round(estimator_s, 2),
        "total_s": round(time.perf_counter() - started, 2),
    }


@dataclass(frozen=True)
class RigCalibration:
    """The rig of a recorded flight: estimate (RigEstimate, reference camera's optical frame),
    rig (the rig file's contents; None when a camera is unresolved) and summary (JSON-ready)."""

    estimate: RigEstimate
    rig: Rig | None
    summary: dict[str, Any]


def calibrate_rig_bag(
    bag: str | Path,
    cameras: Sequence[str] | None = None,
    reference: str | None = None,
    checkpoint: str | Path | None = None,
    device: str | None = None,
    rig_frame: str | None = None,
    batch_groups: int = 8,
) -> RigCalibration:
    """Stage-1 rig calibration of a multi-camera bag (`drone-pose calibrate-rig`): every view of
    every group through the single-camera estimator, all groups into a RigAccumulator (kept whole),
    one robust estimate anchored to camera `reference` (default: the first of `cameras`, default
    the bag's cameras). Ground truth is not needed; where the bag's /tf_static connects the
    cameras, the summary scores the estimate against it (`vs_tf_static`). UserError (one line) for
    an unknown reference camera or a rig with fewer than two cameras."""
    frames = read_rig_frames(bag, cameras, require_truth=False)
    names = list(frames.cameras)
    if len(names) < 2:
        raise UserError(f"{bag}: calibrating a rig needs at least two cameras, got {', '.join(names)}")
    reference = names[0] if reference is None else reference
    if reference not in names:
        raise UserError(f"--reference {reference!r} is not one of the cameras ({', '.join(names)})")
    if checkpoint is None:
        checkpoint = default_checkpoint(bag_drone(bag) or DEFAULT_DRONE)
    estimator = PoseEstimator.from_checkpoint(checkpoint, device=device)
    accumulator = RigAccumulator(
        len(names), capacity=max(len(frames.groups), 1), reference=names.index(reference)
    )
    verdicts: list[Counter[str]] = [Counter() for _ in names]
    timing = _accumulate_counting(estimator, frames.groups, accumulator, batch_groups, verdicts)
    started = time.perf_counter()
    estimate = accumulator.estimate()
    timing["rig_estimate_s"] = round(time.perf_counter() - started, 2)
    try:
        rig = estimate.to_rig(names, frames.frame_ids, rig_frame)
    except ValueError:
        rig = None
    summary = _calibration_summary(frames, estimate, accumulator, verdicts, rig, timing)
    summary["checkpoint"] = str(checkpoint)
    return RigCalibration(estimate, rig, summary)


def _accumulate_counting(
    estimator: PoseEstimator,
    groups: Sequence[FrameGroup],
    accumulator: RigAccumulator,
    batch_groups: int,
    verdicts: list[Counter[str]],
) -> dict[str, Any]:
    """accumulate_groups, counting each camera's single-view verdicts."""
    started = time.perf_counter()
    for start in range(0, len(groups), batch_groups):
        poses = view_poses(estimator, groups[start : start + batch_groups], accumulator.views)
        accumulator.add(poses.R, poses.t, poses.covariance, poses.taking_part)
        for row in poses.reasons:
            for v, reason in enumerate(row):
                verdicts[v][reason or "valid"] += 1
    return {"estimator_s": round(time.perf_counter() - started, 2)}


def _calibration_summary(
    frames: RigFrames,
    estimate: RigEstimate,
    accumulator: RigAccumulator,
    verdicts: list[Counter[str]],
    rig: Rig | None,
    timing: dict[str, Any],
) -> dict[str, Any]:
    """The JSON summary of calibrate_rig_bag (docs/cli.md#drone-pose-calibrate-rig)."""
    names = list(frames.cameras)
    rotation_std, position_std = estimate.rotation_std_deg(), estimate.position_std_m()
    positions = estimate.rig_from_camera()[:, :3, 3].norm(dim=-1)
    used = accumulator.frames_kept
    cameras = []
    for v, name in enumerate(names):
        resolved = bool(estimate.resolved[v])
        cameras.append(
            {
                "camera": name,
                "frame_id": frames.frame_ids[v],
                "resolved": resolved,
                "path": [names[u] for u in estimate.paths[v]],
                "rotation_std_deg": round(float(rotation_std[v]), 4) if resolved else None,
                "position_std_m": round(float(position_std[v]), 5) if resolved else None,
                "distance_from_reference_m": round(float(positions[v]), 4) if resolved else None,
                "views_taking_part": int(accumulator.usable_views[v]),
                "verdicts": dict(sorted(verdicts[v].items())),
            }
        )
    pairs = {
        f"{names[u]}-{names[v]}": {
            "co_observations": int(estimate.co_observations[u, v]),
            "inliers": int(estimate.inliers[u, v]),
            "outliers": int(estimate.outliers[u, v]),
        }
        for u in range(len(names))
        for v in range(u + 1, len(names))
    }
    summary: dict[str, Any] = {
        "bag": frames.bag,
        "cameras": names,
        "reference": names[estimate.reference],
        "rig_frame": None if rig is None else rig.rig_frame,
        "complete": rig is not None,
        "groups": accumulator.frames_seen,
        "groups_used": used,
        "groups_rejected": {"fewer_than_two_usable_views": accumulator.frames_seen - used},
        "camera_estimates": cameras,
        "pairs": pairs,
        **timing,
    }
    vs_truth = _against_tf_static(frames, estimate)
    if vs_truth is not None:
        summary["vs_tf_static"] = vs_truth
    return summary


def _against_tf_static(frames: RigFrames, estimate: RigEstimate) -> dict[str, Any] | None:
    """Errors of the estimate against the bag's /tf_static (None when it does not connect every
    camera to the reference): per camera rotation_error_deg, position_error_m and its percentage of
    the true distance from the reference camera."""
    reference_frame = frames.frame_ids[estimate.reference]
    try:
        truth = np.stack([frames.static.lookup(frame_id, reference_frame) for frame_id in frames.frame_ids])
    except BagError:
        return None
    errors = extrinsics_errors(estimate.cam_from_ref, truth, estimate.reference)
    return {
        name: {
            "rotation_error_deg": round(errors["rotation_deg"][v], 4),
            "position_error_m": round(errors["position_m"][v], 5),
            "position_error_percent_of_baseline": None
            if math.isnan(errors["position_percent"][v])
            else round(errors["position_percent"][v], 3),
            "baseline_m": round(errors["baseline_m"][v], 4),
        }
        for v, name in enumerate(frames.cameras)
        if v != estimate.reference
    }
