"""Fixtures for tests that talk over real DDS: an rclpy context and helper processes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

PROCESSES_DIR = Path(__file__).resolve().parent / "processes"


@pytest.fixture
def ros_context() -> Iterator[Context]:
    """An initialised rclpy context, shut down after the test."""
    context = Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        context.try_shutdown()


@pytest.fixture
def ros_node(
    ros_context: Context, request: pytest.FixtureRequest
) -> Iterator[tuple[Node, SingleThreadedExecutor]]:
    """A node in the test process and the executor that spins it."""
    node = Node(f"test_{request.node.name}".replace("[", "_").replace("]", "")[:60], context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    try:
        yield node, executor
    finally:
        executor.remove_node(node)
        node.destroy_node()
        executor.shutdown()


def spin_until(executor: SingleThreadedExecutor, done: Callable[[], bool], timeout_s: float) -> bool:
    """Spin until done() is true or timeout_s passes; returns done()."""
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.02)
    return done()


@pytest.fixture
def start_process() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start a helper script from test/ros/processes in its own process; killed after the test."""
    started: list[subprocess.Popen] = []

    def start(script: str, *args: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, str(PROCESSES_DIR / script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
