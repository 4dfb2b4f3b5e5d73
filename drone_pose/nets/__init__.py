"""Keypoint heatmap networks (HRNet, HigherHRNet, Stacked Hourglass) and heatmap decoding."""

from drone_pose.nets.build import PRESETS, build_network, count_parameters, network_config
from drone_pose.nets.heatmap_codec import decode_heatmaps, heatmap_to_image, image_to_heatmap

__all__ = [
    "PRESETS",
    "build_network",
    "count_parameters",
    "decode_heatmaps",
    "heatmap_to_image",
    "image_to_heatmap",
    "network_config",
]
