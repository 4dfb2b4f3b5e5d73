"""`drone-pose eval-bag` on a multi-camera bag: the fused pose of every group, offline, against the
rig's ground truth, next to every camera alone (the shipped M2ED checkpoint)."""

from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest
import torch
from rosbags.rosbag2 import Reader

from drone_pose.bags import messages
from drone_pose.bags.rig_frames import read_rig_frames
from drone_pose.cli import main
from drone_pose.errors import UserError
from drone_pose.evaluation.fused_bag_evaluation import evaluate_fused_bag
from drone_pose.fusion.rig import rig_poses
from drone_pose.fusion.rig_file import Rig, invert_rigid, save_rig_file
from drone_pose.geometry.rotations import quaternion_xyzw_to_matrix

from ..bag_helpers import copy_bag

POSE = ("tx", "ty", "tz", "qx", "qy", "qz", "qw")


def read_rows(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def poses(rows):
    """R [S,3,3], t [S,3] of frames.csv rows."""
    values = np.array([[float(row[key]) for key in POSE] for row in rows])
    return quaternion_xyzw_to_matrix(torch.from_numpy(values[:, 3:])).numpy(), values[:, :3]


@pytest.fixture(scope="module")
def fused_report(rig_bag, tmp_path_factory):
    """The report folder of `drone-pose eval-bag BAG --out DIR` on the 3-camera bag."""
    out = tmp_path_factory.mktemp("fused_bag") / "report"
    assert main(["eval-bag", str(rig_bag), "--out", str(out), "--device", "cpu"]) == 0
    return out


def test_the_fused_pose_of_every_group_is_close_to_the_ground_truth(rig_bag, fused_report):
    summary = json.loads((fused_report / "fusion.json").read_text())
    rows = {row["label"]: row for row in summary["rows"]}
    assert set(rows) == {
        "camera0 alone", "camera1 alone", "camera2 alone", "most certain single view", "fused, 3 cameras",
    }  # fmt: skip
    fused = rows["fused, 3 cameras"]
    assert summary["groups"] == summary["complete_groups"] == 6
    assert summary["rig_frame"] == "world"
    assert fused["views_used"] > 2.5
    assert all(math.isfinite(fused[key]) for key in ("ADD2", "AD", "NPE", "covariance_ratio"))
    single = [rows[f"camera{v} alone"]["position_cm_median"] for v in range(3)]
    assert fused["position_cm_median"] < 2.0
    assert fused["position_cm_median"] <= np.median(single)
    assert "| fused, 3 cameras |" in (fused_report / "fusion.md").read_text()
    assert cv2.imread(str(fused_report / "fusion.png")) is not None
    assert json.loads((fused_report / "results.json").read_text())["metrics"]["count"] == 6

    frames = read_rows(fused_report / "frames.csv")
    truth = read_rig_frames(rig_bag).groups
    assert [int(row["stamp_ns"]) for row in frames] == [group.stamp for group in truth]
    assert all(row["views"] == "3" for row in frames)
    _, t = poses(frames)
    position_cm = 100 * np.linalg.norm(t - np.stack([group.t for group in truth]), axis=1)
    assert np.median(position_cm) < 2.0  # the pose in the world frame, as a user checks it
    assert np.all(np.isfinite([float(row["nees"]) for row in frames]))

    with Reader(fused_report / "estimates") as reader:
        connection = next(c for c in reader.connections if c.topic == "/pose")
        published = [
            messages.deserialize(raw, connection.msgtype) for _, _, raw in reader.messages([connection])
        ]
    assert len(published) == sum(row["valid"] == "1" for row in frames)
    assert {message.header.frame_id for message in published} == {"world"}


def test_batches_of_groups_give_the_poses_of_one_group_at_a_time(rig_bag, fused_report, tmp_path):
    """A fusion node fuses one group at a time: frames.csv must hold what it would publish."""
    evaluate_fused_bag(rig_bag, None, tmp_path, device="cpu", batch_size=1)
    one, batched = read_rows(tmp_path / "frames.csv"), read_rows(fused_report / "frames.csv")
    assert [row["reason"] for row in one] == [row["reason"] for row in batched]
    (R1, t1), (R8, t8) = poses(one), poses(batched)
    np.testing.assert_allclose(t1, t8, atol=1e-6)
    np.testing.assert_allclose(R1, R8, atol=1e-6)


def test_a_camera_missing_from_some_frames_gives_partial_groups(rig_bag, tmp_path):
    stamps = [group.stamp for group in read_rig_frames(rig_bag).groups]
    dropped = {
        ("/camera1/image_raw", stamps[1]),
        ("/camera1/image_raw", stamps[2]),
        ("/camera2/image_raw", stamps[4]),
    }
    partial = copy_bag(rig_bag, tmp_path / "partial", lambda topic, stamp: (topic, stamp) not in dropped)
    summary = evaluate_fused_bag(partial, None, tmp_path / "report", device="cpu")
    assert summary["groups"] == 6
    assert summary["complete_groups"] == 3
    frames = read_rows(tmp_path / "report" / "frames.csv")
    assert [int(row["views"]) for row in frames] == [3, 2, 2, 3, 2, 3]
    assert all(int(row["views_used"]) <= int(row["views"]) for row in frames)
    rows = {row["label"]: row for row in summary["rows"]}
    assert rows["camera1 alone"]["count"] == 4
    assert rows["camera2 alone"]["count"] == 5
    assert rows["fused, 3 cameras"]["count"] == 6
    assert math.isfinite(rows["fused, 3 cameras"]["position_cm_median"])


def test_a_rig_file_overrides_the_extrinsics(rig_bag, fused_report, tmp_path):
    """The same rig with camera0's optical frame as the rig frame: poses in that frame, the same drone."""
    frames = read_rig_frames(rig_bag)
    _, cam_from_world = frames.tf_extrinsics()
    cam_from_camera0 = cam_from_world @ invert_rigid(cam_from_world[0])
    rig = Rig("camera0_optical", frames.cameras, frames.frame_ids, cam_from_camera0)
    summary = evaluate_fused_bag(
        rig_bag, None, tmp_path / "report", rig_file=save_rig_file(rig, tmp_path / "rig.yaml"), device="cpu"
    )
    assert summary["rig_frame"] == "camera0_optical"
    assert summary["extrinsics"] == str(tmp_path / "rig.yaml")
    R, t = poses(read_rows(tmp_path / "report" / "frames.csv"))
    R_world, t_world = poses(read_rows(fused_report / "frames.csv"))
    world_R, world_t = cam_from_world[0, :3, :3], cam_from_world[0, :3, 3]
    R_back, t_back = rig_poses(*(torch.from_numpy(x) for x in (R, t, world_R, world_t)))
    np.testing.assert_allclose(t_back.numpy(), t_world, atol=1e-5)
    np.testing.assert_allclose(R_back.numpy(), R_world, atol=1e-5)

    lacking = Rig("world", frames.cameras[:2], frames.frame_ids[:2], cam_from_world[:2])
    with pytest.raises(UserError, match=r"no camera 'camera2' \(it lists camera0, camera1\)"):
        evaluate_fused_bag(
            rig_bag, None, tmp_path / "x", rig_file=save_rig_file(lacking, tmp_path / "two.yaml")
        )


def test_eval_bag_cli_picks_the_cameras(rig_bag, tmp_path, capsys):
    common = ["eval-bag", str(rig_bag), "--device", "cpu"]
    assert (
        main([*common, "--out", str(tmp_path / "pair"), "--cameras", "camera0,camera2", "--gate", "4"]) == 0
    )
    printed = capsys.readouterr().out
    assert "| fused, 2 cameras |" in printed
    summary = json.loads((tmp_path / "pair" / "fusion.json").read_text())
    assert summary["cameras"] == ["camera0", "camera2"]
    assert summary["gate_mahalanobis"] == 4.0

    assert main([*common, "--out", str(tmp_path / "one"), "--camera", "camera1"]) == 0
    capsys.readouterr()
    single = json.loads((tmp_path / "one" / "results.json").read_text())
    assert single["label"] == f"m2ed_hrnet_lite.pt on {rig_bag.name}/camera1"
    assert not (tmp_path / "one" / "fusion.json").exists()


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (
            ["--cameras", "camera0,camera7"],
            "no /camera7/image_raw topic; the bag's cameras: camera0, camera1, camera2",
        ),
        (
            ["--camera", "camera0", "--gate", "3"],
            "--camera evaluates one camera alone and --gate fuses several",
        ),
        (["--rig-file", "missing.yaml"], "rig file not found: missing.yaml"),
        (["--cameras", "camera0,,camera1"], "camera names separated by commas"),
    ],
)
def test_eval_bag_mistakes_are_one_line(rig_bag, tmp_path, capsys, monkeypatch, arguments, named):
    monkeypatch.chdir(tmp_path)
    try:
        status = main(["eval-bag", str(rig_bag), "--out", "report", "--device", "cpu", *arguments])
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert named in error
    assert len(error.splitlines()) == 1
    assert not (tmp_path / "report").exists()
