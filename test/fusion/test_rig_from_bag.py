"""Stage-1 rig calibration of a recorded multi-camera flight with the shipped estimator."""

from __future__ import annotations

import numpy as np
import pytest

from drone_pose.bags.rig_frames import read_rig_frames
from drone_pose.fusion.pose_averaging import AveragingConfig
from drone_pose.fusion.rig_from_bag import accumulate_groups
from drone_pose.fusion.rig_initialisation import RigAccumulator, extrinsics_errors
from drone_pose.inference.estimator import PoseEstimator


@pytest.mark.slow
def test_a_short_flight_gives_the_rig_roughly(rig_bag):
    frames = read_rig_frames(rig_bag)
    groups = list(frames.groups)
    groups[0] = type(groups[0])(groups[0].stamp, (None, *groups[0].views[1:]), groups[0].R, groups[0].t)
    accumulator = RigAccumulator(3, reference=0, config=AveragingConfig(min_inliers=2))
    seen = []
    counts = accumulate_groups(
        PoseEstimator.from_checkpoint(device="cpu"),
        groups,
        accumulator,
        batch_groups=4,
        on_batch=lambda done, acc: seen.append((done, acc.frames_seen)),
    )
    assert seen == [(4, 4), (6, 6)]
    assert counts["groups"] == 6
    assert counts["views"] == 17  # camera 0 is absent from the first group
    assert accumulator.usable_views[0] <= 5
    estimate = accumulator.estimate()
    assert estimate.resolved.all()
    errors = extrinsics_errors(estimate.cam_from_ref, frames.tf_extrinsics()[1], 0)
    # six small images: a rough rig, but the right one
    assert max(errors["rotation_deg"]) < 5.0
    assert np.nanmax(errors["position_percent"]) < 10.0


@pytest.mark.slow
def test_calibrate_rig_writes_a_rig_file_the_fusion_reads_and_prints_its_summary(rig_bag, tmp_path, capsys):
    """`drone-pose calibrate-rig` on the bag: a rig file in camera1's frame, a JSON summary with
    every camera's uncertainty and the groups used, scored against the bag's /tf_static; the same
    bag without /tf_static and ground truth gives the same rig."""
    import json

    from drone_pose.cli import main
    from drone_pose.evaluation.fused_bag_evaluation import bag_rig
    from drone_pose.fusion.rig_file import load_rig_file

    from ..bag_helpers import copy_bag

    out = tmp_path / "rig.yaml"
    arguments = ["--cameras", "camera0,camera1,camera2", "--reference", "camera1", "--device", "cpu"]
    assert main(["calibrate-rig", str(rig_bag), *arguments, "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["reference"] == "camera1"
    assert summary["groups"] == summary["groups_used"] == 6
    assert summary["groups_rejected"] == {"fewer_than_two_usable_views": 0}
    cameras = {camera["camera"]: camera for camera in summary["camera_estimates"]}
    assert cameras["camera1"]["path"] == ["camera1"]
    for name in ("camera0", "camera2"):
        assert cameras[name]["resolved"]
        assert 0 < cameras[name]["rotation_std_deg"] < 5
        assert 0 < cameras[name]["position_std_m"] < 0.2
        assert summary["vs_tf_static"][name]["rotation_error_deg"] < 5
        assert summary["vs_tf_static"][name]["position_error_percent_of_baseline"] < 10
    rig = load_rig_file(out)
    assert rig.rig_frame == "camera1_optical"
    np.testing.assert_allclose(rig.cam_from_rig[1], np.eye(4), atol=1e-12)
    # eval-bag's rig-file path accepts it (its rig frame is connected to the truth by /tf_static)
    frames = read_rig_frames(rig_bag)
    assert bag_rig(frames, out).rig_frame == "camera1_optical"
    recorded = copy_bag(
        rig_bag, tmp_path / "recorded", lambda topic, _: topic.endswith(("image_raw", "camera_info"))
    )
    again = tmp_path / "again.yaml"
    assert main(["calibrate-rig", str(recorded), *arguments, "--out", str(again)]) == 0
    assert "vs_tf_static" not in json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(load_rig_file(again).cam_from_rig, rig.cam_from_rig, atol=1e-9)


def test_calibrate_rig_refuses_an_unknown_reference_with_one_line(rig_bag, tmp_path, capsys):
    from drone_pose.cli import main

    out = tmp_path / "rig.yaml"
    assert main(["calibrate-rig", str(rig_bag), "--reference", "camera9", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "--reference 'camera9' is not one of the cameras (camera0, camera1, camera2)" in error
    assert len(error.strip().splitlines()) == 1
    assert not out.exists()
