"""Pose-estimation metrics of the papers, batched in torch.

Single-view metrics (the reproduction study, papers 000/001), for estimated and ground-truth poses
camera<-drone (R [B,3,3], t [B,3] metres):
- NPE: normalised position error ||t_gt - t_pred|| / ||t_gt||.
- AD: angular distance, the angle of R_pred^T R_gt in radians.
- ACC_k: rotation error < k degrees and translation error < k centimetres.
- ADD_k: mean distance between the model points under the two poses < k % of the model diagonal.
- Proj_k: mean pixel distance between the model points projected with the two poses < k pixels.
Multi-view metrics (MetaPose, paper 004): PMPJPE and NMPJPE. Silhouette metrics (Palazzi et al.,
paper 002): silhouette IoU and the median viewpoint error.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields

import roma
import torch
from torch import Tensor

from drone_pose.geometry.camera import project_points, transform_points, validate_intrinsics
from drone_pose.geometry.rotations import geodesic_angle, rotation_error_mask

PAPER_THRESHOLDS = (2, 5)


def _sample_list(mask: Tensor, limit: int = 8) -> str:
    indices = mask.nonzero().flatten().tolist()
    shown = ", ".join(str(i) for i in indices[:limit])
    return f"[{shown}{', ...' if len(indices) > limit else ''}]"


def check_poses(R: Tensor, t: Tensor, name: str) -> None:
    """Raise ValueError unless R [B,3,3] and t [B,3] are finite poses with proper rotations."""
    if R.ndim != 3 or R.shape[-2:] != (3, 3):
        raise ValueError(f"R_{name} must have shape [B, 3, 3], got {list(R.shape)}")
    if t.ndim != 2 or t.shape[-1] != 3 or t.shape[0] != R.shape[0]:
        raise ValueError(f"t_{name} must have shape [B, 3] with B = {R.shape[0]}, got {list(t.shape)}")
    if R.shape[0] == 0:
        raise ValueError(f"{name} poses: empty batch")
    bad_t = ~torch.isfinite(t).all(-1)
    if bad_t.any():
        raise ValueError(f"t_{name} is non-finite at samples {_sample_list(bad_t)}")
    bad_R = rotation_error_mask(R)
    if bad_R.any():
        raise ValueError(f"R_{name} is not a finite proper rotation at samples {_sample_list(bad_R)}")


def _model_points_for(model_points: Tensor, batch: int) -> Tensor:
    if model_points.ndim == 2:
        model_points = model_points.unsqueeze(0)
    if model_points.ndim != 3 or model_points.shape[-1] != 3 or model_points.shape[0] not in (1, batch):
        raise ValueError(f"model_points must have shape [N, 3] or [B, N, 3], got {list(model_points.shape)}")
    if model_points.shape[1] == 0 or not torch.isfinite(model_points).all():
        raise ValueError("model_points must be a non-empty set of finite points")
    return model_points


def translation_error(t_pred: Tensor, t_gt: Tensor) -> Tensor:
    """Euclidean translation error [B] in metres."""
    return (t_pred - t_gt).norm(dim=-1)


def normalized_position_error(t_pred: Tensor, t_gt: Tensor) -> Tensor:
    """NPE [B] = ||t_gt - t_pred|| / ||t_gt|| (dimensionless). Raises for ||t_gt|| = 0."""
    gt_norm = t_gt.norm(dim=-1)
    if (gt_norm <= 0).any():
        raise ValueError(
            f"NPE is undefined for a zero ground-truth translation (samples {_sample_list(gt_norm <= 0)})"
        )
    return translation_error(t_pred, t_gt) / gt_norm


def angular_distance(R_pred: Tensor, R_gt: Tensor) -> Tensor:
    """AD [B]: angle of R_pred^T R_gt in radians, in [0, pi]."""
    return geodesic_angle(R_pred, R_gt)


def average_distance(
    R_pred: Tensor, t_pred: Tensor, R_gt: Tensor, t_gt: Tensor, model_points: Tensor
) -> Tensor:
    """ADD distance [B] in metres: mean over model points [N,3] or [B,N,3] of ||p_pred - p_gt||."""
    points = _model_points_for(model_points, R_pred.shape[0])
    under_pred = transform_points(points, R_pred, t_pred)
    under_gt = transform_points(points, R_gt, t_gt)
    return (under_pred - under_gt).norm(dim=-1).mean(dim=-1)


def reprojection_distance(
    R_pred: Tensor, t_pred: Tensor, R_gt: Tensor, t_gt: Tensor, model_points: Tensor, K: Tensor
) -> Tensor:
    """Proj distance [B] in pixels: mean 2D distance of the model points projected with both poses.

    A predicted pose that puts a model point at or behind the camera plane scores +inf; a ground
    truth that does so is rejected with ValueError.
    """
    validate_intrinsics(K)
    points = _model_points_for(model_points, R_pred.shape[0])
    uv_pred, depth_pred = project_points(points, R_pred, t_pred, K)
    uv_gt, depth_gt = project_points(points, R_gt, t_gt, K)
    behind_gt = (depth_gt <= 0).any(-1)
    if behind_gt.any():
        raise ValueError(
            f"ground-truth pose puts model points at or behind the camera (samples {_sample_list(behind_gt)})"
        )
    distance = (uv_pred - uv_gt).norm(dim=-1).mean(dim=-1)
    return torch.where((depth_pred <= 0).any(-1), torch.full_like(distance, math.inf), distance)


@dataclass(frozen=True)
class PoseErrors:
    """Per-sample errors of a batch of B pose estimates; every field is a tensor [B]."""

    translation_m: Tensor
    npe: Tensor
    rotation_rad: Tensor
    add_m: Tensor
    proj_px: Tensor

    def accuracy(self, k: float) -> Tensor:
        """ACC_k [B] bool: rotation error < k degrees and translation error < k centimetres."""
        return (torch.rad2deg(self.rotation_rad) < k) & (self.translation_m * 100.0 < k)

    def add_correct(self, k: float, diagonal: float) -> Tensor:
        """ADD_k [B] bool: ADD distance < k % of the model diagonal (metres)."""
        return self.add_m < (k / 100.0) * diagonal

    def proj_correct(self, k: float) -> Tensor:
        """Proj_k [B] bool: mean reprojection distance < k pixels."""
        return self.proj_px < k

    def select(self, mask: Tensor) -> PoseErrors:
        """The errors of the samples where mask [B] bool is True."""
        return PoseErrors(*(getattr(self, f.name)[mask] for f in fields(self)))


def pose_errors(
    R_pred: Tensor, t_pred: Tensor, R_gt: Tensor, t_gt: Tensor, model_points: Tensor, K: Tensor
) -> PoseErrors:
    """Per-sample errors of predicted against ground-truth poses (camera<-drone).

    Shapes: R [B,3,3], t [B,3] metres, model_points [N,3] or [B,N,3] metres in the drone frame,
    K [3,3] or [B,3,3]. Raises ValueError for non-finite or malformed poses, naming the samples.
    """
    check_poses(R_pred, t_pred, "pred")
    check_poses(R_gt, t_gt, "gt")
    if R_pred.shape[0] != R_gt.shape[0]:
        raise ValueError(
            f"batch sizes differ: {R_pred.shape[0]} predicted vs {R_gt.shape[0]} ground-truth poses"
        )
    return PoseErrors(
        translation_m=translation_error(t_pred, t_gt),
        npe=normalized_position_error(t_pred, t_gt),
        rotation_rad=angular_distance(R_pred, R_gt),
        add_m=average_distance(R_pred, t_pred, R_gt, t_gt, model_points),
        proj_px=reprojection_distance(R_pred, t_pred, R_gt, t_gt, model_points, K),
    )


def summarize_errors(
    errors: PoseErrors, diagonal: float, thresholds: tuple[float, ...] = PAPER_THRESHOLDS
) -> dict[str, float]:
    """The papers' table row: mean NPE, mean AD (radians), ACC_k, ADD_k and Proj_k in percent."""
    if not (diagonal > 0 and math.isfinite(diagonal)):
        raise ValueError(f"model diagonal must be a positive length in metres, got {diagonal}")
    table = {"NPE": errors.npe.mean().item(), "AD": errors.rotation_rad.mean().item()}
    for name, correct in (
        ("ACC", errors.accuracy),
        ("ADD", lambda k: errors.add_correct(k, diagonal)),
        ("Proj", errors.proj_correct),
    ):
        for k in thresholds:
            table[f"{name}{k:g}"] = 100.0 * correct(k).double().mean().item()
    table["count"] = float(errors.npe.shape[0])
    return table


def size_bin_edges(size_px: Tensor, bins: int = 5) -> list[float]:
    """Edges (pixels) of at most `bins` bins of apparent drone size [B] holding about equal numbers of
    samples: the quantiles rounded to whole pixels, the outer edges rounded outwards, repeats dropped."""
    if bins < 1 or size_px.numel() == 0 or not torch.isfinite(size_px).all():
        raise ValueError("size bins need bins >= 1 and a non-empty set of finite sizes")
    sizes = size_px.double()
    low, high = math.floor(sizes.min().item()), math.ceil(sizes.max().item())
    inner = torch.quantile(sizes, torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1]).round()
    return sorted({float(low), *(e for e in inner.tolist() if low < e < high), float(max(high, low + 1))})


def size_bins(size_px: Tensor, bins: int = 5) -> list[tuple[float, float, Tensor]]:
    """(low, high, inside [B] bool) per non-empty bin of size_bin_edges: low <= size < high, the
    last bin also holding its upper edge."""
    edges = size_bin_edges(size_px, bins)
    last = len(edges) - 2
    result = []
    for i, (low, high) in enumerate(itertools.pairwise(edges)):
        inside = (size_px >= low) & ((size_px < high) if i < last else (size_px <= high))
        if inside.any():
            result.append((low, high, inside))
    return result


def summarize_by_size(
    errors: PoseErrors,
    size_px: Tensor,
    diagonal: float,
    bins: int = 5,
    keypoint_errors_px: Tensor | None = None,
) -> list[dict[str, float | list[float]]]:
    """The papers' table row per apparent-size bin (the study's question: robustness to object scale).

    size_px [B]: the drone's apparent size (model diagonal, pixels) per sample; bins from size_bins.
    Each row is {"size_px": [low, high], **summarize_errors(...)}, plus the bin's mean "keypoint_px"
    when keypoint_errors_px [B,K] (pixels, NaN where a keypoint is not scored) is given.
    """
    if size_px.shape != errors.npe.shape:
        raise ValueError(f"size_px must have shape {list(errors.npe.shape)}, got {list(size_px.shape)}")
    rows: list[dict[str, float | list[float]]] = []
    for low, high, inside in size_bins(size_px, bins):
        row: dict[str, float | list[float]] = {
            "size_px": [low, high],
            **summarize_errors(errors.select(inside), diagonal),
        }
        if keypoint_errors_px is not None:
            row["keypoint_px"] = keypoint_errors_px[inside].nanmean().item()
        rows.append(row)
    return rows


def evaluate_poses(
    R_pred: Tensor,
    t_pred: Tensor,
    R_gt: Tensor,
    t_gt: Tensor,
    model_points: Tensor,
    K: Tensor,
    diagonal: float,
    thresholds: tuple[float, ...] = PAPER_THRESHOLDS,
) -> dict[str, float]:
    """Aggregate table of the papers (NPE, AD, ACC2, ACC5, ADD2, ADD5, Proj2, Proj5, count).

    NPE is a ratio and AD is in radians (means over the batch); ACC, ADD and Proj are percentages.
    """
    return summarize_errors(pose_errors(R_pred, t_pred, R_gt, t_gt, model_points, K), diagonal, thresholds)


def validity_metrics(valid: Tensor, correct: Tensor) -> dict[str, float]:
    """What the estimator's validity flag is worth, from valid [N] and ACC5-correct [N] bools:
    valid_fraction (0-1), valid_ACC5 (% of valid poses that are ACC5-correct; NaN when none is
    valid) and ACC5_valid_recall (% of ACC5-correct poses marked valid; NaN when none is correct)."""
    valid, correct = valid.bool(), correct.bool()
    kept = (valid & correct).sum().item()
    return {
        "valid_fraction": valid.double().mean().item() if len(valid) else math.nan,
        "valid_ACC5": 100.0 * kept / valid.sum().item() if valid.any() else math.nan,
        "ACC5_valid_recall": 100.0 * kept / correct.sum().item() if correct.any() else math.nan,
    }


def pmpjpe(pred: Tensor, gt: Tensor) -> Tensor:
    """Procrustes-aligned mean per-joint position error [B], in the units of the input.

    pred, gt [B,J,3]. The prediction is aligned to the ground truth by the optimal similarity
    transform (rotation, translation and scale; Umeyama), then the mean joint distance is taken.
    MetaPose's text swaps the two alignments; this follows the standard definitions.
    """
    _check_joints(pred, gt)
    R, t, s = roma.rigid_points_registration(pred, gt, compute_scaling=True)
    aligned = s[..., None, None] * pred @ R.transpose(-1, -2) + t.unsqueeze(-2)
    return (aligned - gt).norm(dim=-1).mean(dim=-1)


def nmpjpe(pred: Tensor, gt: Tensor) -> Tensor:
    """Normalised mean per-joint position error [B]: optimal shift and scale, no rotation.

    pred, gt [B,J,3]; both are centred and the prediction is scaled by the least-squares factor
    s = <pred_c, gt_c> / <pred_c, pred_c> before the mean joint distance is taken.
    """
    _check_joints(pred, gt)
    pred_c = pred - pred.mean(dim=-2, keepdim=True)
    gt_c = gt - gt.mean(dim=-2, keepdim=True)
    energy = (pred_c * pred_c).sum(dim=(-1, -2))
    scale = (pred_c * gt_c).sum(dim=(-1, -2)) / energy.clamp_min(torch.finfo(pred.dtype).tiny)
    return (scale[..., None, None] * pred_c - gt_c).norm(dim=-1).mean(dim=-1)


def _check_joints(pred: Tensor, gt: Tensor) -> None:
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3 or pred.shape[1] < 2:
        raise ValueError(
            f"pred and gt must both have shape [B, J>=2, 3], got {list(pred.shape)} and {list(gt.shape)}"
        )
    if not (torch.isfinite(pred).all() and torch.isfinite(gt).all()):
        raise ValueError("joint positions must be finite")


def silhouette_iou(mask_pred: Tensor, mask_gt: Tensor) -> Tensor:
    """Intersection over union [B] of boolean silhouettes [B,H,W]; two empty masks score 1."""
    if mask_pred.shape != mask_gt.shape or mask_pred.ndim != 3:
        raise ValueError(
            f"masks must both have shape [B, H, W], got {list(mask_pred.shape)} and {list(mask_gt.shape)}"
        )
    pred, gt = mask_pred.bool().flatten(1), mask_gt.bool().flatten(1)
    intersection = (pred & gt).sum(-1).double()
    union = (pred | gt).sum(-1).double()
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))


def median_viewpoint_error(R_pred: Tensor, R_gt: Tensor) -> float:
    """Median geodesic rotation error over the batch, radians (Palazzi et al., eq. 6)."""
    check_poses(R_pred, R_pred.new_zeros(R_pred.shape[0], 3), "pred")
    check_poses(R_gt, R_gt.new_zeros(R_gt.shape[0], 3), "gt")
    return geodesic_angle(R_pred, R_gt).median().item()
