"""Batched EPnP: exactness, agreement with OpenCV's EPnP, gradients."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from drone_pose.pnp import epnp
from drone_pose.pnp.problems import generic_problems, pose_errors_deg_m, uava_problems


def test_noise_free_problems_are_exact():
    for problems in (generic_problems(50, 9, noise_px=0.0), uava_problems(50, 9, noise_px=0.0)):
        R, t = epnp(problems.x2d, problems.x3d, problems.K)
        rotation, translation = pose_errors_deg_m(R, t, problems.R, problems.t)
        assert rotation.max() < 1e-6
        assert translation.max() < 1e-8


def test_accuracy_comparable_to_opencv_epnp():
    problems = uava_problems(600, 9, noise_px=1.0, seed=3)
    R, t = epnp(problems.x2d, problems.x3d, problems.K)
    ours, _ = pose_errors_deg_m(R, t, problems.R, problems.t)
    theirs = []
    for b in range(600):
        _, rvec, _ = cv2.solvePnP(
            problems.x3d.numpy(), problems.x2d[b].numpy(), problems.K.numpy(), None, flags=cv2.SOLVEPNP_EPNP
        )
        cos = (np.trace(cv2.Rodrigues(rvec)[0].T @ problems.R[b].numpy()) - 1) / 2
        theirs.append(math.degrees(math.acos(np.clip(cos, -1, 1))))
    assert ours.median().item() < 1.1 * np.median(theirs)


def test_candidates_and_weights():
    problems = uava_problems(10, 9, noise_px=0.0, seed=4)
    _, _, all_R, all_t = epnp(problems.x2d, problems.x3d, problems.K, return_candidates=True)
    assert all_R.shape == (10, 3, 3, 3)
    assert all_t.shape == (10, 3, 3)
    x2d = problems.x2d.clone()
    x2d[:, 0] += 25.0
    weights = torch.ones(10, 9, dtype=torch.float64)
    weights[:, 0] = 0.0
    R_w, t_w = epnp(x2d, problems.x3d, problems.K, weights)
    rotation, _ = pose_errors_deg_m(R_w, t_w, problems.R, problems.t)
    assert rotation.max() < 1e-5, "a zero weight removes the corrupted point"


def test_gradcheck():
    problems = generic_problems(2, 6, noise_px=1.0, seed=5)
    x2d = problems.x2d.clone().requires_grad_()
    x3d = problems.x3d.clone().requires_grad_()
    weights = (
        torch.rand(2, 6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    ).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, w: epnp(a, b, problems.K, w), (x2d, x3d, weights), eps=1e-6, atol=1e-5
    )
