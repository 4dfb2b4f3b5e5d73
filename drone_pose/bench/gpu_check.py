"""Every GPU figure of the real-time work in one JSON (tools/gpu_check.sh runs it on a GPU machine).

Sections: `estimator` (the shipped checkpoints at batch 1 and 4, CUDA graphs on and off: wall time
and stage times), `networks` (eager pass, the estimator's graphed pass and a bare graph replay per
preset and batch), `pnp` (solve_pnp per batch: time, iterations, aten operations, kernel launches,
host synchronisations), `train` (trainer steps per second: HRNet-W48 with l_p, HigherHRNet-W48
with l_h). Runs on the CPU too (small sizes with --quick) so that it is tested where CI runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from drone_pose.bench import timing
from drone_pose.bench.pnp_problems import uava_problems
from drone_pose.bench.timing import machine_info
from drone_pose.bench.train import benchmark_training
from drone_pose.data.synth import render_scene
from drone_pose.drones import load_drone
from drone_pose.inference.estimator import PoseEstimator
from drone_pose.nets.build import build_network
from drone_pose.nets.cuda_graphs import GraphedPass
from drone_pose.nets.predictor import HeatmapPredictor
from drone_pose.pnp import solve_pnp

SECTIONS = ("estimator", "networks", "pnp", "train")
UAVA_K = np.array([[252.7, 0.0, 160.0], [0.0, 252.7, 120.0], [0.0, 0.0, 1.0]])


class AtenCounter(TorchDispatchMode):
    """Counts the aten operations dispatched inside it (the cost that rules small batches)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def median_ms(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """timing.median_ms after 3 warm-up calls, rounded to microseconds."""
    return round(timing.median_ms(run, device, repeats, warm_up=3), 3)


def estimator_figures(device: torch.device, drones: tuple[str, ...], repeats: int) -> dict[str, Any]:
    """The shipped estimators per drone, batch 1 and 4, graphs on/off: wall and stage medians (ms)."""
    rows = {}
    R = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # facing the camera
    for drone, depth in (("m2ed", 3.0), ("tello", 1.5)):
        if drone not in drones:
            continue
        image = render_scene(
            load_drone(drone), R, np.array([0.1, 0.05, depth]), UAVA_K, 320, 240, seed=1
        ).image
        for graphs in (True, False) if device.type == "cuda" else (False,):
            estimator = PoseEstimator.from_checkpoint(drone=drone, device=device, cuda_graphs=graphs)
            for batch in (1, 4):
                images, K = np.stack([image] * batch), np.stack([UAVA_K] * batch)
                stages: dict[str, list[float]] = {}
                result = None

                def estimate(images=images, K=K, stages=stages, estimator=estimator):
                    nonlocal result
                    result = estimator.estimate(images, K)
                    for key, value in result.timings_ms.items():
                        stages.setdefault(key, []).append(value)

                wall = median_ms(estimate, device, repeats)
                rows[f"{drone}_b{batch}_graphs_{'on' if graphs else 'off'}"] = {
                    "wall_ms": wall,
                    **{key: round(statistics.median(values[3:]), 3) for key, values in stages.items()},
                    "valid": bool(result.valid.all()),
                    "zoomed": bool(result.zoomed.any()),
                }
    return rows


def network_figures(
    device: torch.device, presets: tuple[str, ...], batches: tuple[int, ...], repeats: int
) -> dict[str, Any]:
    """Per preset and batch: eager fp16 pass, the estimator's GraphedPass, and a bare graph replay."""
    rows: dict[str, Any] = {}
    cuda = device.type == "cuda"
    for name in presets:
        network = build_network(name)
        predictor = HeatmapPredictor(network, 9).eval().to(device).to(memory_format=torch.channels_last)

        def eager(images: torch.Tensor, predictor=predictor) -> torch.Tensor:
            with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                return predictor(images.contiguous(memory_format=torch.channels_last))

        row = {}
        for batch in batches:
            images = torch.rand(batch, 3, 240, 320, device=device)
            with torch.inference_mode():
                row[f"eager_ms_b{batch}"] = median_ms(lambda images=images: eager(images), device, repeats)
                if cuda:
                    graphed = GraphedPass(eager)
                    row[f"graphed_ms_b{batch}"] = median_ms(lambda g=graphed, x=images: g(x), device, repeats)
                    bare = bare_graph(eager, images)
                    row[f"bare_replay_ms_b{batch}"] = median_ms(bare.replay, device, repeats)
                    row[f"graphed_over_bare_b{batch}"] = round(
                        row[f"graphed_ms_b{batch}"] / max(row[f"bare_replay_ms_b{batch}"], 1e-9), 3
                    )
        rows[name] = row
    return rows


def bare_graph(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.cuda.CUDAGraph:
    """forward(images) captured in a CUDA graph, to be replayed alone (no input copy, no output copy)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            forward(images)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward(images)
    return graph


def pnp_figures(device: torch.device, batches: tuple[int, ...], repeats: int) -> dict[str, Any]:
    """solve_pnp on the device, float32 inputs: time, iterations, aten ops, launches and syncs."""
    rows = {}
    for batch in batches:
        problems = uava_problems(batch, seed=1, dtype=torch.float32)
        x2d, x3d, K = problems.x2d.to(device), problems.x3d.to(device), problems.K.to(device)
        solve = lambda x2d=x2d, x3d=x3d, K=K: solve_pnp(x2d, x3d, K)  # noqa: E731
        ms = median_ms(solve, device, repeats)
        counter = AtenCounter()
        with counter:
            result = solve()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as trace:
            solve()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        events = trace.key_averages()
        launches = sum(
            e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")
        )
        syncs = sum(e.count for e in events if "Synchronize" in e.key)
        copies = sum(e.count for e in events if e.key in ("cudaMemcpyAsync", "cudaMemcpy"))
        rows[str(batch)] = {
            "solve_ms": ms,
            "iterations": int(result.iterations),
            "converged": round(float(result.converged.float().mean()), 4),
            "aten_ops": sum(counter.counts.values()),
            "kernel_launches": launches,
            "synchronize_calls": syncs,
            "memcpy_calls": copies,
        }
    return rows


def train_figures(device: torch.device, quick: bool) -> dict[str, Any]:
    """Trainer steps per second: the study's W48 with l_p and HigherHRNet-W48 with l_h."""
    if quick:
        return {
            "hrnet_lite_pose_b4": benchmark_training(
                "hrnet_lite", "pose", 4, 2, device=device, width=160, height=128
            )
        }
    rows = {}
    for network, phase, batch in (
        ("hrnet_w48", "pose", 24),
        ("hrnet_w48", "pose", 96),
        ("hrnet_w48", "heatmap", 96),
        ("higher_hrnet_w48", "heatmap", 24),
    ):
        rows[f"{network}_{phase}_b{batch}"] = benchmark_training(network, phase, batch, 10, device=device)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Measure the chosen sections and print the report as JSON (progress on stderr)."""
    parser = argparse.ArgumentParser(prog="python -m drone_pose.bench.gpu_check", description=__doc__)
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes (a CPU smoke run)")
    parser.add_argument(
        "--sections",
        nargs="+",
        default=list(SECTIONS),
        choices=SECTIONS,
        help="which figures (default: all)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    quick = args.quick
    report: dict[str, Any] = {"check": "gpu", "machine": machine_info(), "device": str(device), "seconds": {}}
    started = time.perf_counter()
    sections = {
        "estimator": lambda: estimator_figures(
            device, ("m2ed",) if quick else ("m2ed", "tello"), 3 if quick else 30
        ),
        "networks": lambda: network_figures(
            device,
            ("hrnet_lite",) if quick else ("hrnet_lite", "hrnet_small", "hrnet_w48", "higher_hrnet_w48"),
            (1,) if quick else (1, 4, 32),
            3 if quick else 30,
        ),
        "pnp": lambda: pnp_figures(device, (1, 24) if quick else (1, 24, 1024, 8192), 3 if quick else 20),
        "train": lambda: train_figures(device, quick),
    }
    for name in args.sections:
        section_started = time.perf_counter()
        try:
            report[name] = sections[name]()
        except Exception as error:  # one broken section must not cost the others' figures
            report[name] = {"error": f"{type(error).__name__}: {error}"}
        report["seconds"][name] = round(time.perf_counter() - section_started, 1)
        print(
            json.dumps({name: report[name]}), file=sys.stderr, flush=True
        )  # progress, in case of a time-out
    report["seconds"]["total"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
