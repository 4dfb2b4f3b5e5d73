"""The tracker node: camera images in, drone pose out (PoseStamped, PoseWithCovarianceStamped, TF,
marker, overlay, diagnostics). Thin: lifecycle and wiring only.

Every decision about pixels and poses is PoseEstimator's; the parameters are declared from
drone_pose.ros.tracker_parameters, images are paired with their CameraInfo and parked by
drone_pose.ros.frame_pairing, and poses become messages in drone_pose.ros.pose_messages.
Threads: rclpy callbacks (SingleThreadedExecutor) only decode, validate and park the newest frame
in a one-slot mailbox; a worker thread runs the estimator on it. Every rejected input is counted
by reason and reported on /diagnostics; nothing here raises into rclpy.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.publisher import Publisher
from rclpy.qos import QoSProfile
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import Image
from visualization_msgs.msg import Marker

from drone_pose.ros.camera_input import INPUT_REJECTIONS, TRANSPORTS, CameraInput
from drone_pose.ros.diagnostics import RateWindow, diagnostic_array
from drone_pose.ros.estimator_node_support import (
    EstimatorSwitches,
    declare_parameters,
    drone_mismatch,
    load_estimator,
    model_name,
    run_lifecycle_node,
)
from drone_pose.ros.frame_pairing import Frame, FramePairing
from drone_pose.ros.image_conversions import numpy_to_image
from drone_pose.ros.pose_messages import delete_marker, mesh_marker, pose_messages, posed_marker
from drone_pose.ros.qos import sensor_data_qos
from drone_pose.ros.tf import TransformBroadcaster
from drone_pose.ros.tracker_parameters import (
    PARAMETERS_BY_NAME,
    TRACKER_NODE_NAME,
    TRACKER_PARAMETERS,
    parameter_default,
)

__all__ = ["INPUT_REJECTIONS", "TrackerNode", "main"]
WORKER_POLL_S = 0.5


class TrackerNode(LifecycleNode):
    """Drone pose tracker on one camera (topics `image`, `camera_info`; remap them).

    A managed (lifecycle) node: configure loads the model and creates the publishers, activate
    subscribes and starts the worker, deactivate unsubscribes and moves the model off the GPU,
    cleanup releases it. With `autostart` (the default) main() configures and activates it at once,
    so it behaves like a plain node.
    """

    def __init__(self, estimator: Any = None, **kwargs: Any) -> None:
        super().__init__(TRACKER_NODE_NAME, **kwargs)
        # what destroy_node needs, before anything that can raise (a parameter out of its range)
        self._running = False
        self._worker: threading.Thread | None = None
        self._subscriptions_active: list[Any] = []
        self.lifecycle_label = "unconfigured"
        self.counters: Counter[str] = Counter()
        self.last_rejection = ""
        self.pairing = FramePairing(
            float(parameter_default("camera_info_wait_s")),  # the parameter's value is read at configure
            self.counters,
            self._reject,
            on_clock_reset=self._on_clock_reset,
        )
        declare_parameters(self, TRACKER_PARAMETERS)
        self._given_estimator = estimator
        self._switches = EstimatorSwitches()
        self.estimator: Any = None
        self.drone_frame = self.get_parameter("drone_frame").value
        self.rates = RateWindow()
        self._outputs: list[Any] = []  # publishers and timers created on configure
        self._marker: Marker | None = None
        self._drone: Any = None
        self._tracking = False
        self.tf: TransformBroadcaster | None = None
        self.configure_error = ""
        self.inputs = CameraInput(
            self.pairing, self.counters, self._reject, int(self.get_parameter("max_image_pixels").value)
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # -- lifecycle ----------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read the read-at-configure parameters, load the model, create the outputs. Any failure
        (rclpy would swallow an exception here) fails the transition with its message kept in
        `configure_error`; the node stays unconfigured and can be fixed and configured again."""
        self.configure_error = ""
        try:
            return self._configure()
        except Exception as error:  # reported, never raised into rclpy
            self.estimator = None
            return self._configure_failed(f"{type(error).__name__}: {error}")

    def _configure(self) -> TransitionCallbackReturn:
        transport = self.get_parameter("image_transport").value
        if transport not in TRANSPORTS:
            return self._configure_failed(f"image_transport must be raw or compressed, got {transport!r}")
        self.drone_frame = self.get_parameter("drone_frame").value
        self.inputs.max_pixels = int(self.get_parameter("max_image_pixels").value)
        self.pairing.camera_info_wait_s = float(self.get_parameter("camera_info_wait_s").value)
        try:
            self.estimator = self._given_estimator or load_estimator(self)
        except (ValueError, OSError) as error:  # CheckpointError is a ValueError
            return self._configure_failed(str(error))
        mismatch = drone_mismatch(self.estimator, self.get_parameter("drone").value)
        if mismatch:
            self.estimator = None
            return self._configure_failed(mismatch)
        self._device = self.estimator.device
        self._switches.configure(
            self.estimator, self.get_parameter("zoom_pass").value, self.get_parameter("flip_test").value
        )
        self._create_outputs()
        self.lifecycle_label = "inactive"
        self.get_logger().info(f"configured: model {model_name(self.estimator)} on {self._device}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.estimator.device != self._device:
            self.estimator.to(self._device)
        self._subscriptions_active = self.inputs.subscribe(
            self,
            "image",
            "camera_info",
            self.get_parameter("image_transport").value,
            int(self.get_parameter("input_queue_depth").value),
        )
        self.pairing.mailbox.reopen()
        self._running = True
        self._worker = threading.Thread(target=self._work, name="drone_pose_estimator", daemon=True)
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
        return TransitionCallbackReturn.FAILURE

    def _create_outputs(self) -> None:
        """Publishers, TF broadcaster, the mesh marker and the timers (configure)."""
        output_qos = QoSProfile(depth=int(self.get_parameter("output_queue_depth").value))
        overridable = QoSOverridingOptions.with_default_policies()

        def publisher(message_type: type, topic: str, qos: QoSProfile) -> Publisher:
            return self.create_publisher(message_type, topic, qos, qos_overriding_options=overridable)

        self.pose_publisher = publisher(PoseStamped, "pose", output_qos)
        self.covariance_publisher = publisher(PoseWithCovarianceStamped, "pose_with_covariance", output_qos)
        self.marker_publisher = publisher(Marker, "marker", output_qos)
        overlay_qos = sensor_data_qos(int(self.get_parameter("input_queue_depth").value))
        self.overlay_publisher = publisher(Image, "overlay", overlay_qos)
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._marker = self._mesh_marker()
        self._tracking = False
        self.tf = TransformBroadcaster(self) if self.get_parameter("publish_tf").value else None
        wait = self.pairing.camera_info_wait_s
        self._outputs = [
            self.pose_publisher,
            self.covariance_publisher,
            self.marker_publisher,
            self.overlay_publisher,
            self.diagnostics_publisher,
            self.create_timer(1.0, self._publish_diagnostics),
            self.create_timer(max(wait / 2, 0.01), self.pairing.flush_expired),
        ]
        self.rates.restart()

    def _stop_inputs(self) -> None:
        for subscription in self._subscriptions_active:
            self.destroy_subscription(subscription)
        self._subscriptions_active = []
        self._running = False
        self.pairing.mailbox.close()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
            self._worker = None
        self.pairing.clear()

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
        self.estimator = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- parameters -------------------------------------------------------------------------
    def _on_set_parameters(self, parameters: list[Any]) -> SetParametersResult:
        accepted = {}
        for parameter in parameters:
            spec = PARAMETERS_BY_NAME.get(parameter.name)
            if spec is None:
                continue  # rclpy's own (use_sim_time, QoS overrides)
            refusal = spec.refusal(parameter.value, configured=self.lifecycle_label != "unconfigured")
            if refusal is not None:
                return SetParametersResult(successful=False, reason=refusal)
            accepted[parameter.name] = parameter.value
        if self.estimator is not None:
            self._switches.apply(self.estimator, accepted)
        return SetParametersResult(successful=True)

    # -- inputs (executor thread) -------------------------------------------------------------
    def _reject(self, reason: str) -> None:
        self.counters[f"rejected_{reason}"] += 1
        self.last_rejection = reason

    def _on_clock_reset(self, previous_ns: int, stamp_ns: int) -> None:
        self.get_logger().warning(
            f"clock reset: image stamps jumped back from {previous_ns / 1e9:.3f} s to {stamp_ns / 1e9:.3f} s;"
            " frame pairing starts again (counted in clock_resets)"
        )

    # -- estimation (worker thread) -----------------------------------------------------------
    def _work(self) -> None:
        while self._running:
            frame = self.pairing.mailbox.take(WORKER_POLL_S)
            if frame is None:
                continue
            try:
                self._process(frame)
            except Exception as error:  # a bad frame must never stop the tracker
                if not self.context.ok():  # shutting down (Ctrl-C): publishers are gone, not an error
                    return
                self._reject("estimator_error")
                self.get_logger().error(f"estimation failed: {type(error).__name__}: {error}")

    def _process(self, frame: Frame) -> None:
        result = self.estimator.estimate(frame.rgb, frame.K, frame.distortion)
        self.counters["frames_processed"] += 1
        self.counters["frames_zoomed"] += int(result.zoomed[0])
        if self.overlay_publisher.get_subscription_count() > 0:  # drawn only while someone watches
            self._publish_overlay(frame, result)
        if not bool(result.valid[0]):
            self._reject(result.reasons[0] or "invalid")
            self._lose_track(frame.header)
            return
        try:
            messages = pose_messages(
                frame.header,
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
        self.rates.latencies_ms.append(1e3 * (time.monotonic() - frame.received))

    def _mesh_marker(self) -> Marker | None:
        """The checkpoint's drone mesh as a marker; None (marker and overlay off) without a model."""
        from drone_pose.drones import DroneModelError, load_drone

        try:
            self._drone = load_drone(self.estimator.description.get("drone", {}).get("name", ""))
        except (DroneModelError, ValueError, AttributeError):
            self.get_logger().warning("no drone mesh for the checkpoint's drone: marker and overlay disabled")
            self._drone = None
            return None
        return mesh_marker(self._drone)

    def _publish_overlay(self, frame: Frame, result: Any) -> None:
        from drone_pose.inference.overlay import draw_pose_overlay

        if self._drone is None:
            return
        valid = bool(result.valid[0])
        R = result.R[0].numpy() if valid else np.full((3, 3), np.nan)  # no model drawn for rejected frames
        overlay = draw_pose_overlay(
            frame.rgb,
            self._drone,
            R,
            result.t[0].numpy(),
            frame.K,
            result.keypoints[0].numpy(),
            confidences=result.confidences[0].numpy(),
            distortion=frame.distortion,
        )
        self.overlay_publisher.publish(
            numpy_to_image(overlay, "rgb8", frame.header.stamp, frame.header.frame_id)
        )

    def _lose_track(self, header: Any) -> None:
        """Delete the marker once when the track is lost (the next valid pose adds it again)."""
        if self._marker is not None and self._tracking:
            self.marker_publisher.publish(delete_marker(header))
            self._tracking = False

    # -- diagnostics --------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        values = {
            **self.rates.report(self.counters["images_received"], self.counters["frames_processed"]),
            "lifecycle_state": self.lifecycle_label,
            "device": str(getattr(self.estimator, "device", "")),
            "model": model_name(self.estimator),
            "zoom_pass": getattr(self.estimator, "zoom", None) is not None,
            "flip_test": str(getattr(self.estimator, "flip_test", "off")),
        }
        self.diagnostics_publisher.publish(
            diagnostic_array(
                "drone_pose: tracker",
                self.get_fully_qualified_name(),
                values,
                self.counters,
                self.last_rejection,
                "poses_published",
                self.get_clock().now().to_msg(),
            )
        )

    def destroy_node(self) -> None:
        self._stop_inputs()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    """Entry point `tracker_node` (rclpy arguments: --ros-args -p checkpoint:=... -r image:=...).

    With autostart (default) the node is configured and activated at once and a failed configure
    (bad parameters or checkpoint) exits with status 2; without it the node waits, unconfigured, for
    lifecycle transitions (`ros2 lifecycle set /drone_pose_tracker configure`).
    """
    run_lifecycle_node("tracker_node", TrackerNode, args)


if __name__ == "__main__":
    main()
