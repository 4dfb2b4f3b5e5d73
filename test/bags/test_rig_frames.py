"""Multi-camera bags read without ROS: frames grouped by stamp, extrinsics from /tf_static, the rig's
ground truth, partial groups and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from drone_pose.bags import messages
from drone_pose.bags.frames import BagError
from drone_pose.bags.rig_frames import StaticTransforms, bag_cameras, read_rig_frames

from ..bag_helpers import copy_bag


def test_groups_extrinsics_and_truth_agree_with_every_cameras_ground_truth(rig_bag):
    frames = read_rig_frames(rig_bag)
    assert bag_cameras(rig_bag) == ["camera0", "camera1", "camera2"]
    assert frames.cameras == ("camera0", "camera1", "camera2")
    assert frames.frame_ids == ("camera0_optical", "camera1_optical", "camera2_optical")
    assert frames.truth_frame == "world"
    assert len(frames.groups) == 6
    rig_frame, cam_from_rig = frames.tf_extrinsics()
    assert rig_frame == "world"
    assert cam_from_rig.shape == (3, 4, 4)
    for group in frames.groups:
        assert group.present() == [0, 1, 2]
        for view, T in zip(group.views, cam_from_rig, strict=True):
            assert view["stamp"] == group.stamp
            np.testing.assert_allclose(T[:3, :3] @ group.R, view["R"], atol=1e-9)
            np.testing.assert_allclose(T[:3, :3] @ group.t + T[:3, 3], view["t"], atol=1e-9)


def test_a_camera_missing_from_some_stamps_gives_partial_groups(rig_bag, tmp_path):
    stamps = [group.stamp for group in read_rig_frames(rig_bag).groups]
    dropped = {("/camera1/image_raw", stamps[1]), ("/camera2/image_raw", stamps[4])}
    partial = copy_bag(rig_bag, tmp_path / "partial", lambda topic, stamp: (topic, stamp) not in dropped)
    frames = read_rig_frames(partial, ["camera2", "camera1"])
    assert frames.cameras == ("camera2", "camera1")
    assert [group.present() for group in frames.groups] == [[0, 1], [0], [0, 1], [0, 1], [1], [0, 1]]
    assert frames.skipped["camera1"]["no_camera_info"] == 0  # a missing image is no skipped frame


def test_missing_pieces_are_one_line_errors(rig_bag, tmp_path):
    with pytest.raises(
        BagError, match=r"no /camera7/image_raw topic; the bag's cameras: camera0, camera1, camera2"
    ):
        read_rig_frames(rig_bag, ["camera0", "camera7"])
    no_truth = copy_bag(rig_bag, tmp_path / "no_truth", lambda topic, _: topic != "/ground_truth/pose")
    with pytest.raises(BagError, match=r"no /ground_truth/pose messages"):
        read_rig_frames(no_truth)
    no_tf = copy_bag(rig_bag, tmp_path / "no_tf", lambda topic, _: topic != "/tf_static")
    frames = read_rig_frames(no_tf)  # the frames are fine; the extrinsics are not
    with pytest.raises(
        BagError, match=r"/tf_static does not connect 'world' to 'camera0_optical'.*--rig-file"
    ):
        frames.tf_extrinsics()


def test_static_transforms_compose_a_chain():
    quarter_turn = Rotation.from_euler("z", 90, degrees=True).as_matrix()  # body x is world y
    body = messages.transform_stamped(quarter_turn, np.array([1.0, 0.0, 0.0]), 0, "world", "body")
    camera = messages.transform_stamped(np.eye(3), np.array([0.0, 2.0, 0.0]), 0, "body", "cam")
    tree = StaticTransforms.of([messages.tf_message([body]), messages.tf_message([camera])])
    world_from_cam = tree.lookup("world", "cam")
    np.testing.assert_allclose(world_from_cam[:3, 3], [-1.0, 0.0, 0.0], atol=1e-12)  # body y is world -x
    np.testing.assert_allclose(tree.lookup("cam", "world") @ world_from_cam, np.eye(4), atol=1e-12)
    with pytest.raises(BagError, match="does not connect 'elsewhere' to 'cam'"):
        tree.lookup("cam", "elsewhere")


def test_a_bag_without_any_ground_truth_reads_when_truth_is_not_required(rig_bag, tmp_path):
    """A recorded flight (for rig calibration) has images, camera_info and nothing else."""
    kept = lambda topic, _: topic.endswith(("/image_raw", "/camera_info"))  # noqa: E731
    recorded = copy_bag(rig_bag, tmp_path / "recorded", kept)
    with pytest.raises(BagError, match=r"no frame of /camera0 has camera_info and ground truth"):
        read_rig_frames(recorded)
    frames = read_rig_frames(recorded, require_truth=False)
    assert frames.truth_frame == ""
    assert len(frames.groups) == 6
    assert all(group.present() == [0, 1, 2] for group in frames.groups)
    assert all(np.isnan(group.t).all() for group in frames.groups)
    assert all(view["R"] is None for group in frames.groups for view in group.views)
    assert frames.skipped["no_rig_ground_truth"] == 6
    with pytest.raises(BagError, match=r"/tf_static does not connect"):
        frames.static.lookup("camera1_optical", "camera0_optical")
