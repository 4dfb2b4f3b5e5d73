"""`drone-pose bench train`: training steps per second, as the trainer runs them, with the step's parts.

Each step is the trainer's own (drone_pose.train.epoch.training_step): autocast (float16 with
gradient scaling on CUDA, bfloat16 on CPU with cpu_bf16), channels_last, the loss of the chosen
phase (heatmap l_h, or the pose loss l_p through the PnP layer), backward and Adam. The images are
random and the keypoints are the M2ED model projected at UAVA-like poses, so the figures measure
the computation, not data loading (which the trainer overlaps with DataLoader workers). With a
random network the pose loss's PnP may iterate longer than on a trained one.
"""

from __future__ import annotations

from typing import Any

import torch

from drone_pose.bench.pnp_problems import uava_problems
from drone_pose.bench.timing import machine_info
from drone_pose.drones import load_drone
from drone_pose.geometry.camera import keypoints_in_image
from drone_pose.nets.build import build_network, count_parameters
from drone_pose.nets.predictor import HeatmapPredictor
from drone_pose.train.config import LossConfig, TrainConfig
from drone_pose.train.epoch import amp_enabled, synchronize, training_step
from drone_pose.train.preparation import TrainingForward, TrainingRun

PHASES = ("heatmap", "pose", "mixture")


def benchmark_training(
    network: str = "hrnet_w48",
    phase: str = "pose",
    batch: int = 24,
    steps: int = 10,
    warm_up: int = 3,
    device: str | torch.device | None = None,
    width: int = 320,
    height: int = 240,
    pnp: str = "bpnp_exact",
    cpu_bf16: bool = False,
) -> dict[str, Any]:
    """Median step time and its parts (ms) and images/s of `steps` training steps after `warm_up`.

    phase: heatmap (l_h), pose (l_p = l_proj + l_reg through the `pnp` layer) or mixture.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = TrainConfig(
        network=network, loss=LossConfig(kind=phase, pnp=pnp), batch_size=batch, cpu_bf16=cpu_bf16
    )
    drone = load_drone("m2ed")
    torch.manual_seed(0)
    predictor = HeatmapPredictor(build_network(config.network), drone.num_keypoints).to(device)
    predictor = predictor.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(predictor.parameters(), lr=config.optim.lr)
    run = TrainingRun(
        config, drone, None, None, (width, height), predictor, TrainingForward(predictor), optimizer, device
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp_enabled(run))
    problems = uava_problems(batch, seed=0, noise_px=0.0)
    keypoints = (problems.x2d * problems.x2d.new_tensor([width / 320, height / 240])).float().to(device)
    K = problems.K.expand(batch, 3, 3).clone()
    K[:, 0] *= width / 320
    K[:, 1] *= height / 240
    K = K.float().to(device)
    x3d = torch.tensor(drone.keypoints, dtype=torch.float64, device=device)
    visibility = keypoints_in_image(keypoints, width, height)
    images = torch.rand(batch, 3, height, width, device=device).contiguous(memory_format=torch.channels_last)
    run.model.train()
    parts: dict[str, list[float]] = {"forward_ms": [], "backward_ms": [], "optimiser_step_ms": []}
    skipped = 0
    for index in range(warm_up + steps):
        synchronize(device)
        step = training_step(run, scaler, images, keypoints, visibility, K, x3d, phase)
        skipped += int(step.skipped)
        if index >= warm_up:
            for key, seconds in zip(parts, step.seconds, strict=True):
                parts[key].append(1e3 * seconds)
    medians = {key: float(torch.tensor(values).median()) for key, values in parts.items()}
    step_ms = sum(medians.values())
    return {
        "network": network,
        "parameters_m": round(count_parameters(predictor) / 1e6, 3),
        "phase": phase,
        "pnp": pnp if phase != "heatmap" else None,
        "batch": batch,
        "image_size": [width, height],
        "device": str(device),
        "autocast": "float16" if amp_enabled(run) else ("bfloat16" if cpu_bf16 else "off"),
        "steps": steps,
        "skipped_steps": skipped,
        **{key: round(value, 2) for key, value in medians.items()},
        "step_ms": round(step_ms, 2),
        "images_per_s": round(batch * 1e3 / step_ms, 1),
    }


def run_benchmark(
    networks: tuple[str, ...],
    phases: tuple[str, ...],
    batch: int,
    steps: int,
    device: str | None,
    width: int,
    height: int,
) -> dict[str, Any]:
    """The report `drone-pose bench train` prints: one row per network and phase."""
    rows = [
        benchmark_training(network, phase, batch, steps, device=device, width=width, height=height)
        for network in networks
        for phase in phases
    ]
    return {"benchmark": "train", "machine": machine_info(), "results": rows}
