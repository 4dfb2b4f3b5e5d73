"""Multi-camera fusion for calibrated rigs: one drone pose rig<-drone from V cameras.

multiview_pnp / multiview_pnp_layer solve (and differentiate) the pose from keypoints in all
views at once; FusedEstimator runs the single-camera estimator on all views in one batch and fuses
them with view gating; drone_pose.fusion.rig moves poses and covariances between camera and rig
frames; drone_pose.fusion.rig_file reads and writes a rig's extrinsics as YAML (docs/fusion.md);
fit_heatmap_gmm compresses keypoint heatmaps to spherical Gaussian mixtures, MetaPose's refiner
input (docs/metapose.md).
drone_pose.fusion.rig_initialisation estimates the extrinsics of an uncalibrated rig from
single-view poses (self-calibration, stage 1; robust averaging in drone_pose.fusion.pose_averaging).
No ROS: the fusion node in drone_pose.ros builds on this package.
"""

from drone_pose.fusion.fused_estimator import FusedEstimate, FusedEstimator
from drone_pose.fusion.heatmap_gmm import HeatmapGMM, fit_heatmap_gmm, gmm_log_likelihood
from drone_pose.fusion.layer import multiview_pnp_layer
from drone_pose.fusion.multiview_pnp import multiview_pnp

__all__ = [
    "FusedEstimate",
    "FusedEstimator",
    "HeatmapGMM",
    "fit_heatmap_gmm",
    "gmm_log_likelihood",
    "multiview_pnp",
    "multiview_pnp_layer",
]
