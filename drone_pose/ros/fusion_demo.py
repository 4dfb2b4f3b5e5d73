"""`drone-pose demo --cameras N` (N >= 2): the fusion node on a synthetic N-camera flight.

1. Render a short N-camera flight into a rosbag2 file (MCAP) with ground truth and /tf_static.
2. Start the fusion node (the shipped checkpoint, extrinsics from TF) as its own process.
3. Replay the bag over real DDS from another process and record what the node publishes.
4. Score the fused poses received over DDS against the bag's ground truth (rig frame `world`), run
   `drone-pose eval-bag` on the same bag offline (every camera alone, the most certain view, the
   fusion), and print both, their per-group agreement and the latency summary.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from geometry_msgs.msg import PoseStamped

from drone_pose.atomic_files import write_text
from drone_pose.bags.flight_bag import FlightBagSpec, write_flight_bag
from drone_pose.bags.rig_frames import read_rig_frames
from drone_pose.evaluation.fused_bag_evaluation import evaluate_fused_bag
from drone_pose.geometry.rotations import quaternion_xyzw_to_matrix
from drone_pose.inference.checkpoint import default_checkpoint
from drone_pose.ros.demo import agreement, record_node

STATUS = "drone_pose: fusion"
NODE_FIGURES = (
    "groups_processed",
    "groups_dropped",
    "groups_complete",
    "groups_partial",
    "views_used_mean",
    "latency_p50_ms",
    "latency_p95_ms",
    "device",
)


def score_fused(bag: Path, poses: dict[int, PoseStamped]) -> dict[str, Any]:
    """Position (cm) and rotation (deg) errors of the fused poses received over DDS against the
    bag's rig ground truth (/ground_truth/pose, the drone in `world`)."""
    groups = read_rig_frames(bag).groups
    truth = {group.stamp: group for group in groups}
    stamps = sorted(stamp for stamp in poses if stamp in truth)
    if not stamps:
        return {"groups": len(groups), "poses": 0}
    position = np.array(
        [[p.pose.position.x, p.pose.position.y, p.pose.position.z] for p in map(poses.get, stamps)]
    )
    quaternion = np.array(
        [
            [p.pose.orientation.x, p.pose.orientation.y, p.pose.orientation.z, p.pose.orientation.w]
            for p in map(poses.get, stamps)
        ]
    )
    R = quaternion_xyzw_to_matrix(torch.from_numpy(quaternion)).numpy()
    R_true = np.stack([truth[s].R for s in stamps])
    t_true = np.stack([truth[s].t for s in stamps])
    position_cm = 100 * np.linalg.norm(position - t_true, axis=1)
    cos = (np.trace(np.swapaxes(R_true, 1, 2) @ R, axis1=1, axis2=2) - 1) / 2
    rotation_deg = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return {
        "groups": len(groups),
        "poses": len(stamps),
        "position_error_cm": {
            "median": round(float(np.median(position_cm)), 3),
            "p95": round(float(np.percentile(position_cm, 95)), 3),
        },
        "rotation_error_deg": {
            "median": round(float(np.median(rotation_deg)), 3),
            "p95": round(float(np.percentile(rotation_deg, 95)), 3),
        },
    }


def run_fusion_demo(
    out: str | Path = "demo_output",
    drone: str = "m2ed",
    cameras: int = 3,
    seconds: float = 10.0,
    rate_hz: float = 5.0,
    checkpoint: str | None = None,
    device: str = "cpu",
    seed: int = 7,
    log: Any = print,
) -> dict[str, Any]:
    """Run the multi-camera demo end to end; returns the summary also written to out/summary.json."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = str(checkpoint or default_checkpoint(drone))
    bag = out / "flight"
    for stale in (bag, out / "fusion_output", out / "eval_bag"):
        if stale.exists():
            shutil.rmtree(stale)
    started = time.perf_counter()
    log(
        f"1/4 rendering a {seconds:g} s synthetic {drone} flight seen by {cameras} cameras "
        f"at {rate_hz:g} Hz -> {bag}"
    )
    spec = FlightBagSpec(drone=drone, seconds=seconds, rate_hz=rate_hz, cameras=cameras, seed=seed)
    summary_bag = write_flight_bag(bag, spec, workers=1, progress=False)
    names = summary_bag["cameras"]
    log(
        f"2/4 fusion node ({Path(checkpoint_path).name}, {device}, extrinsics from /tf_static) "
        "+ replay over DDS"
    )
    command = [
        sys.executable, "-m", "drone_pose.ros.fusion_node", "--ros-args",
        "-p", f"cameras:={','.join(names)}", "-p", f"device:={device}", "-p", f"drone:={drone}",
        "-p", f"checkpoint:={checkpoint_path}",
    ]  # fmt: skip
    topics = [f"/{name}/image_raw" for name in names]
    run = record_node(bag, out, command, topics, STATUS, log=log, recording="fusion_output")
    live = score_fused(bag, run["poses"])
    log("3/4 drone-pose eval-bag on the same bag (offline, no DDS): every camera alone and fused")
    offline = evaluate_fused_bag(bag, checkpoint_path, out / "eval_bag", device=device)
    match = agreement(run["poses"], Path(offline["files"]["frames"]))
    final = run["diagnostics"][-1] if run["diagnostics"] else {}
    summary = {
        "bag": str(bag),
        "checkpoint": checkpoint_path,
        "cameras": names,
        "over_dds": live,
        "fusion_node": {key: final.get(key) for key in NODE_FIGURES},
        "eval_bag_rows": offline["rows"],
        "eval_bag_nees_median": offline["nees_median"],
        "agreement": match,
        "files": {
            "recorded_fusion_output": str(run["recorded_bag"]),
            "eval_bag_report": str(out / "eval_bag"),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    log("4/4 results")
    log(offline["table"])
    if live.get("poses"):
        log(
            f"fused over DDS: {live['poses']} poses / {live['groups']} groups; position error median "
            f"{live['position_error_cm']['median']} cm (p95 {live['position_error_cm']['p95']}), rotation "
            f"{live['rotation_error_deg']['median']} deg"
        )
    log(
        f"per-group agreement DDS vs offline on {match.get('frames', 0)} groups: "
        f"max |dt| {match.get('max_translation_difference_mm', float('nan'))} mm, "
        f"max rotation difference {match.get('max_rotation_difference_deg', float('nan'))} deg"
    )
    node = summary["fusion_node"]
    log(
        f"latency (first image received -> fused pose published) p50 {node['latency_p50_ms']} ms, p95 "
        f"{node['latency_p95_ms']} ms; views per group {node['views_used_mean']}; groups processed "
        f"{node['groups_processed']}, dropped {node['groups_dropped']}"
    )
    log(f"outputs: {run['recorded_bag']} (MCAP), {out / 'eval_bag'}, {out / 'summary.json'}")
    log(f"done in {summary['seconds']} s")
    return summary
