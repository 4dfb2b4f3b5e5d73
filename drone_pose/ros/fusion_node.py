"""The fusion node: the images of V calibrated cameras in, one drone pose in the rig frame out
(PoseStamped, PoseWithCovarianceStamped, TF, marker, per-camera overlay, diagnostics). Thin:
lifecycle and wiring only.

Each camera's image and CameraInfo are paired as in the tracker (drone_pose.ros.camera_input,
frame_pairing); the cameras' frames are grouped by stamp (drone_pose.ros.frame_grouping); a worker
thread takes the newest group, looks up each view's extrinsics (rig file or TF,
drone_pose.ros.rig_extrinsics) and fuses the views with FusedEstimator in one batched network pass.
Every rejected input is counted, per camera, and reported on /diagnostics; nothing raises into rclpy.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

import numpy as np
import torch
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.publisher import Publisher
from rclpy.qos import QoSProfile
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from drone_pose.ros.camera_input import INPUT_REJECTIONS, TRANSPORTS, CameraInput
from drone_pose.ros.diagnostics import LATENCY_WINDOW, RateWindow, diagnostic_status
from drone_pose.ros.estimator_node_support import (
    EstimatorSwitches,
    declare_parameters,
    drone_mismatch,
    load_estimator,
    model_name,
    run_lifecycle_node,
)
from drone_pose.ros.frame_grouping import FrameGroup, FrameGrouper
from drone_pose.ros.frame_pairing import Frame, FramePairing
from drone_pose.ros.fusion_parameters import (
    FUSION_NODE_NAME,
    FUSION_PARAMETERS,
    FUSION_PARAMETERS_BY_NAME,
    camera_names,
)
from drone_pose.ros.image_conversions import numpy_to_image
from drone_pose.ros.pose_messages import delete_marker, mesh_marker, pose_messages, posed_marker
from drone_pose.ros.qos import sensor_data_qos
from drone_pose.ros.rig_extrinsics import EXTRINSICS_REJECTIONS, RigFileExtrinsics, TransformExtrinsics
from drone_pose.ros.tf import TransformBroadcaster, TransformListener

__all__ = ["CAMERA_REJECTIONS", "FusionNode", "main"]
WORKER_POLL_S = 0.5
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


class FusionNode(LifecycleNode):
    """Fused drone pose from the cameras of a calibrated rig (parameter `cameras`; topics
    <camera>/<image_suffix> and <camera>/camera_info for each).

    A managed (lifecycle) node like the tracker: configure reads the rig and loads the model,
    activate subscribes and starts the worker, deactivate stops them, cleanup releases everything.
    With `autostart` (the default) main() configures and activates it at once.
    """

    def __init__(self, estimator: Any = None, **kwargs: Any) -> None:
        super().__init__(FUSION_NODE_NAME, **kwargs)
        self._running = False
        self._worker: threading.Thread | None = None
        self._subscriptions_active: list[Any] = []
        self.lifecycle_label = "unconfigured"
        self.counters: Counter[str] = Counter()
        self.last_rejection = ""
        self.cameras: dict[str, _Camera] = {}
        self.grouper: FrameGrouper | None = None
        declare_parameters(self, FUSION_PARAMETERS)
        self._given_estimator = estimator
        self._switches = EstimatorSwitches()
        self.estimator: Any = None
        self.fused: Any = None
        self.extrinsics: RigFileExtrinsics | TransformExtrinsics | None = None
        self.listener: TransformListener | None = None
        self.rig_frame = ""
        self.drone_frame = str(self.get_parameter("drone_frame").value)
        self.rates = RateWindow()
        self.views_used: deque[int] = deque(maxlen=LATENCY_WINDOW)
        self._outputs: list[Any] = []
        self._marker: Marker | None = None
        self._drone: Any = None
        self._tracking = False
        self.tf: TransformBroadcaster | None = None
        self.configure_error = ""
        self._last_log: dict[str, float] = {}
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # -- lifecycle ----------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read the rig and the read-at-configure parameters, load the model, create the outputs.
        A failure fails the transition with its one-line message kept in `configure_error`."""
        self.configure_error = ""
        try:
            return self._configure()
        except Exception as error:  # reported, never raised into rclpy
            self.estimator = self.fused = None
            return self._configure_failed(f"{type(error).__name__}: {error}")

    def _configure(self) -> TransitionCallbackReturn:
        parameter = self._parameter
        transport = parameter("image_transport")
        if transport not in TRANSPORTS:
            return self._configure_failed(f"image_transport must be raw or compressed, got {transport!r}")
        try:
            names = camera_names(parameter("cameras"))
            self.extrinsics = self._extrinsics(names)
        except ValueError as error:  # a RigFileError is a ValueError too
            return self._configure_failed(str(error))
        self.rig_frame = self.extrinsics.rig_frame
        self.drone_frame = parameter("drone_frame")
        try:
            self.estimator = self._given_estimator or load_estimator(self)
        except (ValueError, OSError) as error:  # CheckpointError is a ValueError
            return self._configure_failed(str(error))
        mismatch = drone_mismatch(self.estimator, parameter("drone"))
        if mismatch:
            self.estimator = None
            return self._configure_failed(mismatch)
        from drone_pose.fusion.fused_estimator import FusedEstimator

        self._device = self.estimator.device
        self._switches.configure(self.estimator, parameter("zoom_pass"), parameter("flip_test"))
        self.fused = FusedEstimator(self.estimator, float(parameter("gate_mahalanobis")))
        self.grouper = FrameGrouper(names, float(parameter("sync_slop_s")), float(parameter("max_wait_s")))
        self.cameras = {name: _Camera(name, self) for name in names}
        for camera in self.cameras.values():
            camera.connect(self.grouper)
            camera.pairing.camera_info_wait_s = float(parameter("camera_info_wait_s"))
            camera.input.max_pixels = int(parameter("max_image_pixels"))
        self._create_outputs()
        self.lifecycle_label = "inactive"
        self.get_logger().info(
            f"configured: cameras {list(names)}, rig frame {self.rig_frame!r} (extrinsics from "
            f"{self.extrinsics.source}), model {model_name(self.estimator)} on {self._device}"
        )
        return TransitionCallbackReturn.SUCCESS

    def _extrinsics(self, names: tuple[str, ...]) -> RigFileExtrinsics | TransformExtrinsics:
        """The extrinsics source the parameters name; ValueError with one line when they disagree."""
        from drone_pose.fusion.rig_file import load_rig_file

        rig_file, rig_frame = self._parameter("rig_file"), self._parameter("rig_frame")
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

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.estimator.device != self._device:
            self.estimator.to(self._device)
        suffix, transport = self._parameter("image_suffix"), self._parameter("image_transport")
        depth = int(self._parameter("input_queue_depth"))
        self._subscriptions_active = [
            subscription
            for name, camera in self.cameras.items()
            for subscription in camera.input.subscribe(
                self, f"{name}/{suffix}", f"{name}/camera_info", transport, depth
            )
        ]
        assert self.grouper is not None
        self.grouper.reopen()
        self._running = True
        self._worker = threading.Thread(target=self._work, name="drone_pose_fusion", daemon=True)
        self._worker.start()
        self.lifecycle_label = "active"
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        if self.estimator.device.type == "cuda":
            self.estimator.to("cpu")  # frees the GPU memory until the next activate
        self.lifecycle_label = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_outputs()
        self.lifecycle_label = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._release_outputs()
        self.lifecycle_label = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._release_outputs()
        self.lifecycle_label = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def _configure_failed(self, message: str) -> TransitionCallbackReturn:
        self.configure_error = message
        self.get_logger().error(f"configure failed: {message}")
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        return TransitionCallbackReturn.FAILURE

    def _create_outputs(self) -> None:
        """Publishers, TF broadcaster, the mesh marker and the timers (configure)."""
        output_qos = QoSProfile(depth=int(self._parameter("output_queue_depth")))
        overridable = QoSOverridingOptions.with_default_policies()

        def publisher(message_type: type, topic: str, qos: QoSProfile) -> Publisher:
            return self.create_publisher(message_type, topic, qos, qos_overriding_options=overridable)

        self.pose_publisher = publisher(PoseStamped, "pose", output_qos)
        self.covariance_publisher = publisher(PoseWithCovarianceStamped, "pose_with_covariance", output_qos)
        self.marker_publisher = publisher(Marker, "marker", output_qos)
        overlay_qos = sensor_data_qos(int(self._parameter("input_queue_depth")))
        for name, camera in self.cameras.items():
            camera.overlay_publisher = publisher(Image, f"{name}/overlay", overlay_qos)
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._marker = self._mesh_marker()
        self._tracking = False
        self.tf = TransformBroadcaster(self) if self._parameter("publish_tf") else None
        wait = min(camera.pairing.camera_info_wait_s for camera in self.cameras.values())
        tick = max(min(wait, float(self._parameter("max_wait_s"))) / 2, 0.005)
        self._outputs = [
            self.pose_publisher,
            self.covariance_publisher,
            self.marker_publisher,
            *(camera.overlay_publisher for camera in self.cameras.values()),
            self.diagnostics_publisher,
            self.create_timer(1.0, self._publish_diagnostics),
            self.create_timer(tick, self._flush_expired),
        ]
        self.rates.restart()
        for camera in self.cameras.values():
            camera.rates.restart()

    def _stop_inputs(self) -> None:
        for subscription in self._subscriptions_active:
            self.destroy_subscription(subscription)
        self._subscriptions_active = []
        self._running = False
        if self.grouper is not None:
            self.grouper.close()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
            self._worker = None
        for camera in self.cameras.values():
            camera.pairing.clear()
        if self.grouper is not None:
            self.grouper.clear()

    def _release_outputs(self) -> None:
        for entity in self._outputs:
            if isinstance(entity, Publisher):
                self.destroy_publisher(entity)
            else:
                self.destroy_timer(entity)
        self._outputs = []
        if self.tf is not None:
            self.tf.close()
            self.tf = None
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        self.estimator = self.fused = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _parameter(self, name: str) -> Any:
        return self.get_parameter(name).value

    # -- parameters -------------------------------------------------------------------------
    def _on_set_parameters(self, parameters: list[Any]) -> SetParametersResult:
        accepted = {}
        for parameter in parameters:
            spec = FUSION_PARAMETERS_BY_NAME.get(parameter.name)
            if spec is None:
                continue  # rclpy's own (use_sim_time, QoS overrides)
            refusal = spec.refusal(parameter.value, configured=self.lifecycle_label != "unconfigured")
            if refusal is not None:
                return SetParametersResult(successful=False, reason=refusal)
            accepted[parameter.name] = parameter.value
        if self.estimator is not None:
            self._switches.apply(self.estimator, accepted)
        if self.fused is not None and "gate_mahalanobis" in accepted:
            self.fused.gate_mahalanobis = float(accepted["gate_mahalanobis"])
        return SetParametersResult(successful=True)

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

    def _reject(self, reason: str) -> None:
        self.counters[f"rejected_{reason}"] += 1
        self.last_rejection = reason

    def _log_throttled(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last_log.get(key, -np.inf) >= LOG_THROTTLE_S:
            self._last_log[key] = now
            self.get_logger().warning(message)

    # -- fusion (worker thread) ---------------------------------------------------------------
    def _work(self) -> None:
        assert self.grouper is not None
        while self._running:
            group = self.grouper.take(WORKER_POLL_S)
            if group is None:
                continue
            try:
                self._process(group)
            except Exception as error:  # a bad group must never stop the node
                if not self.context.ok():  # shutting down (Ctrl-C): publishers are gone, not an error
                    return
                self._reject("estimator_error")
                self.get_logger().error(f"fusion failed: {type(error).__name__}: {error}")

    def _process(self, group: FrameGroup) -> None:
        assert self.extrinsics is not None
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
            self._reject("no_usable_view")
            self._lose_track(header)
            return
        result = self.fused.estimate(
            [frame.rgb for frame in frames],
            np.stack([frame.K for frame in frames]),
            np.stack(extrinsics),
            [frame.distortion for frame in frames],
        )
        self._count_views(names, result)
        self.views_used.append(int(result.views_used[0].sum()))
        self._publish_overlays(names, frames, extrinsics, result)
        if not bool(result.valid[0]):
            self._reject(result.reasons[0] or "invalid")
            self._lose_track(header)
            return
        try:
            messages = pose_messages(
                header,
                result.R[0].numpy(),
                result.t[0].numpy(),
                result.covariance[0].numpy(),
                self.drone_frame,
            )
        except ValueError:
            self._reject("non_finite_pose")
            return
        self.pose_publisher.publish(messages.pose)
        self.covariance_publisher.publish(messages.pose_with_covariance)
        if self._marker is not None:
            self.marker_publisher.publish(posed_marker(self._marker, messages))
            self._tracking = True
        if self.tf is not None:
            self.tf.send([messages.transform])
        self.counters["poses_published"] += 1
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

    def _mesh_marker(self) -> Marker | None:
        """The checkpoint's drone mesh as a marker; None (marker and overlays off) without a model."""
        from drone_pose.drones import DroneModelError, load_drone

        try:
            self._drone = load_drone(self.estimator.description.get("drone", {}).get("name", ""))
        except (DroneModelError, ValueError, AttributeError):
            self.get_logger().warning("no drone mesh for the checkpoint's drone: marker and overlay disabled")
            self._drone = None
            return None
        return mesh_marker(self._drone)

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

    def _lose_track(self, header: Header) -> None:
        """Delete the marker once when the track is lost (the next valid pose adds it again)."""
        if self._marker is not None and self._tracking:
            self.marker_publisher.publish(delete_marker(header))
            self._tracking = False

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

    def destroy_node(self) -> None:
        self._stop_inputs()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        super().destroy_node()


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
