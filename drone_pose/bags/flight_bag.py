"""Render synthetic drone flights into rosbag2 files (MCAP by default, sqlite3 on request).

A bag holds, for each camera NAME of the rig (NAME is "camera" for one camera, camera0..3 for
more) and each frame, all stamped with the frame's time:
    /NAME/image_raw                sensor_msgs/Image, rgb8, frame NAME_optical
    /NAME/camera_info              sensor_msgs/CameraInfo, frame NAME_optical
    /NAME/ground_truth/pose        geometry_msgs/PoseStamped of the drone body in NAME_optical
and for the rig:
    /ground_truth/pose             geometry_msgs/PoseStamped of the drone body in `world`
    /tf                            first camera's NAME_optical -> drone_gt, every frame
    /tf_static                     world -> NAME_optical for every camera, once (transient local)
The ground-truth frame is `drone_gt`, so that a tracker publishing `drone` can be shown next to it.
The bag's custom metadata records the drone, seed, rate, cameras and generator version.
Backgrounds are static per camera and the drone's colours and light fixed per flight; sensor
noise changes every frame. Everything is deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from tqdm import tqdm

from drone_pose import __version__
from drone_pose.bags import messages
from drone_pose.data.flights import Flight, FlightConfig, RigCamera, make_rig, sample_flight
from drone_pose.data.synth import SceneConfig, check_camera, render_background, render_scene
from drone_pose.drones import load_drone
from drone_pose.errors import UserError
from drone_pose.geometry.camera import PinholeCamera

WORLD_FRAME = "world"
GROUND_TRUTH_FRAME = "drone_gt"
START_NS = 1_700_000_000 * 1_000_000_000  # a fixed start time keeps bags identical for a seed
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
# A video has no per-frame occluders, flashes or white-balance jumps; backgrounds are static.
FLIGHT_SCENE = SceneConfig(occlusion_p=0.0, motion_blur_p=0.0, exposure=0.0, white_balance=0.0)
_APPEARANCE_STREAM, _BACKGROUND_STREAM, _FLIGHT_STREAM = 1 << 30, (1 << 30) + 1, (1 << 30) + 2


@dataclass(frozen=True)
class FlightBagSpec:
    """What to record; K None means the UAVA camera resized to width x height."""

    drone: str = "m2ed"
    seconds: float = 20.0
    rate_hz: float = 30.0
    cameras: int = 1
    seed: int = 0
    width: int = 320
    height: int = 240
    K: tuple[tuple[float, ...], ...] | None = None
    background_folder: str | None = None

    def intrinsics(self) -> np.ndarray:
        if self.K is None:
            return PinholeCamera.uava().resized(self.width, self.height).K().double().numpy()
        return check_camera(np.array(self.K), self.width, self.height)


def plan_flight(spec: FlightBagSpec) -> tuple[list[RigCamera], Flight]:
    """The rig and the sampled flight of a spec (deterministic for its seed)."""
    drone = load_drone(spec.drone)
    rig, _ = make_rig(drone, spec.cameras, spec.intrinsics(), spec.width, spec.height)
    rng = np.random.default_rng((spec.seed, _FLIGHT_STREAM))
    return rig, sample_flight(drone, rig, spec.seconds, spec.rate_hz, rng, FlightConfig())


class _FrameRenderer:
    """Renders frame i for every camera (one instance per worker process)."""

    def __init__(self, spec: FlightBagSpec) -> None:
        self.spec = spec
        self.drone = load_drone(spec.drone)
        self.rig, self.flight = plan_flight(spec)
        self.scene = dataclasses.replace(FLIGHT_SCENE, background_folder=spec.background_folder)
        self.appearance = np.random.SeedSequence((spec.seed, _APPEARANCE_STREAM))
        self.backgrounds = [
            render_background(
                np.random.default_rng((spec.seed, _BACKGROUND_STREAM, c)), spec.width, spec.height, self.scene
            )
            for c in range(len(self.rig))
        ]

    def __call__(self, frame: int) -> list[np.ndarray]:
        images = []
        for c, camera in enumerate(self.rig):
            R, t = camera.drone_pose(self.flight.R_world_body[frame], self.flight.position[frame])
            scene = render_scene(
                self.drone, R, t, camera.K, camera.width, camera.height,
                seed=np.random.SeedSequence((self.spec.seed, frame, c)), config=self.scene,
                background=self.backgrounds[c], appearance=self.appearance,
            )  # fmt: skip
            images.append(scene.image)
        return images


_worker_renderer: _FrameRenderer | None = None


def _init_worker(spec: FlightBagSpec) -> None:
    global _worker_renderer
    import torch

    torch.set_num_threads(1)
    _worker_renderer = _FrameRenderer(spec)


def _render_in_worker(frame: int) -> list[np.ndarray]:
    assert _worker_renderer is not None
    return _worker_renderer(frame)


def write_flight_bag(
    out: str | Path,
    spec: FlightBagSpec | None = None,
    storage: str = "mcap",
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Render and write a flight bag to the folder `out` (must not exist); returns a summary."""
    spec = spec or FlightBagSpec()
    if not str(out).strip():
        raise ValueError("output bag path is empty")
    out = Path(out)
    if out.exists():
        raise UserError(f"{out} already exists; rosbag2 writes a new folder: name another --out")
    if storage not in STORAGES:
        raise ValueError(f"unknown storage {storage!r}; expected one of {sorted(STORAGES)}")
    if not 1 <= spec.cameras <= 4:
        raise ValueError(f"a rig has 1 to 4 cameras, got {spec.cameras}")
    load_drone(spec.drone)  # unknown drone: fail before anything is written
    rig, flight = plan_flight(spec)
    frames = len(flight.times)
    if frames == 0:
        raise ValueError(f"{spec.seconds} s at {spec.rate_hz} Hz records no frame")
    workers = max(1, min(workers or os.cpu_count() or 1, frames))
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with Writer(out, version=9, storage_plugin=STORAGES[storage]) as writer:
            for key, value in _custom_data(spec, rig).items():
                writer.set_custom_data(key, value)
            topics = _add_connections(writer, rig)
            _write_static(writer, topics, rig)
            frame_images = _render_frames(spec, frames, workers)
            for frame, images in enumerate(
                tqdm(frame_images, total=frames, disable=not progress, unit="frame")
            ):
                _write_frame(writer, topics, rig, flight, frame, images)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half-written bag left behind
        raise
    wall = time.perf_counter() - started
    size = sum(p.stat().st_size for p in out.iterdir())
    return {
        "out": str(out),
        "storage": storage,
        "drone": spec.drone,
        "cameras": [camera.name for camera in rig],
        "frames": frames,
        "rate_hz": spec.rate_hz,
        "seconds": frames / spec.rate_hz,
        "messages": frames * (3 * len(rig) + 2) + 1,
        "bytes": size,
        "write_s": round(wall, 2),
        "frames_per_s": round(frames / wall, 1),
        "tilt_deg_max": round(float(flight.tilt_deg.max()), 1),
        "speed_m_s_max": round(float(np.linalg.norm(flight.velocity, axis=1).max()), 2),
    }


def _render_frames(spec: FlightBagSpec, frames: int, workers: int) -> Any:
    if workers == 1:
        renderer = _FrameRenderer(spec)
        return (renderer(i) for i in range(frames))
    pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (spec,))

    def ordered() -> Any:
        with pool:
            yield from pool.imap(_render_in_worker, range(frames), chunksize=4)

    return ordered()


def _custom_data(spec: FlightBagSpec, rig: list[RigCamera]) -> dict[str, str]:
    return {
        "drone_pose.generator": f"drone_pose {__version__} synth-bag",
        "drone_pose.drone": spec.drone,
        "drone_pose.seed": str(spec.seed),
        "drone_pose.rate_hz": str(spec.rate_hz),
        "drone_pose.cameras": ",".join(camera.name for camera in rig),
        "drone_pose.ground_truth_frame": GROUND_TRUTH_FRAME,
    }


def _add_connections(writer: Writer, rig: list[RigCamera]) -> dict[str, Any]:
    def add(topic: str, msgtype: str, depth: int, transient_local: bool = False) -> Any:
        qos = [messages.bag_qos(depth, transient_local)]
        return writer.add_connection(topic, msgtype, typestore=messages.TYPESTORE, offered_qos_profiles=qos)

    topics = {
        "/tf": add("/tf", messages.TF_MESSAGE, 100),
        "/tf_static": add("/tf_static", messages.TF_MESSAGE, 1, transient_local=True),
        "/ground_truth/pose": add("/ground_truth/pose", messages.POSE_STAMPED, 10),
    }
    for camera in rig:
        topics[f"/{camera.name}/image_raw"] = add(f"/{camera.name}/image_raw", messages.IMAGE, 10)
        topics[f"/{camera.name}/camera_info"] = add(f"/{camera.name}/camera_info", messages.CAMERA_INFO, 10)
        pose_topic = f"/{camera.name}/ground_truth/pose"
        topics[pose_topic] = add(pose_topic, messages.POSE_STAMPED, 10)
    return topics


def _write_static(writer: Writer, topics: dict[str, Any], rig: list[RigCamera]) -> None:
    transforms = [
        messages.transform_stamped(c.R_world_camera, c.position, START_NS, WORLD_FRAME, c.optical_frame)
        for c in rig
    ]
    writer.write(topics["/tf_static"], START_NS, messages.serialize(messages.tf_message(transforms)))


def _write_frame(
    writer: Writer,
    topics: dict[str, Any],
    rig: list[RigCamera],
    flight: Flight,
    frame: int,
    images: list[np.ndarray],
) -> None:
    stamp = START_NS + round(float(flight.times[frame]) * 1e9)
    R_world, p_world = flight.R_world_body[frame], flight.position[frame]
    for camera, image in zip(rig, images, strict=True):
        R, t = camera.drone_pose(R_world, p_world)
        frame_id = camera.optical_frame
        writer.write(
            topics[f"/{camera.name}/image_raw"],
            stamp,
            messages.serialize(messages.image_rgb8(image, stamp, frame_id)),
        )
        info = messages.camera_info(camera.K, camera.width, camera.height, stamp, frame_id)
        writer.write(topics[f"/{camera.name}/camera_info"], stamp, messages.serialize(info))
        pose = messages.pose_stamped(R, t, stamp, frame_id)
        writer.write(topics[f"/{camera.name}/ground_truth/pose"], stamp, messages.serialize(pose))
    world_pose = messages.pose_stamped(R_world, p_world, stamp, WORLD_FRAME)
    writer.write(topics["/ground_truth/pose"], stamp, messages.serialize(world_pose))
    R0, t0 = rig[0].drone_pose(R_world, p_world)
    tf = messages.tf_message(
        [messages.transform_stamped(R0, t0, stamp, rig[0].optical_frame, GROUND_TRUTH_FRAME)]
    )
    writer.write(topics["/tf"], stamp, messages.serialize(tf))
