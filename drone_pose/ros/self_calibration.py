"""The fusion node's third extrinsics source, `extrinsics: estimate`: the rig calibrates itself from
the drone it watches (drone_pose.fusion.rig_initialisation, stage 1).

Plain Python (no rclpy). Every group's single-view poses go into a RigAccumulator (the frame path:
cheap, under its lock); a thread of its own re-estimates the rig every `period_s` once enough
groups with two usable views have come (the robust average takes 0.5-2.5 s, too long for the frame
path), and hands each new estimate to `on_estimate` (the node publishes the cameras as TF and
writes the rig file). Until the first estimate no camera has extrinsics; afterwards a camera the
estimate has not resolved has none either (missing_extrinsics, counted per camera by the node).

Frames: the rig frame is the reference camera's optical frame (its images' frame_id), or
`rig_frame` when one is given, which is then anchored to the reference camera (identity). The
extrinsics handed to the fusion are cam_from_ref, so fused poses are in that frame.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from drone_pose.fusion.fused_estimator import TAKING_PART
from drone_pose.fusion.rig_file import Rig
from drone_pose.fusion.rig_initialisation import RESERVOIR, RigAccumulator, RigEstimate
from drone_pose.inference.estimator import PoseEstimate
from drone_pose.ros.frame_pairing import Frame
from drone_pose.ros.rig_extrinsics import ExtrinsicsLookup


class SelfCalibration:
    """Extrinsics estimated online from the single-view poses of the groups the node fuses.

    cameras: the rig's camera names (view order); reference: the one whose optical frame is the rig
    frame; rig_frame: "" for that frame's own id, else a name anchored to it; min_groups: groups
    with two usable views before the first estimate; period_s: seconds between estimates (only when
    new groups came); capacity, policy: the RigAccumulator's (reservoir or window);
    on_estimate(estimate): called on the estimation thread after every estimate.
    """

    def __init__(
        self,
        cameras: Sequence[str],
        reference: str,
        rig_frame: str = "",
        min_groups: int = 30,
        period_s: float = 5.0,
        capacity: int = 3000,
        policy: str = RESERVOIR,
        on_estimate: Callable[[RigEstimate], None] | None = None,
    ) -> None:
        self.cameras = tuple(cameras)
        if reference not in self.cameras:
            raise ValueError(f"rig_reference {reference!r} is not one of the cameras {list(self.cameras)}")
        if min_groups < 3:
            raise ValueError(f"rig_min_groups must be at least 3 (a pair needs 3 inliers), got {min_groups}")
        self.reference = reference
        self._reference = self.cameras.index(reference)
        self._named_rig_frame = rig_frame
        self.min_groups, self.period_s = int(min_groups), float(period_s)
        self.accumulator = RigAccumulator(len(self.cameras), capacity, policy, reference=self._reference)
        self.on_estimate = on_estimate
        self.frame_ids: dict[str, str] = {}
        self.estimate: RigEstimate | None = None  # replaced whole (never mutated): read without a lock
        self.estimates = 0
        self.estimate_ms = float("nan")
        self.estimate_error = ""
        self._estimated_at_groups = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False

    @property
    def source(self) -> str:
        return "estimate"

    @property
    def rig_frame(self) -> str:
        """The rig frame: rig_frame when given, else the reference camera's frame_id ("" until its
        first frame)."""
        return self._named_rig_frame or self.frame_ids.get(self.reference, "")

    # -- the frame path -----------------------------------------------------------------------
    def add(self, names: Sequence[str], frames: Sequence[Frame], views: PoseEstimate) -> None:
        """One group's single-view estimates (views: one per name, in that order; camera <- drone)
        into the accumulator; views count when their verdict lets them take part in a fusion."""
        count = len(self.cameras)
        R = torch.eye(3, dtype=torch.float64).repeat(count, 1, 1)
        t = torch.zeros(count, 3, dtype=torch.float64)
        covariance = torch.eye(6, dtype=torch.float64).repeat(count, 1, 1)
        valid = torch.zeros(count, dtype=torch.bool)
        for index, (name, frame) in enumerate(zip(names, frames, strict=True)):
            self.frame_ids[name] = frame.header.frame_id.lstrip("/")
            v = self.cameras.index(name)
            R[v], t[v] = views.R[index].double(), views.t[index].double()
            covariance[v] = views.covariance[index].double()
            valid[v] = views.reasons[index] in TAKING_PART
        self.accumulator.add(R, t, covariance, valid)

    def cam_from_rig(self, camera: str, frame: Frame) -> ExtrinsicsLookup:
        """The camera's estimated cam_from_ref [4,4], or why it has none."""
        estimate = self.estimate
        v = self.cameras.index(camera)
        if estimate is None:
            return ExtrinsicsLookup(None, "missing_extrinsics", f"{camera}: no rig estimate yet")
        if not bool(estimate.resolved[v]):
            return ExtrinsicsLookup(
                None,
                "missing_extrinsics",
                f"{camera}: not resolved by the rig estimate (too few groups seen with a resolved camera)",
            )
        frame_id = self.frame_ids.get(camera, "")
        if frame.header.frame_id.lstrip("/") != frame_id:
            return ExtrinsicsLookup(
                None,
                "frame_id_mismatch",
                f"{camera}: images in frame {frame.header.frame_id!r}, estimated for {frame_id!r}",
            )
        return ExtrinsicsLookup(estimate.cam_from_ref[v].numpy())

    def reference_view(self, names: Sequence[str]) -> int | None:
        """The index of the reference camera among a group's names (None when absent)."""
        return names.index(self.reference) if self.reference in names else None

    # -- the estimation thread ----------------------------------------------------------------
    def start(self) -> None:
        """Start the periodic estimation (activate)."""
        if self._thread is not None:
            return
        self._running = True
        self._wake.clear()
        self._thread = threading.Thread(target=self._loop, name="rig_self_calibration", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop it (deactivate); an estimate under way finishes first (bounded by its own time)."""
        self._running = False
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
            self._thread = None

    def _loop(self) -> None:
        while self._running:
            self._wake.wait(self.period_s)
            if not self._running:
                return
            self.estimate_now()

    def estimate_now(self) -> RigEstimate | None:
        """Re-estimate the rig if enough groups came and some since the last estimate; the new
        estimate (None when none was made). Never raises: a failure is kept in estimate_error."""
        kept, seen = self.accumulator.frames_kept, self.accumulator.frames_seen
        if kept < self.min_groups or seen == self._estimated_at_groups:
            return None
        try:
            started = time.perf_counter()
            estimate = self.accumulator.estimate()
            self.estimate_ms = 1e3 * (time.perf_counter() - started)
        except Exception as error:  # the node keeps fusing with the last estimate
            self.estimate_error = f"{type(error).__name__}: {error}"
            return None
        self._estimated_at_groups = seen
        self.estimate, self.estimates, self.estimate_error = estimate, self.estimates + 1, ""
        if self.on_estimate is not None:
            try:
                self.on_estimate(estimate)
            except Exception as error:  # publishing while the node shuts down: kept, never raised
                self.estimate_error = f"on_estimate: {type(error).__name__}: {error}"
        return estimate

    # -- outputs ------------------------------------------------------------------------------
    def rig(self) -> Rig | None:
        """The current estimate as a rig file's contents (None until every camera is resolved)."""
        estimate = self.estimate
        if estimate is None or not bool(estimate.resolved.all()):
            return None
        frame_ids = [self.frame_ids.get(name, "") for name in self.cameras]
        return estimate.to_rig(self.cameras, frame_ids, self.rig_frame or None)

    def camera_transforms(self) -> list[tuple[str, str, np.ndarray]]:
        """(parent, child, parent_from_child [4,4]) of every resolved camera in the rig frame: the
        reference camera is left out when the rig frame is its own optical frame."""
        estimate = self.estimate
        if estimate is None:
            return []
        rig_from_camera = estimate.rig_from_camera().numpy()
        transforms = []
        for v, name in enumerate(self.cameras):
            frame_id = self.frame_ids.get(name, "")
            if not bool(estimate.resolved[v]) or not frame_id or frame_id == self.rig_frame:
                continue
            transforms.append((self.rig_frame, frame_id, rig_from_camera[v]))
        return transforms

    def report(self) -> dict[str, Any]:
        """Diagnostics values of the whole rig."""
        accumulator = self.accumulator
        waiting = f"waiting: {accumulator.frames_kept} of {self.min_groups} groups with two usable views"
        return {
            "rig_state": "estimated" if self.estimate is not None else waiting,
            "rig_reference": self.reference,
            "rig_estimates": self.estimates,
            "rig_groups_seen": accumulator.frames_seen,
            "rig_groups_kept": accumulator.frames_kept,
            "rig_estimate_ms": round(self.estimate_ms, 1),
            "rig_estimate_error": self.estimate_error,
        }

    def camera_report(self, camera: str) -> dict[str, Any]:
        """Diagnostics values of one camera: whether it is resolved and its uncertainty (rotation
        std, degrees; position std, metres; both sqrt of a covariance block's trace), and the pair
        statistics with the reference camera (relative poses kept and rejected as outliers)."""
        v = self.cameras.index(camera)
        values: dict[str, Any] = {"rig_views_usable": int(self.accumulator.usable_views[v])}
        estimate = self.estimate
        if estimate is None:
            return values
        resolved = bool(estimate.resolved[v])
        values["extrinsics_resolved"] = resolved
        if resolved:
            # as text with 4 significant digits (diagnostics print floats with 3 decimals)
            values["extrinsics_rotation_std_deg"] = f"{float(estimate.rotation_std_deg()[v]):.4g}"
            values["extrinsics_position_std_m"] = f"{float(estimate.position_std_m()[v]):.4g}"
        if v != self._reference:
            values["extrinsics_pair_inliers"] = int(estimate.inliers[self._reference, v])
            values["extrinsics_pair_outliers"] = int(estimate.outliers[self._reference, v])
        return values
