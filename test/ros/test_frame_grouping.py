"""Grouping the frames of several cameras by stamp, as plain Python (no DDS, an injected clock)."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from drone_pose.ros.frame_grouping import CAMERA_COUNTERS, MAX_OPEN_GROUPS, FrameGroup, FrameGrouper
from drone_pose.ros.frame_pairing import Frame, stamp_ns

S = 1_000_000_000  # one second in ns
MS = 1_000_000  # one millisecond in ns
PERIOD = 33 * MS  # a 30 Hz camera
CAMERAS = ("left", "right", "top")
SLOP_S = 0.016  # half the frame period
WAIT_S = 0.05
EXPIRE_S = WAIT_S + 1e-6  # a clock step past max_wait_s (float rounding aside)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def header(stamp: int) -> SimpleNamespace:
    return SimpleNamespace(stamp=SimpleNamespace(sec=stamp // S, nanosec=stamp % S), frame_id="camera")


def frame(stamp: int) -> Frame:
    return Frame(np.zeros((8, 8, 3), np.uint8), np.eye(3), header(stamp), received=0.0)


def stamps(group: FrameGroup) -> dict[str, int]:
    """camera -> stamp (ns) of the group's views, in the group's order."""
    return {camera: stamp_ns(view.header) for camera, view in group.frames.items()}


@pytest.fixture
def rig() -> tuple[FrameGrouper, Clock]:
    clock = Clock()
    return FrameGrouper(CAMERAS, SLOP_S, WAIT_S, clock=clock, clock_reset_tolerance_s=1.0), clock


def send(grouper: FrameGrouper, stamp: int, cameras: tuple[str, ...] = CAMERAS) -> None:
    """One frame of each of `cameras`, all stamped `stamp`, in that order."""
    for camera in cameras:
        grouper.add(camera, frame(stamp))


def counted(grouper: FrameGrouper, *names: str) -> tuple[int, ...]:
    """The values of the named counters of the grouper's snapshot."""
    counts = grouper.snapshot()
    return tuple(counts[name] for name in names)


def frames_accounted(grouper: FrameGrouper) -> None:
    """With the mailbox empty and no group open, every frame received is taken, dropped, late or
    out of order."""
    counts = grouper.snapshot()
    assert counts["groups_open"] == 0
    for camera in grouper.cameras:
        fates = ("frames_taken", "frames_dropped", "frames_late", "frames_out_of_order")
        assert counts[f"{camera}/frames_received"] == sum(counts[f"{camera}/{fate}"] for fate in fates)


@pytest.mark.parametrize("order", list(itertools.permutations(CAMERAS)))
def test_a_complete_group_comes_out_whatever_the_arrival_order(rig, order):
    grouper, _ = rig
    sent = {"left": 10 * S + 2 * MS, "right": 10 * S, "top": 10 * S + 5 * MS}
    for camera in order[:-1]:
        grouper.add(camera, frame(sent[camera]))
        assert grouper.take(0.0) is None  # waiting for the last camera
    grouper.add(order[-1], frame(sent[order[-1]]))
    group = grouper.take(0.0)
    assert group.complete
    assert stamps(group) == sent
    assert list(group.frames) == list(CAMERAS)  # camera order, not arrival order
    assert group.stamp_ns == 10 * S  # the earliest view's stamp
    assert group.reference_ns == sent[order[0]]  # the frame that opened it
    assert grouper.take(0.0) is None
    counts = grouper.snapshot()
    assert (counts["groups_complete"], counts["groups_partial"], counts["groups_dropped"]) == (1, 0, 0)
    assert all(counts[f"{camera}/frames_taken"] == 1 for camera in CAMERAS)
    frames_accounted(grouper)


def test_a_stream_gives_one_complete_group_per_frame_period(rig):
    grouper, clock = rig
    taken = []
    for index in range(5):
        clock.now += PERIOD / S
        jitter = (0, 3 * MS, -4 * MS)
        for camera, offset in zip(CAMERAS, jitter, strict=True):
            grouper.add(camera, frame(10 * S + index * PERIOD + offset))
        taken.append(grouper.take(0.0))
    assert [group.stamp_ns for group in taken] == [10 * S + index * PERIOD - 4 * MS for index in range(5)]
    assert all(group.complete for group in taken)
    assert grouper.snapshot()["groups_complete"] == 5
    frames_accounted(grouper)


@pytest.mark.parametrize("offset_ms", [16, -16, 17, -17])
def test_frames_within_the_slop_are_grouped_and_beyond_it_are_not(offset_ms):
    """The slop is inclusive (16 ms apart: one group); 17 ms apart, each frame opens its own group,
    and after max_wait_s the newest is emitted with its one view, the older one dropped."""
    clock = Clock()
    grouper = FrameGrouper(("left", "right"), SLOP_S, WAIT_S, clock=clock)
    grouper.add("left", frame(10 * S))
    grouper.add("right", frame(10 * S + offset_ms * MS))
    if abs(offset_ms) <= 16:
        assert stamps(grouper.take(0.0)) == {"left": 10 * S, "right": 10 * S + offset_ms * MS}
        return
    assert grouper.take(0.0) is None
    clock.now += EXPIRE_S
    grouper.flush_expired()
    group = grouper.take(0.0)
    newest = max(("left", 10 * S), ("right", 10 * S + offset_ms * MS), key=lambda sent: sent[1])
    assert stamps(group) == dict([newest])
    counts = grouper.snapshot()
    assert (counts["groups_partial_1_views"], counts["groups_dropped"]) == (1, 1)
    older = "right" if newest[0] == "left" else "left"
    assert counts[f"{older}/frames_dropped"] == 1
    frames_accounted(grouper)


def test_a_frame_joins_the_nearest_open_group_and_a_tie_goes_to_the_older(rig):
    grouper, _ = rig
    grouper.add("left", frame(10 * S))
    grouper.add("left", frame(10 * S + 20 * MS))  # beyond the slop: a second group
    grouper.add("top", frame(10 * S + 14 * MS))  # 14 ms from the first, 6 ms from the second
    grouper.add("right", frame(10 * S + 10 * MS))  # 10 ms from both
    grouper.add("top", frame(10 * S + 15 * MS))  # within 16 ms of the first, which has no top
    assert stamps(grouper.take(0.0)) == {"left": 10 * S, "right": 10 * S + 10 * MS, "top": 10 * S + 15 * MS}
    assert grouper.snapshot()["groups_open"] == 1  # the second, with left and top


def test_a_missing_camera_gives_a_partial_group_after_max_wait(rig):
    grouper, clock = rig
    send(grouper, 10 * S, ("left", "right"))
    clock.now += WAIT_S - 0.001
    grouper.flush_expired()
    assert grouper.take(0.0) is None  # still waiting for top
    clock.now += 0.002
    grouper.flush_expired()  # no further frame needed: the node's timer
    group = grouper.take(0.0)
    assert stamps(group) == {"left": 10 * S, "right": 10 * S}
    assert group.missing == ("top",)
    assert not group.complete
    counts = grouper.snapshot()
    assert counted(grouper, "groups_complete", "groups_partial", "groups_partial_2_views") == (0, 1, 1)
    assert counts["groups_partial_1_views"] == 0
    frames_accounted(grouper)


def test_a_camera_that_stops_mid_stream_never_stops_the_others(rig):
    """top stops after 3 frames and comes back after 3 more: the groups in between come out on
    timeout (max_wait_s, 1.5 frame periods) with left and right; the last of them, still waiting
    when top is back, is overtaken by the newest complete group and dropped."""
    grouper, clock = rig
    taken: list[FrameGroup] = []
    for index in range(9):
        stopped = 3 <= index < 6
        send(grouper, 10 * S + index * PERIOD, ("left", "right") if stopped else CAMERAS)
        for _ in range(3):  # the timer, over one frame period
            clock.now += PERIOD / S / 3
            grouper.flush_expired()
            if (group := grouper.take(0.0)) is not None:
                taken.append(group)
    clock.now += EXPIRE_S
    grouper.flush_expired()
    assert grouper.take(0.0) is None
    assert [group.stamp_ns for group in taken] == [
        10 * S + index * PERIOD for index in (0, 1, 2, 3, 4, 6, 7, 8)
    ]
    assert [group.missing for group in taken] == [()] * 3 + [("top",)] * 2 + [()] * 3
    assert counted(grouper, "groups_complete", "groups_partial_2_views", "groups_dropped") == (6, 2, 1)
    assert counted(grouper, "left/frames_dropped", "right/frames_dropped", "top/frames_dropped") == (1, 1, 0)
    frames_accounted(grouper)


def test_newest_group_only_older_ones_are_dropped_and_counted(rig):
    grouper, _ = rig
    # a worker too slow for the cameras: three complete groups, it takes the newest only
    for index in range(3):
        send(grouper, 10 * S + index * PERIOD)
    assert grouper.take(0.0).stamp_ns == 10 * S + 2 * PERIOD
    assert grouper.take(0.0) is None
    counts = grouper.snapshot()
    assert (counts["groups_complete"], counts["groups_dropped"], counts["groups_replaced"]) == (3, 2, 2)
    assert all(counts[f"{camera}/frames_dropped"] == 2 for camera in CAMERAS)
    # an incomplete group is superseded when a newer one completes
    older = 11 * S
    send(grouper, older, ("left", "right"))
    send(grouper, older + PERIOD)
    assert stamps(grouper.take(0.0)) == dict.fromkeys(CAMERAS, older + PERIOD)
    counts = grouper.snapshot()
    assert (counts["groups_dropped"], counts["groups_replaced"], counts["groups_open"]) == (3, 2, 0)
    assert [counts[f"{camera}/frames_dropped"] for camera in CAMERAS] == [3, 3, 2]
    frames_accounted(grouper)


def test_of_several_expired_groups_the_newest_is_emitted(rig):
    grouper, clock = rig
    send(grouper, 10 * S, ("left",))
    send(grouper, 10 * S + PERIOD, ("left", "right"))
    clock.now += 1.0  # a late timer: both have expired
    grouper.flush_expired()
    assert stamps(grouper.take(0.0)) == {"left": 10 * S + PERIOD, "right": 10 * S + PERIOD}
    assert grouper.take(0.0) is None
    counts = grouper.snapshot()
    assert (counts["groups_partial"], counts["groups_dropped"], counts["left/frames_dropped"]) == (1, 1, 1)
    frames_accounted(grouper)


def test_frames_of_an_emitted_group_or_older_are_late(rig):
    grouper, clock = rig
    send(grouper, 10 * S, ("left", "right"))
    clock.now += EXPIRE_S
    grouper.flush_expired()
    assert grouper.take(0.0).missing == ("top",)
    grouper.add("top", frame(10 * S + 5 * MS))  # its group went without it
    grouper.add("left", frame(10 * S + 5 * MS))  # left had its frame in it: a frame of a new instant
    send(grouper, 10 * S + PERIOD, ("right",))
    grouper.add("right", frame(10 * S + PERIOD + 1 * MS))  # a second right frame: its own group
    grouper.add("top", frame(10 * S + 2 * MS))  # older than the emitted group... but top's stamps
    counts = grouper.snapshot()
    assert counts["top/frames_late"] == 1
    assert counts["top/frames_out_of_order"] == 1  # ...went back: out of order, not late
    clock.now += EXPIRE_S
    grouper.flush_expired()
    assert stamps(grouper.take(0.0)) == {"right": 10 * S + PERIOD + 1 * MS}  # the newest of the open groups
    counts = grouper.snapshot()
    assert counts["groups_dropped"] == 2  # left's 10 s + 5 ms, right's 10 s + 33 ms
    frames_accounted(grouper)


def test_a_frame_older_than_the_emitted_group_is_late():
    clock = Clock()
    grouper = FrameGrouper(("left", "right"), SLOP_S, WAIT_S, clock=clock)
    send(grouper, 10 * S + PERIOD, ("left",))
    clock.now += EXPIRE_S
    grouper.flush_expired()
    assert grouper.take(0.0).missing == ("right",)
    grouper.add("right", frame(10 * S))  # right lags a whole period: its frames are too old
    grouper.add("right", frame(10 * S + PERIOD - 10 * MS))
    grouper.add("right", frame(10 * S + PERIOD + 10 * MS))  # within slop of the group right missed
    counts = grouper.snapshot()
    assert counts["right/frames_late"] == 3
    assert counts["groups_open"] == 0
    frames_accounted(grouper)


def test_a_frame_after_its_groups_wait_is_late_even_before_the_timer_runs(rig):
    grouper, clock = rig
    send(grouper, 10 * S, ("left", "right"))
    clock.now += EXPIRE_S
    grouper.add("top", frame(10 * S + 2 * MS))  # no flush_expired in between
    assert grouper.take(0.0).missing == ("top",)
    counts = grouper.snapshot()
    assert (counts["top/frames_late"], counts["groups_open"]) == (1, 0)
    frames_accounted(grouper)


def test_a_frame_halfway_between_the_emitted_group_and_an_open_one_joins_the_open_one():
    clock = Clock()
    grouper = FrameGrouper(("left", "right"), SLOP_S, WAIT_S, clock=clock)
    grouper.add("left", frame(10 * S))
    clock.now += EXPIRE_S
    grouper.flush_expired()
    assert grouper.take(0.0).missing == ("right",)
    grouper.add("left", frame(10 * S + 20 * MS))
    grouper.add("right", frame(10 * S + 10 * MS))  # 10 ms from both
    assert stamps(grouper.take(0.0)) == {"left": 10 * S + 20 * MS, "right": 10 * S + 10 * MS}
    assert grouper.snapshot()["right/frames_late"] == 0


def test_a_second_frame_of_a_camera_closer_to_the_group_takes_the_place_of_the_first(rig):
    grouper, _ = rig
    grouper.add("right", frame(10 * S + 10 * MS))  # opens the group: reference 10.010 s
    grouper.add("left", frame(10 * S))  # 10 ms from it
    grouper.add("left", frame(10 * S + 8 * MS))  # 2 ms from it: replaces the first
    grouper.add("top", frame(10 * S + 10 * MS))
    assert stamps(grouper.take(0.0)) == {
        "left": 10 * S + 8 * MS,
        "right": 10 * S + 10 * MS,
        "top": 10 * S + 10 * MS,
    }
    counts = grouper.snapshot()
    assert (counts["left/frames_dropped"], counts["groups_dropped"], counts["groups_complete"]) == (1, 0, 1)
    frames_accounted(grouper)


def test_a_camera_at_twice_the_rate_meets_the_others_in_the_nearest_group():
    """left at 60 Hz, right at 30 Hz, a slop wider than half of left's period: left's next frame is
    within the slop of the group left's previous one opened but not closer to it, so it opens a group
    of its own, which right's frame of the same instant joins (not the older group)."""
    clock = Clock()
    grouper = FrameGrouper(("left", "right"), 0.02, WAIT_S, clock=clock)
    half = PERIOD // 2
    for index in range(3):
        start = 10 * S + index * PERIOD
        grouper.add("left", frame(start))
        grouper.add("right", frame(start))
        assert stamps(grouper.take(0.0)) == {"left": start, "right": start}
        grouper.add("left", frame(start + half))  # no right frame at this instant
    counts = grouper.snapshot()
    assert counts["groups_complete"] == 3
    assert counts["left/frames_dropped"] == 2  # the 60 Hz frames between, superseded
    clock.now += EXPIRE_S
    grouper.flush_expired()
    assert stamps(grouper.take(0.0)) == {"left": 10 * S + 2 * PERIOD + half}
    frames_accounted(grouper)


def test_a_clock_reset_on_one_camera_clears_the_groups_and_the_others_carry_on(rig):
    """top's driver restarts unstamped (stamps 0): the open groups are dropped once; left and right
    carry on in partial groups, and top's frames, behind them, are late."""
    grouper, clock = rig
    send(grouper, 10 * S)
    assert grouper.take(0.0).complete
    send(grouper, 10 * S + PERIOD, ("left", "right"))
    grouper.add("top", frame(0))  # the reset
    counts = grouper.snapshot()
    assert (counts["groups_dropped"], counts["clock_resets"], counts["top/clock_resets"]) == (1, 1, 1)
    taken = []
    for index in range(2, 5):
        clock.now += PERIOD / S
        send(grouper, 10 * S + index * PERIOD, ("left", "right"))
        grouper.add("top", frame(0))
        clock.now += EXPIRE_S
        grouper.flush_expired()
        taken.append(grouper.take(0.0))
    assert [group.stamp_ns for group in taken] == [10 * S + index * PERIOD for index in range(2, 5)]
    assert all(group.missing == ("top",) for group in taken)
    counts = grouper.snapshot()
    assert counts["clock_resets"] == 1
    # top's first two zero frames were in groups superseded by left's and right's, then late
    assert (counts["top/frames_dropped"], counts["top/frames_late"]) == (2, 2)
    assert (counts["left/clock_resets"], counts["right/clock_resets"]) == (0, 0)
    frames_accounted(grouper)


def test_a_camera_on_another_clock_never_stops_the_others(rig):
    """top stamps 1000 s ahead of left and right (another epoch): its frames never meet theirs, and
    neither its groups nor theirs make the other's late or superseded: both keep coming out."""
    grouper, clock = rig
    taken = []
    for index in range(4):
        stamp = 10 * S + index * PERIOD
        send(grouper, stamp, ("left", "right"))
        clock.now += 0.01
        grouper.add("top", frame(stamp + 1000 * S))
        clock.now += WAIT_S - 0.005  # left's and right's group has waited max_wait_s, top's not yet
        grouper.flush_expired()
        taken.append(grouper.take(0.0))
        clock.now += 0.01
        grouper.flush_expired()
        taken.append(grouper.take(0.0))
    expected = [(10 * S + index * PERIOD + ahead * S) for index in range(4) for ahead in (0, 1000)]
    assert [group.stamp_ns for group in taken] == expected
    assert [group.missing for group in taken] == [("top",), ("left", "right")] * 4
    # both expire at once: top's is newer but not on their clock, so theirs is not superseded
    send(grouper, 11 * S, ("left", "right"))
    grouper.add("top", frame(1011 * S))
    clock.now += EXPIRE_S
    grouper.flush_expired()
    assert stamps(grouper.take(0.0)) == {"left": 11 * S, "right": 11 * S}
    counts = grouper.snapshot()
    assert (counts["left/frames_late"], counts["left/frames_dropped"], counts["top/frames_late"]) == (0, 0, 0)
    assert (counts["groups_partial_2_views"], counts["groups_partial_1_views"]) == (5, 5)
    assert (counts["groups_dropped"], counts["groups_replaced"]) == (1, 1)  # top's, not taken in time
    frames_accounted(grouper)


def test_a_flood_of_frames_that_match_nothing_keeps_a_bounded_number_of_groups(rig):
    grouper, _ = rig
    for index in range(MAX_OPEN_GROUPS + 10):
        grouper.add("left", frame(10 * S + index * PERIOD))  # nobody else: every frame opens a group
    counts = grouper.snapshot()
    assert (counts["groups_open"], counts["groups_dropped"]) == (MAX_OPEN_GROUPS, 10)
    send(grouper, 10 * S + 10 * PERIOD, ("right", "top"))  # the oldest kept instant still completes
    assert grouper.take(0.0).complete


def test_a_looped_bag_resets_every_camera_and_grouping_carries_on(rig):
    """All cameras loop from 12 s back to 10 s (beyond the 1 s tolerance), one after the other, with
    right's and top's last frames of the old loop arriving after left's first of the new: the first
    group of the new loop is still complete, the reset is counted once for the rig and once per
    camera, nothing is late."""
    grouper, clock = rig
    loop = [10 * S, 11 * S, 12 * S]
    taken = []
    for stamp in loop:
        send(grouper, stamp)
        taken.append(grouper.take(0.0))
    grouper.add("left", frame(loop[0]))  # left has looped
    send(grouper, 13 * S, ("right", "top"))  # right's and top's old-loop frames, in flight
    assert grouper.take(0.0) is None  # not grouped with left's
    for stamp in loop:
        send(grouper, stamp, ("right", "top") if stamp == loop[0] else CAMERAS)
        clock.now += PERIOD / S
        taken.append(grouper.take(0.0))
    assert [group.stamp_ns for group in taken] == loop + loop
    assert all(group.complete for group in taken)
    counts = grouper.snapshot()
    assert counts["clock_resets"] == 1
    assert all(counts[f"{camera}/clock_resets"] == 1 for camera in CAMERAS)
    assert all(counts[f"{camera}/frames_late"] == 0 for camera in CAMERAS)
    assert counts["groups_dropped"] == 1  # the old loop's group of right's and top's 13 s frames
    frames_accounted(grouper)
    send(grouper, loop[0])  # the next loop is another rig-wide reset
    assert grouper.take(0.0).complete
    assert grouper.snapshot()["clock_resets"] == 2


def test_a_small_jump_back_is_out_of_order_not_a_reset(rig):
    grouper, _ = rig
    send(grouper, 10 * S)
    grouper.add("left", frame(10 * S))  # a duplicate
    grouper.add("left", frame(10 * S - S // 2))  # within the 1 s tolerance
    assert counted(grouper, "left/frames_out_of_order", "clock_resets", "left/clock_resets") == (2, 0, 0)


def test_clear_drops_the_open_groups_and_forgets_the_stamps(rig):
    grouper, _ = rig
    send(grouper, 20 * S)
    grouper.take(0.0)
    send(grouper, 20 * S + PERIOD, ("left",))
    grouper.clear()  # deactivate
    assert grouper.snapshot()["groups_dropped"] == 1
    send(grouper, 5 * S)  # older stamps, after an activate: in order, not late
    assert grouper.take(0.0).complete
    counts = grouper.snapshot()
    assert (counts["clock_resets"], counts["left/frames_late"]) == (0, 0)
    frames_accounted(grouper)


def test_the_take_timeout_close_and_reopen(rig):
    grouper, _ = rig
    start = time.monotonic()
    assert grouper.take(0.05) is None
    assert time.monotonic() - start >= 0.04
    taken: list[FrameGroup | None] = []
    worker = threading.Thread(target=lambda: taken.append(grouper.take(10.0)))
    worker.start()
    time.sleep(0.05)
    send(grouper, 10 * S)  # wakes the waiting worker
    worker.join(timeout=2.0)
    assert not worker.is_alive()
    assert taken[0].stamp_ns == 10 * S
    worker = threading.Thread(target=lambda: taken.append(grouper.take(10.0)))
    worker.start()
    time.sleep(0.05)
    grouper.close()  # deactivate: the waiting worker wakes with nothing
    worker.join(timeout=2.0)
    assert not worker.is_alive()
    assert taken[1] is None
    send(grouper, 10 * S + PERIOD)  # emitted while closed: dropped
    assert grouper.take(0.0) is None
    assert grouper.snapshot()["groups_dropped"] == 1
    grouper.reopen()
    send(grouper, 10 * S + 2 * PERIOD)
    assert grouper.take(0.0).stamp_ns == 10 * S + 2 * PERIOD
    frames_accounted(grouper)


def test_close_counts_the_group_it_drops(rig):
    grouper, _ = rig
    send(grouper, 10 * S)
    grouper.close()
    grouper.reopen()
    assert grouper.take(0.0) is None
    counts = grouper.snapshot()
    assert (counts["groups_complete"], counts["groups_dropped"], counts["groups_replaced"]) == (1, 1, 0)
    frames_accounted(grouper)


def test_cameras_on_several_threads_with_a_worker():
    """Four cameras, each adding from its own thread with jitter, a timer thread flushing and a
    worker taking, on the real clock with a short wait (some groups come out partial), threads
    switching as often as Python allows: every group that comes out holds frames of one instant, in
    order, and every frame is accounted for."""
    cameras = ("a", "b", "c", "d")
    # one clock: a thread scheduled late is behind by less than the tolerance (10 s of stamps)
    grouper = FrameGrouper(cameras, SLOP_S, 0.002, clock_reset_tolerance_s=60.0)
    frames_per_camera = 300
    taken: list[FrameGroup] = []
    running = True

    def work() -> None:
        while running:
            if (group := grouper.take(0.01)) is not None:
                taken.append(group)

    def timer() -> None:
        while running:
            grouper.flush_expired()
            time.sleep(0.001)

    def camera_thread(index: int) -> None:
        rng = np.random.default_rng(index)
        for instant in range(frames_per_camera):
            jitter = int(rng.integers(-5 * MS, 5 * MS))
            grouper.add(cameras[index], frame(10 * S + instant * PERIOD + jitter))

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        helpers = [threading.Thread(target=work), threading.Thread(target=timer)]
        threads = [threading.Thread(target=camera_thread, args=(index,)) for index in range(len(cameras))]
        for thread in helpers + threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10.0)
        time.sleep(0.05)  # the timer emits the last group, the worker takes it
        running = False
        for thread in helpers:
            thread.join(timeout=2.0)
    finally:
        sys.setswitchinterval(switch_interval)
    if (group := grouper.take(0.0)) is not None:
        taken.append(group)
    assert taken
    for group in taken:
        instants = {round((stamp - 10 * S) / PERIOD) for stamp in stamps(group).values()}
        assert len(instants) == 1, stamps(group)
    newest = [max(stamps(group).values()) for group in taken]
    assert newest == sorted(newest)  # the worker never goes back in time
    counts = grouper.snapshot()
    assert all(counts[f"{camera}/frames_received"] == frames_per_camera for camera in cameras)
    assert counts["groups_taken"] == len(taken)
    frames_accounted(grouper)


def test_the_snapshot_has_the_same_keys_every_time(rig):
    grouper, _ = rig
    keys = set(grouper.snapshot())
    assert {f"{camera}/{name}" for camera in CAMERAS for name in CAMERA_COUNTERS} <= keys
    assert {"groups_partial_1_views", "groups_partial_2_views", "clock_resets"} <= keys
    send(grouper, 10 * S)
    assert set(grouper.snapshot()) == keys
    assert all(isinstance(value, int) for value in grouper.snapshot().values())


@pytest.mark.parametrize(
    ("cameras", "slop", "wait"),
    [((), 0.01, 0.05), (("a", "a"), 0.01, 0.05), (("a",), -0.01, 0.05), (("a",), 0.01, 0.0)],
)
def test_bad_settings_are_refused(cameras, slop, wait):
    with pytest.raises(ValueError, match=r"cameras|sync_slop_s|max_wait_s"):
        FrameGrouper(cameras, slop, wait)


def test_an_unknown_camera_is_refused(rig):
    grouper, _ = rig
    with pytest.raises(ValueError, match="unknown camera"):
        grouper.add("bottom", frame(10 * S))


def test_a_single_camera_rig_emits_every_frame():
    grouper = FrameGrouper(("only",), SLOP_S, WAIT_S, clock=Clock())
    grouper.add("only", frame(10 * S))
    group = grouper.take(0.0)
    assert group.complete
    assert stamps(group) == {"only": 10 * S}
