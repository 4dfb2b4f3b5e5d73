"""`drone-pose bench fusion`: the fusion node over DDS at a fixed rate, V cameras at once.

A synthetic V-camera flight is rendered once; its frames are published at `rate_hz` by every camera
with one stamp per instant (the wall clock at publish time, as synchronised camera drivers would),
to a fusion_node started as a separate process with the flight's rig file. Each received
PoseStamped is matched to its instant by stamp: latency = receipt wall time - stamp (one host).
Reported as JSON: per-group latency percentiles, the share of instants that gave a pose, the views
used per group, the node's group drops and per-camera drops from /diagnostics, the median latency
of the first and last 10 s (a growing queue shows as a rising latency) and the node's resident
memory at the start and end of the run.
"""

from __future__ import annotations

import os
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

from drone_pose.bags.flight_bag import FlightBagSpec, plan_flight, write_flight_bag
from drone_pose.bags.frames import read_frames
from drone_pose.fusion.rig_file import Rig, invert_rigid, save_rig_file
from drone_pose.ros.image_conversions import numpy_to_image
from drone_pose.ros.latency_benchmark import latency_figures, machine, resident_memory_mb, spin_for
from drone_pose.ros.launch_plan import fastdds_profile
from drone_pose.ros.launcher import stop_process
from drone_pose.ros.qos import sensor_data_qos

NAMESPACE = "/fusion_bench"


def render_rig_flight(
    drone: str, seconds: float, rate_hz: float, cameras: int, seed: int, rig_path: Path
) -> dict[str, list[dict[str, Any]]]:
    """Frames (rgb [H,W,3] uint8, K [3,3], frame_id) of every camera of a synthetic V-camera flight,
    rendered through a temporary bag; the rig (frame `world`) is written to `rig_path`."""
    spec = FlightBagSpec(drone=drone, seconds=seconds, rate_hz=rate_hz, cameras=cameras, seed=seed)
    with tempfile.TemporaryDirectory() as folder:
        bag = Path(folder) / "flight"
        write_flight_bag(bag, spec, workers=1, progress=False)
        rig_cameras, _ = plan_flight(spec)
        frames = {camera.name: read_frames(bag, camera.name)[0] for camera in rig_cameras}
    save_rig_file(rig_of(rig_cameras), rig_path)
    return frames


def rig_of(rig_cameras: list[Any]) -> Rig:
    """The Rig (frame `world`) of a flight bag's cameras (drone_pose.data.flights.RigCamera)."""
    rig_from_camera = np.tile(np.eye(4), (len(rig_cameras), 1, 1))
    for index, camera in enumerate(rig_cameras):
        rig_from_camera[index, :3, :3] = camera.R_world_camera
        rig_from_camera[index, :3, 3] = camera.position
    return Rig(
        "world",
        tuple(camera.name for camera in rig_cameras),
        tuple(camera.optical_frame for camera in rig_cameras),
        invert_rigid(rig_from_camera),
    )


def run_fusion_benchmark(
    checkpoint: str | None,
    drone: str = "m2ed",
    cameras: int = 3,
    seconds: float = 60.0,
    rate_hz: float = 10.0,
    device: str = "cpu",
    flight_seconds: float = 10.0,
    seed: int = 0,
    parameters: tuple[str, ...] = (),
    startup_timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Publish `seconds` of V-camera frames at `rate_hz` to a fusion_node; returns the JSON report."""
    with tempfile.TemporaryDirectory() as folder:
        rig_path = Path(folder) / "rig.yaml"
        frames = render_rig_flight(drone, min(flight_seconds, seconds), rate_hz, cameras, seed, rig_path)
        names = list(frames)
        command = [
            sys.executable,
            "-m",
            "drone_pose.ros.fusion_node",
            "--ros-args",
            "-r",
            f"__ns:={NAMESPACE}",
        ]
        for item in (
            f"device:={device}",
            f"drone:={drone}",
            f"cameras:={','.join(names)}",
            f"rig_file:={rig_path}",
            *([f"checkpoint:={checkpoint}"] if checkpoint else []),
            *parameters,
        ):
            command += ["-p", item]
        return _run(command, frames, rate_hz, seconds, device, checkpoint, startup_timeout_s)


def _run(
    command: list[str],
    frames: dict[str, list[dict[str, Any]]],
    rate_hz: float,
    seconds: float,
    device: str,
    checkpoint: str | None,
    startup_timeout_s: float,
) -> dict[str, Any]:
    environment = {"FASTDDS_DEFAULT_PROFILES_FILE": fastdds_profile(), **os.environ}
    # this process publishes the images: the same shared-memory transport as the node's (read when
    # the first DDS participant of the process is created)
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", fastdds_profile())
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node("drone_pose_fusion_bench", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    sent: dict[int, float] = {}
    received: dict[int, float] = {}
    diagnostics: list[dict[str, dict[str, str]]] = []

    def on_pose(msg: PoseStamped) -> None:
        received[msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec] = time.time()

    def on_diagnostics(msg: DiagnosticArray) -> None:
        ours = {
            s.name: {kv.key: kv.value for kv in s.values}
            for s in msg.status
            if s.hardware_id.startswith(NAMESPACE)
        }
        if ours:
            diagnostics.append(ours)

    node.create_subscription(PoseStamped, f"{NAMESPACE}/pose", on_pose, QoSProfile(depth=100))
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, QoSProfile(depth=10))
    publishers = {
        name: (
            node.create_publisher(Image, f"{NAMESPACE}/{name}/image_raw", sensor_data_qos(5)),
            node.create_publisher(CameraInfo, f"{NAMESPACE}/{name}/camera_info", sensor_data_qos(5)),
        )
        for name in frames
    }
    fusion = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + startup_timeout_s
        while any(p.get_subscription_count() == 0 for pair in publishers.values() for p in pair):
            if fusion.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the fusion node did not start: {fusion.stderr.read().decode()[-2000:]}")
            executor.spin_once(timeout_sec=0.05)
        spin_for(executor, 1.0)
        memory_start = resident_memory_mb(fusion.pid)
        publisher = threading.Thread(
            target=_publish_groups, args=(frames, publishers, rate_hz, seconds, sent), daemon=True
        )
        started = time.time()
        publisher.start()
        while publisher.is_alive():
            executor.spin_once(timeout_sec=0.01)
        spin_for(executor, 2.5)  # the last poses and one more diagnostics message
        memory_end = resident_memory_mb(fusion.pid)
    finally:
        stop_process(fusion)
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()
    return _report(
        sent, received, diagnostics, started, rate_hz, seconds, device, checkpoint, memory_start, memory_end
    )


def _publish_groups(
    frames: dict[str, list[dict[str, Any]]],
    publishers: dict[str, tuple[Any, Any]],
    rate_hz: float,
    seconds: float,
    sent: dict[int, float],
) -> None:
    """Publish every camera's CameraInfo + Image with one stamp per instant, at rate_hz on a fixed
    schedule (no drift), looping the flight."""
    prepared = {
        name: [
            (numpy_to_image(f["rgb"], "rgb8", Time(), f["frame_id"]), f["K"], f["rgb"].shape) for f in views
        ]
        for name, views in frames.items()
    }
    period, count = 1.0 / rate_hz, round(seconds * rate_hz)
    start = time.monotonic()
    for i in range(count):
        delay = start + i * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = time.time_ns()
        for name, (images, infos) in publishers.items():
            image, K, shape = prepared[name][i % len(prepared[name])]
            image.header.stamp.sec, image.header.stamp.nanosec = divmod(now, 1_000_000_000)
            info = CameraInfo(width=shape[1], height=shape[0], k=[float(v) for v in K.reshape(-1)])
            info.header = image.header
            infos.publish(info)
            images.publish(image)
        sent[now] = now / 1e9


def _report(
    sent: dict[int, float],
    received: dict[int, float],
    diagnostics: list[dict[str, dict[str, str]]],
    started: float,
    rate_hz: float,
    seconds: float,
    device: str,
    checkpoint: str | None,
    memory_start: float | None,
    memory_end: float | None,
) -> dict[str, Any]:
    final = diagnostics[-1] if diagnostics else {}
    fused = final.get("drone_pose: fusion", {})
    cameras = {
        name.removeprefix("drone_pose: fusion camera "): values
        for name, values in final.items()
        if name.startswith("drone_pose: fusion camera ")
    }
    rates = [
        float(d["drone_pose: fusion"]["processed_rate_hz"])
        for d in diagnostics
        if float(d.get("drone_pose: fusion", {}).get("input_rate_hz", 0)) > 1.0
    ]
    return {
        "benchmark": "fusion_latency",
        "machine": machine(),
        "device": device,
        "checkpoint": checkpoint or "(shipped default)",
        "cameras": list(cameras),
        "rate_hz": rate_hz,
        "seconds": seconds,
        "groups_sent": len(sent),
        **latency_figures(sent, received, started, seconds),
        "fusion": {
            "groups_processed": int(fused.get("groups_processed", 0)),
            "groups_dropped": int(fused.get("groups_dropped", 0)),
            "groups_replaced": int(fused.get("groups_replaced", 0)),
            "groups_partial": int(fused.get("groups_partial", 0)),
            "views_used_mean": float(fused.get("views_used_mean", "nan")),
            "rejections": {k: int(v) for k, v in fused.items() if k.startswith("rejected_")},
            "processed_rate_hz_median": round(float(np.median(rates)), 2) if rates else None,
            "resident_memory_mb_start": memory_start,
            "resident_memory_mb_end": memory_end,
        },
        "per_camera": {
            name: {
                "images_received": int(values.get("images_received", 0)),
                "frames_received": int(values.get("frames_received", 0)),
                "frames_dropped": int(values.get("frames_dropped", 0)),
                "frames_late": int(values.get("frames_late", 0)),
                "views_used": int(values.get("views_used", 0)),
                "views_gated": int(values.get("views_gated", 0)),
                "views_invalid": sum(int(v) for k, v in values.items() if k.startswith("views_invalid_")),
                "rejections": {k: int(v) for k, v in values.items() if k.startswith("rejected_")},
            }
            for name, values in cameras.items()
        },
    }
