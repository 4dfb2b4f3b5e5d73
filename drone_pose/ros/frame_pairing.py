"""Images paired with their CameraInfo by stamp, validated, and parked in a one-slot mailbox.

Plain Python (no rclpy), so a second node can reuse it and tests need no DDS. Messages are used
through their fields only: a CameraInfo has `k` (9 numbers), `distortion_model` and `d` (optional:
a pinhole camera without them), `width`, `height` and `header`; an
image arrives as RGB pixels [H,W,3] uint8 with its header (`stamp.sec`, `stamp.nanosec`).

Rules: topics arrive in either order. An image whose CameraInfo of the same stamp has already
arrived is paired at once; otherwise it waits up to `camera_info_wait_s` for it (a newer image or
the timeout ends the wait), then takes the newest CameraInfo (a static camera that publishes it
rarely), or is rejected as missing_camera_info when none has arrived. Stamps must increase. The
mailbox holds the newest valid frame only: a frame that replaces one the worker has not taken is
counted as dropped, so the queue never grows.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from drone_pose.geometry.distortion import Distortion, distortion_or_none

CAMERA_INFO_HISTORY = 64
# Reasons FramePairing rejects an image for (the node adds its decoding rejections).
PAIRING_REJECTIONS = (
    "stamp_not_increasing",
    "missing_camera_info",
    "bad_camera_info",
    "camera_info_size_mismatch",
    "image_too_small",
)
MIN_IMAGE_SIDE_PX = 8


@dataclass
class Frame:
    """A validated input: RGB pixels [H,W,3] uint8, intrinsics K [3,3], header, receive time (s,
    the pairing's clock) and the lens distortion of the CameraInfo (None: a pinhole camera)."""

    rgb: np.ndarray
    K: np.ndarray
    header: Any
    received: float
    distortion: Distortion | None = None


def stamp_ns(header: Any) -> int:
    """A header's stamp in integer nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def intrinsics_of(info: Any) -> np.ndarray:
    """K [3,3] of a CameraInfo; ValueError when it is not a usable pinhole matrix."""
    K = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], (0, 0, 1)):
        raise ValueError("camera_info K is not a finite pinhole matrix with positive focal lengths")
    return K


def distortion_of(info: Any) -> Distortion | None:
    """The lens distortion of a CameraInfo (`distortion_model`, `d`), None for a pinhole camera (no
    model and no coefficients, or all coefficients 0); ValueError when the model is not supported or
    a coefficient is not finite (drone_pose.geometry.distortion)."""
    model = str(getattr(info, "distortion_model", ""))
    try:
        return distortion_or_none(model, np.asarray(getattr(info, "d", ()), dtype=np.float64))
    except ValueError as error:
        raise ValueError(f"camera_info {error}") from error


class FrameMailbox:
    """A thread-safe slot for the newest frame: the producer puts, one worker takes."""

    def __init__(self) -> None:
        self._slot: Frame | None = None
        self._open = True
        self._condition = threading.Condition()

    def put(self, frame: Frame) -> bool:
        """Park `frame`; True when it replaced a frame nobody took (that one is dropped). A closed
        mailbox drops `frame` (returns True)."""
        with self._condition:
            if not self._open:
                return True
            replaced = self._slot is not None
            self._slot = frame
            self._condition.notify()
            return replaced

    def take(self, timeout_s: float) -> Frame | None:
        """The parked frame, waiting up to timeout_s for one; None on timeout or when closed."""
        with self._condition:
            if self._slot is None and self._open:
                self._condition.wait(timeout=timeout_s)
            frame, self._slot = self._slot, None
            return frame

    def close(self) -> None:
        """Drop the parked frame and wake the worker; take() returns None until reopen()."""
        with self._condition:
            self._open = False
            self._slot = None
            self._condition.notify_all()

    def reopen(self) -> None:
        """Accept frames again (an activate after a close)."""
        with self._condition:
            self._open = True


class FramePairing:
    """Pairs images with CameraInfo by stamp and parks each valid frame in a FrameMailbox.

    counters: shared counter of the node (camera_info_received, frames_dropped); reject(reason) is
    called once for every rejected image; clock: seconds, monotonic. Not thread-safe: call the add_*
    and flush methods from one thread (the executor's); the mailbox is the thread boundary.
    """

    def __init__(
        self,
        camera_info_wait_s: float,
        counters: Counter[str],
        reject: Callable[[str], None],
        mailbox: FrameMailbox | None = None,
        clock: Callable[[], float] = time.monotonic,
        history: int = CAMERA_INFO_HISTORY,
    ) -> None:
        self.camera_info_wait_s = camera_info_wait_s
        self.counters = counters
        self.mailbox = mailbox or FrameMailbox()
        self._reject = reject
        self._clock = clock
        self._infos: deque[tuple[int, Any]] = deque(maxlen=history)
        self._pending: tuple[np.ndarray, Any, float] | None = None  # an image waiting for its CameraInfo
        self._last_stamp = -1

    def add_camera_info(self, info: Any) -> None:
        """A CameraInfo arrived; pairs the waiting image of the same stamp."""
        self.counters["camera_info_received"] += 1
        stamp = stamp_ns(info.header)
        self._infos.append((stamp, info))
        pending = self._pending
        if pending is not None and stamp_ns(pending[1]) == stamp:  # the image came first
            self._pending = None
            self._pair(*pending, info)

    def add_image(self, rgb: np.ndarray, header: Any) -> None:
        """An image arrived (RGB [H,W,3] uint8); pairs it now or lets it wait for its CameraInfo."""
        received = self._clock()
        stamp = stamp_ns(header)
        pending = self._pending
        if stamp <= self._last_stamp or (pending is not None and stamp <= stamp_ns(pending[1])):
            self._reject("stamp_not_increasing")
            return
        exact = next((info for info_stamp, info in reversed(self._infos) if info_stamp == stamp), None)
        if exact is not None:
            self._pair(rgb, header, received, exact)
            return
        self.flush_pending()  # a newer image ends the previous one's wait
        self._pending = (rgb, header, received)

    def flush_pending(self, max_age_s: float = 0.0) -> None:
        """Pair the waiting image with the newest CameraInfo once it has waited max_age_s."""
        pending = self._pending
        if pending is None or self._clock() - pending[2] < max_age_s:
            return
        self._pending = None
        if not self._infos:
            self._reject("missing_camera_info")
            return
        self._pair(*pending, self._infos[-1][1])

    def flush_expired(self) -> None:
        """flush_pending for an image that has waited camera_info_wait_s (the node's timer)."""
        self.flush_pending(self.camera_info_wait_s)

    def clear(self) -> None:
        """Forget the waiting image (deactivate)."""
        self._pending = None

    def _pair(self, rgb: np.ndarray, header: Any, received: float, info: Any) -> None:
        """Validate an image with its CameraInfo and park it in the mailbox."""
        try:
            K = intrinsics_of(info)
            distortion = distortion_of(info)
        except ValueError:
            self._reject("bad_camera_info")
            return
        if (int(info.width), int(info.height)) != (rgb.shape[1], rgb.shape[0]):
            self._reject("camera_info_size_mismatch")
            return
        if min(rgb.shape[:2]) < MIN_IMAGE_SIDE_PX:
            self._reject("image_too_small")
            return
        self._last_stamp = stamp_ns(header)
        if self.mailbox.put(Frame(np.ascontiguousarray(rgb), K, header, received, distortion)):
            self.counters["frames_dropped"] += 1
