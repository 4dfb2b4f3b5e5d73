"""A tiny, fixed keypoint network and checkpoint for tests about plumbing rather than accuracy."""

from __future__ import annotations

from pathlib import Path

import torch

from drone_pose.drones import load_drone
from drone_pose.inference.checkpoint import make_checkpoint, save_checkpoint
from drone_pose.nets.build import build_network

TINY_NET = {"architecture": "hrnet", "heatmaps": 9, "stem_channels": 16, "stem_planes": 8, "stem_blocks": 1,
            "stages": [{"modules": 1, "blocks": [1, 1], "channels": [16, 32]}]}  # fmt: skip


def tiny_checkpoint(path: str | Path, input_size: tuple[int, int] = (320, 240), drone: str = "m2ed") -> Path:
    """An untrained TINY_NET checkpoint with weights fixed by seed 0 (same file every run)."""
    torch.manual_seed(0)
    checkpoint = make_checkpoint(build_network(TINY_NET), TINY_NET, load_drone(drone), input_size)
    return save_checkpoint(checkpoint, path)
