"""Render a synthetic dataset to disk: deterministic per seed, sharded, split, on every core.

Sample i gets its own random stream SeedSequence((seed, i)) for its pose and its scene, so the
result does not depend on the number of workers or the shard size. Samples 0..n_train-1 form the
train split, the next n_val the val split, the rest the test split.

With a rig (drone_pose.data.rig_poses), a sample is a group: one drone pose rendered by the rig's
V cameras, stored as V consecutive images (image g*V + v is view v of group g; its random stream is
SeedSequence((seed, g))), with the extrinsics and group/view numbers beside them (shards module).
Splits and shards hold whole groups, so every image of a group lies in one shard.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from drone_pose.atomic_files import write_text
from drone_pose.data.poses import PoseSamplingConfig, apparent_size_px, sample_poses
from drone_pose.data.rig_poses import RigConfig, sample_rig_group
from drone_pose.data.shards import FORMAT, INDEX_FILE, VERSION, encode_shard, read_shard, write_shard
from drone_pose.data.synth import SceneConfig, check_camera, render_scene
from drone_pose.data.synth_progress import SynthFolderError, open_output, synth_settings
from drone_pose.drones import DroneModel, load_drone
from drone_pose.errors import UserError
from drone_pose.geometry.camera import PinholeCamera

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class GenerationJob:
    """One shard to render: samples (groups, with a rig) first..first+count-1 of `split`, shard
    number `number`."""

    split: str
    number: int
    first: int
    count: int

    @property
    def file_name(self) -> str:
        return f"{self.split}-{self.number:05d}.npz"


@dataclass(frozen=True)
class GenerationSpec:
    """Everything a worker needs (picklable): drone, camera, seed, configs, output folder."""

    drone: str
    K: tuple[tuple[float, ...], ...]
    width: int
    height: int
    seed: int
    out: str
    scene: SceneConfig
    poses: PoseSamplingConfig
    lossless: bool = False
    rig: RigConfig | None = None

    @property
    def views(self) -> int:
        """Images per sample: the rig's cameras, 1 without a rig."""
        return 1 if self.rig is None else self.rig.cameras


def render_group(spec: GenerationSpec, group: int, drone: DroneModel | None = None) -> dict[str, Any]:
    """Render group `group` of a multi-camera dataset: its V scenes and the rig geometry (RigGroup)."""
    drone = drone or load_drone(spec.drone)
    K = np.array(spec.K)
    rig_group, scene_seeds = _sample_group(spec, group, drone)
    scenes = [
        render_scene(
            drone, rig_group.R_cam[v], rig_group.t_cam[v], K, spec.width, spec.height, seed, spec.scene
        )
        for v, seed in enumerate(scene_seeds)
    ]
    return {"scenes": scenes, "rig": rig_group}


def _sample_group(
    spec: GenerationSpec, group: int, drone: DroneModel
) -> tuple[Any, list[np.random.SeedSequence]]:
    """Group `group`'s rig geometry and the seeds of its V scenes."""
    pose_seed, *scene_seeds = np.random.SeedSequence((spec.seed, group)).spawn(1 + spec.views)
    rng = np.random.default_rng(pose_seed)
    rig_group = sample_rig_group(drone, np.array(spec.K), spec.width, spec.height, spec.rig, rng, spec.poses)
    return rig_group, scene_seeds


def render_sample(spec: GenerationSpec, index: int, drone: DroneModel | None = None) -> dict[str, Any]:
    """Render sample `index` of the dataset described by spec (pose and scene from (seed, index))."""
    drone = drone or load_drone(spec.drone)
    K = np.array(spec.K)
    poses, scene_seed = _sample_pose(spec, index, drone)
    scene = render_scene(drone, poses.R[0], poses.t[0], K, spec.width, spec.height, scene_seed, spec.scene)
    return {"scene": scene, "tilt_deg": float(poses.tilt_deg[0])}


def _sample_pose(spec: GenerationSpec, index: int, drone: DroneModel) -> tuple[Any, np.random.SeedSequence]:
    """Sample `index`'s pose (PoseSamples of one) and the seed of its scene."""
    pose_seed, scene_seed = np.random.SeedSequence((spec.seed, index)).spawn(2)
    rng = np.random.default_rng(pose_seed)
    return sample_poses(drone, np.array(spec.K), spec.width, spec.height, 1, rng, spec.poses), scene_seed


def _render_shard(arguments: tuple[GenerationSpec, GenerationJob]) -> dict[str, Any]:
    spec, job = arguments
    import torch

    torch.set_num_threads(1)  # one process per core already
    drone = load_drone(spec.drone)
    extra: dict[str, np.ndarray] = {}
    if spec.rig is None:
        samples = [render_sample(spec, job.first + i, drone) for i in range(job.count)]
        scenes = [s["scene"] for s in samples]
        tilt_deg = [s["tilt_deg"] for s in samples]
    else:
        groups = [render_group(spec, job.first + i, drone) for i in range(job.count)]
        scenes = [scene for g in groups for scene in g["scenes"]]
        tilt_deg = [g["rig"].tilt_deg for g in groups for _ in range(spec.views)]
        extra = {
            "cam_from_rig": np.concatenate([g["rig"].cam_from_rig for g in groups]),
            "group": np.repeat(np.arange(job.first, job.first + job.count), spec.views),
            "view": np.tile(np.arange(spec.views), job.count),
        }
    first = job.first * spec.views
    arrays = encode_shard(
        [s.image for s in scenes],
        [s.mask for s in scenes],
        np.stack([s.keypoints for s in scenes]),
        np.stack([s.visibility for s in scenes]),
        np.stack([s.bbox for s in scenes]),
        np.stack([s.R for s in scenes]),
        np.stack([s.t for s in scenes]),
        np.arange(first, first + len(scenes)),
        spec.lossless,
        full_masks=[s.full_mask for s in scenes],
    )
    arrays.update(extra)
    name = job.file_name
    write_shard(Path(spec.out) / name, arrays)
    return _shard_result(spec, job, drone, arrays, tilt_deg)


def _shard_result(
    spec: GenerationSpec, job: GenerationJob, drone: DroneModel, arrays: Any, tilt_deg: list[float]
) -> dict[str, Any]:
    """A shard's entry for dataset.json and its scale figures, from its arrays (a dict or a Shard)."""
    t, bbox, visibility = arrays["t"], arrays["bbox"], arrays["visibility"]
    return {
        "split": job.split,
        "number": job.number,
        "file": job.file_name,
        "count": job.count * spec.views,
        "size_px": apparent_size_px(drone, t, np.array(spec.K)).tolist(),
        "distance_m": np.linalg.norm(t, axis=1).tolist(),
        "tilt_deg": tilt_deg,
        "visible_keypoints": visibility.mean(1).tolist(),
        "bbox_px": np.maximum(bbox[:, 2] - bbox[:, 0], bbox[:, 3] - bbox[:, 1]).tolist(),
    }


def _complete_shard_result(spec: GenerationSpec, job: GenerationJob, drone: DroneModel) -> dict[str, Any]:
    """The result of a shard a resumed run found complete: its figures as rendering gave them."""
    shard = read_shard(Path(spec.out) / job.file_name)
    arrays = {"t": shard.t, "bbox": shard.bbox, "visibility": shard.visibility}
    if spec.rig is None:
        tilt = [float(_sample_pose(spec, job.first + i, drone)[0].tilt_deg[0]) for i in range(job.count)]
    else:
        group_tilt = [_sample_group(spec, job.first + i, drone)[0].tilt_deg for i in range(job.count)]
        tilt = [t for t in group_tilt for _ in range(spec.views)]
    return _shard_result(spec, job, drone, arrays, tilt)


def plan_jobs(count: int, fractions: tuple[float, float, float], shard_size: int) -> list[GenerationJob]:
    """Shards of at most shard_size samples per split; splits take consecutive sample indices."""
    if count <= 0:
        raise UserError(f"count must be positive, got {count}")
    if shard_size <= 0:
        raise UserError(f"shard size must be positive, got {shard_size}")
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise UserError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    n_train = round(fractions[0] * count)
    n_val = min(round(fractions[1] * count), count - n_train)
    sizes = {"train": n_train, "val": n_val, "test": count - n_train - n_val}
    jobs, first = [], 0
    for split in SPLITS:
        for number, start in enumerate(range(0, sizes[split], shard_size)):
            jobs.append(GenerationJob(split, number, first + start, min(shard_size, sizes[split] - start)))
        first += sizes[split]
    return jobs


def generate_dataset(
    drone: str,
    count: int,
    out: str | Path,
    seed: int = 0,
    workers: int | None = None,
    shard_size: int = 256,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    K: np.ndarray | None = None,
    width: int | None = None,
    height: int | None = None,
    scene: SceneConfig | None = None,
    poses: PoseSamplingConfig | None = None,
    progress: bool = True,
    lossless: bool = False,
    rig: RigConfig | None = None,
) -> dict[str, Any]:
    """Render `count` samples into `out` and write dataset.json.

    With a rig, `count` groups of rig.cameras images each; shard_size counts images and is rounded
    down to whole groups.

    `out` is created, or must be empty, or holds an interrupted synth with the same settings, which
    is resumed (drone_pose.data.synth_progress): the result equals an uninterrupted run's. Returns
    the index written to dataset.json, with scale statistics and the throughput.
    """
    if not str(out).strip():
        raise ValueError("the output directory path is empty")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SynthFolderError(f"{out} exists and is not a directory")
    drone_model = load_drone(drone)  # fail now for an unknown drone
    uava = PinholeCamera.uava()
    width, height = width or uava.width, height or uava.height
    if K is None:
        K = uava.resized(width, height).K().double().numpy()
    K = check_camera(K, width, height)
    views = 1 if rig is None else rig.cameras
    jobs = plan_jobs(count, fractions, max(1, shard_size // views))
    spec = GenerationSpec(
        drone,
        tuple(map(tuple, K.tolist())),
        width,
        height,
        seed,
        str(out),
        scene or SceneConfig(),
        poses or PoseSamplingConfig(),
        lossless,
        rig,
    )
    settings = synth_settings(
        drone, count, seed, fractions, shard_size, width, height, K, spec.scene, spec.poses, lossless, rig
    )
    planned = {job.file_name: range(job.first * views, (job.first + job.count) * views) for job in jobs}
    complete = set(open_output(out, settings, planned))
    results = [_complete_shard_result(spec, job, drone_model) for job in jobs if job.file_name in complete]
    jobs = [job for job in jobs if job.file_name not in complete]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))

    start = time.perf_counter()
    from tqdm import tqdm

    rendered = sum(job.count for job in jobs) * views
    with tqdm(
        total=count * views,
        initial=count * views - rendered,
        unit="img",
        desc=f"synth {drone}",
        disable=not progress,
    ) as bar:
        if workers == 1:
            for job in jobs:
                results.append(_render_shard((spec, job)))
                bar.update(job.count * views)
        elif jobs:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for result in pool.imap_unordered(_render_shard, [(spec, job) for job in jobs]):
                    results.append(result)
                    bar.update(result["count"])
    seconds = time.perf_counter() - start
    results.sort(key=lambda r: (SPLITS.index(r["split"]), r["number"]))
    index = {
        "format": FORMAT,
        "version": VERSION,
        "drone": drone,
        "camera": {"width": width, "height": height, "K": K.tolist()},
        "seed": seed,
        "count": count * views,
        "splits": {
            split: [{"file": r["file"], "count": r["count"]} for r in results if r["split"] == split]
            for split in SPLITS
        },
        "image_encoding": "png" if lossless else "jpeg95",
        "scene": asdict(spec.scene),
        "poses": asdict(spec.poses),
        **({} if rig is None else {"rig": {**asdict(rig), "groups": count}}),
        "statistics": _statistics(results),
        "generation": {
            "seconds": round(seconds, 2),
            "images_per_s": round(rendered / max(seconds, 1e-9), 1),
            "workers": workers,
            "resumed_shards": len(complete),
        },
    }
    write_text(out / INDEX_FILE, json.dumps(index, indent=2))
    return index


def _statistics(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """min / percentiles / max of the scale figures over all samples."""
    summary = {}
    for key in ("size_px", "distance_m", "tilt_deg", "visible_keypoints", "bbox_px"):
        values = np.concatenate([r[key] for r in results])
        p5, p50, p95 = np.percentile(values, [5, 50, 95])
        summary[key] = {
            "min": round(float(values.min()), 4),
            "p5": round(float(p5), 4),
            "median": round(float(p50), 4),
            "p95": round(float(p95), 4),
            "max": round(float(values.max()), 4),
        }
    return summary
