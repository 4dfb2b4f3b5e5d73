"""`drone-pose demo` (`make demo`): the whole product on a synthetic flight, no camera, no GPU.

1. Render a short synthetic flight into a rosbag2 file (MCAP) with ground truth.
2. Start the tracker node (the shipped checkpoint) as its own process.
3. Replay the bag over real DDS from another process, like `ros2 bag play`.
4. Record what the tracker publishes (pose, pose_with_covariance, marker, /tf, /diagnostics) into
   an MCAP bag, in this process.
5. Score the received poses against the bag's ground truth, run `drone-pose eval-bag` on the same
   bag offline, and print both tables, their per-frame agreement and the latency summary.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rclpy.serialization import serialize_message
from rosbags.rosbag2 import StoragePlugin, Writer
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import Marker

from drone_pose.atomic_files import write_text
from drone_pose.bags.flight_bag import FlightBagSpec, write_flight_bag
from drone_pose.bags.frames import read_frames
from drone_pose.bags.messages import TYPESTORE
from drone_pose.drones import load_drone
from drone_pose.evaluation.bag_evaluation import evaluate_bag
from drone_pose.evaluation.reports import markdown_table
from drone_pose.geometry.metrics import pose_errors, summarize_errors
from drone_pose.geometry.rotations import quaternion_xyzw_to_matrix
from drone_pose.inference.checkpoint import default_checkpoint
from drone_pose.ros.launch_plan import fastdds_profile
from drone_pose.ros.launcher import stop_process
from drone_pose.ros.qos import tf_qos

RECORDED = {
    "/pose": PoseStamped,
    "/pose_with_covariance": PoseWithCovarianceStamped,
    "/marker": Marker,
    "/diagnostics": DiagnosticArray,
}


def _stamp(header: Any) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def _pose_arrays(poses: dict[int, PoseStamped], stamps: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.tensor(
        [
            [p.pose.orientation.x, p.pose.orientation.y, p.pose.orientation.z, p.pose.orientation.w]
            for p in (poses[s] for s in stamps)
        ],
        dtype=torch.float64,
    )
    t = torch.tensor(
        [[p.pose.position.x, p.pose.position.y, p.pose.position.z] for p in (poses[s] for s in stamps)],
        dtype=torch.float64,
    )
    return quaternion_xyzw_to_matrix(q), t


def record_tracker(
    bag: Path,
    out: Path,
    checkpoint: str | None,
    device: str,
    drone: str,
    timeout_s: float = 300.0,
    log: Any = print,
) -> dict[str, Any]:
    """Tracker + replay processes over DDS; returns received poses by stamp, diagnostics and the
    recorded-bag path. The recorder and the scoring live in this process."""
    tracker_command = [
        sys.executable, "-m", "drone_pose.ros.tracker_node", "--ros-args",
        "-r", "image:=/camera/image_raw", "-r", "camera_info:=/camera/camera_info",
        "-p", f"device:={device}", "-p", f"drone:={drone}",
    ]  # fmt: skip
    if checkpoint:
        tracker_command += ["-p", f"checkpoint:={checkpoint}"]
    return record_node(
        bag, out, tracker_command, ["/camera/image_raw"], "drone_pose: tracker", timeout_s, log
    )


def record_node(
    bag: Path,
    out: Path,
    node_command: list[str],
    image_topics: list[str],
    status_name: str,
    timeout_s: float = 300.0,
    log: Any = print,
    recording: str = "tracker_output",
) -> dict[str, Any]:
    """A node process (`node_command`) fed by a replay process over DDS once it subscribes every
    topic of `image_topics`; returns the received poses by stamp, the values of its diagnostics
    status `status_name`, the replay's report and the path of the recording of RECORDED and /tf
    (out/<recording>)."""
    environment = {**os.environ, "FASTDDS_DEFAULT_PROFILES_FILE": fastdds_profile()}
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node("drone_pose_demo_recorder", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    recorded: list[tuple[str, str, int, bytes]] = []
    poses: dict[int, PoseStamped] = {}
    diagnostics: list[dict[str, str]] = []

    def keep(topic: str, msg: Any) -> None:
        recorded.append((topic, _type_name(msg), time.time_ns(), serialize_message(msg)))
        if topic == "/pose":
            poses[_stamp(msg.header)] = msg
        elif topic == "/diagnostics":
            for status in msg.status:
                if status.name == status_name:
                    diagnostics.append({kv.key: kv.value for kv in status.values})

    for topic, kind in RECORDED.items():
        node.create_subscription(
            kind, topic, lambda msg, topic=topic: keep(topic, msg), QoSProfile(depth=100)
        )
    node.create_subscription(TFMessage, "/tf", lambda msg: keep("/tf", msg), tf_qos())
    process = subprocess.Popen(
        node_command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    replay = None
    try:
        log("  starting the node (model load and warm-up) ...")
        deadline = time.monotonic() + timeout_s
        # poses are volatile: the recorder must know the node's publishers before the first frame
        while (
            any(node.count_subscribers(topic) == 0 for topic in image_topics)
            or node.count_publishers("/pose") == 0
        ):
            if process.poll() is not None:
                raise RuntimeError(f"the node exited: {process.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("the node did not subscribe in time")
            executor.spin_once(timeout_sec=0.05)
        log("  replaying the flight over DDS (drone-pose replay) ...")
        replay = subprocess.Popen(
            [sys.executable, "-m", "drone_pose.cli", "replay", str(bag), "--wait-for", image_topics[-1]],
            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        while replay.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the replay did not finish in time")
            executor.spin_once(timeout_sec=0.02)
        replay_out, replay_err = replay.communicate()
        if replay.returncode != 0:
            raise RuntimeError(f"the replay failed: {replay_err[-3000:]}")
        settle = time.monotonic() + 2.5  # the last poses and one more diagnostics message
        while time.monotonic() < settle:
            executor.spin_once(timeout_sec=0.02)
    finally:
        for started in (process, replay):
            stop_process(started)
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()
    recorded_bag = out / recording
    _write_recording(recorded_bag, recorded)
    return {
        "poses": poses,
        "diagnostics": diagnostics,
        "recorded_bag": recorded_bag,
        "replay": json.loads(replay_out),
    }


def _type_name(msg: Any) -> str:
    module = type(msg).__module__.split(".")[0]
    return f"{module}/msg/{type(msg).__name__}"


def _write_recording(path: Path, recorded: list[tuple[str, str, int, bytes]]) -> None:
    """The recorded messages as an MCAP rosbag2 (CDR bytes as received)."""
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connections: dict[str, Any] = {}
        for topic, msgtype, timestamp, data in sorted(recorded, key=lambda item: item[2]):
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=TYPESTORE)
            writer.write(connections[topic], timestamp, data)


def score_received(bag: Path, poses: dict[int, PoseStamped], drone_name: str) -> dict[str, Any]:
    """The papers' metrics over the frames that got a pose over DDS (ground truth from the bag)."""
    frames, _ = read_frames(bag, "camera")
    by_stamp = {f["stamp"]: f for f in frames}
    stamps = sorted(s for s in poses if s in by_stamp)
    drone = load_drone(drone_name)
    if not stamps:
        return {"frames": len(frames), "poses": 0, "metrics": {}}
    R, t = _pose_arrays(poses, stamps)
    R_gt = torch.tensor(np.stack([by_stamp[s]["R"] for s in stamps]))
    t_gt = torch.tensor(np.stack([by_stamp[s]["t"] for s in stamps]))
    K = torch.tensor(np.stack([by_stamp[s]["K"] for s in stamps]))
    errors = pose_errors(R, t, R_gt, t_gt, torch.tensor(drone.keypoints, dtype=torch.float64), K)
    return {
        "frames": len(frames),
        "poses": len(stamps),
        "stamps": stamps,
        "metrics": summarize_errors(errors, drone.diagonal),
    }


def agreement(poses: dict[int, PoseStamped], frames_csv: Path) -> dict[str, Any]:
    """Per-frame difference between the poses received over DDS and eval-bag's for the same stamps."""
    offline = {}
    with frames_csv.open() as handle:
        for row in csv.DictReader(handle):
            if row["valid"] == "1":
                offline[int(row["stamp_ns"])] = row
    common = sorted(set(poses) & set(offline))
    if not common:
        return {"frames": 0}
    R, t = _pose_arrays(poses, common)
    q_offline = torch.tensor(
        [[float(offline[s][k]) for k in ("qx", "qy", "qz", "qw")] for s in common], dtype=torch.float64
    )
    t_offline = torch.tensor(
        [[float(offline[s][k]) for k in ("tx", "ty", "tz")] for s in common], dtype=torch.float64
    )
    R_offline = quaternion_xyzw_to_matrix(q_offline)
    cos = ((R.transpose(1, 2) @ R_offline).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    rotation_deg = torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))
    return {
        "frames": len(common),
        "only_over_dds": len(set(poses) - set(offline)),
        "only_offline": len(set(offline) - set(poses)),
        "max_translation_difference_mm": round(float(1e3 * (t - t_offline).norm(dim=-1).max()), 4),
        "max_rotation_difference_deg": round(float(rotation_deg.max()), 4),
    }


def run_demo(
    out: str | Path = "demo_output",
    drone: str = "m2ed",
    seconds: float = 10.0,
    rate_hz: float = 15.0,
    checkpoint: str | None = None,
    device: str = "cpu",
    seed: int = 7,
    log: Any = print,
) -> dict[str, Any]:
    """Run the demo end to end; returns the summary that is also written to out/summary.json."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = str(checkpoint or default_checkpoint(drone))
    bag = out / "flight"
    for stale in (bag, out / "tracker_output", out / "eval_bag"):
        if stale.exists():
            shutil.rmtree(stale)
    started = time.perf_counter()
    log(f"1/4 rendering a {seconds:g} s synthetic {drone} flight at {rate_hz:g} Hz -> {bag}")
    write_flight_bag(
        bag,
        FlightBagSpec(drone=drone, seconds=seconds, rate_hz=rate_hz, seed=seed),
        workers=1,
        progress=False,
    )
    log(f"2/4 tracker node ({Path(checkpoint_path).name}, {device}) + replay, separate processes over DDS")
    run = record_tracker(bag, out, checkpoint_path, device, drone, log=log)
    live = score_received(bag, run["poses"], drone)
    log("3/4 drone-pose eval-bag on the same bag (offline, no DDS)")
    offline = evaluate_bag(bag, checkpoint_path, out / "eval_bag", device=device)
    match = agreement(run["poses"], out / "eval_bag" / "frames.csv")
    final = run["diagnostics"][-1] if run["diagnostics"] else {}
    summary = {
        "bag": str(bag),
        "checkpoint": checkpoint_path,
        "frames": live["frames"],
        "poses_over_dds": live["poses"],
        "tracker": {
            "frames_processed": int(final.get("frames_processed", 0)),
            "frames_dropped": int(final.get("frames_dropped", 0)),
            "rejections": {k: int(v) for k, v in final.items() if k.startswith("rejected_")},
            "latency_p50_ms": float(final.get("latency_p50_ms", "nan")),
            "latency_p95_ms": float(final.get("latency_p95_ms", "nan")),
            "processed_rate_hz_max": max(
                (float(d["processed_rate_hz"]) for d in run["diagnostics"]), default=0.0
            ),
            "device": final.get("device", device),
        },
        "metrics_over_dds": live["metrics"],
        "metrics_eval_bag_valid_frames": offline["metrics_valid_frames"],
        "metrics_eval_bag_all_frames": offline["metrics"],
        "agreement": match,
        "files": {
            "recorded_tracker_output": str(run["recorded_bag"]),
            "eval_bag_report": str(out / "eval_bag"),
            **{k: v for k, v in offline["files"].items() if k in ("markdown", "plots", "estimates")},
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2))
    log("4/4 results")
    rows = [(f"tracker over DDS ({live['poses']} poses / {live['frames']} frames)", live["metrics"])]
    rows.append(
        (
            f"eval-bag offline, valid frames ({offline['metrics']['valid_fraction']:.0%})",
            offline["metrics_valid_frames"],
        )
    )
    rows.append(("eval-bag offline, every frame", offline["metrics"]))
    log(markdown_table(rows))
    tracker = summary["tracker"]
    log(
        f"per-frame agreement DDS vs offline on {match.get('frames', 0)} frames: "
        f"max |dt| {match.get('max_translation_difference_mm', float('nan'))} mm, "
        f"max rotation difference {match.get('max_rotation_difference_deg', float('nan'))} deg"
    )
    log(
        f"latency image->pose p50 {tracker['latency_p50_ms']:.1f} ms, "
        f"p95 {tracker['latency_p95_ms']:.1f} ms; "
        f"processed {tracker['frames_processed']} frames, dropped {tracker['frames_dropped']}, "
        f"rejected {sum(tracker['rejections'].values())} {tracker['rejections'] or ''}"
    )
    log(
        f"outputs: tracker recording {run['recorded_bag']} "
        "(MCAP: /pose, /pose_with_covariance, /marker, /tf, /diagnostics)"
    )
    log(
        f"         eval-bag report, plots and estimates in {out / 'eval_bag'}; summary {out / 'summary.json'}"
    )
    log(f"done in {summary['seconds']} s")
    return summary
