"""`drone-pose launch`: start a launch plan's processes without `ros2 launch`.

Each node runs as its own process with the plan's `--ros-args` and environment; their output is
prefixed with the node name. Ctrl-C (or SIGTERM) sends SIGINT to every node, waits, then kills what
is left. The exit status is 0 when every node ended cleanly, else the first non-zero status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from drone_pose.ros.launch_plan import LaunchPlan, NodeLaunch, executable_available

STOP_TIMEOUT_S = 10.0


def start_node(node: NodeLaunch, environment: dict[str, str]) -> subprocess.Popen:
    """Start one node; its stdout and stderr are merged and read by the caller."""
    return subprocess.Popen(
        node.command(),
        env={**os.environ, **environment},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )


def stop_process(process: subprocess.Popen | None, timeout_s: float = 15.0) -> None:
    """SIGINT a child that is still running (a ROS node shuts down cleanly), kill it after timeout_s."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _forward_output(name: str, process: subprocess.Popen, write: Callable[[str], None]) -> None:
    for line in process.stdout:
        write(f"[{name}] {line.rstrip()}")


def run_plan(plan: LaunchPlan, write: Callable[[str], None] = print, duration_s: float | None = None) -> int:
    """Start every node of `plan` and wait until they all exit, Ctrl-C, SIGTERM or duration_s."""
    nodes = []
    for node in plan.nodes:
        if executable_available(node):
            nodes.append(node)
        else:
            write(f"[launch] {node.executable} is not installed here: {node.name} is not started")
    processes: list[tuple[NodeLaunch, subprocess.Popen]] = []
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        for node in nodes:
            write(f"[launch] {node.name}: {' '.join(node.command())}")
            process = start_node(node, plan.environment)
            processes.append((node, process))
            threading.Thread(target=_forward_output, args=(node.name, process, write), daemon=True).start()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not stop.is_set() and any(p.poll() is None for _, p in processes):
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop_all(processes, write)
    codes = [p.returncode for _, p in processes]
    for (node, _), code in zip(processes, codes, strict=True):
        write(f"[launch] {node.name} exited with status {code}")
    return next((code for code in codes if code not in (0, -signal.SIGINT)), 0)


def _stop_all(processes: list[tuple[NodeLaunch, subprocess.Popen]], write: Callable[[str], None]) -> None:
    for _, process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for node, process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            write(f"[launch] {node.name} did not stop within {STOP_TIMEOUT_S:.0f} s: killed")
            process.kill()
            process.wait()


def main_launch(name: str, items: list[str], dry_run: bool = False, duration_s: float | None = None) -> int:
    """Entry for `drone-pose launch NAME [arg:=value ...]`."""
    from drone_pose.ros.launch_plan import PLANS, parse_launch_arguments

    if name not in PLANS:
        raise SystemExit(f"drone-pose launch: unknown launch {name!r}; known: {', '.join(PLANS)}")
    plan = PLANS[name](parse_launch_arguments(items))
    if dry_run:
        for key, value in plan.environment.items():
            print(f"{key}={value}")
        for node in plan.nodes:
            print(" ".join(node.command()))
        return 0
    return run_plan(plan, write=lambda line: print(line, flush=True), duration_s=duration_s)


if __name__ == "__main__":
    sys.exit(main_launch(sys.argv[1], sys.argv[2:]))
