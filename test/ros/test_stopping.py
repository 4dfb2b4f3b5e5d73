"""Commands that start processes, stopped with SIGTERM: they exit and leave no process behind.

Each command runs in its own session; its descendants are the session's other processes (found in
/proc: a child re-parented to init after its parent died still belongs to the session).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def session_processes(session: int) -> dict[int, str]:
    """Live (not zombie) processes of a session: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        state, _, _, sid = stat[stat.rindex(")") + 2 :].split()[:4]
        if int(sid) == session and state != "Z":
            found[int(entry.name)] = command
    return found


def stop_with_sigterm(
    arguments: list[str],
    started,
    timeout_s: float = 120.0,
    stop: signal.Signals = signal.SIGTERM,
    sigint_ignored: bool = False,
) -> tuple[int, dict[int, str]]:
    """Start `drone-pose ARGUMENTS` in its own session (with SIGINT inherited as ignored, as a
    script's background job has it, when sigint_ignored), wait until started(processes) is true of
    its session's processes, send it `stop`; returns its exit status and the session's survivors."""
    process = subprocess.Popen(
        [sys.executable, "-m", "drone_pose.cli", *arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while not started(session_processes(process.pid)):
            assert process.poll() is None, f"ended before it was stopped: {process.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "its child processes did not start in time"
            time.sleep(0.1)
        process.send_signal(stop)
        status = process.wait(timeout=60)
        deadline = time.monotonic() + 5.0  # children exiting after their parent
        while session_processes(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        return status, session_processes(process.pid)
    finally:
        for pid in session_processes(process.pid):
            os.kill(pid, signal.SIGKILL)  # whatever survived, so that the test leaks nothing
        if process.poll() is None:
            process.wait()


@pytest.mark.ros
def test_demo_stopped_with_sigterm_stops_its_tracker_and_replay(tmp_path):
    def replaying(processes: dict[int, str]) -> bool:
        return any("tracker_node" in c for c in processes.values()) and any(
            " replay " in c for c in processes.values()
        )

    arguments = ["demo", "--seconds", "10", "--rate", "5", "--out", str(tmp_path / "demo")]
    status, survivors = stop_with_sigterm(arguments, replaying)
    assert survivors == {}
    assert status == 128 + signal.SIGTERM


def test_synth_bag_stopped_with_sigterm_stops_its_workers_and_removes_the_bag(tmp_path):
    bag = tmp_path / "bag"
    arguments = ["synth-bag", "--seconds", "60", "--workers", "2", "--out", str(bag)]
    status, survivors = stop_with_sigterm(arguments, lambda processes: len(processes) >= 3)
    assert survivors == {}
    assert status == 128 + signal.SIGTERM
    assert not bag.exists()


def test_synth_stopped_with_sigterm_stops_its_workers(tmp_path):
    out = tmp_path / "data"
    arguments = ["synth", "--drone", "tello", "--count", "400", "--shard-size", "4", "--workers", "2"]
    arguments += ["--width", "96", "--height", "72", "--out", str(out)]
    status, survivors = stop_with_sigterm(arguments, lambda _: len(list(out.glob("*.npz"))) >= 2)
    assert survivors == {}
    assert status == 128 + signal.SIGTERM
    assert not (out / "dataset.json").exists()


def test_sigint_stops_a_command_that_inherited_it_ignored(tmp_path):
    """A command started in the background by a script inherits SIGINT ignored; an explicit SIGINT
    (a launcher's or a test's) still stops it and its workers."""
    bag = tmp_path / "bag"
    arguments = ["synth-bag", "--seconds", "60", "--workers", "2", "--out", str(bag)]
    status, survivors = stop_with_sigterm(
        arguments, lambda processes: len(processes) >= 3, stop=signal.SIGINT, sigint_ignored=True
    )
    assert survivors == {}
    assert status == 128 + signal.SIGINT
    assert not bag.exists()
