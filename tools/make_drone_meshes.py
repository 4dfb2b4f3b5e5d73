"""Write models/drones/<name>.obj: closed triangle meshes of the built-in drones from a parametric spec.

Each mesh is a set of named, individually watertight parts (body, arms, motors, propeller discs,
accessories) in the drone body frame (x forward, y left, z up; metres). Run from the repository
root after changing a spec: `.venv/bin/python tools/make_drone_meshes.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

SECTIONS = 20


@dataclass(frozen=True)
class FrameSpec:
    """Geometry of an X-configuration quadrotor (metres, drone body frame)."""

    body_size: tuple[float, float, float]
    motor_xy: tuple[float, float]
    motor_radius: float
    motor_z: tuple[float, float]
    arm_radius: float
    arm_z: float
    propeller_radius: float
    propeller_z: tuple[float, float]
    extras: tuple[tuple[str, tuple[float, float, float], tuple[float, float, float]], ...]
    guard: tuple[float, float, float, float] | None = None  # inner radius, outer radius, z bottom, z top


SPECS: dict[str, FrameSpec] = {
    # DJI Mavic 2 Enterprise class, unfolded: 322 x 242 x 84 mm frame, 0.354 m motor diagonal.
    "m2ed": FrameSpec(
        body_size=(0.200, 0.090, 0.060),
        motor_xy=(0.143, 0.1043),
        motor_radius=0.016,
        motor_z=(-0.040, 0.030),
        arm_radius=0.009,
        arm_z=0.005,
        propeller_radius=0.100,
        propeller_z=(0.032, 0.035),
        extras=(
            ("gimbal", (0.085, 0.0, -0.033), (0.030, 0.040, 0.024)),
            ("battery", (-0.040, 0.0, 0.033), (0.090, 0.060, 0.012)),
        ),
    ),
    # Ryze Tello class: 98 x 93 x 41 mm with propeller guards.
    "tello": FrameSpec(
        body_size=(0.052, 0.040, 0.028),
        motor_xy=(0.0285, 0.0260),
        motor_radius=0.0055,
        motor_z=(-0.016, 0.014),
        arm_radius=0.0035,
        arm_z=0.004,
        propeller_radius=0.0185,
        propeller_z=(0.0150, 0.0165),
        extras=(("battery", (-0.004, 0.0, -0.0185), (0.044, 0.032, 0.009)),),
        guard=(0.0195, 0.0210, 0.008, 0.0175),
    ),
}

MOTOR_SIGNS = {"front_left": (1, 1), "front_right": (1, -1), "rear_right": (-1, -1), "rear_left": (-1, 1)}


def vertical_cylinder(radius: float, x: float, y: float, z0: float, z1: float) -> trimesh.Trimesh:
    return trimesh.creation.cylinder(radius=radius, segment=[[x, y, z0], [x, y, z1]], sections=SECTIONS)


def build_parts(spec: FrameSpec) -> dict[str, trimesh.Trimesh]:
    parts = {"body": trimesh.creation.box(extents=spec.body_size)}
    for name, (sx, sy) in MOTOR_SIGNS.items():
        mx, my = sx * spec.motor_xy[0], sy * spec.motor_xy[1]
        root = np.array([sx * spec.body_size[0] * 0.3, sy * spec.body_size[1] * 0.3, spec.arm_z])
        tip = np.array([mx, my, spec.arm_z])
        parts[f"arm_{name}"] = trimesh.creation.cylinder(
            radius=spec.arm_radius, segment=[root, tip], sections=SECTIONS
        )
        parts[f"motor_{name}"] = vertical_cylinder(spec.motor_radius, mx, my, *spec.motor_z)
        parts[f"propeller_{name}"] = vertical_cylinder(spec.propeller_radius, mx, my, *spec.propeller_z)
        if spec.guard is not None:
            inner, outer, z0, z1 = spec.guard
            guard = trimesh.creation.annulus(r_min=inner, r_max=outer, height=z1 - z0, sections=SECTIONS * 2)
            guard.apply_translation([mx, my, (z0 + z1) / 2])
            parts[f"guard_{name}"] = guard
    for name, centre, extents in spec.extras:
        box = trimesh.creation.box(extents=extents)
        box.apply_translation(centre)
        parts[name] = box
    for name, part in parts.items():
        if not part.is_watertight:
            raise RuntimeError(f"part {name} is not watertight")
    return parts


def main() -> None:
    out_dir = Path(__file__).resolve().parent.parent / "models" / "drones"
    for drone, spec in SPECS.items():
        scene = trimesh.Scene()
        for name, part in build_parts(spec).items():
            scene.add_geometry(part, geom_name=name, node_name=name)
        path = out_dir / f"{drone}.obj"
        path.write_text(trimesh.exchange.obj.export_obj(scene, include_normals=False, digits=6))
        mesh = scene.to_mesh()
        print(
            f"{path}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, extents {mesh.extents.round(4)}"
        )


if __name__ == "__main__":
    main()
