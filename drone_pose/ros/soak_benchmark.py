"""`drone-pose bench soak`: the tracker node over DDS for a long run, or through many lifecycle cycles.

Soak mode publishes a synthetic flight (looped, stamped with the wall clock) at a fixed rate to a
tracker process for `duration_s` and reports, per time window, the latency percentiles of the poses
that came back (by send time), the frames sent and the frames that gave no pose within
LOST_AFTER_S, and the tracker's resident memory at the window's end; then the memory growth after
warm-up, the latency drift between the first window after warm-up and the last, and the tracker's
own drop and rejection counters (/diagnostics). Lifecycle mode starts the tracker unconfigured and
runs configure -> activate -> (frames until poses come back) -> deactivate -> cleanup `cycles`
times through the lifecycle services, reporting the tracker's memory after each cycle.

The benchmark keeps only per-window aggregates and the frames still in flight, so its own memory
stays flat however long it runs (reported as benchmark_rss_mb).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image

from drone_pose.ros.image_conversions import numpy_to_image
from drone_pose.ros.latency_benchmark import render_frames, resident_memory_mb
from drone_pose.ros.launch_plan import fastdds_profile
from drone_pose.ros.launcher import stop_process
from drone_pose.ros.qos import sensor_data_qos

LOST_AFTER_S = 5.0  # a frame without a pose after this long is counted as giving none
NODE_NAME = "drone_pose_tracker"


def _percent(new: float | None, old: float | None) -> float | None:
    """100 (new - old) / old, rounded; None when either is missing."""
    if new is None or not old:
        return None
    return round(100.0 * (new - old) / old, 2)


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()}


def _own_memory_mb() -> float | None:
    memory = resident_memory_mb(os.getpid())
    return None if memory is None else round(memory, 1)


class TrackerUnderTest:
    """A tracker_node process in `namespace` and an in-process rclpy node that feeds and watches it.

    Frames go to {namespace}/image and camera_info; poses ({namespace}/pose) are passed to
    on_pose(stamp_ns, receipt wall time s); the tracker's latest /diagnostics values are kept.
    The tracker's stderr goes to a temporary file (a pipe would fill up and block it on a long run).
    """

    def __init__(
        self,
        namespace: str,
        checkpoint: str | None,
        drone: str,
        device: str,
        parameters: tuple[str, ...],
        on_pose: Callable[[int, float], None],
    ) -> None:
        command = [
            sys.executable,
            "-m",
            "drone_pose.ros.tracker_node",
            "--ros-args",
            "-r",
            f"__ns:={namespace}",
        ]
        command += ["-p", f"device:={device}", "-p", f"drone:={drone}"]
        if checkpoint:
            command += ["-p", f"checkpoint:={checkpoint}"]
        for item in parameters:
            command += ["-p", item]
        self.namespace = namespace
        self.diagnostics: dict[str, str] = {}
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        environment = {"FASTDDS_DEFAULT_PROFILES_FILE": fastdds_profile(), **os.environ}
        self.process = subprocess.Popen(
            command, env=environment, stdout=subprocess.DEVNULL, stderr=self._stderr
        )
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node("drone_pose_soak_bench", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

        def pose_received(msg: PoseStamped) -> None:
            on_pose(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec, time.time())

        def diagnostics_received(msg: DiagnosticArray) -> None:
            for status in msg.status:
                if status.hardware_id == f"{namespace}/{NODE_NAME}":
                    self.diagnostics = {kv.key: kv.value for kv in status.values}

        self.node.create_subscription(PoseStamped, f"{namespace}/pose", pose_received, QoSProfile(depth=100))
        self.node.create_subscription(
            DiagnosticArray, "/diagnostics", diagnostics_received, QoSProfile(depth=10)
        )
        self.images = self.node.create_publisher(Image, f"{namespace}/image", sensor_data_qos(5))
        self.infos = self.node.create_publisher(CameraInfo, f"{namespace}/camera_info", sensor_data_qos(5))
        self._get_state = self.node.create_client(GetState, f"{namespace}/{NODE_NAME}/get_state")
        self._change_state = self.node.create_client(ChangeState, f"{namespace}/{NODE_NAME}/change_state")

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.01)

    def spin_until(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Spin until done(); RuntimeError naming `what` (and the tracker's last output) on timeout."""
        deadline = time.monotonic() + timeout_s
        while not done():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} (tracker exit code {self.process.poll()}): {self.stderr_tail()}")
            self.executor.spin_once(timeout_sec=0.01)

    def wait_for_inputs(self, timeout_s: float) -> None:
        """Until the tracker subscribes to both inputs (it is active)."""
        self.spin_until(
            lambda: self.images.get_subscription_count() > 0 and self.infos.get_subscription_count() > 0,
            timeout_s,
            "the tracker did not subscribe to its inputs",
        )

    def transition(self, transition_id: int, timeout_s: float = 120.0) -> None:
        """A lifecycle transition through the change_state service; RuntimeError when it fails."""
        self.spin_until(self._change_state.service_is_ready, timeout_s, "no lifecycle services")
        future = self._change_state.call_async(ChangeState.Request(transition=Transition(id=transition_id)))
        self.spin_until(future.done, timeout_s, f"lifecycle transition {transition_id} did not answer")
        if not future.result().success:
            raise RuntimeError(f"lifecycle transition {transition_id} failed: {self.stderr_tail()}")

    def publish(self, image: Image, K: np.ndarray) -> int:
        """Publish CameraInfo + image stamped now (wall clock); returns the stamp (ns)."""
        now = time.time_ns()
        image.header.stamp = Time(sec=now // 1_000_000_000, nanosec=now % 1_000_000_000)
        info = CameraInfo(width=image.width, height=image.height, k=[float(v) for v in K.reshape(-1)])
        info.header = image.header
        self.infos.publish(info)
        self.images.publish(image)
        return now

    def memory_mb(self) -> float | None:
        """The tracker's resident memory (VmRSS), MB."""
        memory = resident_memory_mb(self.process.pid)
        return None if memory is None else round(memory, 1)

    def stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:]

    def close(self) -> None:
        stop_process(self.process)
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()
        self._stderr.close()


def _prepared(frames: list[dict[str, Any]]) -> list[tuple[Image, np.ndarray]]:
    return [(numpy_to_image(f["rgb"], "rgb8", Time(), "camera_optical"), f["K"]) for f in frames]


class _Windows:
    """Per-window aggregates of a soak: frames sent, latencies of the poses that came back (by send
    time), frames without a pose. Only open windows keep raw latencies; closed ones keep a summary."""

    def __init__(self, started: float, window_s: float) -> None:
        self.started, self.window_s = started, window_s
        self.lock = threading.Lock()
        self.in_flight: dict[int, float] = {}  # stamp ns -> send wall time s
        self.open: dict[int, dict[str, Any]] = {}
        self.closed: list[dict[str, Any]] = []
        self.late_poses = 0  # poses for frames already counted as lost, or never sent

    def _window(self, index: int) -> dict[str, Any]:
        return self.open.setdefault(index, {"sent": 0, "latencies_ms": [], "lost": 0})

    def sent(self, stamp: int) -> None:
        sent_s = stamp / 1e9
        with self.lock:
            self.in_flight[stamp] = sent_s
            self._window(int((sent_s - self.started) // self.window_s))["sent"] += 1

    def received(self, stamp: int, received_s: float) -> None:
        with self.lock:
            sent_s = self.in_flight.pop(stamp, None)
            if sent_s is None:
                self.late_poses += 1
                return
            self._window(int((sent_s - self.started) // self.window_s))["latencies_ms"].append(
                1e3 * (received_s - sent_s)
            )

    def close_due(
        self, now: float, tracker_rss: float | None, bench_rss: float | None, final: bool = False
    ) -> None:
        """Count frames older than LOST_AFTER_S as lost; summarise windows that can get no more poses."""
        with self.lock:
            for stamp, sent_s in list(self.in_flight.items()):
                if final or now - sent_s > LOST_AFTER_S:
                    del self.in_flight[stamp]
                    self._window(int((sent_s - self.started) // self.window_s))["lost"] += 1
            for index in sorted(self.open):
                end = self.started + (index + 1) * self.window_s
                if not final and now < end + LOST_AFTER_S:
                    break
                window = self.open.pop(index)
                latencies = np.array(window["latencies_ms"])
                summary = {
                    "start_s": round(index * self.window_s, 1),
                    "frames_sent": window["sent"],
                    "poses": int(latencies.size),
                    "no_pose": window["lost"],
                    "latency_ms_p50": round(float(np.percentile(latencies, 50)), 2)
                    if latencies.size
                    else None,
                    "latency_ms_p95": round(float(np.percentile(latencies, 95)), 2)
                    if latencies.size
                    else None,
                    "tracker_rss_mb": tracker_rss,
                    "benchmark_rss_mb": bench_rss,
                }
                self.closed.append(summary)


def run_soak(
    checkpoint: str | None,
    drone: str = "m2ed",
    duration_s: float = 3600.0,
    rate_hz: float = 30.0,
    device: str = "cpu",
    window_s: float = 60.0,
    warmup_s: float = 60.0,
    flight_seconds: float = 20.0,
    seed: int = 0,
    parameters: tuple[str, ...] = (),
    startup_timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Publish frames at rate_hz to a tracker process for duration_s; returns the JSON report."""
    if duration_s <= 0 or rate_hz <= 0 or window_s <= 0 or warmup_s < 0:
        raise ValueError("duration, rate and window must be positive and warm-up not negative")
    frames = _prepared(render_frames(drone, min(flight_seconds, duration_s), rate_hz, seed))
    windows: _Windows | None = None

    def on_pose(stamp: int, received_s: float) -> None:
        if windows is not None:
            windows.received(stamp, received_s)

    tracker = TrackerUnderTest("/soak_bench", checkpoint, drone, device, parameters, on_pose)
    try:
        tracker.wait_for_inputs(startup_timeout_s)
        tracker.spin_for(1.0)  # discovery settles on the tracker's side as well
        memory = {"start": tracker.memory_mb(), "after_warmup": None, "end": None}
        bench_start = _own_memory_mb()
        windows = _Windows(time.time(), window_s)
        stop = threading.Event()
        publisher = threading.Thread(
            target=_publish_loop, args=(tracker, frames, rate_hz, duration_s, windows, stop), daemon=True
        )
        publisher.start()
        started = time.monotonic()
        next_check = started
        try:
            while publisher.is_alive():
                tracker.executor.spin_once(timeout_sec=0.01)
                now = time.monotonic()
                if now >= next_check:  # about once a second
                    next_check = now + 1.0
                    if tracker.process.poll() is not None:
                        raise RuntimeError(f"the tracker exited: {tracker.stderr_tail()}")
                    if memory["after_warmup"] is None and now - started >= warmup_s:
                        memory["after_warmup"] = tracker.memory_mb()
                    windows.close_due(time.time(), tracker.memory_mb(), _own_memory_mb())
        finally:
            stop.set()
            publisher.join()
        tracker.spin_for(min(LOST_AFTER_S, 2.0))  # the last poses and one more diagnostics message
        memory["end"] = tracker.memory_mb()
        windows.close_due(time.time(), memory["end"], _own_memory_mb(), final=True)
        diagnostics = tracker.diagnostics
    finally:
        tracker.close()
    return _soak_report(
        windows, diagnostics, memory, bench_start, duration_s, rate_hz, warmup_s, device, checkpoint
    )


def _publish_loop(
    tracker: TrackerUnderTest,
    frames: list[tuple[Image, np.ndarray]],
    rate_hz: float,
    duration_s: float,
    windows: _Windows,
    stop: threading.Event,
) -> None:
    """Publish frames at rate_hz on a fixed schedule (no drift), looping the flight."""
    period = 1.0 / rate_hz
    start = time.monotonic()
    for i in range(round(duration_s * rate_hz)):
        delay = start + i * period - time.monotonic()
        if (delay > 0 and stop.wait(delay)) or stop.is_set():
            return
        image, K = frames[i % len(frames)]
        windows.sent(tracker.publish(image, K))


def _soak_report(
    windows: _Windows,
    diagnostics: dict[str, str],
    memory: dict[str, float | None],
    bench_start: float | None,
    duration_s: float,
    rate_hz: float,
    warmup_s: float,
    device: str,
    checkpoint: str | None,
) -> dict[str, Any]:
    summaries = windows.closed
    measured = [w for w in summaries if w["start_s"] >= warmup_s and w["latency_ms_p50"] is not None]
    if not measured:  # a run shorter than warm-up + one window: compare what there is
        measured = [w for w in summaries if w["latency_ms_p50"] is not None]
    first, last = (measured[0], measured[-1]) if measured else ({}, {})
    sent = sum(w["frames_sent"] for w in summaries)
    poses = sum(w["poses"] for w in summaries)
    return {
        "benchmark": "tracker_soak",
        "machine": _machine(),
        "device": device,
        "checkpoint": checkpoint or "(shipped default)",
        "duration_s": duration_s,
        "rate_hz": rate_hz,
        "window_s": windows.window_s,
        "warmup_s": warmup_s,
        "frames_sent": sent,
        "poses_received": poses,
        "no_pose": sum(w["no_pose"] for w in summaries),
        "late_poses": windows.late_poses,
        "pose_fraction": round(poses / max(sent, 1), 4),
        "tracker_rss_mb": {
            **memory,
            "growth_after_warmup_percent": _percent(memory["end"], memory["after_warmup"]),
        },
        "benchmark_rss_mb": {
            "start": bench_start,
            "end": summaries[-1]["benchmark_rss_mb"] if summaries else None,
        },
        "latency_drift": {
            "first_window_start_s": first.get("start_s"),
            "last_window_start_s": last.get("start_s"),
            "p50_first_ms": first.get("latency_ms_p50"),
            "p50_last_ms": last.get("latency_ms_p50"),
            "p50_drift_ms": round(last["latency_ms_p50"] - first["latency_ms_p50"], 2) if measured else None,
            "p95_first_ms": first.get("latency_ms_p95"),
            "p95_last_ms": last.get("latency_ms_p95"),
        },
        "tracker": {
            "frames_processed": int(diagnostics.get("frames_processed", 0)),
            "frames_dropped": int(diagnostics.get("frames_dropped", 0)),
            "rejections": {k: int(v) for k, v in diagnostics.items() if k.startswith("rejected_")},
        },
        "windows": summaries,
    }


def run_lifecycle_soak(
    checkpoint: str | None,
    drone: str = "m2ed",
    cycles: int = 100,
    device: str = "cpu",
    warmup_cycles: int = 5,
    poses_per_cycle: int = 2,
    rate_hz: float = 10.0,
    parameters: tuple[str, ...] = (),
    startup_timeout_s: float = 120.0,
    namespace: str = "/lifecycle_bench",
) -> dict[str, Any]:
    """Run `cycles` configure -> activate -> frames -> deactivate -> cleanup cycles; the JSON report.

    While active, frames go out at rate_hz until poses_per_cycle poses come back (RuntimeError when
    none come within 30 s). Memory is read after each cleanup; growth is measured from the end of
    cycle `warmup_cycles` to the end of the last.
    """
    if cycles < 1 or not 0 <= warmup_cycles < cycles:
        raise ValueError(
            f"need cycles >= 1 and 0 <= warm-up cycles < cycles, got {cycles} and {warmup_cycles}"
        )
    frames = _prepared(render_frames(drone, 1.0, 10.0, 0))
    received: list[int] = []
    tracker = TrackerUnderTest(
        namespace,
        checkpoint,
        drone,
        device,
        (*parameters, "autostart:=false"),
        lambda s, _: received.append(s),
    )
    records = []
    try:
        tracker.spin_until(tracker._get_state.service_is_ready, startup_timeout_s, "no lifecycle services")
        memory_start = tracker.memory_mb()
        for cycle in range(cycles):
            started = time.monotonic()
            tracker.transition(Transition.TRANSITION_CONFIGURE)
            tracker.transition(Transition.TRANSITION_ACTIVATE)
            tracker.wait_for_inputs(30.0)
            received.clear()
            sent = 0
            deadline = time.monotonic() + 30.0
            while len(received) < poses_per_cycle:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cycle {cycle + 1}: no pose came back: {tracker.stderr_tail()}")
                image, K = frames[sent % len(frames)]
                tracker.publish(image, K)
                sent += 1
                tracker.spin_for(1.0 / rate_hz)
            tracker.transition(Transition.TRANSITION_DEACTIVATE)
            tracker.transition(Transition.TRANSITION_CLEANUP)
            records.append(
                {
                    "cycle": cycle + 1,
                    "frames_sent": sent,
                    "poses": len(received),
                    "seconds": round(time.monotonic() - started, 2),
                    "tracker_rss_mb": tracker.memory_mb(),
                }
            )
    finally:
        tracker.close()
    after_warmup = records[warmup_cycles - 1]["tracker_rss_mb"] if warmup_cycles else memory_start
    end = records[-1]["tracker_rss_mb"]
    return {
        "benchmark": "tracker_lifecycle",
        "machine": _machine(),
        "device": device,
        "checkpoint": checkpoint or "(shipped default)",
        "cycles": cycles,
        "warmup_cycles": warmup_cycles,
        "tracker_rss_mb": {
            "start": memory_start,
            "after_warmup": after_warmup,
            "end": end,
            "max": max(r["tracker_rss_mb"] or 0.0 for r in records),
            "growth_after_warmup_percent": _percent(end, after_warmup),
        },
        "cycle_seconds_median": round(float(np.median([r["seconds"] for r in records])), 2),
        "per_cycle": records,
    }
