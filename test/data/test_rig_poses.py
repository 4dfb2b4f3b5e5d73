"""Multi-camera groups (drone_pose.data.rig_poses) and `drone-pose synth --cameras N` datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from drone_pose.cli import main
from drone_pose.data.generate import generate_dataset
from drone_pose.data.poses import PoseSamplingConfig, apparent_size_px, size_range_for
from drone_pose.data.rig_poses import RigConfig, sample_rig_group
from drone_pose.data.shards import read_index, read_shard
from drone_pose.drones import load_drone
from drone_pose.geometry.camera import PinholeCamera

K = PinholeCamera.uava().K().double().numpy()


@pytest.mark.parametrize(("layout", "cameras"), [("ring", 3), ("ring", 4), ("arc", 3), ("stereo", 2)])
def test_every_view_sees_the_one_drone_pose_inside_its_image(layout, cameras):
    drone = load_drone("tello")
    low, high = size_range_for(drone, 320, PoseSamplingConfig())
    for seed in range(5):
        group = sample_rig_group(
            drone, K, 320, 240, RigConfig(cameras, layout, 0.5), np.random.default_rng(seed)
        )
        assert group.cam_from_rig.shape == (cameras, 4, 4)
        for v in range(cameras):
            T = group.cam_from_rig[v]
            np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-12)
            np.testing.assert_allclose(T[:3, :3] @ group.R, group.R_cam[v], atol=1e-12)
            np.testing.assert_allclose(T[:3, :3] @ group.t + T[:3, 3], group.t_cam[v], atol=1e-12)
            p = drone.keypoints @ group.R_cam[v].T + group.t_cam[v]
            uv = (p @ K.T)[:, :2] / p[:, 2:]
            assert (p[:, 2] > 0).all()
            assert ((uv >= 0) & (uv <= [319, 239])).all()
        size = apparent_size_px(drone, group.t_cam, K)
        if layout != "stereo":
            assert ((size >= low - 1e-9) & (size <= high + 1e-9)).all()
        centres = np.stack([-T[:3, :3].T @ T[:3, 3] for T in group.cam_from_rig])
        np.testing.assert_allclose(centres.mean(0), 0.0, atol=1e-12)  # the rig origin is their centroid
        if layout == "stereo":
            assert np.linalg.norm(centres[1] - centres[0]) == pytest.approx(0.3)
            np.testing.assert_allclose(group.R_cam[0], group.R_cam[1])


def test_ring_cameras_are_spread_around_the_drone():
    group = sample_rig_group(load_drone("m2ed"), K, 320, 240, RigConfig(4, "ring"), np.random.default_rng(3))
    # the cameras' viewing directions towards the drone, in the horizontal plane, 90 degrees apart
    directions = []
    for v in range(4):
        centre = -group.cam_from_rig[v, :3, :3].T @ group.cam_from_rig[v, :3, 3]
        towards = group.t - centre
        directions.append(np.degrees(np.arctan2(towards[1], towards[0])))
    steps = np.sort(np.mod(np.diff(np.sort(directions)), 360.0))
    assert steps.min() > 45.0  # azimuths 90 deg apart around the drone; positions shift them a little


def test_bad_rig_settings_are_refused():
    with pytest.raises(ValueError, match="stereo rig has 2 cameras"):
        RigConfig(3, "stereo")
    with pytest.raises(ValueError, match="layout must be one of"):
        RigConfig(3, "cube")
    with pytest.raises(ValueError, match="jitter"):
        RigConfig(3, "ring", jitter=2.0)


def test_synth_renders_whole_groups_with_their_extrinsics(tmp_path, capsys):
    out = tmp_path / "rig"
    arguments = ["synth", "--count", "5", "--cameras", "3", "--out", str(out), "--workers", "1"]
    arguments += ["--shard-size", "7", "--width", "160", "--height", "120", "--splits", "0.6", "0.2", "0.2"]
    assert main(arguments) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rig"]["cameras"] == 3
    index = read_index(out)
    assert index["count"] == 15
    assert index["rig"]["groups"] == 5
    groups, images = set(), 0
    for split in ("train", "val", "test"):
        for entry in index["splits"][split]:
            shard = read_shard(out / entry["file"])
            assert len(shard) % 3 == 0  # whole groups: 7 images per shard round down to 2 groups
            np.testing.assert_array_equal(shard.view, np.tile(np.arange(3), len(shard) // 3))
            np.testing.assert_array_equal(shard.index, shard.group * 3 + shard.view)
            for first in range(0, len(shard), 3):
                T = shard.cam_from_rig[first : first + 3]
                R_rig = T[0, :3, :3].T @ shard.R[first]
                t_rig = T[0, :3, :3].T @ (shard.t[first] - T[0, :3, 3])
                for v in range(3):  # one drone pose in the rig frame behind every view
                    np.testing.assert_allclose(T[v, :3, :3] @ R_rig, shard.R[first + v], atol=1e-9)
                    np.testing.assert_allclose(
                        T[v, :3, :3] @ t_rig + T[v, :3, 3], shard.t[first + v], atol=1e-9
                    )
            groups |= set(shard.group.tolist())
            images += len(shard)
    assert groups == set(range(5))
    assert images == 15
    # the same settings again: the finished dataset is refused, as for single-camera sets
    assert (
        main(
            [
                "synth",
                "--count",
                "5",
                "--cameras",
                "3",
                "--out",
                str(out),
                "--width",
                "160",
                "--height",
                "120",
            ]
        )
        == 2
    )


def test_a_multi_camera_dataset_is_deterministic_per_seed(tmp_path):
    options = {
        "seed": 7,
        "workers": 1,
        "width": 96,
        "height": 72,
        "progress": False,
        "rig": RigConfig(2, "stereo"),
    }
    first = generate_dataset("m2ed", 3, tmp_path / "a", shard_size=2, **options)
    second = generate_dataset("m2ed", 3, tmp_path / "b", shard_size=6, **options)
    a = [read_shard(tmp_path / "a" / e["file"]) for s in ("train", "val", "test") for e in first["splits"][s]]
    b = [
        read_shard(tmp_path / "b" / e["file"]) for s in ("train", "val", "test") for e in second["splits"][s]
    ]
    for key in ("R", "t", "cam_from_rig", "keypoints"):
        np.testing.assert_array_equal(
            np.concatenate([getattr(s, key) for s in a]), np.concatenate([getattr(s, key) for s in b])
        )
