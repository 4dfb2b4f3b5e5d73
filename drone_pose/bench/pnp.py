"""Side-by-side timing and accuracy of the PnP methods and OpenCV loops, as JSON-ready dicts."""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
import torch

from drone_pose.bench.pnp_problems import PnPProblems, generic_problems, pose_errors_deg_m, uava_problems
from drone_pose.bench.timing import machine_info, median_ms
from drone_pose.pnp.epnp import epnp
from drone_pose.pnp.epro import epro_pnp_loss
from drone_pose.pnp.layer import pnp_layer
from drone_pose.pnp.solver import solve_pnp

PROBLEM_SETS = {"uava_m2ed": uava_problems, "generic": generic_problems}
OPENCV_FLAGS = {"cv2_sqpnp": cv2.SOLVEPNP_SQPNP, "cv2_iterative": cv2.SOLVEPNP_ITERATIVE}


def _accuracy(R: torch.Tensor, t: torch.Tensor, problems: PnPProblems) -> dict[str, float]:
    rotation, translation = pose_errors_deg_m(R.double().cpu(), t.double().cpu(), problems.R, problems.t)
    relative = translation / problems.t.norm(dim=-1)
    return {
        "median_rotation_deg": rotation.median().item(),
        "median_translation_rel": relative.median().item(),
    }


def _opencv_poses(problems: PnPProblems, flag: int) -> tuple[torch.Tensor, torch.Tensor, Callable[[], None]]:
    x2d = problems.x2d.numpy()
    x3d = problems.x3d.numpy()
    K = problems.K.numpy()
    shared = x3d.ndim == 2

    def run() -> list[tuple[np.ndarray, np.ndarray]]:
        return [
            cv2.solvePnP(x3d if shared else x3d[b], x2d[b], K, None, flags=flag)[1:] for b in range(len(x2d))
        ]

    poses = run()
    R = torch.from_numpy(np.stack([cv2.Rodrigues(rvec)[0] for rvec, _ in poses]))
    t = torch.from_numpy(np.stack([tvec[:, 0] for _, tvec in poses]))
    return R, t, run


def benchmark_case(problems: PnPProblems, device: torch.device, dtype: torch.dtype, repeats: int) -> dict:
    """One (problem set, B, N, device) case: every method's times (ms) and accuracy."""
    x2d = problems.x2d.to(device, dtype)
    x3d = problems.x3d.to(device, dtype)
    K = problems.K.to(device, dtype)
    methods: dict[str, dict] = {}

    result = solve_pnp(x2d, x3d, K)
    methods["lm"] = {
        "forward_ms": median_ms(lambda: solve_pnp(x2d, x3d, K), device, repeats),
        "converged": result.converged.double().mean().item(),
        **_accuracy(result.R, result.t, problems),
    }
    for name, mode in (("bpnp_exact", "exact"), ("bpnp_gauss_newton", "gauss_newton")):

        def forward_backward(mode: str = mode) -> None:
            keypoints = x2d.clone().requires_grad_()
            pose = pnp_layer(keypoints, x3d, K, grad=mode)
            (pose.R.sum() + pose.t.sum()).backward()

        methods[name] = {"forward_backward_ms": median_ms(forward_backward, device, repeats)}

    def epnp_forward_backward() -> None:
        keypoints = x2d.clone().requires_grad_()
        R, t = epnp(keypoints, x3d, K)
        (R.sum() + t.sum()).backward()

    R, t = epnp(x2d, x3d, K)
    methods["epnp"] = {
        "forward_ms": median_ms(lambda: epnp(x2d, x3d, K), device, repeats),
        "forward_backward_ms": median_ms(epnp_forward_backward, device, repeats),
        **_accuracy(R, t, problems),
    }
    weights = torch.ones_like(x2d)
    R_gt, t_gt = problems.R.to(device, dtype), problems.t.to(device, dtype)

    def epro_forward_backward() -> None:
        keypoints, w = x2d.clone().requires_grad_(), weights.clone().requires_grad_()
        epro_pnp_loss(keypoints, x3d, K, w, R_gt, t_gt).backward()

    methods["epro_pnp_kl_loss"] = {"forward_backward_ms": median_ms(epro_forward_backward, device, repeats)}
    for name, flag in OPENCV_FLAGS.items():
        R, t, run = _opencv_poses(problems, flag)
        methods[name] = {
            "forward_ms": median_ms(run, torch.device("cpu"), repeats),
            **_accuracy(R, t, problems),
        }
    lm_ms, sqpnp_ms = methods["lm"]["forward_ms"], methods["cv2_sqpnp"]["forward_ms"]
    return {
        "problems": problems.name,
        "batch": int(problems.x2d.shape[0]),
        "points": int(problems.x2d.shape[1]),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "methods": methods,
        "lm_forward_speedup_vs_cv2_sqpnp_loop": sqpnp_ms / lm_ms if lm_ms > 0 else math.inf,
    }


def run_benchmark(
    batch_sizes: tuple[int, ...] = (1, 24, 1024),
    point_counts: tuple[int, ...] = (9, 20),
    problem_set: str = "uava_m2ed",
    devices: tuple[str, ...] | None = None,
    dtype: torch.dtype = torch.float32,
    noise_px: float = 1.0,
    repeats: int = 5,
    seed: int = 0,
) -> dict:
    """All cases; devices default to CPU plus CUDA when available."""
    if problem_set not in PROBLEM_SETS:
        raise ValueError(f"unknown problem set {problem_set!r}; choose from {', '.join(PROBLEM_SETS)}")
    if devices is None:
        devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    cases = []
    for device_name in devices:
        device = torch.device(device_name)
        for count in point_counts:
            for batch in batch_sizes:
                problems = PROBLEM_SETS[problem_set](batch, count, noise_px=noise_px, seed=seed)
                cases.append(benchmark_case(problems, device, dtype, repeats))
    return {
        "benchmark": "pnp",
        "machine": machine_info(),
        "noise_px": noise_px,
        "repeats": repeats,
        "cases": cases,
    }
