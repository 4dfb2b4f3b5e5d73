"""`drone-pose eval-bag BAG`: the estimator over a bag's frames, offline and deterministic (no DDS),
scored against the bag's ground-truth poses.

Frames are the images of `camera` (topic /<camera>/image_raw) paired by stamp with
/<camera>/camera_info and the ground truth /<camera>/ground_truth/pose (as `drone-pose synth-bag`
writes them). Output folder: results.md/json and plots (as `drone-pose eval`), frames.csv (per
frame: stamp, valid, reason, errors) and estimates/ (an MCAP bag with the estimated poses,
covariances, TF and overlay images, for RViz or Foxglove).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from drone_pose.bags import messages
from drone_pose.drones import load_drone
from drone_pose.evaluation.reports import markdown_table, write_report
from drone_pose.geometry.metrics import pose_errors, summarize_errors, validity_metrics
from drone_pose.geometry.rotations import matrix_to_quaternion_xyzw, quaternion_xyzw_to_matrix
from drone_pose.inference.checkpoint import DEFAULT_DRONE, default_checkpoint
from drone_pose.inference.estimator import PoseEstimator
from drone_pose.inference.overlay import draw_pose_overlay

POSE_COVARIANCE = "geometry_msgs/msg/PoseWithCovarianceStamped"


def image_array(msg: Any) -> np.ndarray:
    """[H,W,3] uint8 RGB of a rosbags sensor_msgs/Image (rgb8, bgr8, mono8); ValueError otherwise."""
    channels = {"rgb8": 3, "bgr8": 3, "mono8": 1}.get(msg.encoding)
    if channels is None:
        raise ValueError(f"unsupported encoding {msg.encoding!r}")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.asarray(msg.data, dtype=np.uint8)
    if height <= 0 or width <= 0 or step < width * channels or data.size < step * height:
        raise ValueError(f"malformed {width}x{height} image (step {step}, {data.size} bytes)")
    pixels = (
        data[: step * height].reshape(height, step)[:, : width * channels].reshape(height, width, channels)
    )
    if msg.encoding == "bgr8":
        return pixels[..., ::-1]
    return np.repeat(pixels, 3, axis=2) if channels == 1 else pixels


def read_frames(bag: str | Path, camera: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Frames of one camera (image, K, ground truth, stamp, frame_id) and counts of skipped messages."""
    images, infos, truths = {}, {}, {}
    skipped = {"undecodable": 0, "no_camera_info": 0, "no_ground_truth": 0}
    topics = {
        f"/{camera}/image_raw": images,
        f"/{camera}/camera_info": infos,
        f"/{camera}/ground_truth/pose": truths,
    }
    with Reader(bag) as reader:
        connections = [c for c in reader.connections if c.topic in topics]
        if not any(c.topic == f"/{camera}/image_raw" for c in connections):
            raise ValueError(f"{bag}: no /{camera}/image_raw topic")
        for connection, _, raw in reader.messages(connections=connections):
            try:
                message = messages.deserialize(raw, connection.msgtype)
            except Exception:  # rosbags raises several types for corrupt CDR
                skipped["undecodable"] += 1
                continue
            topics[connection.topic][messages.stamp_ns(message.header)] = message
    frames = []
    for stamp in sorted(images):
        if stamp not in infos:
            skipped["no_camera_info"] += 1
            continue
        if stamp not in truths:
            skipped["no_ground_truth"] += 1
            continue
        try:
            rgb = image_array(images[stamp])
        except ValueError:
            skipped["undecodable"] += 1
            continue
        pose = truths[stamp].pose
        q = torch.tensor([pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w])
        frames.append(
            {
                "stamp": stamp,
                "frame_id": images[stamp].header.frame_id,
                "rgb": rgb,
                "K": np.asarray(infos[stamp].k, dtype=np.float64).reshape(3, 3),
                "R": quaternion_xyzw_to_matrix(q.double()).numpy(),
                "t": np.array([pose.position.x, pose.position.y, pose.position.z]),
            }
        )
    return frames, skipped


def bag_drone(bag: str | Path) -> str | None:
    """The drone a `drone-pose synth-bag` bag shows (its custom metadata), None for other bags."""
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        return (reader.metadata.custom or {}).get("drone_pose.drone")


def evaluate_bag(
    bag: str | Path,
    checkpoint: str | Path | None,
    out: str | Path,
    camera: str = "camera",
    device: str | None = None,
    batch_size: int = 8,
    overlay_every: int = 1,
) -> dict[str, Any]:
    """Run the estimator over the bag's frames and write the report; returns the summary.
    checkpoint None: the shipped checkpoint of the bag's drone (custom metadata), else of m2ed."""
    if checkpoint is None:
        checkpoint = default_checkpoint(bag_drone(bag) or DEFAULT_DRONE)
    estimator = PoseEstimator.from_checkpoint(checkpoint, device=device)
    drone = load_drone(estimator.description["drone"]["name"])
    frames, skipped = read_frames(bag, camera)
    if not frames:
        raise ValueError(f"{bag}: no frame of /{camera} has camera_info and ground truth")
    started = time.perf_counter()
    results = []
    for first in range(0, len(frames), batch_size):
        chunk = frames[first : first + batch_size]
        same_size = len({f["rgb"].shape for f in chunk}) == 1
        groups = [chunk] if same_size else [[f] for f in chunk]
        for group in groups:
            estimate = estimator.estimate(
                np.stack([f["rgb"] for f in group]), np.stack([f["K"] for f in group])
            )
            for i in range(len(group)):
                results.append(
                    {key: getattr(estimate, key)[i] for key in ("keypoints", "R", "t", "covariance")}
                    | {"valid": bool(estimate.valid[i]), "reason": estimate.reasons[i]}
                )
    elapsed = time.perf_counter() - started
    x3d = torch.tensor(drone.keypoints, dtype=torch.float64)
    R = torch.stack([r["R"] for r in results]).double()
    t = torch.stack([r["t"] for r in results]).double()
    R_gt = torch.tensor(np.stack([f["R"] for f in frames]))
    t_gt = torch.tensor(np.stack([f["t"] for f in frames]))
    K = torch.tensor(np.stack([f["K"] for f in frames]))
    errors = pose_errors(R, t, R_gt, t_gt, x3d, K)
    metrics = summarize_errors(errors, drone.diagonal)
    valid = torch.tensor([r["valid"] for r in results])
    metrics.update(validity_metrics(valid, errors.accuracy(5.0)))
    # what the tracker publishes: the frames whose pose passed its checks
    metrics_valid = (
        summarize_errors(
            pose_errors(R[valid], t[valid], R_gt[valid], t_gt[valid], x3d, K[valid]), drone.diagonal
        )
        if bool(valid.any())
        else {}
    )
    projected = (x3d @ R_gt.transpose(1, 2) + t_gt[:, None]) @ K.transpose(1, 2)
    truth_keypoints = projected[..., :2] / projected[..., 2:3]
    keypoint_errors = (torch.stack([r["keypoints"] for r in results]) - truth_keypoints).norm(dim=-1).numpy()
    metrics["keypoint_px"] = float(keypoint_errors.mean())
    out = Path(out)
    label = f"{Path(checkpoint).name} on {Path(bag).name}/{camera}"
    samples = {
        "stamp_ns": np.array([f["stamp"] for f in frames]),
        "valid": np.array([int(r["valid"]) for r in results]),
        "distance_m": t_gt.norm(dim=-1).numpy(),
        "size_px": K[:, 0, 0].numpy() * drone.diagonal / t_gt[:, 2].numpy(),
        "rotation_deg": np.degrees(errors.rotation_rad.numpy()),
        "translation_cm": 100.0 * errors.translation_m.numpy(),
        "add_m": errors.add_m.numpy(),
        "proj_px": errors.proj_px.numpy(),
    }
    files = write_report(out, label, metrics, samples, keypoint_errors, drone.keypoint_names)
    with (out / "frames.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                *("stamp_ns", "valid", "reason", "rotation_deg", "translation_cm", "proj_px"),
                *("tx", "ty", "tz", "qx", "qy", "qz", "qw"),
            ]
        )
        quaternions = matrix_to_quaternion_xyzw(R).numpy()
        for frame, result, rot, trans, proj, quaternion in zip(
            frames,
            results,
            samples["rotation_deg"],
            samples["translation_cm"],
            samples["proj_px"],
            quaternions,
            strict=True,
        ):
            writer.writerow(
                [
                    frame["stamp"],
                    int(result["valid"]),
                    result["reason"],
                    f"{rot:.4f}",
                    f"{trans:.4f}",
                    f"{proj:.4f}",
                    *(f"{v:.6f}" for v in result["t"].tolist()),
                    *(f"{v:.6f}" for v in quaternion.tolist()),
                ]
            )
    files["frames"] = str(out / "frames.csv")
    files["estimates"] = str(_write_estimates(out / "estimates", frames, results, x3d, drone, overlay_every))
    return {
        "label": label,
        "frames": len(frames),
        "skipped": skipped,
        "metrics": metrics,
        "metrics_valid_frames": metrics_valid,
        "frames_per_s": round(len(frames) / max(elapsed, 1e-9), 1),
        "table": markdown_table([(label, metrics)]),
        "files": files,
    }


def _write_estimates(
    path: Path,
    frames: list[dict[str, Any]],
    results: list[dict[str, Any]],
    x3d: torch.Tensor,
    drone: Any,
    overlay_every: int,
) -> Path:
    """An MCAP bag with /pose, /pose_with_covariance, /tf (camera -> drone) and /overlay per valid frame."""
    if path.exists():
        import shutil

        shutil.rmtree(path)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:

        def add(topic: str, msgtype: str, depth: int = 10) -> Any:
            return writer.add_connection(
                topic, msgtype, typestore=messages.TYPESTORE, offered_qos_profiles=[messages.bag_qos(depth)]
            )

        pose_c = add("/pose", messages.POSE_STAMPED)
        covariance_c = add("/pose_with_covariance", POSE_COVARIANCE)
        tf_c = add("/tf", messages.TF_MESSAGE, 100)
        overlay_c = add("/overlay", messages.IMAGE)
        T = messages.T
        for index, (frame, result) in enumerate(zip(frames, results, strict=True)):
            stamp, frame_id = frame["stamp"], frame["frame_id"]
            if index % overlay_every == 0:
                overlay = draw_pose_overlay(
                    frame["rgb"],
                    drone,
                    result["R"].double().numpy(),
                    result["t"].double().numpy(),
                    frame["K"],
                    result["keypoints"].numpy(),
                )
                writer.write(
                    overlay_c, stamp, messages.serialize(messages.image_rgb8(overlay, stamp, frame_id))
                )
            if not result["valid"]:
                continue
            R, t = result["R"].double().numpy(), result["t"].double().numpy()
            pose = messages.pose_stamped(R, t, stamp, frame_id)
            writer.write(pose_c, stamp, messages.serialize(pose))
            covariance = T[POSE_COVARIANCE](
                header=pose.header,
                pose=T["geometry_msgs/msg/PoseWithCovariance"](
                    pose=pose.pose, covariance=result["covariance"].double().numpy().reshape(36)
                ),
            )
            writer.write(covariance_c, stamp, messages.serialize(covariance))
            tf = messages.tf_message([messages.transform_stamped(R, t, stamp, frame_id, "drone")])
            writer.write(tf_c, stamp, messages.serialize(tf))
    return path
