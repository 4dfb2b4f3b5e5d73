"""Test-time pose refinement by silhouette alignment (Palazzi et al.), kept only where it helps.

From a pose camera<-drone (the estimator's PnP), a few gradient steps (Adam) move the pose so that
the mesh's soft silhouette (drone_pose.render.soft_rasterizer) overlaps a target silhouette (the
network's predicted mask, or a ground-truth mask) better, while a keypoint term keeps the
projected model keypoints near the detected ones:

    objective = (1 - soft IoU(rendered, target)) + keypoint_weight * sum_k w_k |r_k|^2 / sum_k w_k

with r_k the reprojection residual (px) of keypoint k and w_k its PnP weight. The sharpness grows
geometrically over the steps (coarse to fine: a blurred outline first, for a wide basin). Both
terms are read on a window of `resolution` x `resolution` pixels around the starting pose's
projected mesh, not on the whole image.

The pose is parametrised about the start as (dx, dy, dlog z, rotation vector): t = z (x/z + dx,
y/z + dy, 1) with z = z0 exp(dlog z), R = exp(omega) R0, so every parameter is dimensionless and
about the same size (radians, fractions of depth), which suits Adam's single learning rate.

A refined pose is kept only if the objective at the final sharpness is lower than at the start and
the keypoints' RMS reprojection error stays within `max_keypoint_rms_px`; otherwise the starting
pose stands and the reason is reported per sample. The covariance of a kept pose is the inverse
Hessian of the objective at the refined pose, scaled so that its keypoint part carries the
information of the starting covariance.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from drone_pose.render.image_window import ImageWindow, SilhouetteMap
from drone_pose.render.soft_rasterizer import project_to_window, render_silhouette


class RefinementOutcome(enum.IntEnum):
    """Per-sample outcome of SilhouetteRefiner.refine (the `outcome` tensor holds these values)."""

    REFINED = 0  # the refined pose replaced the start
    OBJECTIVE_NOT_LOWER = 1  # the combined objective did not fall: the start stands
    KEYPOINTS_DRIFTED = 2  # the refined pose's keypoint RMS exceeds the limit: the start stands
    EMPTY_SILHOUETTE = 3  # no target silhouette in the window (or nothing rendered): not refined
    NOT_REFINED = 4  # the start was flagged unusable by the caller
    NO_COVARIANCE = 5  # the refined pose's covariance could not be formed: the start stands


@dataclass(frozen=True)
class RefinementSettings:
    """steps: Adam steps; resolution: window side (px); keypoint_weight: per px^2 of mean squared
    keypoint residual (0: silhouette only); sharpness: (first, last) per window pixel, geometric in
    between; learning_rate: Adam's, on the dimensionless pose parameters, cosine-decayed to a tenth;
    window_margin: the window's margin around the start's projected mesh, fraction of its size;
    coarse_sharpness: a step whose sharpness is low renders on a grid 2 or 4 times coarser (never
    below 16 px) as long as its sharpness per coarse pixel stays at or below this (the blur is then
    several coarse pixels wide anyway), which cuts the work of the blurred first steps;
    match_moments: start the steps by moving the pose so that the rendered silhouette's centroid and
    area match the target's (lateral shift along the image plane, depth from the area ratio)."""

    steps: int = 30
    resolution: int = 64
    keypoint_weight: float = 0.01
    sharpness: tuple[float, float] = (1.0, 8.0)
    learning_rate: float = 0.01
    window_margin: float = 0.25
    coarse_sharpness: float = 4.0
    match_moments: bool = False

    def __post_init__(self) -> None:
        if self.steps < 0 or self.resolution < 8:
            raise ValueError(f"steps must be >= 0 and resolution >= 8, got {self.steps}, {self.resolution}")
        if min(self.sharpness) <= 0 or self.learning_rate <= 0 or self.keypoint_weight < 0:
            raise ValueError("sharpness and learning_rate must be > 0 and keypoint_weight >= 0")

    def sharpness_at(self, step: int) -> float:
        """The sharpness (per window pixel) of step `step` of `steps` (the last one from steps - 1 on)."""
        first, last = self.sharpness
        fraction = min(step / max(self.steps - 1, 1), 1.0)
        return first * (last / first) ** fraction

    def coarsening_at(self, step: int) -> int:
        """The factor (1, 2 or 4) by which step `step` renders coarser than `resolution`."""
        factor = 1
        sharpness = self.sharpness_at(step)
        while (
            factor < 4
            and sharpness * factor * 2 <= self.coarse_sharpness
            and self.resolution % (factor * 2) == 0
            and self.resolution // (factor * 2) >= 16
        ):
            factor *= 2
        return factor


@dataclass(frozen=True)
class RefinedPoses:
    """R [B,3,3], t [B,3] metres: camera<-drone (the start where not refined); covariance [B,6,6]
    ROS order (as PnPResult); outcome [B] int64 RefinementOutcome; objective_start / objective_end
    [B] at the final sharpness; iou_start / iou_end [B] soft IoU with the target at the final
    sharpness; keypoint_rms_px [B] of the returned pose."""

    R: Tensor
    t: Tensor
    covariance: Tensor
    outcome: Tensor
    objective_start: Tensor
    objective_end: Tensor
    iou_start: Tensor
    iou_end: Tensor
    keypoint_rms_px: Tensor

    @property
    def refined(self) -> Tensor:
        """[B] bool: the refined pose was kept."""
        return self.outcome == RefinementOutcome.REFINED


class SilhouetteRefiner:
    """Refines poses of one drone mesh: vertices [Nv,3] and keypoints [N,3] metres (drone frame),
    faces [F,3]. cull_back_faces: only for closed meshes with outward normals (DroneModel.closed_outward)."""

    def __init__(
        self,
        vertices: Tensor,
        faces: Tensor,
        keypoints_3d: Tensor,
        settings: RefinementSettings | None = None,
        cull_back_faces: bool = False,
    ) -> None:
        self.vertices = vertices
        self.faces = faces.long()
        self.keypoints_3d = keypoints_3d
        self.settings = settings or RefinementSettings()
        self.cull_back_faces = cull_back_faces

    @classmethod
    def for_drone(cls, drone, settings: RefinementSettings | None = None, device=None) -> SilhouetteRefiner:
        """The refiner of a DroneModel (drone_pose.drones.model) in float32 on `device`."""
        return cls(
            drone.vertices_tensor(device=device),
            torch.tensor(np.array(drone.faces), device=device),
            drone.keypoints_tensor(device=device),
            settings,
            cull_back_faces=drone.closed_outward,
        )

    def window_around(self, R: Tensor, t: Tensor, K: Tensor) -> ImageWindow:
        """Square windows around the mesh projected at poses R [B,3,3], t [B,3] with K [B,3,3]."""
        uv, _ = project_to_window(self.vertices.to(R.dtype), R, t, K.to(R.dtype).expand(R.shape[0], 3, 3))
        box = torch.cat((uv.amin(1), uv.amax(1)), -1)
        return ImageWindow.around_box(box, self.settings.resolution, self.settings.window_margin)

    def refine(
        self,
        R: Tensor,
        t: Tensor,
        K: Tensor,
        target: SilhouetteMap,
        keypoints: Tensor,
        keypoint_weights: Tensor,
        covariance: Tensor,
        max_keypoint_rms_px: float = math.inf,
        usable: Tensor | None = None,
    ) -> RefinedPoses:
        """Refine poses camera<-drone R [B,3,3], t [B,3] (metres) seen through K [B,3,3] or [3,3]
        towards the target silhouettes, with detected keypoints [B,N,2] image px, their PnP weights
        [B,N] (0: unused) and the start's covariance [B,6,6] (ROS order). usable [B] bool: samples
        to refine (default all). Runs in the dtype of R."""
        settings = self.settings
        batch, dtype = R.shape[0], R.dtype
        K = K.to(dtype).expand(batch, 3, 3)
        keypoints, keypoint_weights = keypoints.to(dtype), keypoint_weights.to(dtype)
        usable = torch.ones(batch, dtype=torch.bool, device=R.device) if usable is None else usable.clone()
        with torch.no_grad():
            window = self.window_around(R, t, K)
        objective = _Objective(self, K, window, target, keypoints, keypoint_weights)

        parameters = torch.zeros(batch, 6, dtype=dtype, device=R.device)
        if settings.match_moments:
            parameters[:, :3] = objective.moment_matching_update(R, t, settings.sharpness_at(settings.steps))
            parameters[~usable] = 0.0
        parameters.requires_grad_(True)
        optimiser = torch.optim.Adam([parameters], lr=settings.learning_rate)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimiser, max(settings.steps, 1), eta_min=0.1 * settings.learning_rate
        )
        for step in range(settings.steps):
            optimiser.zero_grad(set_to_none=True)
            value, _ = objective(parameters, R, t, settings.sharpness_at(step), settings.coarsening_at(step))
            value.sum().backward()
            with torch.no_grad():
                parameters.grad[~usable] = 0.0
                parameters.grad.nan_to_num_(0.0, 0.0, 0.0)
            optimiser.step()
            schedule.step()

        final_sharpness = settings.sharpness_at(settings.steps)
        with torch.no_grad():
            zero = torch.zeros_like(parameters)
            start_value, start_parts = objective(zero, R, t, final_sharpness)
            R_new, t_new = apply_pose_update(parameters.detach(), R, t)
            end_value, end_parts = objective(zero, R_new, t_new, final_sharpness)

        outcome = torch.full((batch,), int(RefinementOutcome.REFINED), dtype=torch.int64, device=R.device)
        outcome[~(end_value < start_value)] = RefinementOutcome.OBJECTIVE_NOT_LOWER
        outcome[end_parts.keypoint_rms > max_keypoint_rms_px] = RefinementOutcome.KEYPOINTS_DRIFTED
        empty = (objective.target_area < 1.0) | (start_parts.rendered_area < 1.0)
        outcome[empty] = RefinementOutcome.EMPTY_SILHOUETTE
        outcome[~usable] = RefinementOutcome.NOT_REFINED
        finite = torch.isfinite(R_new).all((1, 2)) & torch.isfinite(t_new).all(1)
        outcome[~finite & (outcome == RefinementOutcome.REFINED)] = RefinementOutcome.OBJECTIVE_NOT_LOWER
        keep = outcome == RefinementOutcome.REFINED

        refined_covariance = self._covariance(objective, R_new, t_new, covariance.to(dtype), final_sharpness)
        no_covariance = keep & ~torch.isfinite(refined_covariance).all((1, 2))
        outcome[no_covariance] = RefinementOutcome.NO_COVARIANCE
        keep &= ~no_covariance
        choose = keep[:, None]
        return RefinedPoses(
            R=torch.where(choose[..., None], R_new, R),
            t=torch.where(choose, t_new, t),
            covariance=torch.where(choose[..., None], refined_covariance, covariance.to(dtype)),
            outcome=outcome,
            objective_start=start_value,
            objective_end=end_value,
            iou_start=start_parts.iou,
            iou_end=end_parts.iou,
            keypoint_rms_px=torch.where(keep, end_parts.keypoint_rms, start_parts.keypoint_rms),
        )

    def _covariance(
        self, objective: _Objective, R: Tensor, t: Tensor, start_covariance: Tensor, sharpness: float
    ) -> Tensor:
        """Covariance [B,6,6] (ROS order) at poses R, t: (c H)^-1 with H the objective's Hessian in
        the pose parameters (its silhouette part projected onto positive semi-definite matrices) and
        c such that c times the keypoint part's Hessian has the start covariance's determinant of
        information. NaN where it cannot be formed (the caller keeps the start then). Without a
        keypoint term (keypoint_weight 0) nothing ties the silhouette's scale to the start's: the
        start covariance is returned."""
        batch, dtype = R.shape[0], R.dtype
        if self.settings.keypoint_weight == 0:
            return start_covariance
        parameters = torch.zeros(batch, 6, dtype=dtype, device=R.device, requires_grad=True)
        with torch.enable_grad():
            hessian_total = _batched_hessian(lambda p: objective(p, R, t, sharpness)[0], parameters)
            hessian_keypoints = _batched_hessian(
                lambda p: objective(p, R, t, sharpness)[1].keypoint_term, parameters
            )
        silhouette_part = _positive_part(hessian_total - hessian_keypoints)
        to_ros = _parameters_to_ros(t)  # [B,6,6]: ROS perturbation = to_ros @ parameter perturbation
        information_start = _inverse(start_covariance)  # ROS order
        # information in parameter space: J^T Info J
        start_in_parameters = to_ros.transpose(1, 2) @ information_start @ to_ros
        _, logdet_start = torch.linalg.slogdet(start_in_parameters)
        sign, logdet_keypoints = torch.linalg.slogdet(hessian_keypoints)
        scale = torch.exp((logdet_start - logdet_keypoints) / 6.0)
        scale = torch.where(sign > 0, scale, torch.full_like(scale, math.nan))
        information = scale[:, None, None] * (hessian_keypoints + silhouette_part)
        covariance_parameters = _inverse(information)
        covariance = to_ros @ covariance_parameters @ to_ros.transpose(1, 2)
        return 0.5 * (covariance + covariance.transpose(1, 2))


@dataclass(frozen=True)
class _ObjectiveParts:
    iou: Tensor
    keypoint_term: Tensor
    keypoint_rms: Tensor
    rendered_area: Tensor


class _Objective:
    """The combined objective [B] of pose updates about given poses, on fixed windows and targets.

    Rendered and target silhouettes are compared on the window or on a coarsened copy of it
    (`coarsening`), the target resampled once per grid. Areas are in full-resolution pixels."""

    def __init__(
        self,
        refiner: SilhouetteRefiner,
        K: Tensor,
        window: ImageWindow,
        target: SilhouetteMap,
        keypoints: Tensor,
        weights: Tensor,
    ) -> None:
        self.refiner, self.K, self.window, self.target = refiner, K, window, target
        self.keypoints, self.weights = keypoints, weights
        self._grids: dict[int, tuple[ImageWindow, Tensor]] = {}
        self.target_area = self._grid(1)[1].flatten(1).sum(1)

    def _grid(self, coarsening: int) -> tuple[ImageWindow, Tensor]:
        """The window coarsened by `coarsening` and the target silhouettes [B,h,w] on it."""
        if coarsening not in self._grids:
            window = self.window.coarsened(coarsening)
            with torch.no_grad():
                silhouette = self.target.resample(window).to(self.K.dtype)
            self._grids[coarsening] = (window, silhouette)
        return self._grids[coarsening]

    @torch.no_grad()
    def moment_matching_update(self, R: Tensor, t: Tensor, sharpness: float) -> Tensor:
        """Parameters [B,3] (dx, dy, dlog z) that move the silhouette rendered at R, t so that its
        centroid and area match the target's (0 where either is empty)."""
        window, silhouette = self._grid(1)
        refiner = self.refiner
        rendered = render_silhouette(
            refiner.vertices.to(R.dtype),
            refiner.faces,
            R,
            t,
            self.K,
            window,
            sharpness,
            refiner.cull_back_faces,
        )
        centres = window.pixel_centres().to(R.dtype)  # [B,h,w,2] image px

        def moments(mass: Tensor) -> tuple[Tensor, Tensor]:
            area = mass.flatten(1).sum(1)
            centroid = (mass[..., None] * centres).flatten(1, 2).sum(1) / area.clamp_min(1e-9)[:, None]
            return area, centroid

        area_rendered, centroid_rendered = moments(rendered)
        area_target, centroid_target = moments(silhouette)
        focal = torch.stack((self.K[:, 0, 0], self.K[:, 1, 1]), -1)
        update = torch.cat(
            (
                (centroid_target - centroid_rendered) / focal,
                0.5 * torch.log(area_rendered.clamp_min(1e-9) / area_target.clamp_min(1e-9))[:, None],
            ),
            -1,
        )
        usable = (area_rendered >= 1.0) & (area_target >= 1.0) & torch.isfinite(update).all(-1)
        return torch.where(usable[:, None], update, torch.zeros_like(update))

    def __call__(
        self, parameters: Tensor, R: Tensor, t: Tensor, sharpness: float, coarsening: int = 1
    ) -> tuple[Tensor, _ObjectiveParts]:
        refiner = self.refiner
        window, silhouette = self._grid(coarsening)
        R_new, t_new = apply_pose_update(parameters, R, t)
        rendered = render_silhouette(
            refiner.vertices.to(R.dtype),
            refiner.faces,
            R_new,
            t_new,
            self.K,
            window,
            sharpness * coarsening,
            refiner.cull_back_faces,
        )
        overlap = (rendered * silhouette).flatten(1).sum(1)
        union = (rendered + silhouette).flatten(1).sum(1) - overlap
        iou = overlap / union.clamp_min(1e-9)
        projected, _ = project_to_window(refiner.keypoints_3d.to(R.dtype), R_new, t_new, self.K)
        squared = ((projected - self.keypoints) ** 2).sum(-1)
        total_weight = self.weights.sum(-1).clamp_min(1e-9)
        mean_squared = (self.weights * squared).sum(-1) / total_weight
        used = (self.weights > 0).to(R.dtype)
        rms = torch.sqrt((used * squared).sum(-1) / used.sum(-1).clamp_min(1.0))
        keypoint_term = refiner.settings.keypoint_weight * mean_squared
        value = (1.0 - iou) + keypoint_term
        rendered_area = rendered.detach().flatten(1).sum(1) * coarsening**2
        return value, _ObjectiveParts(iou, keypoint_term, rms, rendered_area)


def apply_pose_update(parameters: Tensor, R: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Poses (R [B,3,3], t [B,3]) moved by parameters [B,6] = (dx, dy, dlog z, rotation vector):
    R' = exp(omega) R, z' = z exp(dlog z), t' = z' (x/z + dx, y/z + dy, 1)."""
    depth = t[:, 2:].clamp_min(1e-6)
    new_depth = depth * torch.exp(parameters[:, 2:3])
    lateral = t[:, :2] / depth + parameters[:, :2]
    t_new = torch.cat((lateral * new_depth, new_depth), -1)
    omega = parameters[:, 3:]
    zero = torch.zeros_like(omega[:, 0])
    skew = torch.stack(
        (
            torch.stack((zero, -omega[:, 2], omega[:, 1]), -1),
            torch.stack((omega[:, 2], zero, -omega[:, 0]), -1),
            torch.stack((-omega[:, 1], omega[:, 0], zero), -1),
        ),
        1,
    )
    # matrix_exp rather than Rodrigues: twice differentiable at omega = 0 (the covariance's Hessian)
    R_new = torch.linalg.matrix_exp(skew) @ R
    return R_new, t_new


def _parameters_to_ros(t: Tensor) -> Tensor:
    """[B,6,6] Jacobian of the ROS pose perturbation (translation metres, left rotation vector) with
    respect to the parameters (dx, dy, dlog z, omega) at zero."""
    batch = t.shape[0]
    jacobian = torch.zeros(batch, 6, 6, dtype=t.dtype, device=t.device)
    z = t[:, 2]
    jacobian[:, 0, 0] = z
    jacobian[:, 1, 1] = z
    jacobian[:, :3, 2] = t
    jacobian[:, 3:, 3:] = torch.eye(3, dtype=t.dtype, device=t.device)
    return jacobian


def _batched_hessian(function, parameters: Tensor) -> Tensor:
    """Hessians [B,6,6] of a function returning [B] whose sample b depends only on parameters[b]."""
    value = function(parameters).sum()
    (gradient,) = torch.autograd.grad(value, parameters, create_graph=True)
    rows = []
    for j in range(parameters.shape[1]):
        (row,) = torch.autograd.grad(gradient[:, j].sum(), parameters, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros_like(parameters) if row is None else row)
    hessian = torch.stack(rows, 1)
    return 0.5 * (hessian + hessian.transpose(1, 2))


def _positive_part(matrix: Tensor) -> Tensor:
    """The symmetric matrices [B,n,n] with negative eigenvalues set to 0 (NaN where not finite)."""
    finite = torch.isfinite(matrix).all(-1).all(-1)
    identity = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device).expand_as(matrix)
    values, vectors = torch.linalg.eigh(torch.where(finite[:, None, None], matrix, identity))
    positive = vectors @ torch.diag_embed(values.clamp_min(0.0)) @ vectors.transpose(1, 2)
    return torch.where(finite[:, None, None], positive, torch.full_like(positive, math.nan))


def _inverse(matrix: Tensor) -> Tensor:
    """Inverses [B,n,n] of matrices [B,n,n], NaN where singular or not finite."""
    finite = torch.isfinite(matrix).all(-1).all(-1)
    identity = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device).expand_as(matrix)
    inverse, info = torch.linalg.inv_ex(torch.where(finite[:, None, None], matrix, identity))
    good = finite & (info == 0)
    return torch.where(good[:, None, None], inverse, torch.full_like(inverse, math.nan))
