"""The lifecycle and the pose outputs the tracker and the fusion node share.

EstimatorNode is a LifecycleNode with a parameter table, an estimator loaded at configure and
switched at run time, the pose outputs (pose, pose_with_covariance, marker, /tf, /diagnostics)
and a worker thread; a subclass adds its inputs and what its worker does with them. Thin: no
decision about pixels or poses is made here.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
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
from visualization_msgs.msg import Marker

from drone_pose.ros.diagnostics import RateWindow
from drone_pose.ros.estimator_node_support import (
    EstimatorSwitches,
    declare_parameters,
    drone_mismatch,
    load_estimator,
)
from drone_pose.ros.pose_messages import delete_marker, mesh_marker, pose_messages, posed_marker
from drone_pose.ros.tf import TransformBroadcaster
from drone_pose.ros.tracker_parameters import ParameterSpec

WORKER_POLL_S = 0.5


class EstimatorNode(LifecycleNode):
    """A drone_pose lifecycle node: parameters from `table`, the estimator, the pose outputs.

    Subclasses implement _configure_inputs (read their parameters, return "" or why configure
    fails), _start_inputs / _stop_worker_inputs (subscriptions and their queues), _take (the next
    work item for the worker, None on timeout) and _process (one item); they call publish_pose /
    lose_track from the worker. Every rejection is counted by reason (reject); nothing raises into
    rclpy.
    """

    def __init__(
        self, name: str, table: Sequence[ParameterSpec], estimator: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(name, **kwargs)
        # what destroy_node needs, before anything that can raise (a parameter out of its range)
        self._inputs_ready = False  # a subclass sets it once its inputs exist (end of its __init__)
        self._running = False
        self._worker: threading.Thread | None = None
        self._subscriptions_active: list[Any] = []
        self.lifecycle_label = "unconfigured"
        self.counters: Counter[str] = Counter()
        self.last_rejection = ""
        self._table = {spec.name: spec for spec in table}
        declare_parameters(self, table)
        self._given_estimator = estimator
        self._switches = EstimatorSwitches()
        self.estimator: Any = None
        self.drone_frame = str(self.get_parameter("drone_frame").value)
        self.rates = RateWindow()
        self._outputs: list[Any] = []  # publishers and timers created on configure
        self._marker: Marker | None = None
        self._drone: Any = None
        self._tracking = False
        self.tf: TransformBroadcaster | None = None
        self.configure_error = ""
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def parameter(self, name: str) -> Any:
        """The current value of parameter `name`."""
        return self.get_parameter(name).value

    # -- lifecycle ----------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read the read-at-configure parameters, load the model, create the outputs. Any failure
        (rclpy would swallow an exception here) fails the transition with its message kept in
        `configure_error`; the node stays unconfigured and can be fixed and configured again."""
        self.configure_error = ""
        try:
            refusal = self._configure_inputs() or self._load_estimator()
            if refusal:
                return self._configure_failed(refusal)
            self._create_outputs()
        except Exception as error:  # reported, never raised into rclpy
            return self._configure_failed(f"{type(error).__name__}: {error}")
        self.lifecycle_label = "inactive"
        self.get_logger().info(f"configured: {self._configured_summary()}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.estimator.device != self._device:
            self.estimator.to(self._device)
        self._subscriptions_active = self._start_inputs()
        self._running = True
        self._worker = threading.Thread(target=self._work, name=f"{self.get_name()}_worker", daemon=True)
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

    def destroy_node(self) -> None:
        self._stop_inputs()
        super().destroy_node()

    def _load_estimator(self) -> str:
        """Load (or take the given) estimator and apply the switches; "" or why configure fails."""
        try:
            self.estimator = self._given_estimator or load_estimator(self)
        except (ValueError, OSError) as error:  # CheckpointError is a ValueError
            return str(error)
        mismatch = drone_mismatch(self.estimator, self.parameter("drone"))
        if mismatch:
            self.estimator = None
            return mismatch
        self._device = self.estimator.device
        self._switches.configure(self.estimator, self.parameter("zoom_pass"), self.parameter("flip_test"))
        return ""

    def _configure_failed(self, message: str) -> TransitionCallbackReturn:
        self.configure_error = message
        self.get_logger().error(f"configure failed: {message}")
        self._release_outputs()
        return TransitionCallbackReturn.FAILURE

    def _create_outputs(self) -> None:
        """Publishers of the pose outputs, the TF broadcaster, the mesh marker, the diagnostics
        timer and the subclass's own outputs (configure)."""
        output_qos = QoSProfile(depth=int(self.parameter("output_queue_depth")))
        self.pose_publisher = self.publisher(PoseStamped, "pose", output_qos)
        self.covariance_publisher = self.publisher(
            PoseWithCovarianceStamped, "pose_with_covariance", output_qos
        )
        self.marker_publisher = self.publisher(Marker, "marker", output_qos)
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._marker = self._mesh_marker()
        self._tracking = False
        self.tf = TransformBroadcaster(self) if self.parameter("publish_tf") else None
        self._outputs += [
            self.pose_publisher,
            self.covariance_publisher,
            self.marker_publisher,
            self.diagnostics_publisher,
            self.create_timer(1.0, self._publish_diagnostics),
        ]
        self.rates.restart()

    def publisher(self, message_type: type, topic: str, qos: QoSProfile) -> Publisher:
        """A publisher whose QoS the standard parameter overrides may change (add it to _outputs to
        release it at cleanup)."""
        return self.create_publisher(
            message_type, topic, qos, qos_overriding_options=QoSOverridingOptions.with_default_policies()
        )

    def _stop_inputs(self) -> None:
        if not self._inputs_ready:  # the constructor failed (a parameter rclpy refused)
            return
        for subscription in self._subscriptions_active:
            self.destroy_subscription(subscription)
        self._subscriptions_active = []
        self._running = False
        self._close_queue()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
            self._worker = None
        self._clear_inputs()

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
        self._release_inputs()
        self.estimator = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- parameters -------------------------------------------------------------------------
    def _on_set_parameters(self, parameters: list[Any]) -> SetParametersResult:
        accepted = {}
        for parameter in parameters:
            spec = self._table.get(parameter.name)
            if spec is None:
                continue  # rclpy's own (use_sim_time, QoS overrides)
            refusal = spec.refusal(parameter.value, configured=self.lifecycle_label != "unconfigured")
            if refusal is not None:
                return SetParametersResult(successful=False, reason=refusal)
            accepted[parameter.name] = parameter.value
        if self.estimator is not None:
            self._switches.apply(self.estimator, accepted)
        self._apply_runtime(accepted)
        return SetParametersResult(successful=True)

    def _apply_runtime(self, accepted: dict[str, Any]) -> None:
        """The subclass's own run-time parameters among the accepted ones (default: none)."""

    # -- the worker ---------------------------------------------------------------------------
    def reject(self, reason: str) -> None:
        """Count a rejected input or pose by reason (reported as rejected_<reason>)."""
        self.counters[f"rejected_{reason}"] += 1
        self.last_rejection = reason

    def _work(self) -> None:
        while self._running:
            item = self._take(WORKER_POLL_S)
            if item is None:
                continue
            try:
                self._process(item)
            except Exception as error:  # a bad input must never stop the node
                if not self.context.ok():  # shutting down (Ctrl-C): publishers are gone, not an error
                    return
                self.reject("estimator_error")
                self.get_logger().error(f"estimation failed: {type(error).__name__}: {error}")

    def publish_pose(self, header: Any, R: np.ndarray, t: np.ndarray, covariance: np.ndarray) -> bool:
        """Publish a valid pose (R [3,3], t [3] m, covariance [6,6] in header.frame_id) as pose,
        pose_with_covariance, marker and TF header.frame_id -> drone_frame; False (rejected as
        non_finite_pose, nothing published) when any of them is not finite."""
        try:
            messages = pose_messages(header, R, t, covariance, self.drone_frame)
        except ValueError:
            self.reject("non_finite_pose")
            return False
        self.pose_publisher.publish(messages.pose)
        self.covariance_publisher.publish(messages.pose_with_covariance)
        if self._marker is not None:
            self.marker_publisher.publish(posed_marker(self._marker, messages))
            self._tracking = True
        if self.tf is not None:
            self.tf.send([messages.transform])
        self.counters["poses_published"] += 1
        return True

    def lose_track(self, header: Any) -> None:
        """Delete the marker once when the track is lost (the next valid pose adds it again)."""
        if self._marker is not None and self._tracking:
            self.marker_publisher.publish(delete_marker(header))
            self._tracking = False

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

    # -- what a subclass provides -------------------------------------------------------------
    def _configure_inputs(self) -> str:
        """Read the subclass's read-at-configure parameters; "" or why configure fails."""
        raise NotImplementedError

    def _configured_summary(self) -> str:
        """One line for the log after a successful configure."""
        raise NotImplementedError

    def _start_inputs(self) -> list[Any]:
        """Open the queues and create the subscriptions (activate); returns the subscriptions."""
        raise NotImplementedError

    def _close_queue(self) -> None:
        """Wake the worker: its _take returns None from now on (deactivate)."""
        raise NotImplementedError

    def _clear_inputs(self) -> None:
        """Forget half-done inputs once the worker has stopped (deactivate)."""
        raise NotImplementedError

    def _release_inputs(self) -> None:
        """Release what configure created for the inputs (cleanup, failed configure; default: nothing)."""

    def _take(self, timeout_s: float) -> Any:
        """The next work item, waiting up to timeout_s; None on timeout or when closed."""
        raise NotImplementedError

    def _process(self, item: Any) -> None:
        """Estimate from one work item and publish (the worker thread)."""
        raise NotImplementedError

    def _publish_diagnostics(self) -> None:
        """Publish /diagnostics (the 1 Hz timer)."""
        raise NotImplementedError
