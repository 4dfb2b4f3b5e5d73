"""Stage-1 rig self-calibration of a recorded multi-camera flight: every view of every group through
the single-camera estimator, then RigAccumulator (drone_pose.fusion.rig_initialisation).

The function a rig-calibration command would call on a bag; `tools/rig_stage1_flight.py` measures
it on synthetic flights against their true rig. Views take part when their own verdict is valid
or only uncertain_pose (as in FusedEstimator: an uncertain depth is down-weighted by its
covariance, not dropped); a camera without a frame at a stamp is an unusable view of that group.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from drone_pose.bags.rig_frames import FrameGroup
from drone_pose.fusion.fused_estimator import TAKING_PART
from drone_pose.fusion.rig_initialisation import RigAccumulator
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
