"""Evaluation reports: the papers' metric table (Markdown + JSON), per-sample CSV and plots.

Plots use matplotlib's Agg backend (files only, no display): error against distance and against
the drone's size in pixels, and the mean error per keypoint.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from drone_pose.atomic_files import atomic_open, atomic_path, write_text

METRIC_COLUMNS = ("NPE", "AD", "ACC2", "ACC5", "ADD2", "ADD5", "Proj2", "Proj5")
SIZE_COLUMNS = ("AD", "ACC2", "ACC5", "ADD2", "ADD5", "Proj2", "Proj5")


def format_metric(name: str, value: float) -> str:
    """NPE as a ratio (3 decimals), AD in degrees, the rest in percent."""
    if name == "NPE":
        return f"{value:.3f}"
    if name == "AD":
        return f"{np.degrees(value):.2f} deg"
    return f"{value:.1f}"


def markdown_table(rows: Sequence[tuple[str, dict[str, float]]]) -> str:
    """A Markdown table with one row per (label, metrics) in the papers' column order."""
    header = "| model | " + " | ".join(METRIC_COLUMNS) + " |"
    rule = "| --- |" + " --- |" * len(METRIC_COLUMNS)
    lines = [header, rule]
    for label, metrics in rows:
        cells = [format_metric(c, metrics[c]) if c in metrics else "" for c in METRIC_COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def size_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table per apparent-size bin (rows of drone_pose.geometry.metrics.summarize_by_size):
    size range, images, mean keypoint error when given, then the papers' columns."""
    header = "| drone size (px) | images | keypoint px | " + " | ".join(SIZE_COLUMNS) + " |"
    lines = [header, "| --- |" + " --- |" * (len(SIZE_COLUMNS) + 2)]
    for row in rows:
        low, high = row["size_px"]
        keypoint = f"{row['keypoint_px']:.2f}" if "keypoint_px" in row else ""
        cells = [f"{low:g}-{high:g}", str(int(row["count"])), keypoint]
        cells += [format_metric(c, row[c]) for c in SIZE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    out: str | Path,
    label: str,
    metrics: dict[str, Any],
    samples: dict[str, np.ndarray],
    keypoint_errors_px: np.ndarray,
    keypoint_names: Sequence[str],
    by_size: Sequence[dict[str, Any]] = (),
) -> dict[str, str]:
    """Write results.json, results.md, samples.csv and the plots to `out`; returns their paths.

    samples: per-sample arrays of equal length, at least distance_m, size_px, rotation_deg,
    translation_cm, proj_px; keypoint_errors_px [S,K] (NaN where a keypoint is not scored);
    by_size: the table per apparent-size bin (summarize_by_size), added to both documents.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "samples": out / "samples.csv"}
    per_keypoint = np.nanmean(keypoint_errors_px, axis=0) if len(keypoint_errors_px) else np.array([])
    document = {
        "label": label,
        "metrics": metrics,
        "per_keypoint_px": dict(zip(keypoint_names, map(float, per_keypoint), strict=False)),
        "by_size": list(by_size),
    }
    write_text(paths["json"], json.dumps(document, indent=2))
    text = f"# {label}\n\n" + markdown_table([(label, metrics)]) + _covariance_line(metrics)
    validity = validity_sentence(metrics)
    text += f"\n{validity}\n" if validity else ""
    if by_size:
        text += "\nBy the drone's size in the image (bins of about equal counts):\n\n" + size_table(by_size)
    write_text(paths["markdown"], text)
    with atomic_open(paths["samples"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(samples))
        writer.writerows(zip(*(np.asarray(v).tolist() for v in samples.values()), strict=True))
    paths.update(_plots(out, samples, per_keypoint, keypoint_names))
    return {key: str(path) for key, path in paths.items()}


def _covariance_line(metrics: dict[str, Any]) -> str:
    """The pose covariance's consistency with the errors, when measured (covariance_ratio)."""
    if "covariance_ratio" not in metrics:
        return ""
    return (
        f"\nPose covariance: median squared Mahalanobis distance / chi-square median "
        f"{metrics['covariance_ratio']:.2f} (1 when calibrated); {metrics['covariance_cover95']:.1f} % of "
        "poses inside their 95 % ellipsoid.\n"
    )


def validity_sentence(metrics: dict[str, Any]) -> str:
    """What the estimator's validity flag is worth on a set (validity_metrics), one sentence; ""
    when not measured."""
    if "valid_ACC5" not in metrics:
        return ""

    def percent(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{value:.1f} %"

    return (
        f"Valid (what `tracker_node` publishes): {100 * metrics['valid_fraction']:.1f} % of the poses; "
        f"ACC5-correct among them: {percent(metrics['valid_ACC5'])}; ACC5-correct poses marked valid: "
        f"{percent(metrics['ACC5_valid_recall'])}."
    )


def _plots(
    out: Path, samples: dict[str, np.ndarray], per_keypoint: np.ndarray, names: Sequence[str]
) -> dict[str, Path]:
    paths = {}
    for x_key, x_label, name in (
        ("distance_m", "distance to the camera (m)", "error_vs_distance"),
        ("size_px", "drone size in the image (px, model diagonal)", "error_vs_size"),
    ):
        figure, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
        x = np.asarray(samples[x_key])
        axes[0].scatter(x, samples["rotation_deg"], s=6, alpha=0.5)
        axes[0].set(xlabel=x_label, ylabel="rotation error (deg)", yscale="log")
        axes[1].scatter(x, samples["translation_cm"], s=6, alpha=0.5, color="tab:orange")
        axes[1].set(xlabel=x_label, ylabel="translation error (cm)", yscale="log")
        paths[name] = out / f"{name}.png"
        with atomic_path(paths[name]) as temporary:
            figure.savefig(temporary, dpi=100, format="png")
        plt.close(figure)
    figure, axis = plt.subplots(figsize=(8, 4), constrained_layout=True)
    axis.bar(range(len(per_keypoint)), per_keypoint)
    axis.set_xticks(range(len(per_keypoint)), list(names)[: len(per_keypoint)], rotation=45, ha="right")
    axis.set(ylabel="mean keypoint error (px)")
    paths["per_keypoint"] = out / "per_keypoint.png"
    with atomic_path(paths["per_keypoint"]) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)
    return paths
