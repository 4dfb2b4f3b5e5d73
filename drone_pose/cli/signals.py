"""SIGTERM and SIGHUP stop a command the way Ctrl-C does.

Python's default SIGTERM ends the process at once: no `finally` runs, so the processes a command
started (the demo's tracker and replay, synth's render workers, bench tracker's node) keep running
and temporary outputs stay. Raised as KeyboardInterrupt instead, the command's own clean-up runs
(children are sent SIGINT, waited for, killed if they hang; half-written outputs removed) and the
command exits with 128 + the signal number, as a shell reports a process ended by that signal.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

PASSED_ON = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A SIGTERM or SIGHUP received while a command ran (a KeyboardInterrupt, so the same clean-up
    that Ctrl-C triggers runs)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def run_stoppable(command: Callable[[], int], name: str = "drone-pose") -> int:
    """command()'s exit status; after Ctrl-C, SIGTERM or SIGHUP (and the command's clean-up) one
    line on stderr and 128 + the signal number. Handlers are installed in the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return command()

    def stop(signum: int, frame: object) -> None:
        raise Stopped(signum)

    previous = {signum: signal.signal(signum, stop) for signum in PASSED_ON}
    # Ctrl-C raises KeyboardInterrupt even where SIGINT was inherited as ignored (a command started
    # in the background by a script): an explicit SIGINT always stops it, as SIGTERM does.
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return command()
    except KeyboardInterrupt as interrupt:
        signum = interrupt.signum if isinstance(interrupt, Stopped) else signal.SIGINT
        print(f"{name}: {signal.Signals(signum).name}: stopped", file=sys.stderr)
        return 128 + signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
