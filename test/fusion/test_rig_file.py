"""Rig files: the documented example loads, save/load round trips, and every mistake is one line
naming the file and the key."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from drone_pose.atomic_files import is_temporary
from drone_pose.errors import UserError
from drone_pose.fusion import rig_file
from drone_pose.fusion.rig_file import Rig, RigFileError, invert_rigid, load_rig_file, save_rig_file

REPO_ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
rig_frame: rig
cameras:
  left:
    frame_id: left_optical
    rig_from_camera:
      translation: [0.0, 0.06, 0.0]
      rotation_xyzw: [-0.5, 0.5, -0.5, 0.5]
  right:
    frame_id: right_optical
    rig_from_camera:
      translation: [0, -0.06, 0]
      rotation_xyzw: [-0.5, 0.5, -0.5, 0.5]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rig.yaml"
    path.write_text(text)
    return path


def random_rig(rng: np.random.Generator, views: int, rig_frame: str = "rig") -> Rig:
    rig_from_camera = np.tile(np.eye(4), (views, 1, 1))
    rig_from_camera[:, :3, :3] = Rotation.random(views, random_state=rng).as_matrix()
    rig_from_camera[:, :3, 3] = rng.normal(scale=0.3, size=(views, 3))
    names = tuple(f"camera{v}" for v in range(views))
    return Rig(rig_frame, names, tuple(f"{n}_optical" for n in names), invert_rigid(rig_from_camera))


def test_a_rig_file_gives_cam_from_rig(tmp_path):
    rig = load_rig_file(write(tmp_path, GOOD))
    assert rig.rig_frame == "rig"
    assert rig.camera_names == ("left", "right")
    assert rig.frame_ids == ("left_optical", "right_optical")
    assert rig.cam_from_rig.shape == (2, 4, 4)
    assert rig.cam_from_rig.dtype == np.float64
    assert not rig.cam_from_rig.flags.writeable
    # optical (x right, y down, z forward) on a body-frame rig (x forward, y left, z up)
    R = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(rig.cam_from_rig[0, :3, :3], R, atol=1e-15)
    np.testing.assert_allclose(rig.cam_from_rig[0, :3, 3], [0.06, 0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(rig.cam_from_rig[1, :3, 3], [-0.06, 0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(rig.rig_from_camera()[1, :3, 3], [0.0, -0.06, 0.0], atol=1e-15)


def test_the_documented_example_loads(tmp_path):
    text = (REPO_ROOT / "docs" / "fusion.md").read_text()
    (example,) = re.findall(r"```yaml\n(rig_frame:.*?)```", text, flags=re.DOTALL)
    rig = load_rig_file(write(tmp_path, example))
    assert rig.camera_names == ("left", "right")
    module_example = re.findall(r"```yaml\n(.*?)```", rig_file.__doc__, flags=re.DOTALL)[0]
    assert load_rig_file(write(tmp_path, module_example)) == rig


@pytest.mark.parametrize("views", [1, 3, 8])
def test_save_and_load_round_trip(tmp_path, views):
    rig = random_rig(np.random.default_rng(views), views)
    path = save_rig_file(rig, tmp_path / "out" / "rig.yaml")
    loaded = load_rig_file(path)
    assert (loaded.rig_frame, loaded.camera_names, loaded.frame_ids) == (
        rig.rig_frame,
        rig.camera_names,
        rig.frame_ids,
    )
    np.testing.assert_allclose(loaded.cam_from_rig, rig.cam_from_rig, rtol=0, atol=1e-12)
    assert not [p for p in path.parent.iterdir() if is_temporary(p)]
    assert path.read_text().startswith("# drone_pose rig file")
    for q in re.findall(r"rotation_xyzw: \[(.*)\]", path.read_text()):
        assert float(q.split(",")[3]) >= 0.0


def test_the_rig_frame_may_be_a_cameras_optical_frame(tmp_path):
    rig = load_rig_file(
        write(
            tmp_path,
            GOOD.replace("rig_frame: rig", "rig_frame: left_optical")
            .replace("[0.0, 0.06, 0.0]", "[0, 0, 0]")
            .replace("[-0.5, 0.5, -0.5, 0.5]", "[0, 0, 0, 1]", 1),
        )
    )
    np.testing.assert_array_equal(rig.cam_from_rig[0], np.eye(4))
    assert load_rig_file(save_rig_file(rig, tmp_path / "again.yaml")) == rig


def test_nearly_unit_quaternions_are_normalised(tmp_path):
    rig = load_rig_file(write(tmp_path, GOOD.replace("[-0.5, 0.5, -0.5, 0.5]", "[-0.5, 0.5, -0.5, 0.5004]")))
    R = rig.cam_from_rig[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.tile(np.eye(3), (2, 1, 1)), atol=1e-15)


POSE = "{translation: [0, 0, 0], rotation_xyzw: [0, 0, 0, 1]}"
CASES = {
    "bad_yaml": ("rig_frame: [rig\n", "not valid YAML", "line"),
    "not_a_mapping": ("- rig\n", "the file must be a mapping", "rig_frame, cameras"),
    "missing_rig_frame": ("cameras: {}\n", "missing key rig_frame", "docs/fusion.md"),
    "missing_cameras": ("rig_frame: rig\n", "missing key cameras", "docs/fusion.md"),
    "unknown_key": (GOOD + "scale: 1\n", "unknown key scale", "rig_frame, cameras only"),
    "bad_rig_frame": (
        GOOD.replace("rig_frame: rig", "rig_frame: /rig"),
        "rig_frame must be a frame id",
        "'/rig'",
    ),
    "no_cameras": ("rig_frame: rig\ncameras: {}\n", "cameras must map each camera name", ""),
    "bad_camera_name": (
        f"rig_frame: rig\ncameras:\n  0left: {{frame_id: a, rig_from_camera: {POSE}}}\n",
        "camera name '0left' is not a ROS name",
        "",
    ),
    "duplicate_camera": (
        f"rig_frame: rig\ncameras:\n  a: {{frame_id: a, rig_from_camera: {POSE}}}\n"
        f"  a: {{frame_id: b, rig_from_camera: {POSE}}}\n",
        "duplicate key 'a'",
        "line 4",
    ),
    "missing_frame_id": (
        f"rig_frame: rig\ncameras:\n  a: {{rig_from_camera: {POSE}}}\n",
        "missing key cameras.a.frame_id",
        "",
    ),
    "unknown_camera_key": (
        f"rig_frame: rig\ncameras:\n  a: {{frame_id: a, fx: 1, rig_from_camera: {POSE}}}\n",
        "unknown key cameras.a.fx",
        "frame_id, rig_from_camera only",
    ),
    "bad_frame_id": (
        GOOD.replace("frame_id: left_optical", "frame_id: ''"),
        "cameras.left.frame_id must be",
        "''",
    ),
    "duplicate_frame": (
        GOOD.replace("right_optical", "left_optical"),
        "cameras.right.frame_id 'left_optical' is also cameras.left's",
        "own optical frame",
    ),
    "missing_translation": (
        "rig_frame: rig\ncameras:\n  a: {frame_id: a, rig_from_camera: {rotation_xyzw: [0, 0, 0, 1]}}\n",
        "missing key cameras.a.rig_from_camera.translation",
        "",
    ),
    "pose_not_a_mapping": (
        "rig_frame: rig\ncameras:\n  a: {frame_id: a, rig_from_camera: [0, 0, 0]}\n",
        "cameras.a.rig_from_camera must be a mapping with keys translation, rotation_xyzw",
        "",
    ),
    "short_translation": (
        GOOD.replace("[0.0, 0.06, 0.0]", "[0.0, 0.06]"),
        "cameras.left.rig_from_camera.translation must be a list of 3 numbers (metres)",
        "",
    ),
    "text_number": (
        GOOD.replace("[0.0, 0.06, 0.0]", "[0.0, 6e-2, 0.0]"),
        "cameras.left.rig_from_camera.translation must be a list of 3 numbers",
        "write 1.0e-3",
    ),
    "bool_in_translation": (GOOD.replace("[0.0, 0.06, 0.0]", "[0.0, true, 0.0]"), "3 numbers", ""),
    "long_quaternion": (
        GOOD.replace("[-0.5, 0.5, -0.5, 0.5]", "[0, 0, 0, 0, 1]", 1),
        "cameras.left.rig_from_camera.rotation_xyzw must be a list of 4 numbers",
        "",
    ),
    "non_finite": (
        GOOD.replace("[0, -0.06, 0]", "[0, .nan, 0]"),
        "cameras.right.rig_from_camera.translation must be finite",
        "",
    ),
    "infinite_quaternion": (
        GOOD.replace("[-0.5, 0.5, -0.5, 0.5]", "[-.inf, 0.5, -0.5, 0.5]", 1),
        "rotation_xyzw must be finite",
        "",
    ),
    "zero_quaternion": (
        GOOD.replace("[-0.5, 0.5, -0.5, 0.5]", "[0, 0, 0, 0]", 1),
        "cameras.left.rig_from_camera.rotation_xyzw is zero",
        "unit quaternion",
    ),
    "not_unit_quaternion": (
        GOOD.replace("[-0.5, 0.5, -0.5, 0.5]", "[-0.5, 0.5, -0.5, 0.6]", 1),
        "cameras.left.rig_from_camera.rotation_xyzw has norm 1.05357, not 1",
        "within 0.001",
    ),
    "rig_frame_camera_not_identity": (
        GOOD.replace("rig_frame: rig", "rig_frame: right_optical"),
        "cameras.right.frame_id is the rig_frame 'right_optical'",
        "must be the identity",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_every_mistake_is_one_line_naming_the_file_and_key(tmp_path, case):
    text, *expected = CASES[case]
    path = write(tmp_path, text)
    with pytest.raises(RigFileError) as error:
        load_rig_file(path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    for part in expected:
        assert part in message, (part, message)
    assert isinstance(error.value, UserError)


def test_a_missing_or_unreadable_file_is_one_line(tmp_path):
    with pytest.raises(RigFileError, match=r"^rig file not found: .*nothing\.yaml; pass the path") as error:
        load_rig_file(tmp_path / "nothing.yaml")
    assert "\n" not in str(error.value)
    with pytest.raises(RigFileError, match="cannot read the rig file") as error:
        load_rig_file(tmp_path)
    assert "\n" not in str(error.value)


def test_a_rig_checks_its_fields():
    T = np.tile(np.eye(4), (2, 1, 1))
    with pytest.raises(ValueError, match="V >= 1 camera names"):
        Rig("rig", ("a",), ("a", "b"), T)
    with pytest.raises(ValueError, match="distinct"):
        Rig("rig", ("a", "a"), ("a", "b"), T)
    with pytest.raises(ValueError, match="leading '/'"):
        Rig("/rig", ("a", "b"), ("a", "b"), T)
    scaled = T.copy()
    scaled[1, :3, :3] *= 2
    with pytest.raises(ValueError, match="rigid"):
        Rig("rig", ("a", "b"), ("a", "b"), scaled)
    reflected = T.copy()
    reflected[0, 0, 0] = -1
    with pytest.raises(ValueError, match="rigid"):
        Rig("rig", ("a", "b"), ("a", "b"), reflected)
    rig = Rig("rig", ["a", "b"], ["a", "b"], T)
    assert rig.camera_names == ("a", "b")
    assert rig != Rig("rig", ("a", "b"), ("a", "c"), T)
