"""Multi-camera evaluation: fused poses against every single view on a rendered multi-camera set.

For each group of a dataset rendered with a rig (`drone-pose synth --cameras N`), the single-view
estimator runs once over all views; the fusion (drone_pose.fusion.FusedEstimator) then fuses the
first n views for n = 1..V. Fused poses are scored in the frame of the group's first camera (the
metrics that need a camera, NPE and Proj, use it; the others do not depend on the frame) with
the same scoring path as `drone-pose eval`; single views in their own cameras. Rows: each camera
alone, the most certain single view (per group, the valid view with the smallest predicted
position spread: a choice a tracker could make), and the fusion of 1..V cameras.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import matplotlib
import numpy as np
import torch
from torch import Tensor

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from drone_pose.atomic_files import atomic_path
from drone_pose.data.shards import DatasetFormatError, read_index, read_shard
from drone_pose.drones import DroneModel, load_drone
from drone_pose.evaluation.drone_pairing import refuse_other_drone
from drone_pose.evaluation.fusion_scoring import (
    fusion_table,
    in_first_camera,
    most_certain_view,
    with_errors,
    write_fusion_documents,
)
from drone_pose.evaluation.scoring import Scores, score_estimates
from drone_pose.fusion.fused_estimator import DEFAULT_GATE_MAHALANOBIS, FusedEstimator
from drone_pose.inference.estimator import PoseEstimate, PoseEstimator
from drone_pose.nets.zoom import ZoomSettings


@dataclass(frozen=True)
class _Groups:
    """A batch of G groups of V views: images [G,V,H,W,3] uint8, K [G,V,3,3], cam_from_rig
    [G,V,4,4], true camera poses R [G,V,3,3], t [G,V,3] and keypoints [G,V,N,2] px."""

    images: np.ndarray
    K: Tensor
    cam_from_rig: Tensor
    R: Tensor
    t: Tensor
    keypoints: Tensor


def multiview_groups(
    data: str | Path, split: str, groups_per_batch: int, limit: int | None
) -> Iterator[_Groups]:
    """The groups of a multi-camera dataset split, in batches; DatasetFormatError for a dataset
    without a rig."""
    index = read_index(data)
    if "rig" not in index:
        raise DatasetFormatError(
            f"{data} is a single-camera dataset; render a multi-camera one with drone-pose synth --cameras N"
        )
    views = int(index["rig"]["cameras"])
    K = torch.tensor(index["camera"]["K"], dtype=torch.float64)
    pending: list[dict[str, Any]] = []
    seen = 0
    for entry in index["splits"].get(split, []):
        shard = read_shard(Path(data) / entry["file"])
        for first in range(0, len(shard), views):
            if limit is not None and seen >= limit:
                break
            rows = range(first, first + views)
            pending.append(
                {
                    "images": np.stack([shard.image(i) for i in rows]),
                    "cam_from_rig": shard.cam_from_rig[first : first + views],
                    "R": shard.R[first : first + views],
                    "t": shard.t[first : first + views],
                    "keypoints": shard.keypoints[first : first + views],
                }
            )
            seen += 1
            if len(pending) == groups_per_batch:
                yield _batch(pending, K)
                pending = []
    if pending:
        yield _batch(pending, K)


def _batch(groups: list[dict[str, Any]], K: Tensor) -> _Groups:
    stack = lambda key: torch.from_numpy(np.stack([g[key] for g in groups])).double()  # noqa: E731
    images = np.stack([g["images"] for g in groups])
    return _Groups(
        images,
        K.expand(*images.shape[:2], 3, 3),
        stack("cam_from_rig"),
        stack("R"),
        stack("t"),
        stack("keypoints"),
    )


def evaluate_fusion(
    checkpoint: str | Path | None,
    data: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    device: str | None = None,
    groups_per_batch: int = 8,
    limit: int | None = None,
    gate_mahalanobis: float = DEFAULT_GATE_MAHALANOBIS,
    zoom: ZoomSettings | Literal["checkpoint"] | None = "checkpoint",
    flip_test: str = "checkpoint",
) -> dict[str, Any]:
    """Scores of single views and of the fusion of 1..V cameras on a multi-camera split (`limit`
    groups at most); with `out`, fusion.md, fusion.json and fusion.png there. Returns the summary.
    checkpoint None: the shipped checkpoint of the dataset's drone."""
    index = read_index(data)
    drone_name = str(index.get("drone", ""))
    estimator = PoseEstimator.from_checkpoint(
        checkpoint, device=device, drone=drone_name or "m2ed", zoom=zoom, flip_test=flip_test
    )
    drone = load_drone(estimator.description.get("drone", {}).get("name", drone_name))
    refuse_other_drone(drone.name, drone_name or None, str(data))
    fuser = FusedEstimator(estimator, gate_mahalanobis)
    views = int(index.get("rig", {}).get("cameras", 0))
    single: list[list[PoseEstimate]] = [[] for _ in range(views)]
    fused: list[list[PoseEstimate]] = [[] for _ in range(views)]
    certain: list[PoseEstimate] = []
    chosen_views: list[Tensor] = []
    truth: list[_Groups] = []
    used, gated, fusion_ms = (
        [[] for _ in range(views)],
        [[] for _ in range(views)],
        [[] for _ in range(views)],
    )
    started = time.perf_counter()
    for groups in multiview_groups(data, split, groups_per_batch, limit):
        count = groups.images.shape[0]
        estimate = estimator.estimate(
            groups.images.reshape(-1, *groups.images.shape[2:]), groups.K.reshape(-1, 3, 3)
        )
        for v in range(views):
            single[v].append(estimate.take(torch.arange(count) * views + v))
        picked, chosen = most_certain_view(estimate, count, views)
        certain.append(picked)
        chosen_views.append(chosen)
        for n in range(1, views + 1):
            subset = (torch.arange(count)[:, None] * views + torch.arange(n)).flatten()
            result = fuser.fuse(estimate.take(subset), groups.K[:, :n], groups.cam_from_rig[:, :n])
            fused[n - 1].append(
                in_first_camera(result, groups.cam_from_rig[:, 0], estimate.take(subset[::n]))
            )
            used[n - 1].append(result.views_used.sum(1).double())
            gated[n - 1].append(result.gated.sum(1).double())
            fusion_ms[n - 1].append(result.timings_ms["fusion"] / count)
        truth.append(groups)
    elapsed = time.perf_counter() - started
    if not truth:
        raise DatasetFormatError(f"{data}: the {split} split has no groups")
    R, t, K, keypoints = (torch.cat([getattr(g, key) for g in truth]) for key in ("R", "t", "K", "keypoints"))
    sizes = torch.tensor([[truth[0].images.shape[3], truth[0].images.shape[2]]]).expand(len(R), 2)

    def score(estimate: PoseEstimate, v: int) -> Scores:
        return score_estimates(drone, estimate, R[:, v], t[:, v], K[:, v], keypoints[:, v], sizes)

    rows: list[tuple[str, dict[str, float]]] = []
    single_scores = [score(PoseEstimate.concatenate(single[v]), v) for v in range(views)]
    for v, scores in enumerate(single_scores):
        rows.append((f"camera {v} alone", with_errors(scores)))
    certain_estimate = PoseEstimate.concatenate(certain)
    certain_scores = _score_chosen(
        drone, certain_estimate, R, t, K, keypoints, sizes, torch.cat(chosen_views)
    )
    rows.append(("most certain single view", with_errors(certain_scores)))
    fused_scores = []
    for n in range(1, views + 1):
        scores = score(PoseEstimate.concatenate(fused[n - 1]), 0)
        fused_scores.append(scores)
        metrics = with_errors(scores)
        metrics["views_used"] = float(torch.cat(used[n - 1]).mean())
        metrics["views_gated"] = float(torch.cat(gated[n - 1]).mean())
        metrics["fusion_ms_per_group"] = float(np.mean(fusion_ms[n - 1]))
        rows.append((f"fused, {n} camera{'s' if n > 1 else ''}", metrics))
    miss = lambda scores: float((scores.errors.add_m > 0.05 * drone.diagonal).double().mean())  # noqa: E731
    summary: dict[str, Any] = {
        "label": f"{Path(str(estimator.description.get('path'))).name} on {Path(data).name}/{split}",
        "groups": len(R),
        "cameras": views,
        "rig": index["rig"],
        "rows": [{"label": label, **metrics} for label, metrics in rows],
        "add5_miss_single_camera0": miss(single_scores[0]),
        "add5_miss_single_mean": float(np.mean([miss(s) for s in single_scores])),
        "add5_miss_fused": miss(fused_scores[-1]),
        "seconds": round(elapsed, 2),
        "table": fusion_table(rows),
    }
    if out is not None:
        summary["files"] = _write_files(
            Path(out), summary, drone, single_scores[0], fused_scores, K[:, 0], t[:, 0]
        )
    return summary


def _score_chosen(
    drone: DroneModel,
    estimate: PoseEstimate,
    R: Tensor,
    t: Tensor,
    K: Tensor,
    keypoints: Tensor,
    sizes: Tensor,
    chosen: Tensor,
) -> Scores:
    """Scores of per-group chosen views `chosen` [G] against their own cameras' truth."""
    rows = torch.arange(len(chosen))
    return score_estimates(
        drone, estimate, R[rows, chosen], t[rows, chosen], K[rows, chosen], keypoints[rows, chosen], sizes
    )


def _write_files(
    out: Path,
    summary: dict[str, Any],
    drone: DroneModel,
    single: Scores,
    fused: list[Scores],
    K: Tensor,
    t: Tensor,
) -> dict[str, str]:
    """fusion.md, fusion.json and fusion.png (ADD2/ADD5 against cameras; ADD5 against drone size)."""
    heading = f"{summary['groups']} groups of {summary['cameras']} cameras ({summary['rig']['layout']} rig)"
    files = {**write_fusion_documents(out, summary, heading), "fusion_png": str(out / "fusion.png")}
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    cameras = np.arange(1, len(fused) + 1)
    for metric in ("ADD2", "ADD5"):
        left.plot(cameras, [s.metrics[metric] for s in fused], marker="o", label=f"fused {metric}")
        left.axhline(
            single.metrics[metric],
            linestyle="--",
            color="grey" if metric == "ADD2" else "black",
            label=f"camera 0 alone {metric}",
        )
    left.set_xlabel("cameras fused")
    left.set_ylabel("%")
    left.set_xticks(cameras)
    left.legend()
    size_px = (K[:, 0, 0] * drone.diagonal / t[:, 2]).numpy()
    edges = np.quantile(size_px, np.linspace(0, 1, 6))
    centres = 0.5 * (edges[1:] + edges[:-1])
    for label, scores in (("camera 0 alone", single), (f"fused, {len(fused)} cameras", fused[-1])):
        hit = scores.errors.add_m.numpy() <= 0.05 * drone.diagonal
        bins = np.clip(np.digitize(size_px, edges[1:-1]), 0, len(centres) - 1)
        right.plot(
            centres,
            [100.0 * hit[bins == b].mean() if (bins == b).any() else np.nan for b in range(len(centres))],
            marker="o",
            label=label,
        )
    right.set_xlabel("drone size in camera 0 (px)")
    right.set_ylabel("ADD5 %")
    right.legend()
    figure.tight_layout()
    with atomic_path(out / "fusion.png") as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    return files
