"""A soft, differentiable silhouette rasterizer for triangle meshes, batched over poses (CPU and CUDA).

Palazzi et al.'s idea: a pixel's membership in a projected triangle is a smooth function of where it
lies relative to the triangle's three edges, and the silhouette aggregates the memberships over all
triangles. Here the membership of pixel p in triangle i is the product over its edges of
sigmoid(sharpness * d_e(p)), with d_e the signed distance in pixels from p to edge e (positive
inside), and the silhouette is the probabilistic union 1 - prod_i (1 - m_i), accumulated in log
space. High sharpness (per pixel) tends to the hard rasterizer's pixel-centre test
(drone_pose.data.rasterize); low sharpness blurs the outline over about 4 / sharpness pixels,
which widens the basin of a pose refinement.

Only (triangle, pixel) pairs within `cutoff / sharpness` pixels of a triangle's bounding box are
evaluated (the rest contribute less than sigmoid(-cutoff)); the pairs are chosen without
gradients from the current projection, and the memberships are differentiable with respect to the
projected vertices, so with respect to R, t and K.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from drone_pose.render.image_window import ImageWindow

NEAR_PLANE_M = 1e-3
DEFAULT_CUTOFF = 5.0  # sigmoid(-5) = 0.0067: membership neglected beyond 5 / sharpness pixels
MAX_PAIRS = 20_000_000  # (triangle, pixel) pairs per call: bounds memory for huge projections


def project_to_window(vertices: Tensor, R: Tensor, t: Tensor, K_window: Tensor) -> tuple[Tensor, Tensor]:
    """Window pixels [B,Nv,2] and depths [B,Nv] metres of model vertices [Nv,3] (drone frame,
    metres) at poses camera<-drone R [B,3,3], t [B,3], through window intrinsics K_window [B,3,3]."""
    camera = vertices @ R.transpose(1, 2) + t[:, None, :]  # [B,Nv,3]
    depth = camera[..., 2]
    safe_depth = torch.where(depth > NEAR_PLANE_M, depth, torch.full_like(depth, NEAR_PLANE_M))
    homogeneous = camera @ K_window.transpose(1, 2)
    return homogeneous[..., :2] / safe_depth[..., None], depth


def render_silhouette(
    vertices: Tensor,
    faces: Tensor,
    R: Tensor,
    t: Tensor,
    K: Tensor,
    window: ImageWindow,
    sharpness: float,
    cull_back_faces: bool = False,
    cutoff: float = DEFAULT_CUTOFF,
) -> Tensor:
    """Soft silhouettes [B,window.height,window.width] in [0, 1] of the mesh (vertices [Nv,3]
    metres in the drone frame, faces [F,3] int64) at poses camera<-drone (R [B,3,3], t [B,3])
    seen through image intrinsics K [B,3,3] or [3,3], on the window's pixel grid.

    sharpness: per window pixel (the sigmoid's slope on distances in window pixels).
    cull_back_faces: leave out triangles turned away from the camera; exact only for closed meshes
    with outward normals (DroneModel.closed_outward), where it halves the work.
    """
    K_window = window.intrinsics(K.to(R.dtype))
    uv, depth = project_to_window(vertices.to(R.dtype), R, t, K_window)
    return soft_rasterize(uv, depth, faces, window.width, window.height, sharpness, cull_back_faces, cutoff)


def soft_rasterize(
    uv: Tensor,
    depth: Tensor,
    faces: Tensor,
    width: int,
    height: int,
    sharpness: float,
    cull_back_faces: bool = False,
    cutoff: float = DEFAULT_CUTOFF,
) -> Tensor:
    """Soft silhouettes [B,height,width] of triangles faces [F,3] over projected vertices uv
    [B,Nv,2] (pixels of this grid, centres at integer coordinates) with depths [B,Nv] metres.

    Triangles with a vertex nearer than NEAR_PLANE_M are left out, as are degenerate ones.
    """
    if sharpness <= 0:
        raise ValueError(f"sharpness must be > 0 per pixel, got {sharpness}")
    batch = uv.shape[0]
    triangles = uv[:, faces]  # [B,F,3,2]
    batch_index, face_index, pixel_x, pixel_y = _candidate_pairs(
        triangles.detach(), depth.detach()[:, faces], width, height, cutoff / sharpness, cull_back_faces
    )
    log_outside = torch.zeros(batch * height * width, dtype=uv.dtype, device=uv.device)
    if batch_index.numel():
        lines = (sharpness * _edge_lines(triangles)).reshape(-1, 9)  # [B*F,9]
        coefficients = lines.index_select(0, batch_index * faces.shape[0] + face_index).view(-1, 3, 3)
        x, y = pixel_x.to(uv.dtype)[:, None], pixel_y.to(uv.dtype)[:, None]
        scaled_distance = coefficients[..., 0] * x + coefficients[..., 1] * y + coefficients[..., 2]
        log_membership = F.logsigmoid(scaled_distance).sum(-1)
        log_membership = log_membership.clamp(max=-1e-6)  # a pixel deep inside: membership 1 - 1e-6
        log_not_member = _log1mexp(log_membership)
        flat_pixel = (batch_index * height + pixel_y) * width + pixel_x
        log_outside = log_outside.index_add(0, flat_pixel, log_not_member)
    return -torch.expm1(log_outside).view(batch, height, width)


def _edge_lines(triangles: Tensor) -> Tensor:
    """Edge lines [B,F,3,3] of triangles [B,F,3,2] px: (a, b, c) per edge such that a x + b y + c is
    the signed distance in px from (x, y) to the edge's line, positive inside whatever the winding."""
    start = triangles
    edge = triangles.roll(-1, dims=2) - start  # [B,F,3,2]
    e0, e1 = edge[:, :, 0], edge[:, :, 1]
    orientation = torch.sign(e0[..., 0] * e1[..., 1] - e0[..., 1] * e1[..., 0])  # [B,F]: +1 counter-clockwise
    scale = orientation[..., None] / torch.linalg.vector_norm(edge, dim=-1).clamp_min(1e-9)  # [B,F,3]
    a = -edge[..., 1] * scale
    b = edge[..., 0] * scale
    c = (edge[..., 1] * start[..., 0] - edge[..., 0] * start[..., 1]) * scale
    return torch.stack((a, b, c), -1)


def _log1mexp(log_p: Tensor) -> Tensor:
    """log(1 - exp(log_p)) for log_p < 0, accurate on both sides of log 2 (Maechler's rule)."""
    return torch.where(
        log_p > -0.6931471805599453,
        torch.log(-torch.expm1(log_p)),
        torch.log1p(-torch.exp(log_p)),
    )


@torch.no_grad()
def _candidate_pairs(
    triangles: Tensor, depths: Tensor, width: int, height: int, margin: float, cull_back_faces: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(batch, face, pixel x, pixel y) index tensors [P] of the pixels within `margin` px of each
    usable triangle's bounding box (triangles [B,F,3,2] px, depths [B,F,3] metres)."""
    e0 = triangles[:, :, 1] - triangles[:, :, 0]
    e1 = triangles[:, :, 2] - triangles[:, :, 0]
    signed_area = e0[..., 0] * e1[..., 1] - e0[..., 1] * e1[..., 0]  # [B,F], twice the area
    usable = (
        (depths.amin(-1) > NEAR_PLANE_M)
        & (signed_area.abs() > 1e-9)
        & torch.isfinite(triangles).all(-1).all(-1)
    )
    if cull_back_faces:
        # Image y points down, so a face whose model winding is counter-clockwise seen from outside
        # appears clockwise in pixels: negative signed area faces the camera.
        usable &= signed_area < 0
    low = (triangles.amin(2) - margin).ceil()
    high = (triangles.amax(2) + margin).floor()
    limit = torch.tensor([width - 1, height - 1], dtype=low.dtype, device=low.device)
    low = torch.maximum(low, torch.zeros_like(low))
    high = torch.minimum(high, limit)
    extent = (high - low + 1).clamp_min(0)
    usable &= (extent > 0).all(-1)
    batch_index, face_index = torch.nonzero(usable, as_tuple=True)
    low = low[batch_index, face_index].long()
    columns = extent[batch_index, face_index, 0].long()
    counts = columns * extent[batch_index, face_index, 1].long()
    total = int(counts.sum())
    if total > MAX_PAIRS:
        raise ValueError(
            f"the projected mesh needs {total} (triangle, pixel) pairs (limit {MAX_PAIRS}): use a "
            "smaller window resolution or a higher sharpness"
        )
    pair_batch = torch.repeat_interleave(batch_index, counts, output_size=total)
    pair_face = torch.repeat_interleave(face_index, counts, output_size=total)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(total, device=counts.device) - torch.repeat_interleave(
        first, counts, output_size=total
    )
    pair_columns = torch.repeat_interleave(columns, counts, output_size=total)
    pair_low = torch.repeat_interleave(low, counts, dim=0, output_size=total)
    pixel_x = pair_low[:, 0] + local % pair_columns
    pixel_y = pair_low[:, 1] + torch.div(local, pair_columns, rounding_mode="floor")
    return pair_batch, pair_face, pixel_x, pixel_y
