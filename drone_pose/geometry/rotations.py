"""Rotation helpers in the project's conventions, built on roma.

Rotation matrices R [..., 3, 3] act on column vectors; quaternions are (x, y, z, w) as in ROS
messages and roma. Angles are radians.
"""

from __future__ import annotations

import roma
import torch
from torch import Tensor

# (R - R^T).flatten(-2) entries (2,1), (0,2), (1,0): vee of the antisymmetric part
_VEE = [7, 2, 3]


def geodesic_angle(R_a: Tensor, R_b: Tensor) -> Tensor:
    """Angle of the rotation R_a^T R_b, in [0, pi] radians: [..., 3, 3] x2 -> [...]."""
    return roma.rotmat_geodesic_distance(R_a, R_b)


def matrix_to_rotation_vector(R: Tensor) -> Tensor:
    """Rotation vectors [..., 3] (angle in [0, pi] radians times the unit axis) of rotation
    matrices [..., 3, 3]; as roma.rotmat_to_rotvec, in a few batched ops (it runs per fused pose).

    With v = vee(R - R^T) / 2 = sin(theta) axis and cos(theta) = (tr R - 1) / 2, theta = atan2(|v|,
    cos), and the vector is v theta / |v| up to 90 degrees. Beyond, where |v| loses precision, the
    axis is the largest column of R + R^T - 2 cos(theta) I = 2 (1 - cos(theta)) axis axis^T,
    signed to agree with v.
    """
    antisymmetric = (R - R.transpose(-1, -2)).flatten(-2)
    v = 0.5 * antisymmetric[..., _VEE]
    trace = R.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)
    sine = v.norm(dim=-1, keepdim=True)
    theta = torch.atan2(sine, 0.5 * (trace - 1.0))
    small = v * (theta / sine.clamp_min(torch.finfo(R.dtype).tiny))
    symmetric = (
        R + R.transpose(-1, -2) - (trace - 1.0).unsqueeze(-1) * torch.eye(3, dtype=R.dtype, device=R.device)
    )
    largest = symmetric.diagonal(dim1=-2, dim2=-1).argmax(-1, keepdim=True)  # [..., 1]
    column = torch.take_along_dim(symmetric, largest.unsqueeze(-1), dim=-1).squeeze(-1)
    column = torch.where((column * v).sum(-1, keepdim=True) < 0, -column, column)
    large = column * (theta / column.norm(dim=-1, keepdim=True))
    return torch.where(trace < 1.0, large, small)  # cos(theta) < 0 beyond 90 degrees


def matrix_to_quaternion_xyzw(R: Tensor) -> Tensor:
    """Unit quaternion (x, y, z, w) [..., 4] of rotation matrices [..., 3, 3], with w >= 0."""
    q = roma.rotmat_to_unitquat(R)
    return torch.where(q[..., 3:4] < 0, -q, q)


def quaternion_xyzw_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] of quaternions (x, y, z, w) [..., 4]; q is normalised first.

    Raises ValueError for a non-finite or zero-norm quaternion.
    """
    norm = q.norm(dim=-1, keepdim=True)
    if not torch.isfinite(q).all() or (norm < 1e-12).any():
        raise ValueError("quaternion must be finite with non-zero norm")
    return roma.unitquat_to_rotmat(q / norm)


def rotation_error_mask(R: Tensor, tolerance: float = 1e-4) -> Tensor:
    """True where R [..., 3, 3] is not a proper rotation (non-orthonormal, det != 1, non-finite)."""
    finite = torch.isfinite(R).flatten(-2).all(-1)
    safe = torch.where(finite[..., None, None], R, torch.eye(3, dtype=R.dtype, device=R.device))
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    orthonormal_error = (safe.transpose(-1, -2) @ safe - eye).abs().flatten(-2).amax(-1)
    det = torch.linalg.det(safe)
    return ~finite | (orthonormal_error > tolerance) | ((det - 1.0).abs() > tolerance)


def random_rotations(
    count: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Rotations [count, 3, 3] drawn uniformly from SO(3) (normalised Gaussian quaternions)."""
    q = torch.randn(count, 4, generator=generator, dtype=dtype, device=device)
    return roma.unitquat_to_rotmat(q / q.norm(dim=-1, keepdim=True))


def axis_angle_to_matrix(rotvec: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] of rotation vectors [..., 3] (axis times angle, radians)."""
    return roma.rotvec_to_rotmat(rotvec)


def invert_pose(R: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of the rigid transform p -> R p + t: R [...,3,3], t [...,3] -> (R^T, -R^T t)."""
    R_inv = R.transpose(-1, -2)
    return R_inv, -(R_inv @ t.unsqueeze(-1)).squeeze(-1)


def compose_poses(R_ab: Tensor, t_ab: Tensor, R_bc: Tensor, t_bc: Tensor) -> tuple[Tensor, Tensor]:
    """a<-c from a<-b and b<-c: p_a = R_ab (R_bc p_c + t_bc) + t_ab."""
    return R_ab @ R_bc, (R_ab @ t_bc.unsqueeze(-1)).squeeze(-1) + t_ab
