"""`drone-pose bench gmm`: what compressing one multi-camera frame's heatmaps to Gaussian mixtures costs.

One frame is V views x K keypoints of 60x80 heatmaps (the UAVA set-up: 4 cameras, 9 keypoints,
320x240 images at stride 4), fitted in one `fit_heatmap_gmm` call, for M = 1..4 components.
The heatmaps look like a trained network's (docs/metapose.md): a Gaussian peak of std 2 heatmap
px and height 0.85-1 per keypoint, a weaker second peak (0.1-0.4) on a third of them, and a smooth
background of std 0.01 around 0 (negative values are clamped away by the fit). The time does not
depend on the content (fixed iterations); the content only feeds the convergence figure: how far
(in log-likelihood of the heatmap, nats per unit of heatmap mass) the default iterations stop
from 100.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

import torch
import torch.nn.functional as F

from drone_pose.bench.timing import machine_info, wall_times_ms
from drone_pose.fusion.heatmap_gmm import (
    DEFAULT_ITERATIONS,
    SERIAL_MAX_PIXELS,
    HeatmapGMM,
    fit_heatmap_gmm,
    gmm_log_likelihood,
)
from drone_pose.nets.heatmap_codec import gaussian_targets

HEATMAP_SIZE = (60, 80)  # (H, W)
STRIDE = 4.0
REFERENCE_ITERATIONS = 100


def frame_heatmaps(frames: int, views: int, keypoints: int, seed: int = 0) -> torch.Tensor:
    """Network-like heatmaps [frames, views, keypoints, 60, 80] float32 (module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    height, width = HEATMAP_SIZE
    shape = (frames * views, keypoints)

    def uniform(low: float, high: float, *size: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*size, generator=generator)

    image_size = torch.tensor([STRIDE * width, STRIDE * height])
    visible = torch.ones(shape, dtype=torch.bool)
    margin = 4.0 * STRIDE
    main = gaussian_targets(
        margin + uniform(0.0, 1.0, *shape, 2) * (image_size - 2 * margin), visible, HEATMAP_SIZE, STRIDE, 2.0
    )
    second = gaussian_targets(uniform(0.0, 1.0, *shape, 2) * image_size, visible, HEATMAP_SIZE, STRIDE, 2.0)
    has_second = (torch.rand(shape, generator=generator) < 1.0 / 3.0).float()
    noise = torch.randn(shape[0], keypoints, height, width, generator=generator)
    background = F.avg_pool2d(noise, 5, stride=1, padding=2, count_include_pad=False)
    background = 0.01 * background / background.std()
    heatmaps = (
        uniform(0.85, 1.0, *shape)[..., None, None] * main
        + (has_second * uniform(0.1, 0.4, *shape))[..., None, None] * second
        + background
    )
    return heatmaps.reshape(frames, views, keypoints, height, width)


def heatmap_log_likelihood(gmm: HeatmapGMM, heatmaps: torch.Tensor) -> torch.Tensor:
    """sum_ij p_ij log g(x_ij) [...] of heatmaps [...,H,W] (p: max(h, 0) normalised) under their mixtures."""
    height, width = heatmaps.shape[-2:]
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=gmm.means.dtype, device=gmm.means.device),
        torch.arange(width, dtype=gmm.means.dtype, device=gmm.means.device),
        indexing="ij",
    )
    per_pixel = HeatmapGMM(
        gmm.weights[..., None, None, :],
        gmm.means[..., None, None, :, :],
        gmm.variances[..., None, None, :],
        gmm.valid,
    )
    p = heatmaps.clamp_min(0.0).to(gmm.means.dtype)
    p = p / p.sum((-2, -1), keepdim=True)
    return (p * gmm_log_likelihood(per_pixel, torch.stack((xs, ys), dim=-1))).sum((-2, -1))


def run_benchmark(
    components: tuple[int, ...] = (1, 2, 3, 4),
    views: int = 4,
    keypoints: int = 9,
    frames: int = 1,
    iterations: int = DEFAULT_ITERATIONS,
    devices: tuple[str, ...] | None = None,
    repeats: int = 100,
) -> dict[str, Any]:
    """Wall times of one fit_heatmap_gmm call on `frames` frames per device and M, with the
    convergence gap; devices default to CPU plus CUDA when available."""
    if devices is None:
        devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    heatmaps = frame_heatmaps(frames, views, keypoints)
    rows = [
        _row(heatmaps.to(device), count, iterations, repeats) for device in devices for count in components
    ]
    serial = heatmaps.numel() <= SERIAL_MAX_PIXELS
    return {
        "benchmark": "gmm",
        "heatmaps_per_call": list(heatmaps.shape[:3]),
        "heatmap_size": list(HEATMAP_SIZE),
        "iterations": iterations,
        "repeats": repeats,
        "cpu_fit_threads": 1 if serial else torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "machine": machine_info(),
        "rows": rows,
    }


def _row(heatmaps: torch.Tensor, components: int, iterations: int, repeats: int) -> dict[str, Any]:
    """Times (ms per call) and convergence gap of fitting `components` to heatmaps [...,H,W]."""
    device = heatmaps.device
    times = sorted(
        wall_times_ms(lambda: fit_heatmap_gmm(heatmaps, components, iterations), device, repeats, warm_up=3)
    )
    fit = fit_heatmap_gmm(heatmaps, components, iterations)
    reference = fit_heatmap_gmm(heatmaps, components, REFERENCE_ITERATIONS)
    gap = (heatmap_log_likelihood(reference, heatmaps) - heatmap_log_likelihood(fit, heatmaps)).cpu()
    return {
        "device": device.type,
        "components": components,
        "ms_median": statistics.median(times),
        "ms_p95": times[round(0.95 * (len(times) - 1))],
        "ms_min": times[0],
        "gap_to_100_iterations_nats_mean": float(gap.mean()),
        "gap_to_100_iterations_nats_p90": float(gap.flatten().quantile(0.9)),
        "valid": float(fit.valid.float().mean()),
    }
