"""Synthetic flights: smooth, physically plausible, in view of every camera, with hovers, turns,
approaches and retreats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drone_pose.data.flights import GRAVITY, FlightConfig, make_rig, sample_flight
from drone_pose.drones import load_drone
from drone_pose.geometry.camera import PinholeCamera

K = PinholeCamera.uava().K(torch.float64).numpy()


@pytest.mark.parametrize(("drone_name", "cameras"), [("m2ed", 1), ("m2ed", 4), ("tello", 2)])
def test_flights_are_smooth_plausible_and_seen(drone_name, cameras):
    drone = load_drone(drone_name)
    rig, _ = make_rig(drone, cameras, K, 320, 240)
    flight = sample_flight(drone, rig, 30.0, 30.0, np.random.default_rng(1))
    assert len(flight.times) == 900
    np.testing.assert_allclose(np.linalg.det(flight.R_world_body), 1.0, atol=1e-9)
    step = np.linalg.norm(np.diff(flight.position, axis=0), axis=1)
    assert step.max() < 4.0 / 30  # under 4 m/s everywhere, no jumps
    speed = np.linalg.norm(flight.velocity, axis=1)
    assert (speed < 0.02).mean() > 0.03  # hovers
    assert flight.tilt_deg.max() <= FlightConfig().max_tilt_deg + 1e-6
    assert flight.tilt_deg.max() > 5  # the drone does tilt when it accelerates
    # attitude follows thrust: body z along (a + g) where the tilt limit is not active
    acceleration = np.gradient(flight.velocity, flight.times, axis=0)
    thrust = acceleration + np.array([0.0, 0.0, GRAVITY])
    free = flight.tilt_deg < FlightConfig().max_tilt_deg - 2
    thrust_axis = thrust / np.linalg.norm(thrust, axis=1)[:, None]
    cosine = np.einsum("ij,ij->i", flight.R_world_body[:, :, 2], thrust_axis)
    assert np.median(cosine[free]) > 0.999
    # yaw: fast turns of more than 90 degrees within a second happen
    heading = np.unwrap(np.arctan2(flight.R_world_body[:, 1, 0], flight.R_world_body[:, 0, 0]))
    assert np.abs(heading[30:] - heading[:-30]).max() > np.radians(60)
    low, high = {"m2ed": (30, 150), "tello": (10, 60)}[drone_name]
    for number, camera in enumerate(rig):
        _, t = camera.drone_pose(flight.R_world_body, flight.position)
        assert (t[:, 2] > 0).all()
        size = K[0, 0] * drone.diagonal / t[:, 2]
        assert 0.7 * low < np.percentile(size, 1) < np.percentile(size, 99) < 1.3 * high
        # approaches and retreats, planned along the first camera's view
        assert np.percentile(size, 95) / np.percentile(size, 5) > (1.8 if number == 0 else 1.3)
        uv = t[:, :2] / t[:, 2:] * K[0, 0] + K[:2, 2]
        in_view = ((uv >= 0) & (uv <= [319, 239])).all(1)
        assert in_view.mean() > 0.8


def test_same_seed_same_flight_and_bad_requests():
    drone = load_drone("m2ed")
    rig, _ = make_rig(drone, 1, K, 320, 240)
    a = sample_flight(drone, rig, 5.0, 10.0, np.random.default_rng(4))
    b = sample_flight(drone, rig, 5.0, 10.0, np.random.default_rng(4))
    np.testing.assert_array_equal(a.position, b.position)
    with pytest.raises(ValueError, match="1 to 4 cameras"):
        make_rig(drone, 0, K, 320, 240)
    with pytest.raises(ValueError, match="must be positive"):
        sample_flight(drone, rig, -1.0, 30.0, np.random.default_rng(0))
