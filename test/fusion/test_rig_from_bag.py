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
