"""Rig self-calibration, stage 1: the extrinsics of an uncalibrated rig from single-view drone poses.

MetaPose's stage 1 (closed form) with full perspective and a known rigid object: each view's PnP
pose camera<-drone is already metric, so in one frame camera v relative to a reference camera r is

    T_v<-r = T_v<-drone  T_r<-drone^-1                      (relative_to_reference)

with the covariance of both views' errors propagated to it (drone_pose.fusion.pose_averaging; in
camera v's axes, PnP convention). Over many frames every pair of cameras (u < v) that co-observes
the drone gets a robust average of its T_v<-u (average_poses: L1-median start, Cauchy-reweighted
information-weighted Gauss-Newton, chi-square rejection, counts and a covariance). The rig is
then read off a graph whose edges are the averaged pairs: the reference camera (given, or "auto":
the camera with the most estimated pairs, then the most usable views, then the lowest index) is
the rig frame, and each camera is reached by the path with the fewest edges (ties: the smallest
summed translation variance), directly when it co-observes with the reference and through other
cameras when it does not; cameras no path reaches are flagged unresolved.

Inputs everywhere: R [B,V,3,3], t [B,V,3] (camera optical <- drone body, metres), covariance
[B,V,6,6] (ROS order, PnP convention) or None for nominal_covariance (depth-based weights),
valid [B,V] bool, weights [B,V] >= 0 (information multipliers; 0 drops a view). Nothing returns
NaN: unusable views (invalid, non-finite, improper rotation, drone behind the camera, covariance
not positive definite) are flagged and hold identity / zero.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from drone_pose.fusion.pose_averaging import (
    DTYPE,
    AveragingConfig,
    average_poses,
    compose_with_covariance,
    information,
    invert_with_covariance,
    weighted_tangent_mean,
)
from drone_pose.fusion.rig_file import Rig
from drone_pose.geometry.rotations import geodesic_angle, rotation_error_mask

Reference = int | Literal["auto"]
RESERVOIR, WINDOW = "reservoir", "window"


def nominal_covariance(t: Tensor, pixel_angle: float = 2e-3, object_size_m: float = 0.5) -> Tensor:
    """A first-order single-view PnP covariance [...,6,6] for drone positions t [...,3] (metres),
    used when no covariance is given: keypoint noise of `pixel_angle` radians (pixel std / focal)
    on an object of `object_size_m` at range z gives a lateral std z a, a depth std z^2 a / s and a
    rotation std z a / s (isotropic). Only its shape matters to the averaging (the variance factor
    rescales it): far views count less, and mostly along their line of sight."""
    t = t.to(DTYPE)
    z = t.norm(dim=-1).clamp_min(1e-6)
    ray = t / z.unsqueeze(-1)
    lateral, depth, rotation = (
        z * pixel_angle,
        z * z * pixel_angle / object_size_m,
        z * pixel_angle / object_size_m,
    )
    eye = torch.eye(3, dtype=DTYPE, device=t.device)
    outer = ray.unsqueeze(-1) * ray.unsqueeze(-2)
    covariance = t.new_zeros(*t.shape[:-1], 6, 6)
    covariance[..., :3, :3] = (
        lateral[..., None, None] ** 2 * eye + (depth**2 - lateral**2)[..., None, None] * outer
    )
    covariance[..., 3:, 3:] = rotation[..., None, None] ** 2 * eye
    return covariance


def prepare_views(
    R: Tensor,
    t: Tensor,
    covariance: Tensor | None = None,
    valid: Tensor | None = None,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(R, t, covariance, usable) float64 of single-view poses: covariance divided by the weights
    (nominal_covariance where None); usable [B,V] as the module docstring; unusable views hold the
    identity pose and an identity covariance, so every output is finite."""
    R, t = R.to(DTYPE), t.to(DTYPE)
    usable = torch.ones(R.shape[:-2], dtype=torch.bool) if valid is None else valid.bool().clone()
    finite = torch.isfinite(R).flatten(-2).all(-1) & torch.isfinite(t).all(-1)
    eye3 = torch.eye(3, dtype=DTYPE)
    R = torch.where(finite[..., None, None], R, eye3)
    t = torch.where(finite[..., None], t, torch.zeros_like(t))
    usable &= finite & ~rotation_error_mask(R, tolerance=1e-3) & (t[..., 2] > 0)
    covariance = nominal_covariance(t) if covariance is None else covariance.to(DTYPE)
    if weights is not None:
        weights = weights.to(DTYPE)
        usable &= torch.isfinite(weights) & (weights > 0)
        covariance = covariance / torch.where(usable, weights, torch.ones_like(weights))[..., None, None]
    _, usable = information(covariance, usable)
    eye6 = torch.eye(6, dtype=DTYPE)
    return (
        torch.where(usable[..., None, None], R, eye3),
        torch.where(usable[..., None], t, torch.zeros_like(t)),
        torch.where(usable[..., None, None], covariance, eye6),
        usable,
    )


def homogeneous(R: Tensor, t: Tensor) -> Tensor:
    """[...,4,4] transforms of rotations R [...,3,3] and translations t [...,3]."""
    T = R.new_zeros(*R.shape[:-2], 4, 4)
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


@dataclass(frozen=True)
class FrameRelativePoses:
    """One frame's closed-form rig: cam_from_ref [B,V,4,4] float64 (T_v<-ref, identity where not
    valid and for the reference itself), covariance [B,V,6,6] (of T_v<-ref, camera v axes; zero for
    the reference and where not valid), valid [B,V] (view v and the reference both usable);
    R_drone [B,3,3], t_drone [B,3], covariance_drone [B,6,6], drone_valid [B]: the drone in the
    reference camera. Within one frame the relative poses make every view agree exactly, so this
    is the reference view's own pose; with averaged extrinsics use drone_in_reference."""

    cam_from_ref: Tensor
    covariance: Tensor
    valid: Tensor
    R_drone: Tensor
    t_drone: Tensor
    covariance_drone: Tensor
    drone_valid: Tensor


def relative_to_reference(
    R: Tensor,
    t: Tensor,
    covariance: Tensor | None = None,
    valid: Tensor | None = None,
    reference: int = 0,
    weights: Tensor | None = None,
) -> FrameRelativePoses:
    """Per frame, every camera relative to camera `reference`: T_v<-ref = T_v<-drone T_ref<-drone^-1
    with both views' covariances propagated (independent errors). Shapes: module docstring."""
    views = R.shape[-3]
    if not 0 <= reference < views:
        raise ValueError(f"reference view {reference} is not one of the {views} views")
    R, t, covariance, usable = prepare_views(R, t, covariance, valid, weights)
    return _relative(R, t, covariance, usable, reference)


def _relative(R: Tensor, t: Tensor, covariance: Tensor, usable: Tensor, reference: int) -> FrameRelativePoses:
    """relative_to_reference on prepared views."""
    R_dr, t_dr, C_dr = invert_with_covariance(R[:, reference], t[:, reference], covariance[:, reference])
    R_rel, t_rel, C_rel = compose_with_covariance(
        R, t, covariance, R_dr.unsqueeze(1), t_dr.unsqueeze(1), C_dr.unsqueeze(1)
    )
    valid = usable & usable[:, reference : reference + 1]
    eye = torch.eye(3, dtype=DTYPE)
    R_rel = torch.where(valid[..., None, None], R_rel, eye)
    t_rel = torch.where(valid[..., None], t_rel, torch.zeros_like(t_rel))
    C_rel = torch.where(valid[..., None, None], C_rel, torch.zeros_like(C_rel))
    R_rel[:, reference], t_rel[:, reference], C_rel[:, reference] = eye, 0.0, 0.0
    ref_valid = usable[:, reference]
    return FrameRelativePoses(
        cam_from_ref=homogeneous(R_rel, t_rel),
        covariance=C_rel,
        valid=valid,
        R_drone=R[:, reference],
        t_drone=t[:, reference],
        covariance_drone=torch.where(
            ref_valid[:, None, None], covariance[:, reference], torch.zeros_like(C_dr)
        ),
        drone_valid=ref_valid,
    )


def drone_in_reference(
    R: Tensor,
    t: Tensor,
    cam_from_ref: Tensor,
    covariance: Tensor | None = None,
    valid: Tensor | None = None,
    extrinsics_covariance: Tensor | None = None,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The drone in the reference camera per frame, fused from all usable views through extrinsics
    cam_from_ref [V,4,4] (e.g. RigEstimate.cam_from_ref) with their covariances [V,6,6] (optional):
    each view gives T_ref<-drone = T_v<-ref^-1 T_v<-drone, and the information-weighted mean of those
    is returned: R [B,3,3], t [B,3], covariance [B,6,6] (reference axes), valid [B] (a view was
    usable). No gating: an outlier view pulls the mean (drone_pose.fusion.gating judges views)."""
    R, t, covariance, usable = prepare_views(R, t, covariance, valid, weights)
    batch, views = R.shape[:2]
    T = cam_from_ref.to(DTYPE)
    C_ext = torch.zeros(views, 6, 6, dtype=DTYPE) if extrinsics_covariance is None else extrinsics_covariance
    R_rv, t_rv, C_rv = invert_with_covariance(T[:, :3, :3], T[:, :3, 3], C_ext.to(DTYPE))
    R_in, t_in, C_in = compose_with_covariance(R_rv, t_rv, C_rv, R, t, covariance)
    info, usable = information(C_in, usable)
    scale = torch.where(usable, info.diagonal(dim1=-2, dim2=-1).sum(-1), torch.full_like(t[..., 0], -1.0))
    best = scale.argmax(1)
    rows = torch.arange(batch)
    R0, t0, H = weighted_tangent_mean(R_in, t_in, info, usable.to(DTYPE), R_in[rows, best], t_in[rows, best])
    found = usable.any(1)
    eye6 = torch.eye(6, dtype=DTYPE)
    factor, status = torch.linalg.cholesky_ex(torch.where(found[:, None, None], H, eye6))
    covariance_fused = torch.cholesky_inverse(torch.where((status == 0)[:, None, None], factor, eye6))
    found &= status == 0
    return (
        torch.where(found[:, None, None], R0, torch.eye(3, dtype=DTYPE)),
        torch.where(found[:, None], t0, torch.zeros_like(t0)),
        torch.where(found[:, None, None], covariance_fused, torch.zeros_like(covariance_fused)),
        found,
    )


@dataclass(frozen=True)
class RigEstimate:
    """A rig estimated from many frames, anchored to camera `reference` (its optical frame is the
    rig frame). cam_from_ref [V,4,4] float64 (p_cam = T p_ref; identity for the reference and for
    unresolved cameras); covariance [V,6,6] of T_v<-ref (camera v axes; zero for the reference and
    unresolved cameras); resolved [V] bool; paths: per camera the cameras its estimate chains
    through, reference first ((ref,) for the reference, () when unresolved). Pair statistics
    [V,V] int64, symmetric, over the frames used: co_observations (frames where both cameras were
    usable), inliers and outliers of the pair's robust average; variance_factor [V,V] (how much the
    pair's samples scatter beyond their covariances, >= 1; 0 for pairs never averaged).
    frames: frames used."""

    reference: int
    cam_from_ref: Tensor
    covariance: Tensor
    resolved: Tensor
    paths: tuple[tuple[int, ...], ...]
    co_observations: Tensor
    inliers: Tensor
    outliers: Tensor
    variance_factor: Tensor
    frames: int

    def rotation_std_deg(self) -> Tensor:
        """[V] degrees: sqrt of the trace of each camera's rotation covariance."""
        return torch.rad2deg(
            self.covariance[:, 3:, 3:].diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(0).sqrt()
        )

    def position_std_m(self) -> Tensor:
        """[V] metres: sqrt of the trace of the covariance of each camera's position in the
        reference camera frame (the translation of rig_from_camera)."""
        T = self.cam_from_ref
        _, _, C = invert_with_covariance(T[:, :3, :3], T[:, :3, 3], self.covariance)
        return C[:, :3, :3].diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(0).sqrt()

    def rig_from_camera(self) -> Tensor:
        """[V,4,4] float64: the cameras' poses in the reference camera frame."""
        T = self.cam_from_ref
        R_inv = T[:, :3, :3].transpose(-1, -2)
        return homogeneous(R_inv, -(R_inv @ T[:, :3, 3:]).squeeze(-1))

    def to_rig(
        self, camera_names: Sequence[str], frame_ids: Sequence[str], rig_frame: str | None = None
    ) -> Rig:
        """The project's Rig (save it with drone_pose.fusion.rig_file.save_rig_file): rig_frame
        (default: the reference camera's optical frame id) is the reference camera's optical frame.
        ValueError naming the unresolved cameras, if any."""
        missing = [str(camera_names[v]) for v in range(len(self.paths)) if not bool(self.resolved[v])]
        if missing:
            raise ValueError(
                f"cameras {', '.join(missing)} have no estimate relative to {camera_names[self.reference]} "
                "(they never co-observed the drone with a resolved camera often enough)"
            )
        frame = frame_ids[self.reference] if rig_frame is None else rig_frame
        return Rig(frame, tuple(camera_names), tuple(frame_ids), self.cam_from_ref.numpy().copy())

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures: reference, frames, per camera resolved, path, rotation_std_deg,
        position_std_m; per pair co_observations, inliers, outliers."""
        views = len(self.paths)
        return {
            "reference": self.reference,
            "frames": self.frames,
            "cameras": [
                {
                    "resolved": bool(self.resolved[v]),
                    "path": list(self.paths[v]),
                    "rotation_std_deg": round(float(self.rotation_std_deg()[v]), 4),
                    "position_std_m": round(float(self.position_std_m()[v]), 5),
                }
                for v in range(views)
            ],
            "pairs": {
                f"{u}-{v}": {
                    "co_observations": int(self.co_observations[u, v]),
                    "inliers": int(self.inliers[u, v]),
                    "outliers": int(self.outliers[u, v]),
                }
                for u in range(views)
                for v in range(u + 1, views)
            },
        }


def estimate_rig(
    R: Tensor,
    t: Tensor,
    covariance: Tensor | None = None,
    valid: Tensor | None = None,
    weights: Tensor | None = None,
    reference: Reference = "auto",
    config: AveragingConfig | None = None,
    order: Tensor | None = None,
) -> RigEstimate:
    """The rig from B frames of V single-view poses (module docstring); shapes there. order [B]:
    the frames' times or sequence numbers, None when they are given in time order; only the
    uncertainty depends on it (the batch-means covariance of pose_averaging)."""
    prepared = prepare_views(R, t, covariance, valid, weights)
    return _estimate(*prepared, reference, config or AveragingConfig(), order)


def _estimate(
    R: Tensor,
    t: Tensor,
    covariance: Tensor,
    usable: Tensor,
    reference: Reference,
    config: AveragingConfig,
    order: Tensor | None = None,
) -> RigEstimate:
    """estimate_rig on prepared views."""
    if order is not None:
        sort = torch.argsort(order, stable=True)
        R, t, covariance, usable = R[sort], t[sort], covariance[sort], usable[sort]
    batch, views = usable.shape
    if reference != "auto" and not (isinstance(reference, int) and 0 <= reference < views):
        raise ValueError(f"reference must be 'auto' or a view index 0..{views - 1}, got {reference!r}")
    both = usable.unsqueeze(2) & usable.unsqueeze(1)
    co_observations = both.sum(0)
    inliers = torch.zeros(views, views, dtype=torch.int64)
    outliers = torch.zeros(views, views, dtype=torch.int64)
    variance_factor = torch.zeros(views, views, dtype=DTYPE)
    edges: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor]] = {}  # (a, b): T_b<-a, covariance
    pairs = [(u, v) for u in range(views) for v in range(u + 1, views)]
    if pairs and batch:
        relative = {u: _relative(R, t, covariance, usable, u) for u in range(views - 1)}
        T = torch.stack([relative[u].cam_from_ref[:, v] for u, v in pairs])
        C = torch.stack([relative[u].covariance[:, v] for u, v in pairs])
        mask = torch.stack([relative[u].valid[:, v] for u, v in pairs])
        averaged = average_poses(T[..., :3, :3], T[..., :3, 3], C, mask, config)
        for p, (u, v) in enumerate(pairs):
            inliers[u, v] = inliers[v, u] = averaged.inliers[p]
            outliers[u, v] = outliers[v, u] = averaged.outliers[p]
            if bool(averaged.estimated[p]):
                variance_factor[u, v] = variance_factor[v, u] = averaged.variance_factor[p]
                pose = (averaged.R[p], averaged.t[p], averaged.covariance[p])
                edges[(u, v)] = pose
                edges[(v, u)] = invert_with_covariance(*pose)
    if reference == "auto":
        reference = choose_reference(edges, usable.sum(0), views)
    paths = shortest_paths(edges, reference, views)
    cam_from_ref = torch.eye(4, dtype=DTYPE).repeat(views, 1, 1)
    covariance_ref = torch.zeros(views, 6, 6, dtype=DTYPE)
    for v, path in enumerate(paths):
        R_v, t_v, C_v = torch.eye(3, dtype=DTYPE), torch.zeros(3, dtype=DTYPE), torch.zeros(6, 6, dtype=DTYPE)
        for a, b in itertools.pairwise(path):
            R_v, t_v, C_v = compose_with_covariance(*edges[(a, b)], R_v, t_v, C_v)
        cam_from_ref[v] = homogeneous(R_v, t_v)
        covariance_ref[v] = C_v
    return RigEstimate(
        reference=reference,
        cam_from_ref=cam_from_ref,
        covariance=covariance_ref,
        resolved=torch.tensor([bool(path) for path in paths]),
        paths=paths,
        co_observations=co_observations,
        inliers=inliers,
        outliers=outliers,
        variance_factor=variance_factor,
        frames=batch,
    )


def choose_reference(edges: dict[tuple[int, int], Any], usable_views: Tensor, views: int) -> int:
    """The automatic reference: the camera with the most estimated pairs, then the most usable
    views, then the lowest index."""
    degree = [sum((a, b) in edges for b in range(views) if b != a) for a in range(views)]
    return max(range(views), key=lambda a: (degree[a], int(usable_views[a]), -a))


def shortest_paths(
    edges: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor]], reference: int, views: int
) -> tuple[tuple[int, ...], ...]:
    """Per camera the path from `reference` along estimated edges with the fewest edges, ties
    broken by the smallest summed translation variance (trace); () where none reaches it."""
    best: dict[int, tuple[int, float]] = {reference: (0, 0.0)}
    previous: dict[int, int] = {}
    queue = [(0, 0.0, reference)]
    while queue:
        hops, cost, a = heapq.heappop(queue)
        if (hops, cost) > best[a]:
            continue
        for b in range(views):
            if (a, b) not in edges:
                continue
            candidate = (hops + 1, cost + float(edges[(a, b)][2][:3, :3].trace()))
            if b not in best or candidate < best[b]:
                best[b], previous[b] = candidate, a
                heapq.heappush(queue, (*candidate, b))
    paths = []
    for v in range(views):
        if v not in best:
            paths.append(())
            continue
        path = [v]
        while path[-1] != reference:
            path.append(previous[path[-1]])
        paths.append(tuple(reversed(path)))
    return tuple(paths)


def extrinsics_errors(
    cam_from_ref: Tensor | np.ndarray, cam_from_rig_true: Tensor | np.ndarray, reference: int
) -> dict[str, list[float]]:
    """Errors of estimated extrinsics cam_from_ref [V,4,4] against a true rig cam_from_rig [V,4,4]
    (any rig frame): rotation_deg, the angle of R_est R_true^T; position_m, the distance between
    the estimated and true camera positions in the reference camera frame; baseline_m, the true
    distance from the reference camera; position_percent = 100 position_m / baseline_m (NaN for the
    reference itself)."""
    estimate, truth = _float64_copy(cam_from_ref), _float64_copy(cam_from_rig_true)
    R_t, t_t = truth[:, :3, :3], truth[:, :3, 3]
    R_ref_inv = R_t[reference].T
    R_true = R_t @ R_ref_inv
    t_true = t_t - (R_true @ t_t[reference].unsqueeze(-1)).squeeze(-1)
    R_est, t_est = estimate[:, :3, :3], estimate[:, :3, 3]
    position_true = -(R_true.transpose(-1, -2) @ t_true.unsqueeze(-1)).squeeze(-1)
    position_est = -(R_est.transpose(-1, -2) @ t_est.unsqueeze(-1)).squeeze(-1)
    position = (position_est - position_true).norm(dim=-1)
    baseline = position_true.norm(dim=-1)
    percent = torch.where(baseline > 1e-9, 100.0 * position / baseline.clamp_min(1e-300), math.nan)
    return {
        "rotation_deg": torch.rad2deg(geodesic_angle(R_est, R_true)).tolist(),
        "position_m": position.tolist(),
        "baseline_m": baseline.tolist(),
        "position_percent": percent.tolist(),
    }


def _float64_copy(values: Tensor | np.ndarray) -> Tensor:
    """A float64 tensor copy of a tensor or an array (read-only arrays included)."""
    if isinstance(values, Tensor):
        return values.detach().to(DTYPE).clone()
    return torch.tensor(np.array(values), dtype=DTYPE)


class RigAccumulator:
    """Online stage-1 rig estimation: frames are added group by group (the fusion node's groups),
    and estimate() averages the frames kept so far.

    Bounded memory: at most `capacity` frames are kept (each V poses and covariances, about 400 V
    bytes), and only frames in which at least two cameras are usable (the others carry nothing for
    the extrinsics). Once full, policy "reservoir" keeps a uniform random sample of every frame seen
    (Vitter's algorithm R, seeded: deterministic), so a long static flight keeps its whole spread of
    drone positions; "window" keeps the latest `capacity` frames (a rig that may move). The robust
    average is recomputed from the kept frames on each estimate() (a batch solve, so the extrinsics
    do not depend on the order in which the kept frames arrived, which running robust statistics
    could not offer; the frames' arrival order is kept for the uncertainty's time blocks; about
    0.5 s for 600 frames of 3 cameras on one CPU thread, 1.7 s for 3000). Counters over every
    frame seen: frames_seen, usable_views [V], co_observations [V,V].

    Thread-safe: add and estimate may run on different threads (a node's frame path and its
    periodic estimation); estimate copies the kept frames under the lock and solves outside it."""

    def __init__(
        self,
        views: int,
        capacity: int = 3000,
        policy: str = RESERVOIR,
        reference: Reference = "auto",
        config: AveragingConfig | None = None,
        seed: int = 0,
    ) -> None:
        if views < 1 or capacity < 1:
            raise ValueError(f"views and capacity must be positive, got {views} and {capacity}")
        if policy not in (RESERVOIR, WINDOW):
            raise ValueError(f"policy must be {RESERVOIR!r} or {WINDOW!r}, got {policy!r}")
        if reference != "auto" and not (isinstance(reference, int) and 0 <= reference < views):
            raise ValueError(f"reference must be 'auto' or a view index 0..{views - 1}, got {reference!r}")
        self.views, self.capacity, self.policy, self.reference = views, capacity, policy, reference
        self.config = config or AveragingConfig()
        self._random = random.Random(seed)
        self._R = torch.zeros(capacity, views, 3, 3, dtype=DTYPE)
        self._t = torch.zeros(capacity, views, 3, dtype=DTYPE)
        self._covariance = torch.zeros(capacity, views, 6, 6, dtype=DTYPE)
        self._usable = torch.zeros(capacity, views, dtype=torch.bool)
        self._sequence = torch.zeros(capacity, dtype=torch.int64)  # arrival order, for the time blocks
        self.frames_kept = 0
        self.frames_seen = 0
        self._offered = 0  # frames with two usable views: the reservoir's stream
        self.usable_views = torch.zeros(views, dtype=torch.int64)
        self.co_observations = torch.zeros(views, views, dtype=torch.int64)
        self._lock = threading.Lock()

    def add(
        self,
        R: Tensor,
        t: Tensor,
        covariance: Tensor | None = None,
        valid: Tensor | None = None,
        weights: Tensor | None = None,
    ) -> None:
        """Add frames: R [B,V,3,3] or [V,3,3], t, covariance, valid, weights as estimate_rig."""
        if R.ndim == 3:
            R, t = R.unsqueeze(0), t.unsqueeze(0)
            covariance = None if covariance is None else covariance.unsqueeze(0)
            valid = None if valid is None else valid.unsqueeze(0)
            weights = None if weights is None else weights.unsqueeze(0)
        if R.shape[1] != self.views:
            raise ValueError(f"expected {self.views} views per frame, got {R.shape[1]}")
        R, t, covariance, usable = prepare_views(R, t, covariance, valid, weights)
        with self._lock:
            self._keep(R, t, covariance, usable)

    def _keep(self, R: Tensor, t: Tensor, covariance: Tensor, usable: Tensor) -> None:
        """add's bookkeeping on prepared views (under the lock)."""
        self.frames_seen += len(usable)
        self.usable_views += usable.sum(0)
        self.co_observations += (usable.unsqueeze(2) & usable.unsqueeze(1)).sum(0)
        for b in torch.nonzero(usable.sum(1) >= 2).flatten().tolist():
            slot = self._slot()
            self._offered += 1
            if slot is not None:
                self._R[slot], self._t[slot] = R[b], t[b]
                self._covariance[slot], self._usable[slot] = covariance[b], usable[b]
                self._sequence[slot] = self._offered - 1

    def _slot(self) -> int | None:
        """Where the next offered frame goes (None: dropped by the reservoir)."""
        if self.frames_kept < self.capacity:
            self.frames_kept += 1
            return self.frames_kept - 1
        if self.policy == WINDOW:
            return self._offered % self.capacity
        j = self._random.randrange(self._offered + 1)
        return j if j < self.capacity else None

    def estimate(self, reference: Reference | None = None) -> RigEstimate:
        """The rig from the frames kept (reference: None for the accumulator's own)."""
        with self._lock:
            n = self.frames_kept
            kept = (
                self._R[:n].clone(),
                self._t[:n].clone(),
                self._covariance[:n].clone(),
                self._usable[:n].clone(),
            )
            sequence = self._sequence[:n].clone()
        return _estimate(*kept, self.reference if reference is None else reference, self.config, sequence)
