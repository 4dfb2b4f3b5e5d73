"""Built-in drone models and clear errors for broken model files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import trimesh

from drone_pose.drones import DroneModelError, available_drones, load_drone

EXPECTED = {"m2ed": 0.354, "tello": 0.2195}


def test_builtin_drones_are_listed():
    assert set(EXPECTED) <= set(available_drones())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_drone_geometry(name):
    drone = load_drone(name)
    assert drone.name == name
    assert drone.keypoints.shape == (9, 3)
    assert drone.keypoint_names[0] == "centroid"
    np.testing.assert_allclose(drone.keypoints[0], 0.0)
    assert drone.diagonal == EXPECTED[name]
    assert drone.vertices.shape[1:] == (3,)
    assert drone.faces.shape[1:] == (3,)
    assert drone.faces.max() < len(drone.vertices)
    mesh = trimesh.Trimesh(drone.vertices, drone.faces, process=False)
    assert mesh.is_watertight, "the mesh must be a closed surface"
    for part in ("body", "arm_", "motor_", "propeller_"):
        assert drone.part_faces(part).any(), f"no {part} in the mesh"
    # Documented size: the extents of the mesh without propeller discs.
    frame = drone.vertices[np.unique(drone.faces[~drone.part_faces("propeller")])]
    np.testing.assert_allclose(frame.max(0) - frame.min(0), drone.dimensions, rtol=0.03)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_keypoints_sit_on_the_motors(name):
    """Motor keypoints lie on the top and bottom caps of their motor cylinders."""
    drone = load_drone(name)
    for index, keypoint_name in enumerate(drone.keypoint_names[1:], start=1):
        corner = keypoint_name.removesuffix("_top").removesuffix("_base").removeprefix("motor_")
        motor = drone.vertices[np.unique(drone.faces[drone.part_faces(f"motor_{corner}")])]
        centre_xy = (motor.min(0)[:2] + motor.max(0)[:2]) / 2
        np.testing.assert_allclose(drone.keypoints[index, :2], centre_xy, atol=1e-4)
        cap_z = motor[:, 2].max() if keypoint_name.endswith("_top") else motor[:, 2].min()
        assert drone.keypoints[index, 2] == pytest.approx(cap_z, abs=1e-6)


def test_m2ed_diagonal_is_the_motor_diagonal():
    drone = load_drone("m2ed")
    tops = drone.keypoints[1:5]
    assert np.linalg.norm(tops[0] - tops[2]) == pytest.approx(0.354, abs=5e-4)


def test_unknown_drone_names_the_choices():
    with pytest.raises(DroneModelError, match=r"unknown drone 'falcon'.*m2ed, tello"):
        load_drone("falcon")


@pytest.fixture
def drone_copy(tmp_path):
    """A writable copy of the m2ed model files."""
    source = load_drone("m2ed").source
    shutil.copy(source, tmp_path / "custom.yaml")
    shutil.copy(source.parent / "m2ed.obj", tmp_path / "m2ed.obj")
    return tmp_path / "custom.yaml"


def test_a_drone_file_loads_by_path(drone_copy):
    assert load_drone(drone_copy).name == "m2ed"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("diagonal_m: 0.354", "diagonal_m: -1", r"diagonal_m must be a positive length"),
        ("diagonal_m: 0.354", "diagonal: 0.354", r"missing key.*diagonal_m"),
        ("name: m2ed", "name: m2ed\ncolour: red", r"unknown key.*colour"),
        ("[0.0, 0.0, 0.0]", "[0.0, 0.0]", r"keypoint 'centroid' must be"),
        ("[0.0, 0.0, 0.0]", "[0.0, .nan, 0.0]", r"keypoints must be finite"),
        ("mesh: m2ed.obj", "mesh: missing.obj", r"mesh file not found"),
        ("name: m2ed", "name: [m2ed", r"not valid YAML"),
    ],
)
def test_malformed_drone_files_name_the_problem(drone_copy, old, new, message):
    text = drone_copy.read_text()
    assert old in text
    drone_copy.write_text(text.replace(old, new, 1))
    with pytest.raises(DroneModelError, match=message):
        load_drone(drone_copy)


def test_corrupt_mesh_is_reported(drone_copy):
    (drone_copy.parent / "m2ed.obj").write_text("o body\nv 0 0 0\nv 1 0 0\nf 1 2 7\n")
    with pytest.raises(DroneModelError, match=r"m2ed\.obj: cannot read mesh"):
        load_drone(drone_copy)


def test_open_mesh_is_reported(drone_copy):
    (drone_copy.parent / "m2ed.obj").write_text("o body\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(DroneModelError, match="not a closed surface"):
        load_drone(drone_copy)
