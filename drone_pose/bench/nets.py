"""Keypoint-network benchmark: parameters, GFLOPs, latency and throughput, as a JSON-ready dict.

Each architecture runs as the estimator runs it (`HeatmapPredictor`: normalisation, network,
output aggregation) in inference mode, in the channels_last memory format; on CUDA with fp16
autocast. The whole-estimator figures run the randomly initialised network but decode heatmaps of
a known pose in its place (`KnownPoseHeatmaps`), so decoding and PnP do the work they do on a
trained network's output instead of iterating on random keypoints.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from drone_pose.bench.timing import machine_info, median_ms
from drone_pose.errors import UserError
from drone_pose.nets.build import PRESETS, build_network, count_parameters
from drone_pose.nets.heatmap_codec import gaussian_targets
from drone_pose.nets.predictor import HeatmapPredictor

STUDY_ARCHITECTURES = ("hrnet_lite", "hrnet_w48", "higher_hrnet_w48", "hourglass")


def count_gflops(model: torch.nn.Module, images: torch.Tensor) -> float:
    """Floating-point operations (multiply and add counted apart, i.e. 2 x MACs) of one forward, in 1e9."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(images)
    return counter.get_total_flops() / 1e9


def benchmark_network(
    name: str,
    device: torch.device,
    width: int = 320,
    height: int = 240,
    throughput_batch: int = 8,
    repeats: int = 10,
) -> dict:
    """One architecture on one device: parameters, GFLOPs per image, batch-1 latency, batch-N throughput."""
    network = build_network(name)
    keypoints = network.config.heatmaps
    predictor = HeatmapPredictor(network, keypoints).eval()
    gflops = count_gflops(predictor, torch.rand(1, 3, height, width))
    predictor = predictor.to(device)
    cuda = device.type == "cuda"
    predictor = predictor.to(memory_format=torch.channels_last)

    def forward(batch: torch.Tensor):
        def run() -> None:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                predictor(batch)

        return run

    single = torch.rand(1, 3, height, width, device=device)
    several = torch.rand(throughput_batch, 3, height, width, device=device)
    single = single.contiguous(memory_format=torch.channels_last)
    several = several.contiguous(memory_format=torch.channels_last)
    latency = median_ms(forward(single), device, repeats, warm_up=2)
    batch_ms = median_ms(forward(several), device, max(3, repeats // 2), warm_up=2)
    pipeline_ms = _estimator_ms(network, device, width, height, repeats)
    two_pass_ms = _estimator_ms(network, device, width, height, repeats, second_pass=True)
    flip_ms = _estimator_ms(network, device, width, height, repeats, second_pass=True, flip_test="zoom")
    return {
        "architecture": name,
        "device": str(device),
        "precision": "fp16 autocast" if cuda else "fp32",
        "input": [width, height],
        "parameters_m": round(count_parameters(network) / 1e6, 3),
        "gflops": round(gflops, 3),
        "latency_ms_batch1": round(latency, 3),
        "frames_per_s_batch1": round(1e3 / latency, 1),
        f"throughput_images_per_s_batch{throughput_batch}": round(throughput_batch * 1e3 / batch_ms, 1),
        "estimator_ms_batch1": round(pipeline_ms, 3),
        "estimator_frames_per_s_batch1": round(1e3 / pipeline_ms, 1),
        "estimator_two_pass_ms_batch1": round(two_pass_ms, 3),
        "estimator_two_pass_flip_test_ms_batch1": round(flip_ms, 3),
    }


def benchmark_scene(
    keypoints_3d: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The estimator benchmark's camera and drone: K [3,3] (UAVA focal length, centred), the pose
    R [3,3], t [3] metres (camera <- drone: turned 30 degrees about the camera's y axis, 1.5 m away at
    320 px wide, farther for narrower images so it stays in view) and the keypoints [K,2] px."""
    K = np.array([[252.7, 0.0, width / 2], [0.0, 252.7, height / 2], [0.0, 0.0, 1.0]])
    angle = np.radians(30.0)
    R = np.array([[np.cos(angle), 0.0, np.sin(angle)], [0.0, 1.0, 0.0], [-np.sin(angle), 0.0, np.cos(angle)]])
    t = np.array([0.05, -0.02, 1.5 * 320 / width])
    projected = (keypoints_3d @ R.T + t) @ K.T
    return K, R, t, projected[:, :2] / projected[:, 2:3]


class KnownPoseHeatmaps(nn.Module):
    """Runs `network` (its cost is real) and returns, in place of each output [B,C,h,w], Gaussian
    heatmaps of `keypoints_px` [K,2] (network-input pixels, one drone pose) with the output's shape:
    a stand-in for a trained network's output when only the weights are random."""

    def __init__(self, network: nn.Module, keypoints_px: Tensor, sigma_input_px: float = 8.0) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("keypoints_px", keypoints_px.float())
        self.sigma_input_px = sigma_input_px
        self._maps: dict[tuple, Tensor] = {}  # per output shape, device, dtype: rendered once

    def forward(self, images: Tensor) -> list[Tensor]:
        width = images.shape[-1]
        return [self._heatmaps(output, width / output.shape[-1]) for output in self.network(images)]

    def _heatmaps(self, output: Tensor, stride: float) -> Tensor:
        """The known pose's maps in place of the first K channels of `output` (stride: input px per
        heatmap px)."""
        count = self.keypoints_px.shape[0]
        key = (tuple(output.shape), output.device, output.dtype)
        if key not in self._maps:
            keypoints = self.keypoints_px.expand(output.shape[0], count, 2)
            visible = torch.ones(keypoints.shape[:2], device=output.device)
            sigma = self.sigma_input_px / stride
            self._maps[key] = gaussian_targets(keypoints, visible, output.shape[-2:], stride, sigma).to(
                output.dtype
            )
        maps = self._maps[key]
        return maps if output.shape[1] == count else torch.cat([maps, output[:, count:]], dim=1)


def _estimator_ms(
    network: torch.nn.Module,
    device: torch.device,
    width: int,
    height: int,
    repeats: int,
    second_pass: bool = False,
    flip_test: str = "off",
) -> float:
    """Median time of the whole PoseEstimator path (uint8 image -> pose) for one image, M2ED keypoints;
    second_pass: with the zoomed second pass forced on (every keypoint counts, 3x enlargement);
    flip_test: the estimator's (drone_pose.nets.flip)."""
    from drone_pose.drones import load_drone
    from drone_pose.inference.estimator import PoseEstimator
    from drone_pose.inference.thresholds import EstimatorThresholds
    from drone_pose.nets.zoom import ZoomSettings

    drone = load_drone("m2ed")
    K, _, _, keypoints_px = benchmark_scene(drone.keypoints, width, height)
    estimator = PoseEstimator(
        KnownPoseHeatmaps(network, torch.from_numpy(keypoints_px)),
        drone.keypoints,
        (width, height),
        device=device,
        warm_up=False,
        thresholds=EstimatorThresholds(min_keypoint_confidence=-1.0) if second_pass else None,
        zoom=ZoomSettings(target_px=1e9, max_zoom=3.0) if second_pass else None,
        flip_test=flip_test,
    )
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return median_ms(lambda: estimator.estimate(image, K), device, repeats, warm_up=2)


def run_benchmark(
    architectures: tuple[str, ...] = STUDY_ARCHITECTURES,
    devices: tuple[str, ...] | None = None,
    width: int = 320,
    height: int = 240,
    throughput_batch: int = 8,
    repeats: int = 10,
) -> dict:
    """Every architecture on every device (default: CPU, plus CUDA when available)."""
    unknown = [name for name in architectures if name not in PRESETS]
    if unknown:
        raise UserError(f"unknown architectures {unknown}; presets: {', '.join(PRESETS)}")
    if devices is None:
        devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    results = [
        benchmark_network(name, torch.device(device), width, height, throughput_batch, repeats)
        for device in devices
        for name in architectures
    ]
    return {
        "benchmark": "net",
        "machine": machine_info(),
        "results": results,
    }
