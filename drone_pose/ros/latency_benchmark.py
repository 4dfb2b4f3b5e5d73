"""`drone-pose bench tracker`: image publish -> pose receipt latency of the tracker node over DDS.

A synthetic flight is rendered once, then its frames are published at a fixed rate (stamped with the
wall clock at publish time) to a tracker_node started as a separate process, exactly as a camera
driver would. Each received PoseStamped is matched to its image by stamp: latency = receipt wall
time - stamp (one host, one clock). Reported as JSON: latency percentiles, the share of frames that
gave a pose, the tracker's own dropped-frame count from /diagnostics, the median latency of the
first and last 10 s (a growing queue shows as a rising latency) and the tracker's resident memory at
the start and end of the run.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image

from drone_pose.bags.flight_bag import FlightBagSpec, write_flight_bag
from drone_pose.bags.frames import read_frames
from drone_pose.ros.image_conversions import numpy_to_image
from drone_pose.ros.launch_plan import fastdds_profile
from drone_pose.ros.launcher import stop_process
from drone_pose.ros.qos import sensor_data_qos

TREND_WINDOW_S = 10.0


def render_frames(drone: str, seconds: float, rate_hz: float, seed: int) -> list[dict[str, Any]]:
    """Frames (rgb [H,W,3] uint8, K [3,3]) of a synthetic flight, rendered through a temporary bag."""
    with tempfile.TemporaryDirectory() as folder:
        bag = Path(folder) / "flight"
        spec = FlightBagSpec(drone=drone, seconds=seconds, rate_hz=rate_hz, seed=seed)
        write_flight_bag(bag, spec, workers=1, progress=False)
        frames, _ = read_frames(bag, "camera")
    return frames


def resident_memory_mb(pid: int) -> float | None:
    """VmRSS of a process in MB (Linux /proc), None where unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def run_latency_benchmark(
    checkpoint: str | None,
    drone: str = "m2ed",
    seconds: float = 60.0,
    rate_hz: float = 15.0,
    device: str = "cpu",
    flight_seconds: float = 20.0,
    seed: int = 0,
    parameters: tuple[str, ...] = (),
    startup_timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Publish `seconds` of frames at `rate_hz` to a tracker process; returns the JSON report."""
    frames = render_frames(drone, min(flight_seconds, seconds), rate_hz, seed)
    namespace = "/latency_bench"
    command = [sys.executable, "-m", "drone_pose.ros.tracker_node", "--ros-args", "-r", f"__ns:={namespace}"]
    command += ["-p", f"device:={device}", "-p", f"drone:={drone}"]
    if checkpoint:
        command += ["-p", f"checkpoint:={checkpoint}"]
    for item in parameters:
        command += ["-p", item]
    environment = {"FASTDDS_DEFAULT_PROFILES_FILE": fastdds_profile(), **os.environ}
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node("drone_pose_latency_bench", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    sent: dict[int, float] = {}  # stamp ns -> publish wall time
    received: dict[int, float] = {}
    diagnostics: list[dict[str, str]] = []

    def on_pose(msg: PoseStamped) -> None:
        received[msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec] = time.time()

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.hardware_id == f"{namespace}/drone_pose_tracker":
                diagnostics.append({kv.key: kv.value for kv in status.values})

    node.create_subscription(PoseStamped, f"{namespace}/pose", on_pose, QoSProfile(depth=100))
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, QoSProfile(depth=10))
    images = node.create_publisher(Image, f"{namespace}/image", sensor_data_qos(5))
    infos = node.create_publisher(CameraInfo, f"{namespace}/camera_info", sensor_data_qos(5))
    # started last, right before the try whose finally stops it: nothing in between can fail
    tracker = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + startup_timeout_s
        while images.get_subscription_count() == 0 or infos.get_subscription_count() == 0:
            if tracker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the tracker did not start: {tracker.stderr.read().decode()[-2000:]}")
            executor.spin_once(timeout_sec=0.05)
        spin_for(executor, 1.0)  # discovery settles on the tracker's side as well
        memory_start = resident_memory_mb(tracker.pid)
        publisher = threading.Thread(
            target=_publish_frames, args=(frames, images, infos, rate_hz, seconds, sent), daemon=True
        )
        started = time.time()
        publisher.start()
        while publisher.is_alive():
            executor.spin_once(timeout_sec=0.01)
        if len(sent) < round(seconds * rate_hz):
            raise RuntimeError(f"the publisher stopped after {len(sent)} frames")
        spin_for(executor, 2.0)  # the last poses and one more diagnostics message
        memory_end = resident_memory_mb(tracker.pid)
    finally:
        stop_process(tracker)
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()
    return _report(
        sent, received, diagnostics, started, rate_hz, seconds, device, checkpoint, memory_start, memory_end
    )


def _publish_frames(
    frames: list[dict[str, Any]],
    images: Any,
    infos: Any,
    rate_hz: float,
    seconds: float,
    sent: dict[int, float],
) -> None:
    """Publish CameraInfo + Image pairs at rate_hz on a fixed schedule (no drift), looping the flight."""
    prepared = [
        (numpy_to_image(f["rgb"], "rgb8", Time(), "camera_optical"), f["K"], f["rgb"].shape) for f in frames
    ]
    period = 1.0 / rate_hz
    count = round(seconds * rate_hz)
    start = time.monotonic()
    for i in range(count):
        delay = start + i * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        image, K, shape = prepared[i % len(prepared)]
        now = time.time_ns()
        image.header.stamp.sec, image.header.stamp.nanosec = divmod(now, 1_000_000_000)
        info = CameraInfo(width=shape[1], height=shape[0], k=[float(v) for v in K.reshape(-1)])
        info.header = image.header
        infos.publish(info)
        images.publish(image)
        sent[now] = now / 1e9


def _median_rate(diagnostics: list[dict[str, str]]) -> float | None:
    """Median processed rate over the diagnostics published while frames were coming in."""
    rates = [float(d["processed_rate_hz"]) for d in diagnostics if float(d.get("input_rate_hz", 0)) > 1.0]
    return round(float(np.median(rates)), 2) if rates else None


def spin_for(executor: SingleThreadedExecutor, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.01)


def latency_figures(
    sent: dict[int, float], received: dict[int, float], started: float, seconds: float
) -> dict[str, Any]:
    """Poses matched to what was sent by stamp (ns -> wall time s of publication and receipt):
    their count, latency percentiles (ms) and the median latency of the first and last
    TREND_WINDOW_S of a run of `seconds` started at wall time `started`."""
    matched = sorted((stamp, received[stamp] - sent[stamp]) for stamp in received if stamp in sent)
    latencies_ms = np.array([1e3 * latency for _, latency in matched])
    offsets = np.array([sent[stamp] - started for stamp, _ in matched])

    def percentile(q: float, values: np.ndarray = latencies_ms) -> float | None:
        return round(float(np.percentile(values, q)), 2) if values.size else None

    return {
        "poses_received": len(matched),
        "pose_fraction": round(len(matched) / max(len(sent), 1), 4),
        "latency_ms": {
            "p50": percentile(50),
            "p90": percentile(90),
            "p95": percentile(95),
            "p99": percentile(99),
            "max": round(float(latencies_ms.max()), 2) if latencies_ms.size else None,
        },
        "latency_p50_first_10s_ms": percentile(50, latencies_ms[offsets < TREND_WINDOW_S]),
        "latency_p50_last_10s_ms": percentile(50, latencies_ms[offsets > seconds - TREND_WINDOW_S]),
    }


def machine() -> dict[str, Any]:
    """The machine a benchmark ran on."""
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()}


def _report(
    sent: dict[int, float],
    received: dict[int, float],
    diagnostics: list[dict[str, str]],
    started: float,
    rate_hz: float,
    seconds: float,
    device: str,
    checkpoint: str | None,
    memory_start: float | None,
    memory_end: float | None,
) -> dict[str, Any]:
    final = diagnostics[-1] if diagnostics else {}
    return {
        "benchmark": "tracker_latency",
        "machine": machine(),
        "device": device,
        "checkpoint": checkpoint or "(shipped default)",
        "rate_hz": rate_hz,
        "seconds": seconds,
        "frames_sent": len(sent),
        **latency_figures(sent, received, started, seconds),
        "tracker": {
            "frames_processed": int(final.get("frames_processed", 0)),
            "frames_dropped": int(final.get("frames_dropped", 0)),
            "rejections": {k: int(v) for k, v in final.items() if k.startswith("rejected_")},
            "processed_rate_hz_median": _median_rate(diagnostics),
            "latency_p50_ms_own": float(final.get("latency_p50_ms", "nan")),
            "resident_memory_mb_start": memory_start,
            "resident_memory_mb_end": memory_end,
        },
    }
