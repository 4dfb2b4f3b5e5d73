"""DroneModel: a drone's keypoints, ADD reference length and triangle mesh in its body frame.

Everything is in the drone body frame (x forward, y left, z up), metres. Loading from YAML + OBJ
files is drone_pose.drones.loading's job.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh

from drone_pose.errors import UserError


class DroneModelError(UserError):
    """A drone model that cannot be found or whose files are malformed."""


@dataclass(frozen=True, eq=False)
class DroneModel:
    """A drone's geometry in its body frame (metres).

    keypoints [K,3] float64; vertices [V,3] float64; faces [F,3] int64 (indices into vertices);
    face_parts [F] int64 (index into part_names, e.g. "body", "propeller_front_left").
    """

    name: str
    description: str
    keypoint_names: tuple[str, ...]
    keypoints: np.ndarray
    diagonal: float
    dimensions: tuple[float, float, float] | None
    vertices: np.ndarray
    faces: np.ndarray
    face_parts: np.ndarray
    part_names: tuple[str, ...]
    source: Path

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    def keypoints_tensor(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Keypoints [K,3] as a tensor."""
        return torch.tensor(self.keypoints, dtype=dtype, device=device)

    def vertices_tensor(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Mesh vertices [V,3] as a tensor."""
        return torch.tensor(self.vertices, dtype=dtype, device=device)

    @functools.cached_property
    def closed_outward(self) -> bool:
        """True when every part is a closed surface with outward normals, so that faces turned away
        from the camera can never be seen (back-face culling is exact)."""
        for part in range(len(self.part_names)):
            mesh = trimesh.Trimesh(self.vertices, self.faces[self.face_parts == part], process=False)
            if not (mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0):
                return False
        return True

    def part_faces(self, prefix: str) -> np.ndarray:
        """Boolean mask [F] of the faces whose part name starts with `prefix`."""
        selected = [i for i, name in enumerate(self.part_names) if name.startswith(prefix)]
        return np.isin(self.face_parts, selected)
