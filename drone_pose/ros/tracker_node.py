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

import time
from typing import Any

import numpy as np
from sensor_msgs.msg import Image

from drone_pose.ros.camera_input import INPUT_REJECTIONS, TRANSPORTS, CameraInput
from drone_pose.ros.diagnostics import diagnostic_array
from drone_pose.ros.estimator_node import EstimatorNode
from drone_pose.ros.estimator_node_support import model_name, run_lifecycle_node
from drone_pose.ros.frame_pairing import Frame, FramePairing
from drone_pose.ros.image_conversions import numpy_to_image
from drone_pose.ros.qos import sensor_data_qos
from drone_pose.ros.tracker_parameters import TRACKER_NODE_NAME, TRACKER_PARAMETERS, parameter_default

__all__ = ["INPUT_REJECTIONS", "TrackerNode", "main"]


class TrackerNode(EstimatorNode):
    """Drone pose tracker on one camera (topics `image`, `camera_info`; remap them).

    A managed (lifecycle) node: configure loads the model and creates the publishers, activate
    subscribes and starts the worker, deactivate unsubscribes and moves the model off the GPU,
    cleanup releases it. With `autostart` (the default) main() configures and activates it at once,
    so it behaves like a plain node.
    """

    def __init__(self, estimator: Any = None, **kwargs: Any) -> None:
        super().__init__(TRACKER_NODE_NAME, TRACKER_PARAMETERS, estimator, **kwargs)
        self.pairing = FramePairing(
            float(parameter_default("camera_info_wait_s")),  # the parameter's value is read at configure
            self.counters,
            self.reject,
            on_clock_reset=self._on_clock_reset,
        )
        self.inputs = CameraInput(
            self.pairing, self.counters, self.reject, int(self.parameter("max_image_pixels"))
        )
        self._inputs_ready = True

    # -- lifecycle ----------------------------------------------------------------------------
    def _configure_inputs(self) -> str:
        transport = self.parameter("image_transport")
        if transport not in TRANSPORTS:
            return f"image_transport must be raw or compressed, got {transport!r}"
        self.drone_frame = self.parameter("drone_frame")
        self.inputs.max_pixels = int(self.parameter("max_image_pixels"))
        self.pairing.camera_info_wait_s = float(self.parameter("camera_info_wait_s"))
        return ""

    def _configured_summary(self) -> str:
        return f"model {model_name(self.estimator)} on {self._device}"

    def _create_outputs(self) -> None:
        super()._create_outputs()
        overlay_qos = sensor_data_qos(int(self.parameter("input_queue_depth")))
        self.overlay_publisher = self.publisher(Image, "overlay", overlay_qos)
        wait = self.pairing.camera_info_wait_s
        self._outputs += [
            self.overlay_publisher,
            self.create_timer(max(wait / 2, 0.01), self.pairing.flush_expired),
        ]

    def _start_inputs(self) -> list[Any]:
        self.pairing.mailbox.reopen()
        return self.inputs.subscribe(
            self,
            "image",
            "camera_info",
            self.parameter("image_transport"),
            int(self.parameter("input_queue_depth")),
        )

    def _close_queue(self) -> None:
        self.pairing.mailbox.close()

    def _clear_inputs(self) -> None:
        self.pairing.clear()

    def _on_clock_reset(self, previous_ns: int, stamp_ns: int) -> None:
        self.get_logger().warning(
            f"clock reset: image stamps jumped back from {previous_ns / 1e9:.3f} s to {stamp_ns / 1e9:.3f} s;"
            " frame pairing starts again (counted in clock_resets)"
        )

    # -- estimation (worker thread) -----------------------------------------------------------
    def _take(self, timeout_s: float) -> Frame | None:
        return self.pairing.mailbox.take(timeout_s)

    def _process(self, frame: Frame) -> None:
        result = self.estimator.estimate(frame.rgb, frame.K, frame.distortion)
        self.counters["frames_processed"] += 1
        self.counters["frames_zoomed"] += int(result.zoomed[0])
        if self.overlay_publisher.get_subscription_count() > 0:  # drawn only while someone watches
            self._publish_overlay(frame, result)
        if not bool(result.valid[0]):
            self.reject(result.reasons[0] or "invalid")
            self.lose_track(frame.header)
            return
        R, t, covariance = (result.R[0].numpy(), result.t[0].numpy(), result.covariance[0].numpy())
        if self.publish_pose(frame.header, R, t, covariance):
            self.rates.latencies_ms.append(1e3 * (time.monotonic() - frame.received))

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


def main(args: list[str] | None = None) -> None:
    """Entry point `tracker_node` (rclpy arguments: --ros-args -p checkpoint:=... -r image:=...).

    With autostart (default) the node is configured and activated at once and a failed configure
    (bad parameters or checkpoint) exits with status 2; without it the node waits, unconfigured, for
    lifecycle transitions (`ros2 lifecycle set /drone_pose_tracker configure`).
    """
    run_lifecycle_node("tracker_node", TrackerNode, args)


if __name__ == "__main__":
    main()
