"""Drone models (keypoints, ADD diagonal, mesh): the ground floor every layer builds on."""

from drone_pose.drones.loading import available_drones, load_drone
from drone_pose.drones.model import DroneModel, DroneModelError

__all__ = ["DroneModel", "DroneModelError", "available_drones", "load_drone"]
