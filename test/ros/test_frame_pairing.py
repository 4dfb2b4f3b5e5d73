"""Frame pairing by stamp and the one-slot mailbox, as plain Python (no DDS)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from drone_pose.ros.frame_pairing import FrameMailbox, FramePairing, StampOrder

K = (250.0, 0.0, 160.0, 0.0, 250.0, 120.0, 0.0, 0.0, 1.0)


def header(stamp_ns: int) -> SimpleNamespace:
    stamp = SimpleNamespace(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
    return SimpleNamespace(stamp=stamp, frame_id="camera_optical")


def info(stamp_ns: int, k=K, width: int = 320, height: int = 240) -> SimpleNamespace:
    return SimpleNamespace(header=header(stamp_ns), k=k, width=width, height=height)


def image(value: int = 0, width: int = 320, height: int = 240) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


S = 1_000_000_000  # one second in ns


@pytest.fixture
def pairing():
    rejected: list[str] = []
    clock = Clock()
    counters: Counter[str] = Counter()
    pairing = FramePairing(0.1, counters, rejected.append, clock=clock, clock_reset_tolerance_s=1.0)
    return pairing, rejected, clock, counters


def test_camera_info_first_pairs_the_image_at_once(pairing):
    pairing, rejected, _, counters = pairing
    pairing.add_camera_info(info(10))
    pairing.add_image(image(7), header(10))
    frame = pairing.mailbox.take(0.0)
    assert frame is not None
    assert frame.rgb[0, 0, 0] == 7
    assert frame.K[0, 2] == 160.0
    assert rejected == []
    assert counters["camera_info_received"] == 1


def test_image_first_waits_for_its_camera_info(pairing):
    pairing, rejected, clock, _ = pairing
    pairing.add_camera_info(info(5, k=(300.0, 0, 160, 0, 300.0, 120, 0, 0, 1)))
    pairing.add_image(image(), header(10))
    assert pairing.mailbox.take(0.0) is None  # waiting for the CameraInfo of stamp 10
    clock.now = 0.05
    pairing.add_camera_info(info(10))
    frame = pairing.mailbox.take(0.0)
    assert frame.K[0, 0] == 250.0  # its own, not the older one
    assert rejected == []


def test_after_the_wait_the_newest_camera_info_is_used(pairing):
    pairing, rejected, clock, _ = pairing
    pairing.add_camera_info(info(5, k=(300.0, 0, 160, 0, 300.0, 120, 0, 0, 1)))
    pairing.add_image(image(), header(10))
    clock.now = 0.05
    pairing.flush_expired()
    assert pairing.mailbox.take(0.0) is None  # still inside camera_info_wait_s
    clock.now = 0.2
    pairing.flush_expired()
    assert pairing.mailbox.take(0.0).K[0, 0] == 300.0
    assert rejected == []


def test_a_newer_image_ends_the_wait(pairing):
    pairing, rejected, _, counters = pairing
    pairing.add_camera_info(info(1))
    pairing.add_image(image(1), header(10))
    pairing.add_image(image(2), header(20))  # the stamp-10 image takes the newest CameraInfo
    first = pairing.mailbox.take(0.0)
    assert first.rgb[0, 0, 0] == 1
    pairing.add_camera_info(info(20))
    assert pairing.mailbox.take(0.0).rgb[0, 0, 0] == 2
    assert rejected == []
    assert counters["frames_dropped"] == 0


def test_without_any_camera_info_the_image_is_rejected(pairing):
    pairing, rejected, clock, _ = pairing
    pairing.add_image(image(), header(10))
    clock.now = 1.0
    pairing.flush_expired()
    assert rejected == ["missing_camera_info"]
    assert pairing.mailbox.take(0.0) is None


@pytest.mark.parametrize(
    ("camera_info", "pixels", "reason"),
    [
        (info(10, k=(float("nan"),) * 9), image(), "bad_camera_info"),
        (info(10, k=(0.0, 0, 160, 0, 250.0, 120, 0, 0, 1)), image(), "bad_camera_info"),
        (info(10, width=640, height=480), image(), "camera_info_size_mismatch"),
        (info(10, width=4, height=4), image(width=4, height=4), "image_too_small"),
    ],
)
def test_invalid_pairs_are_rejected_with_their_reason(pairing, camera_info, pixels, reason):
    pairing, rejected, _, _ = pairing
    pairing.add_camera_info(camera_info)
    pairing.add_image(pixels, header(10))
    assert rejected == [reason]
    assert pairing.mailbox.take(0.0) is None


def test_stamps_must_increase(pairing):
    pairing, rejected, _, _ = pairing
    for stamp in (10, 20):
        pairing.add_camera_info(info(stamp))
    pairing.add_image(image(), header(20))
    pairing.add_image(image(), header(20))
    pairing.add_image(image(), header(10))
    assert rejected == ["stamp_not_increasing", "stamp_not_increasing"]


def test_the_mailbox_keeps_the_newest_frame_and_counts_the_dropped(pairing):
    pairing, _rejected, _, counters = pairing
    for stamp in (10, 20, 30):
        pairing.add_camera_info(info(stamp))
        pairing.add_image(image(stamp), header(stamp))
    assert counters["frames_dropped"] == 2
    assert pairing.mailbox.take(0.0).rgb[0, 0, 0] == 30
    assert pairing.mailbox.take(0.0) is None


def test_close_wakes_a_waiting_worker():
    mailbox = FrameMailbox()
    taken = []
    worker = threading.Thread(target=lambda: taken.append(mailbox.take(10.0)))
    worker.start()
    time.sleep(0.2)  # the worker is waiting inside take() by now
    mailbox.close()
    worker.join(timeout=2.0)
    assert not worker.is_alive()
    assert taken == [None]
    assert mailbox.put(object()), "a closed mailbox drops what it is given"
    assert mailbox.take(0.0) is None
    mailbox.reopen()
    assert not mailbox.put(frame := object())
    assert mailbox.take(0.0) is frame


def send(pairing: FramePairing, stamp: int, value: int = 0) -> None:
    """A camera driver's frame: its CameraInfo, then the image of the same stamp."""
    pairing.add_camera_info(info(stamp))
    pairing.add_image(image(value), header(stamp))


def test_a_looped_bag_is_a_clock_reset_and_processing_carries_on():
    """Stamps 10..12 s, then 10..12 s again (a bag replayed in a loop): every frame of the second
    pass is paired, the jump is counted once and reported once."""
    rejected, resets, counters = [], [], Counter()
    pairing = FramePairing(
        0.1,
        counters,
        rejected.append,
        on_clock_reset=lambda previous, stamp: resets.append((previous, stamp)),
    )
    taken = []
    for _ in range(2):
        for stamp in (10 * S, 11 * S, 12 * S):
            send(pairing, stamp, value=stamp // S)
            taken.append(pairing.mailbox.take(0.0).rgb[0, 0, 0])
    assert taken == [10, 11, 12, 10, 11, 12]
    assert rejected == []
    assert counters["clock_resets"] == 1
    assert resets == [(12 * S, 10 * S)]


def test_duplicates_and_small_reorders_are_still_rejected(pairing):
    pairing, rejected, _, counters = pairing
    send(pairing, 10 * S)
    send(pairing, 10 * S)  # duplicate
    send(pairing, 10 * S - S // 2)  # 0.5 s older: a reorder within the 1 s tolerance
    send(pairing, 11 * S)
    assert rejected == ["stamp_not_increasing", "stamp_not_increasing"]
    assert counters["clock_resets"] == 0


def test_a_driver_that_stamps_zero_is_not_rejected_forever(pairing):
    """A stream stamped 0 throughout: every frame is paired (zero: no stamp, no order to check);
    stamps falling back to 0 from a running clock are one reset."""
    pairing, rejected, _, counters = pairing
    for value in range(3):
        send(pairing, 0, value)
        assert pairing.mailbox.take(0.0).rgb[0, 0, 0] == value
    assert counters["clock_resets"] == 0
    send(pairing, 5 * S)
    pairing.mailbox.take(0.0)
    for value in range(3):
        send(pairing, 0, value)
        assert pairing.mailbox.take(0.0).rgb[0, 0, 0] == value
    assert rejected == []
    assert counters["clock_resets"] == 1


def test_a_reset_forgets_the_camera_info_of_the_old_timeline(pairing):
    """After a restart (stamps from 100 s back to 1 s), the image waits for its own CameraInfo: the
    old timeline's is forgotten, and the image that was waiting when the clock jumped is paired."""
    pairing, rejected, clock, counters = pairing
    pairing.add_camera_info(info(100 * S, k=(300.0, 0, 160, 0, 300.0, 120, 0, 0, 1)))
    pairing.add_image(image(1), header(101 * S))  # waits for CameraInfo 101 s
    pairing.add_image(image(2), header(1 * S))  # the driver restarted
    assert pairing.mailbox.take(0.0).rgb[0, 0, 0] == 1  # the waiting image took the newest CameraInfo
    assert pairing.mailbox.take(0.0) is None  # no CameraInfo of the new timeline yet
    clock.now = 1.0
    pairing.flush_expired()
    assert rejected == ["missing_camera_info"]
    assert counters["clock_resets"] == 1
    pairing.add_camera_info(info(2 * S))
    pairing.add_image(image(3), header(2 * S))
    assert pairing.mailbox.take(0.0).K[0, 0] == 250.0


def test_camera_info_jumping_back_drops_the_old_timeline(pairing):
    """CameraInfo restarts before the images do: the old timeline's CameraInfo (same stamps as the
    new) is no longer what an image pairs with."""
    pairing, rejected, _, _ = pairing
    pairing.add_camera_info(info(5 * S, k=(300.0, 0, 160, 0, 300.0, 120, 0, 0, 1)))
    pairing.add_camera_info(info(50 * S, k=(300.0, 0, 160, 0, 300.0, 120, 0, 0, 1)))
    pairing.add_camera_info(info(5 * S))  # new timeline
    pairing.add_image(image(), header(5 * S))
    assert pairing.mailbox.take(0.0).K[0, 0] == 250.0
    assert rejected == []


@pytest.mark.parametrize(
    ("stamps", "verdicts"),
    [
        ([1, 2, 3], ["in_order"] * 3),
        ([5 * S, 5 * S, 4 * S + 1], ["in_order", "not_increasing", "not_increasing"]),
        ([5 * S, 3 * S, 4 * S], ["in_order", "clock_reset", "in_order"]),
        ([5, 0, 0, 7], ["in_order", "clock_reset", "in_order", "in_order"]),
    ],
)
def test_stamp_order(stamps, verdicts):
    order = StampOrder(tolerance_ns=S)
    assert [order.check(stamp).value for stamp in stamps] == verdicts
