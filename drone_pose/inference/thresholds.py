"""EstimatorThresholds: when the estimator calls a pose valid, and how its PnP weighs keypoints.

A plain dataclass with no heavy imports, so that the node's parameter table and the launch plan can
take its defaults without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EstimatorThresholds:
    """Validity thresholds and PnP weighting.

    min_keypoint_confidence: heatmap peak below which a keypoint is ignored; min_keypoints: confident
    keypoints a pose needs; max_reprojection_rms_px: RMS reprojection error (px) of the confident
    keypoints a valid pose may have; max_position_std_m: position standard deviation (m, sqrt of
    the trace of the calibrated covariance's translation block) a valid pose may have, which rejects
    poses the covariance itself calls uncertain; huber_px: PnP's Huber threshold (px, None: plain
    least squares); keypoint_confidence_power: PnP weighs a keypoint by (its peak / the image's best
    peak) ** power (0: confident keypoints equally). The figures behind the defaults are in
    docs/experiments.md (validity gate, confidence-weighted PnP).
    """

    min_keypoint_confidence: float = 0.1
    min_keypoints: int = 6
    max_reprojection_rms_px: float = 8.0
    max_position_std_m: float = 0.1
    huber_px: float | None = 4.0
    keypoint_confidence_power: float = 4.0
