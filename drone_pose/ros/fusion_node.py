"""The fusion node: the images of V calibrated cameras in, one drone pose in the rig frame out
(PoseStamped, PoseWithCovarianceStamped, TF, marker, per-camera overlay, diagnostics). Thin:
lifecycle and wiring only.

Each camera's image and CameraInfo are paired as in the tracker (drone_pose.ros.camera_input,
frame_pairing); the cameras' frames are grouped by stamp (drone_pose.ros.frame_grouping); a worker
thread takes the newest group, looks up each view's extrinsics (rig file or TF,
drone_pose.ros.rig_extrinsics) and fuses the views with FusedEstimator in one batched network pass.
With `extrinsics: estimate` the rig calibrates itself (drone_pose.ros.self_calibration): every
group's single-view poses feed the estimate, the reference camera's own pose is published until
the first estimate, the estimated cameras go out on /tf_static and the groups are fused with them.
Every rejected input is counted, per camera, and reported on /diagnostics; nothing raises into rclpy.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.publisher import Publisher
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from drone_pose.ros.camera_input import INPUT_REJECTIONS, TRANSPORTS, CameraInput
from drone_pose.ros.diagnostics import LATENCY_WINDOW, RateWindow, diagnostic_status
from drone_pose.ros.estimator_node import EstimatorNode
from drone_pose.ros.estimator_node_support import model_name, run_lifecycle_node
from drone_pose.ros.frame_grouping import FrameGroup, FrameGrouper
from drone_pose.ros.frame_pairing import Frame, FramePairing
from drone_pose.ros.fusion_parameters import (
    EXTRINSICS_SOURCES,
    FUSION_NODE_NAME,
    FUSION_PARAMETERS,
    FUSION_PARAMETERS_BY_NAME,
    RIG_POLICIES,
    camera_names,
)
from drone_pose.ros.image_conversions import numpy_to_image
from drone_pose.ros.qos import sensor_data_qos
from drone_pose.ros.rig_extrinsics import EXTRINSICS_REJECTIONS, RigFileExtrinsics, TransformExtrinsics
from drone_pose.ros.self_calibration import SelfCalibration
from drone_pose.ros.tf import StaticTransformBroadcaster, TransformListener, transform_stamped

__all__ = ["CAMERA_REJECTIONS", "FusionNode", "main"]
TF_RIG_FRAME = "world"  # rig_frame when it is empty and the extrinsics come from TF
# Reasons a camera's image or view is rejected before fusion (counted per camera).
CAMERA_REJECTIONS = (*INPUT_REJECTIONS, *EXTRINSICS_REJECTIONS)
LOG_THROTTLE_S = 5.0


class _GrouperInlet:
    """The mailbox a camera's FramePairing puts its valid frames into: they go to the grouper,
    which counts drops itself (so put never reports one)."""

    def __init__(self, grouper: FrameGrouper, camera: str) -> None:
        self.grouper = grouper
        self.camera = camera

    def put(self, frame: Frame) -> bool:
        self.grouper.add(self.camera, frame)
        return False


class _Camera:
    """One camera of the rig: its input callbacks, counters, rates and view statistics."""

    def __init__(self, name: str, node: FusionNode) -> None:
        self.name = name
        self.counters: Counter[str] = Counter()
        self.last_rejection = ""
        self.rates = RateWindow()
        self.reprojection_rms_px: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.overlay_publisher: Publisher | None = None
        self.pairing = FramePairing(
            float(FUSION_PARAMETERS_BY_NAME["camera_info_wait_s"].default),
            self.counters,
            self.reject,
            mailbox=None,
            on_clock_reset=node.on_clock_reset,
        )
        self.input = CameraInput(self.pairing, self.counters, self.reject, 1)

    def connect(self, grouper: FrameGrouper) -> None:
        self.pairing.mailbox = _GrouperInlet(grouper, self.name)  # type: ignore[assignment]

    def reject(self, reason: str) -> None:
        self.counters[f"rejected_{reason}"] += 1
        self.last_rejection = reason


class FusionNode(EstimatorNode):
    """Fused drone pose from the cameras of a calibrated rig (parameter `cameras`; topics
    <camera>/<image_suffix> and <camera>/camera_info for each).

    A managed (lifecycle) node like the tracker: configure reads the rig and loads the model,
    activate subscribes and starts the worker, deactivate stops them, cleanup releases everything.
    With `autostart` (the default) main() configures and activates it at once.
    """

    def __init__(self, estimator: Any = None, **kwargs: Any) -> None:
        self.cameras: dict[str, _Camera] = {}
        self.grouper: FrameGrouper | None = None
        self.fused: Any = None
        self.extrinsics: RigFileExtrinsics | TransformExtrinsics | SelfCalibration | None = None
        self.listener: TransformListener | None = None
        self.static_tf: StaticTransformBroadcaster | None = None
        self.rig_output_file = ""
        self.rig_files_written = 0
        self.rig_file_error = ""
        self.rig_frame = ""
        self.views_used: deque[int] = deque(maxlen=LATENCY_WINDOW)
        self._last_log: dict[str, float] = {}
        super().__init__(FUSION_NODE_NAME, FUSION_PARAMETERS, estimator, **kwargs)
        self._inputs_ready = True

    # -- lifecycle ----------------------------------------------------------------------------
    def _configure_inputs(self) -> str:
        transport = self.parameter("image_transport")
        if transport not in TRANSPORTS:
            return f"image_transport must be raw or compressed, got {transport!r}"
        try:
            names = camera_names(self.parameter("cameras"))
            self.extrinsics = self._extrinsics(names)
        except ValueError as error:  # a RigFileError is a ValueError too
            return str(error)
        self.rig_frame = self.extrinsics.rig_frame
        self.drone_frame = self.parameter("drone_frame")
        self.grouper = FrameGrouper(
            names, float(self.parameter("sync_slop_s")), float(self.parameter("max_wait_s"))
        )
        self.cameras = {name: _Camera(name, self) for name in names}
        for camera in self.cameras.values():
            camera.connect(self.grouper)
            camera.pairing.camera_info_wait_s = float(self.parameter("camera_info_wait_s"))
            camera.input.max_pixels = int(self.parameter("max_image_pixels"))
        return ""

    def _load_estimator(self) -> str:
        refusal = super()._load_estimator()
        if not refusal:
            from drone_pose.fusion.fused_estimator import FusedEstimator

            self.fused = FusedEstimator(self.estimator, float(self.parameter("gate_mahalanobis")))
        return refusal

    def _configured_summary(self) -> str:
        assert self.extrinsics is not None
        if isinstance(self.extrinsics, SelfCalibration):
            frame = self.rig_frame or f"{self.extrinsics.reference}'s optical frame"
            return (
                f"cameras {list(self.cameras)}, rig frame {frame} (extrinsics estimated, anchored to "
                f"{self.extrinsics.reference}), model {model_name(self.estimator)} on {self._device}"
            )
        return (
            f"cameras {list(self.cameras)}, rig frame {self.rig_frame!r} (extrinsics from "
            f"{self.extrinsics.source}), model {model_name(self.estimator)} on {self._device}"
        )

    def _extrinsics(
        self, names: tuple[str, ...]
    ) -> RigFileExtrinsics | TransformExtrinsics | SelfCalibration:
        """The extrinsics source the parameters name; ValueError with one line when they disagree."""
        from drone_pose.fusion.rig_file import load_rig_file

        rig_file, rig_frame = self.parameter("rig_file"), self.parameter("rig_frame")
        source = self.parameter("extrinsics")
        if source not in EXTRINSICS_SOURCES:
            raise ValueError(f"extrinsics must be tf, rig_file or estimate (or empty), got {source!r}")
        if source in ("tf", "estimate") and rig_file:
            raise ValueError(f"extrinsics:={source} does not read rig_file:={rig_file}: leave rig_file empty")
        if source == "rig_file" and not rig_file:
            raise ValueError("extrinsics:=rig_file needs rig_file:=PATH")
        if source == "estimate":
            return self._self_calibration(names, rig_frame)
        if rig_file:
            rig = load_rig_file(rig_file)
            if rig_frame and rig_frame != rig.rig_frame:
                raise ValueError(
                    f"rig_frame:={rig_frame} but the rig file {rig_file} is in {rig.rig_frame!r}: "
                    "leave rig_frame empty or make them agree"
                )
            return RigFileExtrinsics(rig, names)
        self.listener = TransformListener(self)
        return TransformExtrinsics(self.listener.buffer, rig_frame or TF_RIG_FRAME)

    def _self_calibration(self, names: tuple[str, ...], rig_frame: str) -> SelfCalibration:
        """The estimating extrinsics source of the parameters (ValueError with one line)."""
        policy = self.parameter("rig_policy")
        if policy not in RIG_POLICIES:
            raise ValueError(f"rig_policy must be reservoir or window, got {policy!r}")
        self.rig_output_file = str(self.parameter("rig_output_file"))
        return SelfCalibration(
            names,
            self.parameter("rig_reference") or names[0],
            rig_frame,
            int(self.parameter("rig_min_groups")),
            float(self.parameter("rig_estimate_period_s")),
            int(self.parameter("rig_capacity")),
            policy,
            on_estimate=self._on_rig_estimate,
        )

    def _create_outputs(self) -> None:
        super()._create_outputs()
        if isinstance(self.extrinsics, SelfCalibration):
            self.static_tf = StaticTransformBroadcaster(self)
        overlay_qos = sensor_data_qos(int(self.parameter("input_queue_depth")))
        for name, camera in self.cameras.items():
            camera.overlay_publisher = self.publisher(Image, f"{name}/overlay", overlay_qos)
            self._outputs.append(camera.overlay_publisher)
            camera.rates.restart()
        wait = min(camera.pairing.camera_info_wait_s for camera in self.cameras.values())
        tick = max(min(wait, float(self.parameter("max_wait_s"))) / 2, 0.005)
        self._outputs.append(self.create_timer(tick, self._flush_expired))

    def _start_inputs(self) -> list[Any]:
        assert self.grouper is not None
        self.grouper.reopen()
        if isinstance(self.extrinsics, SelfCalibration):
            self.extrinsics.start()
        suffix, transport = self.parameter("image_suffix"), self.parameter("image_transport")
        depth = int(self.parameter("input_queue_depth"))
        return [
            subscription
            for name, camera in self.cameras.items()
            for subscription in camera.input.subscribe(
                self, f"{name}/{suffix}", f"{name}/camera_info", transport, depth
            )
        ]

    def _close_queue(self) -> None:
        if self.grouper is not None:
            self.grouper.close()
        if isinstance(self.extrinsics, SelfCalibration):
            self.extrinsics.stop()

    def _clear_inputs(self) -> None:
        for camera in self.cameras.values():
            camera.pairing.clear()
        if self.grouper is not None:
            self.grouper.clear()

    def _release_inputs(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if isinstance(self.extrinsics, SelfCalibration):
            self.extrinsics.stop()
        if self.static_tf is not None:
            self.static_tf.close()
            self.static_tf = None
        self.fused = None

    def _apply_runtime(self, accepted: dict[str, Any]) -> None:
        if self.fused is not None and "gate_mahalanobis" in accepted:
            self.fused.gate_mahalanobis = float(accepted["gate_mahalanobis"])
        if "rig_output_file" in accepted:
            self.rig_output_file = str(accepted["rig_output_file"])
            if isinstance(self.extrinsics, SelfCalibration) and self.rig_output_file:
                self._write_rig_file()  # on request: the current rig now (set the parameter again to rewrite)

    # -- self-calibration (its own thread) ----------------------------------------------------
    def _on_rig_estimate(self, estimate: Any) -> None:
        """A new rig estimate: the cameras on /tf_static (from the rig frame), the rig file."""
        calibration = self.extrinsics
        assert isinstance(calibration, SelfCalibration)
        from scipy.spatial.transform import Rotation

        stamp = self.get_clock().now().to_msg()
        transforms = []
        for parent, child, T in calibration.camera_transforms():
            quaternion = Rotation.from_matrix(T[:3, :3]).as_quat()
            transforms.append(transform_stamped(quaternion, T[:3, 3], stamp, parent, child))
        if transforms and self.static_tf is not None:
            self.static_tf.send(transforms)
        if self.rig_output_file:
            self._write_rig_file()
        resolved = int(estimate.resolved.sum())
        self._log_throttled(
            "rig_estimate",
            f"rig estimate {calibration.estimates}: {resolved} of {len(calibration.cameras)} cameras "
            f"resolved from {calibration.accumulator.frames_kept} groups in {calibration.estimate_ms:.0f} ms",
            info=True,
        )

    def _write_rig_file(self) -> None:
        """Write the estimated rig to rig_output_file (atomically); failures are kept and logged."""
        from drone_pose.fusion.rig_file import save_rig_file

        calibration = self.extrinsics
        assert isinstance(calibration, SelfCalibration)
        path = self.rig_output_file
        try:
            rig = calibration.rig()
            if rig is None:
                self.rig_file_error = "not written yet: not every camera is resolved"
                return
            save_rig_file(rig, path)
        except (OSError, ValueError) as error:
            self.rig_file_error = f"{path}: {error}"
            self._log_throttled("rig_file", f"rig file not written: {self.rig_file_error}")
            return
        self.rig_files_written += 1
        self.rig_file_error = ""

    # -- inputs (executor thread) -------------------------------------------------------------
    def on_clock_reset(self, previous_ns: int, stamp_ns: int) -> None:
        self._log_throttled(
            "clock_reset",
            f"clock reset: image stamps jumped back from {previous_ns / 1e9:.3f} s to {stamp_ns / 1e9:.3f} s;"
            " pairing and grouping start again (counted in clock_resets)",
        )

    def _flush_expired(self) -> None:
        for camera in self.cameras.values():
            camera.pairing.flush_expired()
        if self.grouper is not None:
            self.grouper.flush_expired()

    def _log_throttled(self, key: str, message: str, info: bool = False) -> None:
        now = time.monotonic()
        if now - self._last_log.get(key, -np.inf) >= LOG_THROTTLE_S:
            self._last_log[key] = now
            if info:
                self.get_logger().info(message)
            else:
                self.get_logger().warning(message)

    # -- fusion (worker thread) ---------------------------------------------------------------
    def _take(self, timeout_s: float) -> FrameGroup | None:
        return self.grouper.take(timeout_s) if self.grouper is not None else None

    def _process(self, group: FrameGroup) -> None:
        assert self.extrinsics is not None
        if isinstance(self.extrinsics, SelfCalibration):
            self._process_self_calibrating(group, self.extrinsics)
            return
        names, frames, extrinsics = [], [], []
        for name, frame in group.frames.items():
            lookup = self.extrinsics.cam_from_rig(name, frame)
            if lookup.cam_from_rig is None:
                self.cameras[name].reject(lookup.reason)
                self._log_throttled(f"{name}/{lookup.reason}", lookup.detail)
                continue
            names.append(name)
            frames.append(frame)
            extrinsics.append(lookup.cam_from_rig)
        header = Header(stamp=_time(group.stamp_ns), frame_id=self.rig_frame)
        self.counters["groups_processed"] += 1
        if not frames:
            self.reject("no_usable_view")
            self.lose_track(header)
            return
        result = self.fused.estimate(
            [frame.rgb for frame in frames],
            np.stack([frame.K for frame in frames]),
            np.stack(extrinsics),
            [frame.distortion for frame in frames],
        )
        self._publish_fused(header, names, frames, extrinsics, result)

    def _process_self_calibrating(self, group: FrameGroup, calibration: SelfCalibration) -> None:
        """extrinsics: estimate. Every present view through the single-view estimator (one network
        pass per image size) into the rig estimate; then, with a rig estimate, the views it resolves
        are fused from those same estimates, and before it the reference camera's own pose (in its
        optical frame, the rig frame) is published, counted in poses_single_view."""
        import torch

        from drone_pose.fusion.fused_estimator import estimate_views

        names, frames = list(group.frames), list(group.frames.values())
        self.counters["groups_processed"] += 1
        views = estimate_views(
            self.estimator,
            [frame.rgb for frame in frames],
            np.stack([frame.K for frame in frames]),
            [frame.distortion for frame in frames],
        )
        calibration.add(names, frames, views)
        header = Header(stamp=_time(group.stamp_ns), frame_id=calibration.rig_frame)
        if calibration.estimate is None:
            for name in names:
                self.cameras[name].counters["views_estimated"] += 1
            reference = calibration.reference_view(names)
            if reference is None or not bool(views.valid[reference]):
                self.reject("waiting_for_rig")
                self.lose_track(header)
                return
            self.cameras[names[reference]].counters["views_used"] += 1
            covariance = views.covariance[reference].double().numpy()
            R, t = views.R[reference].double().numpy(), views.t[reference].double().numpy()
            if self.publish_pose(header, R, t, covariance):
                self.counters["poses_single_view"] += 1
                self.rates.latencies_ms.append(1e3 * (time.monotonic() - frames[reference].received))
            return
        kept, extrinsics = [], []
        for index, (name, frame) in enumerate(zip(names, frames, strict=True)):
            lookup = calibration.cam_from_rig(name, frame)
            if lookup.cam_from_rig is None:
                self.cameras[name].reject(lookup.reason)
                self._log_throttled(f"{name}/{lookup.reason}", lookup.detail)
                continue
            kept.append(index)
            extrinsics.append(lookup.cam_from_rig)
        if not kept:
            self.reject("no_usable_view")
            self.lose_track(header)
            return
        K = np.stack([frames[index].K for index in kept])
        result = self.fused.fuse(
            views.take(torch.tensor(kept)),
            torch.from_numpy(K).unsqueeze(0),
            torch.from_numpy(np.stack(extrinsics)).unsqueeze(0),
        )
        self._publish_fused(header, [names[i] for i in kept], [frames[i] for i in kept], extrinsics, result)

    def _publish_fused(
        self, header: Header, names: list[str], frames: list[Frame], extrinsics: list[np.ndarray], result: Any
    ) -> None:
        """Count a group's views, draw the overlays and publish its fused pose (or reject it)."""
        self._count_views(names, result)
        self.views_used.append(int(result.views_used[0].sum()))
        self._publish_overlays(names, frames, extrinsics, result)
        if not bool(result.valid[0]):
            self.reject(result.reasons[0] or "invalid")
            self.lose_track(header)
            return
        R, t, covariance = (result.R[0].numpy(), result.t[0].numpy(), result.covariance[0].numpy())
        if self.publish_pose(header, R, t, covariance):
            received = min(frame.received for frame in frames)
            self.rates.latencies_ms.append(1e3 * (time.monotonic() - received))

    def _count_views(self, names: list[str], result: Any) -> None:
        """Per camera: views fused, gated, or left out by their own verdict; reprojection RMS."""
        for index, name in enumerate(names):
            camera = self.cameras[name]
            camera.counters["views_estimated"] += 1
            reason = result.views.reasons[index]
            if bool(result.views_used[0, index]):
                camera.counters["views_used"] += 1
            elif bool(result.gated[0, index]):
                camera.counters["views_gated"] += 1
            else:
                camera.counters[f"views_invalid_{reason or 'invalid'}"] += 1
            rms = float(result.views.reprojection_rms[index])
            if np.isfinite(rms):
                camera.reprojection_rms_px.append(rms)

    def _publish_overlays(
        self, names: list[str], frames: list[Frame], extrinsics: list[np.ndarray], result: Any
    ) -> None:
        """Each watched camera's image with the fused pose drawn in it (none when the group is
        rejected) and that view's keypoints."""
        from drone_pose.inference.overlay import draw_pose_overlay

        if self._drone is None:
            return
        R_rig, t_rig = result.R[0].double().numpy(), result.t[0].double().numpy()
        for index, (name, frame, T) in enumerate(zip(names, frames, extrinsics, strict=True)):
            publisher = self.cameras[name].overlay_publisher
            if publisher is None or publisher.get_subscription_count() == 0:
                continue  # drawn only while someone watches
            R = T[:3, :3] @ R_rig if bool(result.valid[0]) else np.full((3, 3), np.nan)
            overlay = draw_pose_overlay(
                frame.rgb,
                self._drone,
                R,
                T[:3, :3] @ t_rig + T[:3, 3],
                frame.K,
                result.views.keypoints[index].numpy(),
                confidences=result.views.confidences[index].numpy(),
                distortion=frame.distortion,
            )
            publisher.publish(numpy_to_image(overlay, "rgb8", frame.header.stamp, frame.header.frame_id))

    # -- diagnostics --------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        grouping = self.grouper.snapshot() if self.grouper is not None else {}
        received = sum(camera.counters["images_received"] for camera in self.cameras.values())
        views = np.array(self.views_used) if self.views_used else np.array([np.nan])
        values = {
            **self.rates.report(received, self.counters["groups_processed"]),
            "lifecycle_state": self.lifecycle_label,
            "device": str(getattr(self.estimator, "device", "")),
            "model": model_name(self.estimator),
            "cameras": ",".join(self.cameras),
            "rig_frame": self.rig_frame,
            "extrinsics": getattr(self.extrinsics, "source", ""),
            "gate_mahalanobis": float(getattr(self.fused, "gate_mahalanobis", np.nan)),
            "views_used_mean": float(views.mean()),
            **{key: value for key, value in grouping.items() if "/" not in key},
        }
        if isinstance(self.extrinsics, SelfCalibration):
            values["rig_frame"] = self.extrinsics.rig_frame
            values.update(self.extrinsics.report())
            values["rig_output_file"] = self.rig_output_file
            values["rig_files_written"] = self.rig_files_written
            values["rig_file_error"] = self.rig_file_error
        name = self.get_fully_qualified_name()
        statuses = [
            diagnostic_status(
                "drone_pose: fusion", name, values, self.counters, self.last_rejection, "poses_published"
            )
        ]
        for camera_name, camera in self.cameras.items():
            statuses.append(self._camera_status(camera_name, camera, grouping, name))
        array = DiagnosticArray(status=statuses)
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_publisher.publish(array)

    def _camera_status(
        self, name: str, camera: _Camera, grouping: dict[str, int], node_name: str
    ) -> DiagnosticStatus:
        """One camera's status: input rate, its grouping counters, rejections and view statistics;
        WARN when it rejected anything or sent nothing since the last report."""
        rates = camera.rates.report(camera.counters["images_received"], camera.counters["views_used"])
        rms = np.array(camera.reprojection_rms_px) if camera.reprojection_rms_px else np.array([np.nan])
        values = {
            "input_rate_hz": rates["input_rate_hz"],
            "used_rate_hz": rates["processed_rate_hz"],
            "reprojection_rms_px_p50": float(np.percentile(rms, 50)),
            **{key.split("/", 1)[1]: value for key, value in grouping.items() if key.startswith(f"{name}/")},
        }
        if isinstance(self.extrinsics, SelfCalibration):
            values.update(self.extrinsics.camera_report(name))
        status = diagnostic_status(
            f"drone_pose: fusion camera {name}",
            node_name,
            values,
            camera.counters,
            camera.last_rejection,
            "views_used",
            "views used",
        )
        if rates["input_rate_hz"] == 0.0 and status.level == DiagnosticStatus.OK:
            status.level = DiagnosticStatus.WARN
            status.message = f"no images since the last report; {status.message}"
        return status


def _time(stamp_ns: int) -> Time:
    """builtin_interfaces/Time of integer nanoseconds."""
    return Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)


def main(args: list[str] | None = None) -> None:
    """Entry point `fusion_node` (rclpy arguments: --ros-args -p cameras:=a,b,c -p rig_file:=...).

    With autostart (default) the node is configured and activated at once and a failed configure
    (bad parameters, rig file or checkpoint) exits with status 2; without it the node waits,
    unconfigured, for lifecycle transitions (`ros2 lifecycle set /drone_pose_fusion configure`).
    """
    run_lifecycle_node("fusion_node", FusionNode, args)


if __name__ == "__main__":
    main()
