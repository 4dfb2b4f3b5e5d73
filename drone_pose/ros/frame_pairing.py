"""Images paired with their CameraInfo by stamp, validated, and parked in a one-slot mailbox.

Plain Python (no rclpy), so a second node can reuse it and tests need no DDS. Messages are used
through their fields only: a CameraInfo has `k` (9 numbers), `distortion_model` and `d` (optional:
a pinhole camera without them), `width`, `height` and `header`; an
image arrives as RGB pixels [H,W,3] uint8 with its header (`stamp.sec`, `stamp.nanosec`).

Rules: topics arrive in either order. An image whose CameraInfo of the same stamp has already
arrived is paired at once; otherwise it waits up to `camera_info_wait_s` for it (a newer image or
the timeout ends the wait), then takes the newest CameraInfo (a static camera that publishes it
rarely), or is rejected as missing_camera_info when none has arrived. Stamps must increase
(StampOrder): a repeated or slightly older stamp is rejected, a jump back beyond the tolerance (a
looped bag, a restarted driver, a reset simulation clock) or to zero is a clock reset that clears the
pairing state and carries on. The mailbox holds the newest valid frame only: a frame that replaces
one the worker has not taken is counted as dropped, so the queue never grows.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from drone_pose.geometry.distortion import Distortion, distortion_or_none

CAMERA_INFO_HISTORY = 64
CLOCK_RESET_TOLERANCE_S = 1.0
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


class StampVerdict(Enum):
    """What StampOrder makes of a stamp."""

    IN_ORDER = "in_order"  # newer than every stamp before it (or the first)
    NOT_INCREASING = "not_increasing"  # a duplicate, or older by at most the tolerance: reject it
    CLOCK_RESET = "clock_reset"  # older by more than the tolerance, or zero after non-zero stamps


class StampOrder:
    """The order rule of one stamped stream, with clock resets: plain Python, for any node.

    Stamps (integer ns) must increase. One that is older than the newest seen by more than
    `tolerance_ns`, or zero after non-zero stamps, is a clock reset: the order starts again from it
    (the caller clears whatever it keeps by stamp). Zero means "no stamp" (a driver that does not
    stamp): a run of zero stamps is in order, so such a stream is not rejected frame after frame.
    """

    def __init__(self, tolerance_ns: int) -> None:
        self.tolerance_ns = tolerance_ns
        self.newest: int | None = None

    def check(self, stamp: int) -> StampVerdict:
        """The verdict on `stamp`; IN_ORDER and CLOCK_RESET make it the newest."""
        newest = self.newest
        if newest is None or stamp > newest or (stamp == 0 and newest == 0):
            verdict = StampVerdict.IN_ORDER
        elif stamp == 0 or newest - stamp > self.tolerance_ns:
            verdict = StampVerdict.CLOCK_RESET
        else:
            return StampVerdict.NOT_INCREASING
        self.newest = stamp
        return verdict

    def reset(self) -> None:
        """Forget the stamps seen (the next one is in order)."""
        self.newest = None


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

    counters: shared counter of the node (camera_info_received, frames_dropped, clock_resets);
    reject(reason) is called once for every rejected image; on_clock_reset(previous_ns, stamp_ns)
    once for every clock reset of the image stamps; clock: seconds, monotonic;
    clock_reset_tolerance_s: how far back an image stamp may jump and still be a reorder
    (rejected) rather than a clock reset. Not thread-safe: call the add_* and flush methods from
    one thread (the executor's); the mailbox is the thread boundary.
    """

    def __init__(
        self,
        camera_info_wait_s: float,
        counters: Counter[str],
        reject: Callable[[str], None],
        mailbox: FrameMailbox | None = None,
        clock: Callable[[], float] = time.monotonic,
        history: int = CAMERA_INFO_HISTORY,
        clock_reset_tolerance_s: float = CLOCK_RESET_TOLERANCE_S,
        on_clock_reset: Callable[[int, int], None] | None = None,
    ) -> None:
        self.camera_info_wait_s = camera_info_wait_s
        self.counters = counters
        self.mailbox = mailbox or FrameMailbox()
        self._reject = reject
        self._clock = clock
        self._on_clock_reset = on_clock_reset
        self._infos: deque[tuple[int, Any]] = deque(maxlen=history)
        self._pending: tuple[np.ndarray, Any, float] | None = None  # an image waiting for its CameraInfo
        self._order = StampOrder(0)
        self.clock_reset_tolerance_s = clock_reset_tolerance_s

    @property
    def clock_reset_tolerance_s(self) -> float:
        """How far (s) an image stamp may jump back and still count as a reorder, not a reset."""
        return self._order.tolerance_ns / 1e9

    @clock_reset_tolerance_s.setter
    def clock_reset_tolerance_s(self, seconds: float) -> None:
        self._order.tolerance_ns = round(seconds * 1e9)

    def add_camera_info(self, info: Any) -> None:
        """A CameraInfo arrived; pairs the waiting image of the same stamp.

        A CameraInfo older than the newest kept one by more than the tolerance starts a new
        timeline: the kept ones of the old timeline (newer stamps) are forgotten."""
        self.counters["camera_info_received"] += 1
        stamp = stamp_ns(info.header)
        if self._infos and (stamp == 0 or max(s for s, _ in self._infos) - stamp > self._order.tolerance_ns):
            self._forget_infos_after(stamp)
        self._infos.append((stamp, info))
        pending = self._pending
        if pending is not None and stamp_ns(pending[1]) == stamp:  # the image came first
            self._pending = None
            self._pair(*pending, info)

    def add_image(self, rgb: np.ndarray, header: Any) -> None:
        """An image arrived (RGB [H,W,3] uint8); pairs it now or lets it wait for its CameraInfo."""
        received = self._clock()
        stamp = stamp_ns(header)
        previous = self._order.newest
        verdict = self._order.check(stamp)
        if verdict is StampVerdict.NOT_INCREASING:
            self._reject("stamp_not_increasing")
            return
        if verdict is StampVerdict.CLOCK_RESET:
            self._clock_reset(previous if previous is not None else 0, stamp)
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
        """Forget the waiting image and the stamps seen (deactivate): the next image is in order."""
        self._pending = None
        self._order.reset()

    def _clock_reset(self, previous: int, stamp: int) -> None:
        """The image stamps jumped back from `previous` to `stamp`: the waiting image is paired
        (or rejected) as if its wait had ended, the CameraInfo of the old timeline is forgotten."""
        self.counters["clock_resets"] += 1
        self.flush_pending()
        self._forget_infos_after(stamp)
        if self._on_clock_reset is not None:
            self._on_clock_reset(previous, stamp)

    def _forget_infos_after(self, stamp: int) -> None:
        """Drop the kept CameraInfo stamped later than `stamp` plus the tolerance (an old timeline)."""
        limit = stamp + self._order.tolerance_ns
        kept = [(s, info) for s, info in self._infos if s <= limit]
        self._infos.clear()
        self._infos.extend(kept)

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
        if self.mailbox.put(Frame(np.ascontiguousarray(rgb), K, header, received, distortion)):
            self.counters["frames_dropped"] += 1
