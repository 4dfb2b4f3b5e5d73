"""The tracker node: camera images in, drone pose out (PoseStamped, PoseWithCovarianceStamped, TF,
diagnostics). Thin: every decision about pixels and poses is PoseEstimator's.

Threads: rclpy callbacks (SingleThreadedExecutor) only validate and park the newest frame in a
one-slot mailbox; a worker thread runs the estimator on it. A frame that arrives before the worker
took the previous one replaces it and is counted as dropped, so the queue never grows. Every
rejected input is counted by reason and reported on /diagnostics; nothing here raises into rclpy.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PoseStamped, PoseWithCovarianceStamped
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.publisher import Publisher
from rclpy.qos import QoSProfile
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from visualization_msgs.msg import Marker

from drone_pose.geometry.rotations import matrix_to_quaternion_xyzw
from drone_pose.ros.image_conversions import ImageConversionError, image_to_numpy, numpy_to_image
from drone_pose.ros.qos import sensor_data_qos
from drone_pose.ros.tf import TransformBroadcaster, transform_stamped

CAMERA_INFO_HISTORY = 64
# Reasons an image is rejected before estimation (the others come from the estimator's verdict).
INPUT_REJECTIONS = (
    "stamp_not_increasing",
    "missing_camera_info",
    "bad_image",
    "bad_camera_info",
    "camera_info_size_mismatch",
    "image_too_small",
    "image_too_large",
)
LATENCY_WINDOW = 300


@dataclass
class Frame:
    """A validated input: RGB pixels [H,W,3] uint8, intrinsics K [3,3], header, receive time (s)."""

    rgb: np.ndarray
    K: np.ndarray
    header: Any
    received: float


def rgb_of(msg: Image) -> np.ndarray:
    """[H,W,3] uint8 RGB of an rgb8, bgr8, rgba8, bgra8 or mono8 image; ImageConversionError otherwise."""
    pixels = image_to_numpy(msg)
    if pixels.dtype != np.uint8:
        raise ImageConversionError(f"encoding {msg.encoding} is not 8-bit; the tracker needs rgb8/bgr8/mono8")
    if msg.encoding in ("rgb8", "8UC3"):
        return pixels
    if msg.encoding == "bgr8":
        return pixels[..., ::-1]
    if msg.encoding in ("rgba8", "bgra8"):
        rgb = pixels[..., :3]
        return rgb if msg.encoding == "rgba8" else rgb[..., ::-1]
    return np.repeat(pixels, 3, axis=2)  # mono8 / 8UC1


def intrinsics_of(info: CameraInfo) -> np.ndarray:
    """K [3,3] of a CameraInfo; ValueError when it is not a usable pinhole matrix."""
    K = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], (0, 0, 1)):
        raise ValueError("camera_info K is not a finite pinhole matrix with positive focal lengths")
    return K


def stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class TrackerNode(LifecycleNode):
    """Drone pose tracker on one camera (topics `image`, `camera_info`; remap them).

    A managed (lifecycle) node: configure loads the model and creates the publishers, activate
    subscribes and starts the worker, deactivate unsubscribes and moves the model off the GPU,
    cleanup releases it. With `autostart` (the default) main() configures and activates it at once,
    so it behaves like a plain node.
    """

    def __init__(self, estimator: Any = None, **kwargs: Any) -> None:
        super().__init__("drone_pose_tracker", **kwargs)
        self._declare_parameters()
        self._given_estimator = estimator
        self._trained_zoom = None  # the checkpoint's second-pass settings, kept while zoom_pass is off
        self._trained_flip_test = "off"  # the checkpoint's flip test, kept while flip_test is off
        self.estimator: Any = None
        self.drone_frame = self.get_parameter("drone_frame").value
        self.counters: Counter[str] = Counter()
        self.last_rejection = ""
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._infos: deque[tuple[int, CameraInfo]] = deque(maxlen=CAMERA_INFO_HISTORY)
        self._slot: Frame | None = None
        self._pending: tuple[np.ndarray, Any, float] | None = None  # image waiting for its CameraInfo
        self._slot_lock = threading.Condition()
        self._last_stamp = -1
        self._running = False
        self._worker: threading.Thread | None = None
        self._subscriptions_active: list[Any] = []
        self._outputs: list[Any] = []  # publishers and timers created on configure
        self._marker: Marker | None = None
        self._drone: Any = None
        self._tracking = False
        self.tf: TransformBroadcaster | None = None
        self.lifecycle_label = "unconfigured"
        self._max_pixels = int(self.get_parameter("max_image_pixels").value)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # -- lifecycle ----------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.configure_error = ""
        transport = self.get_parameter("image_transport").value
        if transport not in ("raw", "compressed"):
            self.configure_error = f"image_transport must be raw or compressed, got {transport!r}"
            self.get_logger().error(f"configure failed: {self.configure_error}")
            return TransitionCallbackReturn.FAILURE
        try:
            self.estimator = self._given_estimator or self._load_estimator()
        except (ValueError, OSError) as error:  # CheckpointError is a ValueError
            self.get_logger().error(f"configure failed: {error}")
            self.configure_error = str(error)
            return TransitionCallbackReturn.FAILURE
        self._device = self.estimator.device
        self._trained_zoom = self.estimator.zoom
        self.estimator.zoom = self._trained_zoom if self.get_parameter("zoom_pass").value else None
        self._trained_flip_test = getattr(self.estimator, "flip_test", "off")
        if not self.get_parameter("flip_test").value:
            self.estimator.flip_test = "off"
        output_qos = QoSProfile(depth=int(self.get_parameter("output_queue_depth").value))
        depth = int(self.get_parameter("input_queue_depth").value)
        overridable = QoSOverridingOptions.with_default_policies()
        self.pose_publisher = self.create_publisher(
            PoseStamped, "pose", output_qos, qos_overriding_options=overridable
        )
        self.covariance_publisher = self.create_publisher(
            PoseWithCovarianceStamped, "pose_with_covariance", output_qos, qos_overriding_options=overridable
        )
        self.marker_publisher = self.create_publisher(
            Marker, "marker", output_qos, qos_overriding_options=overridable
        )
        self.overlay_publisher = self.create_publisher(
            Image, "overlay", sensor_data_qos(depth), qos_overriding_options=overridable
        )
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._marker = self._mesh_marker()
        self._tracking = False
        self.tf = TransformBroadcaster(self) if self.get_parameter("publish_tf").value else None
        wait = float(self.get_parameter("camera_info_wait_s").value)
        self._outputs = [
            self.pose_publisher,
            self.covariance_publisher,
            self.marker_publisher,
            self.overlay_publisher,
            self.diagnostics_publisher,
            self.create_timer(1.0, self._publish_diagnostics),
            self.create_timer(max(wait / 2, 0.01), lambda: self._flush_pending(wait)),
        ]
        self._rates_since = time.monotonic()
        self._window_base = (0, 0)
        self.lifecycle_label = "inactive"
        self.get_logger().info(f"configured: model {self._model_name()} on {self._device}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.estimator.device != self._device:
            self.estimator.to(self._device)
        depth = int(self.get_parameter("input_queue_depth").value)
        overridable = QoSOverridingOptions.with_default_policies()
        transport = self.get_parameter("image_transport").value
        if transport == "compressed":  # image_transport's topic naming: <image>/compressed
            image = self.create_subscription(
                CompressedImage,
                "image/compressed",
                self._on_compressed,
                sensor_data_qos(depth),
                qos_overriding_options=overridable,
            )
        else:
            image = self.create_subscription(
                Image, "image", self._on_image, sensor_data_qos(depth), qos_overriding_options=overridable
            )
        info = self.create_subscription(
            CameraInfo,
            "camera_info",
            self._on_camera_info,
            sensor_data_qos(depth),
            qos_overriding_options=overridable,
        )
        self._subscriptions_active = [image, info]
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

    def _stop_inputs(self) -> None:
        for subscription in self._subscriptions_active:
            self.destroy_subscription(subscription)
        self._subscriptions_active = []
        self._running = False
        with self._slot_lock:
            self._slot = None
            self._slot_lock.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
            self._worker = None
        self._pending = None

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

    def _model_name(self) -> str:
        return str(getattr(self.estimator, "description", {}).get("path", ""))

    # -- parameters -------------------------------------------------------------------------
    def _declare_parameters(self) -> None:
        def describe(text: str, low: float | None = None, high: float | None = None) -> ParameterDescriptor:
            descriptor = ParameterDescriptor(description=text)
            if low is not None:
                descriptor.floating_point_range = [
                    FloatingPointRange(from_value=low, to_value=high, step=0.0)
                ]
            return descriptor

        self.declare_parameter(
            "checkpoint", "", describe("drone_pose checkpoint (.pt); empty: the shipped one for `drone`")
        )
        self.declare_parameter("drone", "m2ed", describe("built-in drone whose shipped model is the default"))
        self.declare_parameter("device", "auto", describe("cpu, cuda, cuda:N or auto"))
        self.declare_parameter("drone_frame", "drone", describe("child frame of the published TF"))
        self.declare_parameter("publish_tf", True, describe("publish camera optical -> drone on /tf"))
        self.declare_parameter(
            "min_keypoint_confidence",
            0.1,
            describe("heatmap peak below which a keypoint is ignored (negative: keep all)", -1.0, 1.0),
        )
        self.declare_parameter(
            "keypoint_confidence_power",
            4.0,
            describe(
                "PnP weighs a keypoint by (its heatmap peak / the best one) ** this (0: equally)", 0.0, 16.0
            ),
        )
        self.declare_parameter(
            "max_reprojection_rms_px",
            8.0,
            describe("reject poses whose keypoint RMS reprojection error exceeds this", 0.0, 1.0e6),
        )
        self.declare_parameter(
            "max_position_std_m",
            0.1,
            describe(
                "reject poses whose calibrated position standard deviation (m) exceeds this", 0.0, 1.0e6
            ),
        )
        self.declare_parameter(
            "zoom_pass",
            True,
            describe("zoomed second network pass for small drones when the checkpoint was trained for it"),
        )
        self.declare_parameter(
            "flip_test",
            True,
            describe("average heatmaps with the mirrored image's where the checkpoint asks for it"),
        )
        self.declare_parameter(
            "input_queue_depth", 5, describe("QoS depth of the image and camera_info inputs")
        )
        self.declare_parameter("output_queue_depth", 10, describe("QoS depth of the pose outputs"))
        self.declare_parameter(
            "camera_info_wait_s",
            0.1,
            describe("how long an image waits for the CameraInfo of its stamp", 0.0, 10.0),
        )
        self.declare_parameter("image_transport", "raw", describe("raw (sensor_msgs/Image) or compressed"))
        self.declare_parameter(
            "autostart", True, describe("configure and activate at start (false: wait for lifecycle calls)")
        )
        self.declare_parameter(
            "max_image_pixels",
            50_000_000,
            describe("images with more pixels are rejected (image_too_large) before any copy"),
        )

    # run-time parameters that are EstimatorThresholds fields of the same name
    _THRESHOLD_FIELDS = (
        "min_keypoint_confidence",
        "max_reprojection_rms_px",
        "max_position_std_m",
        "keypoint_confidence_power",
    )
    _POSITIVE_FIELDS = ("max_reprojection_rms_px", "max_position_std_m")

    def _on_set_parameters(self, parameters: list[Any]) -> SetParametersResult:
        updates = {}
        zoom_pass = flip_test = None
        for parameter in parameters:
            if parameter.name in self._THRESHOLD_FIELDS:
                value = float(parameter.value)
                if not math.isfinite(value) or (parameter.name in self._POSITIVE_FIELDS and value <= 0):
                    reason = f"{parameter.name}: bad value {value}"
                    return SetParametersResult(successful=False, reason=reason)
                updates[parameter.name] = value
            elif parameter.name == "zoom_pass":  # declared bool: rclpy refuses other types
                zoom_pass = bool(parameter.value)
            elif parameter.name == "flip_test":  # declared bool
                flip_test = bool(parameter.value)
            elif parameter.name in (
                "autostart",
                "max_image_pixels",
                "publish_tf",
                "camera_info_wait_s",
                "checkpoint",
                "drone",
                "device",
                "image_transport",
                "input_queue_depth",
                "output_queue_depth",
            ):
                return SetParametersResult(
                    successful=False, reason=f"{parameter.name} is read-only at run time"
                )
        # one attribute assignment each: the worker sees either the old or the new value
        if updates and self.estimator is not None:
            self.estimator.thresholds = dataclasses.replace(self.estimator.thresholds, **updates)
        if zoom_pass is not None and self.estimator is not None:
            self.estimator.zoom = self._trained_zoom if zoom_pass else None
        if flip_test is not None and self.estimator is not None:
            self.estimator.flip_test = self._trained_flip_test if flip_test else "off"
        return SetParametersResult(successful=True)

    def _load_estimator(self) -> Any:
        from drone_pose.inference.estimator import EstimatorThresholds, PoseEstimator

        checkpoint = self.get_parameter("checkpoint").value or None
        device = self.get_parameter("device").value
        thresholds = EstimatorThresholds(
            **{name: float(self.get_parameter(name).value) for name in self._THRESHOLD_FIELDS}
        )
        return PoseEstimator.from_checkpoint(
            checkpoint,
            device=None if device == "auto" else device,
            drone=self.get_parameter("drone").value,
            thresholds=thresholds,
        )

    # -- inputs (executor thread) -------------------------------------------------------------
    def _reject(self, reason: str) -> None:
        self.counters[f"rejected_{reason}"] += 1
        self.last_rejection = reason

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self.counters["camera_info_received"] += 1
        stamp = stamp_ns(msg.header)
        self._infos.append((stamp, msg))
        pending = self._pending
        if pending is not None and stamp_ns(pending[1]) == stamp:  # the image came first
            self._pending = None
            self._pair(*pending, msg)

    def _on_compressed(self, msg: CompressedImage) -> None:
        encoded = np.frombuffer(bytes(msg.data), dtype=np.uint8)
        decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR) if encoded.size else None
        if decoded is None or decoded.shape[0] * decoded.shape[1] > self._max_pixels:
            self.counters["images_received"] += 1
            self._reject("bad_image" if decoded is None else "image_too_large")
            return
        self._on_pixels(np.ascontiguousarray(decoded[..., ::-1]), msg.header)

    def _on_image(self, msg: Image) -> None:
        if int(msg.width) * int(msg.height) > self._max_pixels:
            self.counters["images_received"] += 1
            self._reject("image_too_large")
            return
        try:
            rgb = rgb_of(msg)
        except ImageConversionError:
            self.counters["images_received"] += 1
            self._reject("bad_image")
            return
        self._on_pixels(rgb, msg.header)

    def _on_pixels(self, rgb: np.ndarray, header: Any) -> None:
        received = time.monotonic()
        self.counters["images_received"] += 1
        stamp = stamp_ns(header)
        if stamp <= self._last_stamp or (self._pending is not None and stamp <= stamp_ns(self._pending[1])):
            self._reject("stamp_not_increasing")
            return
        exact = next((info for info_stamp, info in reversed(self._infos) if info_stamp == stamp), None)
        if exact is not None:
            self._pair(rgb, header, received, exact)
            return
        # Wait briefly for the CameraInfo of this stamp (topics arrive in any order); a newer image or
        # the timeout falls back to the newest CameraInfo (a static camera that publishes it rarely).
        self._flush_pending()
        self._pending = (rgb, header, received)

    def _flush_pending(self, max_age_s: float = 0.0) -> None:
        pending = self._pending
        if pending is None or time.monotonic() - pending[2] < max_age_s:
            return
        self._pending = None
        if not self._infos:
            self._reject("missing_camera_info")
            return
        self._pair(*pending, self._infos[-1][1])

    def _pair(self, rgb: np.ndarray, header: Any, received: float, info: CameraInfo) -> None:
        """Validate an image with its CameraInfo and park it in the mailbox for the worker."""
        try:
            K = intrinsics_of(info)
        except ValueError:
            self._reject("bad_camera_info")
            return
        if (int(info.width), int(info.height)) != (rgb.shape[1], rgb.shape[0]):
            self._reject("camera_info_size_mismatch")
            return
        if min(rgb.shape[:2]) < 8:
            self._reject("image_too_small")
            return
        self._last_stamp = stamp_ns(header)
        with self._slot_lock:
            if self._slot is not None:
                self.counters["frames_dropped"] += 1
            self._slot = Frame(np.ascontiguousarray(rgb), K, header, received)
            self._slot_lock.notify()

    # -- estimation (worker thread) -----------------------------------------------------------
    def _work(self) -> None:
        while self._running:
            with self._slot_lock:
                while self._slot is None and self._running:
                    self._slot_lock.wait(timeout=0.5)
                frame, self._slot = self._slot, None
            if frame is None:
                continue
            try:
                self._process(frame)
            except Exception as error:  # a bad frame must never stop the tracker
                self._reject("estimator_error")
                self.get_logger().error(f"estimation failed: {type(error).__name__}: {error}")

    def _process(self, frame: Frame) -> None:
        result = self.estimator.estimate(frame.rgb, frame.K)
        self.counters["frames_processed"] += 1
        self.counters["frames_zoomed"] += int(result.zoomed[0])
        if self.overlay_publisher.get_subscription_count() > 0:  # drawn only while someone watches
            self._publish_overlay(frame, result)
        if not bool(result.valid[0]):
            self._reject(result.reasons[0] or "invalid")
            self._lose_track(frame.header)
            return
        R, t, covariance = result.R[0].numpy(), result.t[0].numpy(), result.covariance[0].numpy()
        if not (np.isfinite(R).all() and np.isfinite(t).all() and np.isfinite(covariance).all()):
            self._reject("non_finite_pose")
            return
        quaternion = matrix_to_quaternion_xyzw(torch.from_numpy(np.ascontiguousarray(R, np.float64))).numpy()
        pose = PoseStamped()
        pose.header = frame.header
        _fill_pose(pose.pose, quaternion, t)
        with_covariance = PoseWithCovarianceStamped()
        with_covariance.header = frame.header
        _fill_pose(with_covariance.pose.pose, quaternion, t)
        # PnP covariance order (tx, ty, tz, rx, ry, rz), rotation as a left perturbation in the camera
        # frame: ROS's (x, y, z, rot x, rot y, rot z) about the header frame's axes.
        with_covariance.pose.covariance = [float(v) for v in covariance.reshape(-1)]
        self.pose_publisher.publish(pose)
        self.covariance_publisher.publish(with_covariance)
        if self._marker is not None:
            self._marker.header = frame.header
            self._marker.action = Marker.ADD
            _fill_pose(self._marker.pose, quaternion, t)
            self.marker_publisher.publish(self._marker)
            self._tracking = True
        if self.tf is not None:
            self.tf.send(
                [
                    transform_stamped(
                        quaternion, t, frame.header.stamp, frame.header.frame_id, self.drone_frame
                    )
                ]
            )
        self.counters["poses_published"] += 1
        self.latencies_ms.append(1e3 * (time.monotonic() - frame.received))

    def _mesh_marker(self) -> Marker | None:
        """The drone mesh as a TRIANGLE_LIST in the drone frame (posed per frame); None without a model."""
        from drone_pose.drones import DroneModelError, load_drone

        try:
            drone = load_drone(self.estimator.description.get("drone", {}).get("name", ""))
        except (DroneModelError, ValueError, AttributeError):
            self.get_logger().warning("no drone mesh for the checkpoint's drone: marker and overlay disabled")
            self._drone = None
            return None
        self._drone = drone
        marker = Marker(ns="drone_pose", id=0, type=Marker.TRIANGLE_LIST)
        marker.scale.x = marker.scale.y = marker.scale.z = 1.0
        marker.color.r, marker.color.g, marker.color.b, marker.color.a = 0.1, 0.8, 0.3, 0.8
        marker.points = [
            Point(x=float(x), y=float(y), z=float(z)) for x, y, z in drone.vertices[drone.faces.reshape(-1)]
        ]
        return marker

    def _publish_overlay(self, frame: Frame, result: Any) -> None:
        from drone_pose.inference.overlay import draw_pose_overlay

        drone = self._drone
        if drone is None:
            return
        valid = bool(result.valid[0])
        R = result.R[0].numpy() if valid else np.full((3, 3), np.nan)  # no model drawn for rejected frames
        overlay = draw_pose_overlay(
            frame.rgb,
            drone,
            R,
            result.t[0].numpy(),
            frame.K,
            result.keypoints[0].numpy(),
            confidences=result.confidences[0].numpy(),
        )
        self.overlay_publisher.publish(
            numpy_to_image(overlay, "rgb8", frame.header.stamp, frame.header.frame_id)
        )

    def _lose_track(self, header: Any) -> None:
        """Delete the marker once when the track is lost (the next valid pose adds it again)."""
        if self._marker is not None and self._tracking:
            self.marker_publisher.publish(Marker(header=header, ns="drone_pose", id=0, action=Marker.DELETE))
            self._tracking = False

    # -- diagnostics --------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        elapsed = max(now - self._rates_since, 1e-6)
        received, processed = self.counters["images_received"], self.counters["frames_processed"]
        last_received, last_processed = self._window_base
        self._rates_since, self._window_base = now, (received, processed)
        latencies = np.array(self.latencies_ms) if self.latencies_ms else np.array([math.nan])
        values = {
            "input_rate_hz": (received - last_received) / elapsed,
            "processed_rate_hz": (processed - last_processed) / elapsed,
            "latency_p50_ms": float(np.percentile(latencies, 50)),
            "latency_p95_ms": float(np.percentile(latencies, 95)),
            "lifecycle_state": self.lifecycle_label,
            "device": str(getattr(self.estimator, "device", "")),
            "model": str(getattr(self.estimator, "description", {}).get("path", "")),
            "zoom_pass": getattr(self.estimator, "zoom", None) is not None,
            "flip_test": str(getattr(self.estimator, "flip_test", "off")),
            "last_rejection": self.last_rejection,
            **dict(self.counters),
        }
        status = DiagnosticStatus(name="drone_pose: tracker", hardware_id=self.get_fully_qualified_name())
        rejected = sum(v for k, v in self.counters.items() if k.startswith("rejected_"))
        status.level = DiagnosticStatus.WARN if self.last_rejection else DiagnosticStatus.OK
        status.message = f"{self.counters['poses_published']} poses, {rejected} rejected"
        status.values = [
            KeyValue(key=k, value=f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in values.items()
        ]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_publisher.publish(array)

    def destroy_node(self) -> None:
        self._stop_inputs()
        super().destroy_node()


def _fill_pose(pose: Any, quaternion: np.ndarray, t: np.ndarray) -> None:
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in t)
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = (
        float(v) for v in quaternion
    )


def main(args: list[str] | None = None) -> None:
    """Entry point `tracker_node` (rclpy arguments: --ros-args -p checkpoint:=... -r image:=...).

    With autostart (default) the node is configured and activated at once and a failed configure
    (bad parameters or checkpoint) exits with status 2; without it the node waits, unconfigured, for
    lifecycle transitions (`ros2 lifecycle set /drone_pose_tracker configure`).
    """
    rclpy.init(args=args)
    node = None
    try:
        node = TrackerNode()
        if node.get_parameter("autostart").value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                print(f"tracker_node: {node.configure_error}", file=sys.stderr)
                raise SystemExit(2)
            node.trigger_activate()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
