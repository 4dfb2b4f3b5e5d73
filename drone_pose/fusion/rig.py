"""Camera rig geometry: extrinsics cam_from_rig, and poses and covariances moved between frames.

A rig is V cameras with extrinsics T_v = cam_from_rig [V,4,4] (p_cam = R_v p_rig + t_v, metres,
camera optical frame: x right, y down, z forward). A drone pose rig<-drone (R, t) is seen by
camera v as cam<-drone (R_v R, R_v t + t_v). Pose steps and covariances use the PnP convention
(drone_pose.pnp.result): (dt, dw) with the rotation step applied on the left, about the axes of
the frame the pose is expressed in; a rig step (dt, dw) is the camera step (R_v dt, R_v dw).
"""

from __future__ import annotations

import torch
from torch import Tensor


def split_extrinsics(cam_from_rig: Tensor) -> tuple[Tensor, Tensor]:
    """Rotations [...,3,3] and translations [...,3] (metres) of homogeneous transforms [...,4,4]."""
    return cam_from_rig[..., :3, :3], cam_from_rig[..., :3, 3]


def validate_extrinsics(cam_from_rig: Tensor, tolerance: float = 1e-3) -> None:
    """ValueError unless cam_from_rig [...,4,4] holds rigid transforms (finite entries are checked;
    non-finite ones are left to the solvers, which report them per sample)."""
    if cam_from_rig.ndim < 3 or cam_from_rig.shape[-2:] != (4, 4):
        raise ValueError(
            f"cam_from_rig must have shape [V, 4, 4] or [B, V, 4, 4], got {list(cam_from_rig.shape)}"
        )
    finite = torch.isfinite(cam_from_rig).flatten(-2).all(-1)
    T = torch.where(
        finite[..., None, None],
        cam_from_rig,
        torch.eye(4, dtype=cam_from_rig.dtype, device=cam_from_rig.device),
    )
    R = T[..., :3, :3]
    eye = torch.eye(3, dtype=T.dtype, device=T.device)
    orthonormal = (R @ R.transpose(-1, -2) - eye).abs().flatten(-2).amax(-1) <= tolerance
    proper = torch.linalg.det(R) > 0
    bottom = (T[..., 3, :] - T.new_tensor([0.0, 0.0, 0.0, 1.0])).abs().amax(-1) <= tolerance
    bad = ~(orthonormal & proper & bottom)
    if bool(bad.any()):
        index = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(
            f"cam_from_rig{list(index)} is not a rigid transform (its rotation must be orthonormal with "
            "determinant +1 and its last row 0 0 0 1)"
        )


def camera_poses(R: Tensor, t: Tensor, cam_R: Tensor, cam_t: Tensor) -> tuple[Tensor, Tensor]:
    """Poses cam<-drone [B,V,3,3], [B,V,3] of rig<-drone poses R [B,3,3], t [B,3] in cameras with
    cam_from_rig rotations cam_R [B,V,3,3] and translations cam_t [B,V,3]."""
    R_cam = cam_R @ R.unsqueeze(1)
    t_cam = (cam_R @ t[:, None, :, None]).squeeze(-1) + cam_t
    return R_cam, t_cam


def rig_poses(R_cam: Tensor, t_cam: Tensor, cam_R: Tensor, cam_t: Tensor) -> tuple[Tensor, Tensor]:
    """Poses rig<-drone [...,3,3], [...,3] of cam<-drone poses R_cam [...,3,3], t_cam [...,3] seen
    by cameras with cam_from_rig rotations cam_R [...,3,3] and translations cam_t [...,3]."""
    R_t = cam_R.transpose(-1, -2)
    return R_t @ R_cam, (R_t @ (t_cam - cam_t).unsqueeze(-1)).squeeze(-1)


def step_map(cam_R: Tensor) -> Tensor:
    """A [...,6,6] = blockdiag(cam_R, cam_R): camera pose step = A @ rig pose step."""
    A = cam_R.new_zeros(*cam_R.shape[:-2], 6, 6)
    A[..., :3, :3] = cam_R
    A[..., 3:, 3:] = cam_R
    return A


def covariance_to_rig(covariance: Tensor, cam_R: Tensor) -> Tensor:
    """Pose covariances [...,6,6] of camera-frame steps as covariances of rig-frame steps."""
    A = step_map(cam_R)
    return A.transpose(-1, -2) @ covariance @ A
