"""Timing helpers shared by the benchmark commands: synchronised median wall times, machine facts."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def median_ms(run: Callable[[], object], device: torch.device, repeats: int, warm_up: int = 1) -> float:
    """Median wall time of run() in milliseconds after warm_up calls; CUDA work is synchronised."""
    return statistics.median(wall_times_ms(run, device, repeats, warm_up))


def wall_times_ms(
    run: Callable[[], object], device: torch.device, repeats: int, warm_up: int = 1
) -> list[float]:
    """Wall times [repeats] of run() in milliseconds after warm_up calls; CUDA work is synchronised."""
    for _ in range(warm_up):
        run()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def machine_info() -> dict[str, object]:
    """Platform, processor, torch version and threads, CUDA device: printed with every benchmark."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": torch.multiprocessing.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
