"""Pieces shared by the multi-camera evaluations (`drone-pose eval` on a multi-camera dataset,
`drone-pose eval-bag` on a multi-camera bag): the rows' extra figures and their table, the most
certain single view of a group, fused poses moved into a camera to be scored there, and the
fusion.md / fusion.json documents.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from drone_pose.atomic_files import write_text
from drone_pose.evaluation.reports import markdown_table
from drone_pose.evaluation.scoring import Scores
from drone_pose.fusion.fused_estimator import FusedEstimate
from drone_pose.fusion.rig import camera_poses, split_extrinsics, step_map
from drone_pose.inference.estimator import PoseEstimate, position_std


def fusion_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    """The papers' table of the rows, then their extra_table."""
    return markdown_table(rows) + "\n" + extra_table(rows)


def with_errors(scores: Scores) -> dict[str, float]:
    """The papers' metrics plus median position (cm) and rotation (deg) errors and NEES ratio."""
    metrics = dict(scores.metrics)
    metrics["position_cm_median"] = float(np.median(scores.samples["translation_cm"]))
    metrics["rotation_deg_median"] = float(np.median(scores.samples["rotation_deg"]))
    return metrics


def extra_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    """Position/rotation medians, covariance consistency, validity and fusion figures per row."""
    columns = (
        ("position_cm_median", "position cm (median)", "{:.2f}"),
        ("rotation_deg_median", "rotation deg (median)", "{:.2f}"),
        ("covariance_ratio", "NEES / chi2_6 median", "{:.2f}"),
        ("valid_fraction", "valid %", "{:.1f}"),
        ("views_used", "views used", "{:.2f}"),
        ("views_gated", "views gated", "{:.3f}"),
        ("fusion_ms_per_group", "fusion ms/group", "{:.1f}"),
    )
    lines = [
        "| | " + " | ".join(title for _, title, _ in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for label, metrics in rows:
        cells = []
        for key, _, pattern in columns:
            value = metrics.get(key)
            if value is not None and key == "valid_fraction":
                value = 100.0 * value
            cells.append("" if value is None else pattern.format(value))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def most_certain_view(estimate: PoseEstimate, groups: int, views: int) -> tuple[PoseEstimate, Tensor]:
    """Per group, the valid view with the smallest predicted position spread (view 0 where none is
    valid): its estimates (G images) and the chosen view numbers [G]."""
    spread = position_std(estimate.covariance).view(groups, views)
    valid = estimate.valid.view(groups, views)
    score = torch.where(valid & torch.isfinite(spread), spread, torch.full_like(spread, torch.inf))
    chosen = torch.where(valid.any(1), score.argmin(1), torch.zeros(groups, dtype=torch.int64))
    return estimate.take(torch.arange(groups) * views + chosen), chosen


def in_first_camera(fused: FusedEstimate, cam_from_rig: Tensor, first_view: PoseEstimate) -> PoseEstimate:
    """Fused poses of G groups as the first camera sees them (cam_from_rig [G,4,4]), as a
    PoseEstimate with that view's keypoints, the covariance in camera axes and the fused validity."""
    cam_R, cam_t = split_extrinsics(cam_from_rig.double())
    R, t = camera_poses(fused.R, fused.t, cam_R[:, None], cam_t[:, None])
    A = step_map(cam_R)
    return PoseEstimate(
        keypoints=first_view.keypoints,
        confidences=first_view.confidences,
        R=R[:, 0],
        t=t[:, 0],
        covariance=A @ fused.covariance @ A.transpose(-1, -2),
        reprojection_rms=fused.reprojection_rms,
        valid=fused.valid,
        reasons=fused.reasons,
        zoomed=first_view.zoomed,
    )


def write_fusion_documents(out: Path, summary: dict[str, Any], heading: str) -> dict[str, str]:
    """fusion.md (label, heading and the summary's table) and fusion.json (the summary without its
    table) in `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "fusion.md", f"# {summary['label']}\n\n{heading}\n\n{summary['table']}")
    write_text(out / "fusion.json", json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=2))
    return {"fusion_md": str(out / "fusion.md"), "fusion_json": str(out / "fusion.json")}
