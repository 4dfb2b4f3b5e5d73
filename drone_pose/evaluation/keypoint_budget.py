"""`drone-pose keypoint-budget`: the papers' metrics that ground-truth keypoints plus Gaussian noise of
a given std reach through the estimator's PnP, on a dataset split.

It answers "how accurate must the keypoint network be for this drone, camera and distance range?"
before any training: a network whose keypoint error exceeds the noise level at which a target is
missed is unlikely to meet it (its errors are not Gaussian, so this is a guide, not a bound).
Noise is i.i.d. per image axis (std sigma px), so the mean keypoint distance error is about
1.25 sigma (sigma * sqrt(pi / 2)).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from drone_pose.atomic_files import write_text
from drone_pose.data.dataset import ShardDataset
from drone_pose.drones import load_drone
from drone_pose.errors import UserError
from drone_pose.evaluation.reports import METRIC_COLUMNS, format_metric
from drone_pose.geometry.metrics import pose_errors, summarize_errors
from drone_pose.inference.thresholds import EstimatorThresholds
from drone_pose.pnp import solve_pnp

DEFAULT_SIGMAS_PX = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)


def keypoint_noise_table(
    keypoints: Tensor,
    K: Tensor,
    R: Tensor,
    t: Tensor,
    keypoints_3d: Tensor,
    diagonal_m: float,
    sigmas_px: Sequence[float] = DEFAULT_SIGMAS_PX,
    seed: int = 0,
) -> list[dict[str, float]]:
    """One row per noise std: sigma_px, keypoint_px (mean distance error) and the papers' metrics.

    Ground truth: keypoints [B,J,2] px, K [3,3] or [B,3,3], R [B,3,3], t [B,3] metres (camera <-
    drone); keypoints_3d [J,3] metres in the drone frame. The PnP is the estimator's (Huber-robust,
    all keypoints weighted equally). The same noise draw, scaled, serves every sigma.
    """
    if any(not (s >= 0 and np.isfinite(s)) for s in sigmas_px):
        raise UserError(f"noise stds must be finite and >= 0 px, got {list(sigmas_px)}")
    if keypoints.shape[0] == 0:
        raise UserError("the dataset split is empty; pick another --split or a larger --limit")
    keypoints, K, R, t, x3d = (x.double() for x in (keypoints, K, R, t, keypoints_3d))
    if x3d.shape != (keypoints.shape[1], 3):
        raise ValueError(f"keypoints_3d must have shape [{keypoints.shape[1]}, 3], got {list(x3d.shape)}")
    unit_noise = torch.randn(
        keypoints.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    huber = EstimatorThresholds().huber_px
    rows = []
    for sigma in sigmas_px:
        noisy = keypoints + sigma * unit_noise
        result = solve_pnp(noisy, x3d, K, huber=huber)
        metrics = summarize_errors(pose_errors(result.R, result.t, R, t, x3d, K), diagonal_m)
        rows.append(
            {
                "sigma_px": float(sigma),
                "keypoint_px": (noisy - keypoints).norm(dim=-1).mean().item(),
                **metrics,
            }
        )
    return rows


def budget_markdown(rows: list[dict[str, float]]) -> str:
    """The rows as a Markdown table: sigma, mean keypoint error, then the papers' columns."""
    header = "| noise std px | keypoint px | " + " | ".join(METRIC_COLUMNS) + " |"
    lines = [header, "| --- | --- |" + " --- |" * len(METRIC_COLUMNS)]
    for row in rows:
        cells = [format_metric(c, row[c]) for c in METRIC_COLUMNS]
        lines.append(f"| {row['sigma_px']:g} | {row['keypoint_px']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def keypoint_budget(
    data: str,
    split: str = "test",
    sigmas_px: Sequence[float] | None = None,
    limit: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """The noise table for a `drone-pose synth` folder, its drone read from the folder's index;
    with `out`, also written there as JSON (without the Markdown table)."""
    sigmas_px = DEFAULT_SIGMAS_PX if sigmas_px is None else tuple(sigmas_px)
    dataset = ShardDataset(data, split)
    drone = load_drone(dataset.drone)
    labels = {key: torch.from_numpy(value[:limit]) for key, value in dataset.labels().items()}
    count = labels["keypoints"].shape[0]
    K = torch.from_numpy(dataset.K).expand(count, 3, 3)
    x3d = drone.keypoints_tensor(dtype=torch.float64)
    rows = keypoint_noise_table(
        labels["keypoints"], K, labels["R"], labels["t"], x3d, drone.diagonal, sigmas_px, seed
    )
    summary = {
        "data": str(data),
        "split": split,
        "drone": drone.name,
        "count": count,
        "seed": seed,
        "rows": rows,
    }
    if out is not None:
        write_text(out, json.dumps(summary, indent=2) + "\n")
    return {**summary, "table": budget_markdown(rows)}
