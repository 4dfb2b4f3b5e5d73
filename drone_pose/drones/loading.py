"""Drone models from files: a YAML file (keys below) next to its mesh (OBJ, one named object per
part), built in under models/drones or given by path.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
import yaml

from drone_pose.drones.model import DroneModel, DroneModelError
from drone_pose.resources import models_dir

REQUIRED_KEYS = ("name", "diagonal_m", "mesh", "keypoints")
OPTIONAL_KEYS = ("description", "dimensions_m")
MIN_KEYPOINTS = 4


def available_drones() -> list[str]:
    """Names of the built-in drone models."""
    return sorted(path.stem for path in (models_dir() / "drones").glob("*.yaml"))


def load_drone(name_or_path: str | Path) -> DroneModel:
    """Load a built-in drone by name ("m2ed", "tello") or a drone YAML file by path.

    Raises DroneModelError for an unknown name or a malformed file, naming the problem.
    """
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        path = candidate.resolve()
        if not path.is_file():
            raise DroneModelError(f"drone model file not found: {path}")
    else:
        path = (models_dir() / "drones" / f"{name_or_path}.yaml").resolve()
        if not path.is_file():
            raise DroneModelError(
                f"unknown drone {str(name_or_path)!r}; built-in drones: {', '.join(available_drones())} "
                "(or pass the path of a drone YAML file)"
            )
    return _load_drone_file(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _load_drone_file(path: Path, _mtime_ns: int) -> DroneModel:
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise DroneModelError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(spec, dict):
        raise DroneModelError(f"{path}: expected a mapping of drone properties, got {type(spec).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in spec]
    if missing:
        raise DroneModelError(f"{path}: missing key(s) {', '.join(missing)}")
    unknown = sorted(set(spec) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise DroneModelError(f"{path}: unknown key(s) {', '.join(unknown)}")

    name = _string(spec, "name", path)
    diagonal = _positive_length(spec["diagonal_m"], "diagonal_m", path)
    names, keypoints = _keypoints(spec["keypoints"], path)
    dimensions = None
    if spec.get("dimensions_m") is not None:
        values = spec["dimensions_m"]
        if not (isinstance(values, list) and len(values) == 3):
            raise DroneModelError(f"{path}: dimensions_m must be a list [length, width, height] in metres")
        dimensions = tuple(_positive_length(v, "dimensions_m", path) for v in values)
    vertices, faces, face_parts, part_names = _load_mesh(path.parent / _string(spec, "mesh", path), path)
    for array in (keypoints, vertices, faces, face_parts):
        array.flags.writeable = False
    return DroneModel(
        name=name,
        description=str(spec.get("description", "")),
        keypoint_names=names,
        keypoints=keypoints,
        diagonal=diagonal,
        dimensions=dimensions,
        vertices=vertices,
        faces=faces,
        face_parts=face_parts,
        part_names=part_names,
        source=path,
    )


def _string(spec: dict[str, Any], key: str, path: Path) -> str:
    value = spec[key]
    if not isinstance(value, str) or not value:
        raise DroneModelError(f"{path}: {key} must be a non-empty string, got {value!r}")
    return value


def _positive_length(value: Any, key: str, path: Path) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise DroneModelError(f"{path}: {key} must be a positive length in metres, got {value!r}")
    return float(value)


def _keypoints(value: Any, path: Path) -> tuple[tuple[str, ...], np.ndarray]:
    if not isinstance(value, dict) or len(value) < MIN_KEYPOINTS:
        raise DroneModelError(
            f"{path}: keypoints must map at least {MIN_KEYPOINTS} keypoint names to [x, y, z] in metres"
        )
    rows = []
    for key, point in value.items():
        if not (isinstance(point, list) and len(point) == 3 and all(_is_number(c) for c in point)):
            raise DroneModelError(f"{path}: keypoint {key!r} must be [x, y, z] in metres, got {point!r}")
        rows.append([float(c) for c in point])
    keypoints = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(keypoints).all():
        raise DroneModelError(f"{path}: keypoints must be finite")
    if np.linalg.matrix_rank(keypoints - keypoints.mean(0), tol=1e-6) < 2:
        raise DroneModelError(f"{path}: keypoints are collinear; a pose cannot be recovered from them")
    return tuple(str(k) for k in value), keypoints


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _load_mesh(
    mesh_path: Path, yaml_path: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    if not mesh_path.is_file():
        raise DroneModelError(f"{yaml_path}: mesh file not found: {mesh_path}")
    try:
        scene = trimesh.load_scene(
            mesh_path, split_objects=True, group_material=False, process=False, maintain_order=True
        )
    except Exception as error:  # trimesh raises many types for corrupt files
        raise DroneModelError(f"{mesh_path}: cannot read mesh: {error}") from error
    part_names = tuple(sorted(scene.geometry))
    if not part_names:
        raise DroneModelError(f"{mesh_path}: mesh has no geometry")
    vertices, faces, face_parts, offset = [], [], [], 0
    for index, part_name in enumerate(part_names):
        part = scene.geometry[part_name]
        if not isinstance(part, trimesh.Trimesh) or len(part.faces) == 0:
            raise DroneModelError(f"{mesh_path}: part {part_name!r} has no triangles")
        part = part.copy()
        part.remove_unreferenced_vertices()  # the OBJ loader gives every part the file's whole vertex list
        if not part.is_watertight:
            raise DroneModelError(f"{mesh_path}: part {part_name!r} is not a closed surface")
        vertices.append(np.asarray(part.vertices, dtype=np.float64))
        faces.append(np.asarray(part.faces, dtype=np.int64) + offset)
        face_parts.append(np.full(len(part.faces), index, dtype=np.int64))
        offset += len(part.vertices)
    all_vertices = np.concatenate(vertices)
    if not np.isfinite(all_vertices).all():
        raise DroneModelError(f"{mesh_path}: mesh has non-finite vertices")
    return all_vertices, np.concatenate(faces), np.concatenate(face_parts), part_names
