"""Batched EPnP: exactness, agreement with OpenCV's EPnP, gradients."""

from __future__ import annotations

import importlib
import math

import cv2
import numpy as np
import torch

from drone_pose.bench.pnp_problems import generic_problems, pose_errors_deg_m, uava_problems
from drone_pose.geometry.camera import project_points
from drone_pose.pnp import epnp
from drone_pose.pnp.epnp import epnp_start
from drone_pose.pnp.projection import broadcast_inputs

# the module (drone_pose.pnp exports the function of the same name)
epnp_module = importlib.import_module("drone_pose.pnp.epnp")


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


def test_solver_start_is_nearly_as_accurate_as_epnp():
    """epnp_start (the solver's cheap start) against EPnP's kernel-dimension-4 pose.

    Shared (uava) and per-sample (generic) object models.
    """
    for problems in (uava_problems(400, 9, seed=6), generic_problems(400, 9, seed=6)):
        x2d, x3d, K, weights = broadcast_inputs(problems.x2d, problems.x3d, problems.K, None)
        reference, _ = pose_errors_deg_m(
            *epnp(x2d, x3d, K, weights, all_candidates=False, beta_steps=2), problems.R, problems.t
        )
        rotation, translation = pose_errors_deg_m(*epnp_start(x2d, x3d, K, weights), problems.R, problems.t)
        assert rotation.median() < 1.15 * reference.median(), problems.name  # uava 1.01x, generic 1.09x
        assert torch.linalg.det(epnp_start(x2d, x3d, K, weights)[0]).sub(1).abs().max() < 1e-9
        pixels = project_points(problems.x3d, problems.R, problems.t, problems.K)[0]
        point_weights = torch.rand(400, 9, dtype=x2d.dtype, generator=torch.Generator().manual_seed(0)) + 0.5
        exact = broadcast_inputs(pixels, problems.x3d, problems.K, point_weights)
        rotation, translation = pose_errors_deg_m(*epnp_start(*exact), problems.R, problems.t)
        assert rotation.max() < 1e-6, "noise-free, weighted: exact"
        assert translation.max() < 1e-8


def test_shared_schur_system_and_inverse_iteration_agree_with_the_general_forms():
    problems = uava_problems(64, 9, noise_px=1.0, seed=7)
    x2d, x3d, K, weights = broadcast_inputs(problems.x2d, problems.x3d, problems.K, None)
    _, alphas = epnp_module.control_points_and_alphas(x3d, weights.mean(-1))
    x = (x2d[..., 0] - K[:, None, 0, 2]) / K[:, None, 0, 0]
    y = (x2d[..., 1] - K[:, None, 1, 2]) / K[:, None, 1, 1]
    general = epnp_module._schur_system(alphas, x, y, weights)
    shared = epnp_module._shared_schur_system(alphas[0], x, y)
    for a, b in zip(general, shared, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9 * a.abs().max().item())
    vector = epnp_module._smallest_eigenvector(general[0])
    reference = torch.linalg.eigh(general[0])[1][..., 0]
    assert ((vector * reference).sum(-1).abs() - 1).abs().max() < 1e-9
    basis = epnp_module._householder_basis(vector)
    identity = torch.eye(4, dtype=basis.dtype).expand(64, 4, 4)
    torch.testing.assert_close(basis.transpose(-1, -2) @ basis, identity)
    assert ((basis[..., 0] * vector).sum(-1).abs() - 1).abs().max() < 1e-12
