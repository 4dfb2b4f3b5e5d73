"""The fusion node's estimating extrinsics source without DDS: groups in, a rig estimate on its own
thread, extrinsics, TF transforms, the rig file and the diagnostics values out."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from drone_pose.fusion.rig_file import invert_rigid
from drone_pose.fusion.rig_initialisation import extrinsics_errors
from drone_pose.inference.estimator import PoseEstimate
from drone_pose.ros.frame_pairing import Frame
from drone_pose.ros.self_calibration import SelfCalibration

from ..fusion.test_rig_initialisation import flight, ground_rig, single_view_noise

CAMERAS = ("left", "right", "top")


def frame(camera: str) -> Frame:
    return Frame(np.zeros((4, 4, 3), np.uint8), np.eye(3), SimpleNamespace(frame_id=f"{camera}_optical"), 0.0)


def views(R: torch.Tensor, t: torch.Tensor, covariance: torch.Tensor, reasons: list[str]) -> PoseEstimate:
    """Single-view estimates of one group (only the fields the self-calibration reads are real)."""
    count = len(reasons)
    return PoseEstimate(
        keypoints=torch.zeros(count, 1, 2),
        confidences=torch.ones(count, 1),
        R=R,
        t=t,
        covariance=covariance,
        reprojection_rms=torch.zeros(count),
        valid=torch.tensor([reason == "" for reason in reasons]),
        reasons=reasons,
    )


@pytest.fixture
def noisy_flight():
    cam_from_rig = ground_rig()
    R, t = flight(cam_from_rig, 60, seed=5)
    R, t, covariance, _ = single_view_noise(R, t, seed=6)
    return cam_from_rig, R, t, covariance


def test_no_extrinsics_until_enough_groups_then_the_rig_of_the_flight(noisy_flight):
    cam_from_rig, R, t, covariance = noisy_flight
    estimates = []
    calibration = SelfCalibration(CAMERAS, "right", min_groups=20, on_estimate=estimates.append)
    order = [2, 0, 1]  # a group's views come in any order, by name
    names = [CAMERAS[v] for v in order]
    for b in range(19):
        calibration.add(
            names, [frame(n) for n in names], views(R[b, order], t[b, order], covariance[b, order], [""] * 3)
        )
    assert calibration.estimate_now() is None  # 19 of 20 groups
    lookup = calibration.cam_from_rig("left", frame("left"))
    assert lookup.cam_from_rig is None
    assert lookup.reason == "missing_extrinsics"
    assert calibration.report()["rig_state"] == "waiting: 19 of 20 groups with two usable views"
    assert calibration.rig() is None
    assert calibration.camera_transforms() == []
    for b in range(19, 60):  # the top camera's view is invalid from here on: still two usable views
        reasons = ["", "", "low_confidence"]
        calibration.add(CAMERAS, [frame(n) for n in CAMERAS], views(R[b], t[b], covariance[b], reasons))
    estimate = calibration.estimate_now()
    assert estimate is not None
    assert estimates == [estimate]
    assert calibration.estimate_now() is None  # no new group since
    assert calibration.rig_frame == "right_optical"
    errors = extrinsics_errors(estimate.cam_from_ref, cam_from_rig, reference=1)
    assert max(errors["rotation_deg"]) < 1.0
    assert np.nanmax(errors["position_percent"]) < 3.0
    lookup = calibration.cam_from_rig("top", frame("top"))
    np.testing.assert_allclose(lookup.cam_from_rig, estimate.cam_from_ref[2].numpy())
    wrong = Frame(np.zeros((4, 4, 3), np.uint8), np.eye(3), SimpleNamespace(frame_id="other"), 0.0)
    assert calibration.cam_from_rig("top", wrong).reason == "frame_id_mismatch"
    # TF from the rig frame (the reference's own optical frame is not repeated) and the rig file
    transforms = {child: (parent, T) for parent, child, T in calibration.camera_transforms()}
    assert set(transforms) == {"left_optical", "top_optical"}
    assert {parent for parent, _ in transforms.values()} == {"right_optical"}
    np.testing.assert_allclose(invert_rigid(transforms["left_optical"][1]), estimate.cam_from_ref[0].numpy())
    rig = calibration.rig()
    assert rig.rig_frame == "right_optical"
    assert rig.frame_ids == ("left_optical", "right_optical", "top_optical")
    report = calibration.camera_report("top")
    assert report["extrinsics_resolved"] is True
    assert 0 < float(report["extrinsics_rotation_std_deg"]) < 1.0
    assert 0 < float(report["extrinsics_position_std_m"]) < 0.1
    assert report["rig_views_usable"] == 19
    assert report["extrinsics_pair_inliers"] + report["extrinsics_pair_outliers"] == 19
    assert calibration.report()["rig_state"] == "estimated"


def test_a_named_rig_frame_is_anchored_to_the_reference_and_the_thread_estimates(noisy_flight):
    _, R, t, covariance = noisy_flight
    done = threading.Event()
    calibration = SelfCalibration(
        CAMERAS, "left", rig_frame="rig", min_groups=10, period_s=0.05, on_estimate=lambda _: done.set()
    )
    calibration.start()
    try:
        for b in range(30):
            calibration.add(CAMERAS, [frame(n) for n in CAMERAS], views(R[b], t[b], covariance[b], [""] * 3))
            time.sleep(0.002)
        assert done.wait(30.0), calibration.report()
    finally:
        calibration.stop()
    children = {child for parent, child, _ in calibration.camera_transforms() if parent == "rig"}
    assert children == {"left_optical", "right_optical", "top_optical"}  # the reference too: identity
    transforms = {child: T for _, child, T in calibration.camera_transforms()}
    np.testing.assert_allclose(transforms["left_optical"], np.eye(4), atol=1e-12)
    assert calibration.rig().rig_frame == "rig"


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match=r"rig_reference 'rear' is not one of the cameras"):
        SelfCalibration(CAMERAS, "rear")
    with pytest.raises(ValueError, match=r"rig_min_groups must be at least 3"):
        SelfCalibration(CAMERAS, "left", min_groups=2)
