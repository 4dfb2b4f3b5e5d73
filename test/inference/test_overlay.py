"""Overlays: the model is drawn where the (distorted) image shows it."""

from __future__ import annotations

import numpy as np
import torch

from drone_pose.drones import load_drone
from drone_pose.geometry.camera import PinholeCamera, project_points
from drone_pose.geometry.distortion import Distortion, distort_pixels
from drone_pose.inference.overlay import _edges, draw_pose_overlay


def test_the_model_is_drawn_through_the_lens_distortion():
    drone = load_drone("m2ed")
    K = PinholeCamera.uava().resized(640, 480).K(torch.float64)
    distortion = Distortion("plumb_bob", (-0.28, 0.07, 0.0005, -0.0003, 0.0))
    R, t = torch.eye(3, dtype=torch.float64), torch.tensor([0.8, 0.5, 1.5], dtype=torch.float64)
    black = np.zeros((480, 640, 3), np.uint8)
    pinhole, _ = project_points(torch.tensor(drone.vertices), R[None], t[None], K)
    distorted = distort_pixels(pinhole, K, distortion)[0].numpy()
    drawn = np.unique(_edges(drone))  # the vertices the outline joins

    def on_the_outline(canvas: np.ndarray, uv: np.ndarray) -> float:
        """Fraction of the points uv [N,2] within 1 px of a drawn (anti-aliased) pixel."""
        ink = canvas.any(axis=-1)
        ink = np.maximum.reduce([np.roll(ink, (dy, dx), (0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        u, v = np.round(uv).astype(int).T
        inside = (u >= 0) & (u < 640) & (v >= 0) & (v < 480)
        return float(ink[v[inside], u[inside]].mean())

    through_lens = draw_pose_overlay(black, drone, R.numpy(), t.numpy(), K.numpy(), distortion=distortion)
    assert on_the_outline(through_lens, distorted[drawn]) > 0.95
    assert on_the_outline(through_lens, pinhole[0].numpy()[drawn]) < 0.5
    assert np.abs(distorted[drawn] - pinhole[0].numpy()[drawn]).max() > 5
    pinhole_canvas = draw_pose_overlay(black, drone, R.numpy(), t.numpy(), K.numpy())
    assert on_the_outline(pinhole_canvas, pinhole[0].numpy()[drawn]) > 0.95
