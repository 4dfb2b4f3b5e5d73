"""What the tracker and fusion nodes share: parameters from a table, the estimator they load and
switch at run time, and the `main` that starts a lifecycle node.

Thin rclpy glue; decisions about pixels and poses stay in drone_pose.inference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterable
from typing import Any

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

from drone_pose.ros.tracker_parameters import THRESHOLD_PARAMETERS, ParameterSpec


def parameter_descriptor(spec: ParameterSpec) -> ParameterDescriptor:
    """The rclpy descriptor of a table entry: its description and its floating-point or integer range."""
    descriptor = ParameterDescriptor(description=spec.description)
    if spec.range is not None:
        low, high = spec.range
        if isinstance(spec.default, int) and not isinstance(spec.default, bool):
            descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
        else:
            descriptor.floating_point_range = [FloatingPointRange(from_value=low, to_value=high, step=0.0)]
    return descriptor


def declare_parameters(node: LifecycleNode, specs: Iterable[ParameterSpec]) -> None:
    """Declare every parameter of a table on `node` (rclpy raises for a given value out of range)."""
    for spec in specs:
        node.declare_parameter(spec.name, spec.default, parameter_descriptor(spec))


def load_estimator(node: LifecycleNode) -> Any:
    """The PoseEstimator the node's checkpoint, device, drone and threshold parameters describe."""
    from drone_pose.inference.estimator import DEFAULT_DRONE, PoseEstimator
    from drone_pose.inference.thresholds import EstimatorThresholds

    device = node.get_parameter("device").value
    thresholds = EstimatorThresholds(
        **{name: float(node.get_parameter(name).value) for name in THRESHOLD_PARAMETERS}
    )
    return PoseEstimator.from_checkpoint(
        node.get_parameter("checkpoint").value or None,
        device=None if device == "auto" else device,
        drone=node.get_parameter("drone").value or DEFAULT_DRONE,
        thresholds=thresholds,
    )


def model_name(estimator: Any) -> str:
    """The checkpoint path an estimator was loaded from ("" without one)."""
    return str(getattr(estimator, "description", {}).get("path", ""))


def drone_mismatch(estimator: Any, wanted: str) -> str:
    """Why the `drone` parameter and the checkpoint's drone disagree, "" when they agree."""
    trained = str(getattr(estimator, "description", {}).get("drone", {}).get("name", ""))
    if wanted and trained and wanted != trained:
        return (
            f"checkpoint {model_name(estimator)} is trained for drone {trained!r}, but drone:={wanted}: "
            f"set drone:={trained} (or leave it empty) or use a {wanted} checkpoint"
        )
    return ""


class EstimatorSwitches:
    """The estimator's run-time parameters: thresholds, zoom_pass and flip_test.

    Remembers the checkpoint's second-pass settings and flip test while they are switched off, so
    switching them on again restores what the checkpoint was trained with.
    """

    def __init__(self) -> None:
        self.trained_zoom: Any = None
        self.trained_flip_test = "off"

    def configure(self, estimator: Any, zoom_pass: bool, flip_test: bool) -> None:
        """Remember the freshly loaded estimator's settings and apply the two switches."""
        self.trained_zoom = estimator.zoom
        self.trained_flip_test = getattr(estimator, "flip_test", "off")
        estimator.zoom = self.trained_zoom if zoom_pass else None
        if not flip_test:
            estimator.flip_test = "off"

    def apply(self, estimator: Any, values: dict[str, Any]) -> None:
        """Apply accepted run-time values (name -> value; other names are ignored). One attribute
        assignment each, so a worker thread sees the old or the new setting, never a mix."""
        updates = {name: float(value) for name, value in values.items() if name in THRESHOLD_PARAMETERS}
        if updates:
            estimator.thresholds = dataclasses.replace(estimator.thresholds, **updates)
        if "zoom_pass" in values:
            estimator.zoom = self.trained_zoom if bool(values["zoom_pass"]) else None
        if "flip_test" in values:
            estimator.flip_test = self.trained_flip_test if bool(values["flip_test"]) else "off"


def run_lifecycle_node(
    executable: str, make_node: Callable[[], LifecycleNode], args: list[str] | None
) -> None:
    """main() of a drone_pose lifecycle node with `autostart` and `configure_error` (tracker_node,
    fusion_node): a parameter rclpy refuses, or a failed configure under autostart, exits with
    status 2 and one line; without autostart the node waits, unconfigured, for lifecycle calls."""
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = make_node()
        except Exception as error:  # a parameter rclpy refuses: one line, exit 2
            print(f"{executable}: {type(error).__name__}: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        if node.get_parameter("autostart").value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                print(f"{executable}: configure failed: {node.configure_error}", file=sys.stderr)
                raise SystemExit(2)
            if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                print(f"{executable}: activate failed (see the log above)", file=sys.stderr)
                raise SystemExit(2)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise
        # raised by the shutdown itself (a timer publishing as Ctrl-C invalidates the context)
    finally:
        if node is not None:
            with contextlib.suppress(Exception) if not rclpy.ok() else contextlib.nullcontext():
                node.destroy_node()
        rclpy.try_shutdown()
