"""Overlay drawing: the drone model at an estimated pose, keypoints and confidences on an image."""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch

from drone_pose.drones import DroneModel
from drone_pose.geometry.distortion import Distortion, distort_pixels

MODEL_COLOUR = (0, 200, 0)
KEYPOINT_COLOUR = (255, 40, 40)
TRUTH_COLOUR = (40, 80, 255)


@functools.lru_cache(maxsize=8)
def _edges(drone: DroneModel) -> np.ndarray:
    """Unique mesh edges [E,2] (every other face, enough for an outline)."""
    faces = drone.faces[::2]
    pairs = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    return np.unique(np.sort(pairs, axis=1), axis=0)


def draw_pose_overlay(
    image: np.ndarray,
    drone: DroneModel,
    R: np.ndarray,
    t: np.ndarray,
    K: np.ndarray,
    keypoints: np.ndarray | None = None,
    confidences: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    scale: int = 1,
    distortion: Distortion | None = None,
) -> np.ndarray:
    """A copy of the RGB image [H,W,3] uint8 (upscaled by `scale`) with the model edges projected at
    the pose (R [3,3], t [3], camera <- drone; green), predicted keypoints [K,2] px (red, with their
    confidences as text when given) and true keypoints [K,2] (blue). With the camera's lens
    `distortion` the model is drawn where the distorted image shows it; keypoints are image pixels
    either way."""
    canvas = (
        cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        if scale != 1
        else image.copy()
    )
    canvas = np.ascontiguousarray(canvas)
    p = drone.vertices @ np.asarray(R, np.float64).T + np.asarray(t, np.float64)
    if np.isfinite(p).all() and (p[:, 2] > 0).all():
        uvw = p @ np.asarray(K, np.float64).T
        ideal = uvw[:, :2] / uvw[:, 2:3]
        if distortion is not None:
            K64 = torch.as_tensor(np.asarray(K, np.float64))
            ideal = distort_pixels(torch.from_numpy(ideal)[None], K64, distortion)[0].numpy()
        uv = np.round((np.clip(np.nan_to_num(ideal, nan=-1e6), -1e6, 1e6) + 0.5) * scale - 0.5).astype(
            np.int32
        )
        for a, b in _edges(drone):
            cv2.line(canvas, tuple(map(int, uv[a])), tuple(map(int, uv[b])), MODEL_COLOUR, 1, cv2.LINE_AA)
    for points, colour in ((truth, TRUTH_COLOUR), (keypoints, KEYPOINT_COLOUR)):
        if points is None:
            continue
        for index, (u, v) in enumerate((np.asarray(points, np.float64) + 0.5) * scale - 0.5):
            if not (np.isfinite(u) and np.isfinite(v)):
                continue
            centre = (round(float(u)), round(float(v)))
            cv2.circle(canvas, centre, 2 + scale, colour, -1, cv2.LINE_AA)
            if confidences is not None and points is keypoints:
                cv2.putText(
                    canvas,
                    f"{float(confidences[index]):.2f}",
                    (centre[0] + 4, centre[1] - 4),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    0.3 * scale,
                    colour,
                    1,
                    cv2.LINE_AA,
                )
    return canvas
