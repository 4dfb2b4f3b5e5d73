"""Frames of several cameras grouped by stamp for multi-camera fusion, newest group only.

Plain Python (no rclpy), thread-safe: the cameras' callbacks add their validated frames (one
FramePairing per camera) from any thread, the node's timer calls flush_expired, a worker takes the
emitted groups from a one-slot mailbox. Unlike message_filters' ApproximateTime, a group is not
all-or-nothing, and everything that is dropped is counted.

Rules (stamps in integer ns, `slop` = sync_slop_s):

* A group has a reference stamp: the stamp of the frame that opened it. A frame joins the open group
  whose reference is nearest to its stamp among those within slop that have no frame of its camera
  yet (a tie goes to the older group); with none, it opens a new group.
* At most one frame per camera per group. A frame within slop of a group that already holds a frame
  of its camera (and of no group without one) is a second frame of that camera: when it is strictly
  closer to the group's reference it takes the place of the one there (that one is dropped);
  otherwise it is a frame of another instant and opens a group of its own (so a camera that runs
  faster than the others still meets their frames in the group nearest to them).
* A group is emitted once every camera has a frame in it (complete), or once max_wait_s has passed
  on the grouper's clock since its first frame was added (partial: the views that came). Emission on
  timeout happens in flush_expired (call it from a timer) and at the start of every add.
* Newest group only: emitting a group drops every open group with an older reference (superseded).
  A frame is late (its group is gone) when a group newer than it has been emitted, or when the
  nearest emitted group within slop before it has no frame of its camera and no open group is
  nearer. When several groups expire together, the newest is emitted, the older ones superseded.
* Only stamps of one clock are compared: "older" and "newer" above mean by at most the clock-reset
  tolerance (the last EMITTED_HISTORY emitted groups are remembered). So a camera on another clock
  (a driver stamping with another epoch, or without use_sim_time among bag cameras) never stops the
  others: its frames, never within slop of theirs, come out in groups of their own (one view, its
  stamps) alongside theirs. Zero stamps are no clock: a zero-stamped group is superseded by any
  newer group, a zero-stamped frame is late once a stamped group has been emitted.
* Emitted groups go into a one-slot mailbox (FrameMailbox's semantics): a group the worker has not
  taken when the next one comes is replaced and counted as dropped.
* Stamps of each camera must increase (StampOrder): a frame not newer than its camera's previous
  one is rejected as out of order (FramePairing already rejects those). A jump back beyond the
  clock-reset tolerance, or to zero, is a clock reset: the open groups are dropped, the emitted ones
  forgotten, and grouping carries on. The other cameras' jumps of the same rig-wide reset (to within
  the tolerance of the new timeline's newest stamp) only drop the groups their in-flight
  old-timeline frames formed, so a looped bag's first group after the loop is still complete. The
  camera's own clock_resets counts every jump; the rig's clock_resets counts one per rig-wide reset.
* A camera that stops, or whose frames are all rejected upstream, never stops the others: their
  groups are emitted on timeout, partial. At most MAX_OPEN_GROUPS groups are open (a flood of
  frames that match nothing drops the first opened). A camera that falls back to zero stamps among stamping
  ones is one clock reset; then its frames are late (or dropped with groups the others supersede).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from drone_pose.ros.frame_pairing import (
    CLOCK_RESET_TOLERANCE_S,
    Frame,
    StampOrder,
    StampVerdict,
    stamp_ns,
)

EMITTED_HISTORY = 256  # emitted groups remembered to tell late frames (8.5 s at 30 Hz)
MAX_OPEN_GROUPS = 64  # beyond, the group opened first is dropped: memory stays bounded
# Per-camera counters, in the order snapshot() lists them ("<camera>/<counter>").
CAMERA_COUNTERS = (
    "frames_received",  # every add() of the camera
    "frames_taken",  # in a group the worker took
    "frames_dropped",  # in a group that never reached the worker, or replaced by a closer frame
    "frames_late",  # its instant was already emitted (a newer group was emitted)
    "frames_out_of_order",  # not newer than the camera's previous frame (and no clock reset)
    "clock_resets",  # the camera's stamps jumped back beyond the tolerance, or to zero
)


@dataclass(frozen=True)
class FrameGroup:
    """Frames of different cameras taken at the same time: what the fusion worker gets.

    stamp_ns: the earliest stamp (ns) of the views present: the fused pose is published with it;
    reference_ns: the stamp (ns) of the frame that opened the group, which the others were matched
    against (each within sync_slop_s of it); frames: camera -> Frame for the views present, in the
    grouper's camera order; missing: the cameras without a view, in camera order (empty: complete);
    opened: the grouper's clock (s) when its first frame was added.
    """

    stamp_ns: int
    reference_ns: int
    frames: dict[str, Frame]
    missing: tuple[str, ...]
    opened: float

    @property
    def complete(self) -> bool:
        """Every camera has a view in the group."""
        return not self.missing


class GroupMailbox:
    """A thread-safe slot for the newest group (FrameMailbox's semantics): the grouper puts, one
    worker takes. put and close return what they drop, so the grouper can count it."""

    def __init__(self) -> None:
        self._slot: FrameGroup | None = None
        self._open = True
        self._condition = threading.Condition()

    def put(self, group: FrameGroup) -> FrameGroup | None:
        """Park `group`; returns the group this drops: the one it replaced (nobody took it), or
        `group` itself when the mailbox is closed; None when nothing is dropped."""
        with self._condition:
            if not self._open:
                return group
            replaced, self._slot = self._slot, group
            self._condition.notify()
            return replaced

    def take(self, timeout_s: float) -> FrameGroup | None:
        """The parked group, waiting up to timeout_s for one; None on timeout or when closed."""
        with self._condition:
            if self._slot is None and self._open:
                self._condition.wait(timeout=timeout_s)
            group, self._slot = self._slot, None
            return group

    def close(self) -> FrameGroup | None:
        """Drop the parked group (returned) and wake the worker; take() returns None until reopen()."""
        with self._condition:
            self._open = False
            dropped, self._slot = self._slot, None
            self._condition.notify_all()
            return dropped

    def reopen(self) -> None:
        """Accept groups again (an activate after a close)."""
        with self._condition:
            self._open = True


@dataclass
class _OpenGroup:
    """A group still collecting frames: camera -> (stamp ns, frame), in arrival order."""

    reference_ns: int
    opened: float
    sequence: int  # opening order, for ties between equal references
    frames: dict[str, tuple[int, Frame]] = field(default_factory=dict)


@dataclass
class _ResetEpisode:
    """The cameras that have jumped to the current new timeline and its newest stamp (ns) since."""

    cameras: set[str]
    newest_ns: int


class FrameGrouper:
    """Groups the frames of `cameras` by stamp and parks each emitted FrameGroup in a mailbox.

    cameras: the camera names, in the order groups list them (unique, at least one); sync_slop_s:
    how far (s) a frame's stamp may be from a group's reference stamp to join it (the node's default:
    half the frame period); max_wait_s (> 0): how long (s, on `clock`) a group waits for its missing
    cameras after its first frame was added; clock: seconds, monotonic (injectable for tests);
    clock_reset_tolerance_s: how far (s) a camera's stamp may jump back and still be out of order
    rather than a clock reset (StampOrder, as FramePairing). Thread-safe: add, flush_expired, take,
    clear, close, reopen and snapshot may be called from any thread. See the module docstring for
    the rules.
    """

    def __init__(
        self,
        cameras: Sequence[str],
        sync_slop_s: float,
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
        clock_reset_tolerance_s: float = CLOCK_RESET_TOLERANCE_S,
    ) -> None:
        self.cameras = tuple(str(camera) for camera in cameras)
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras must be one or more unique names, got {list(self.cameras)}")
        if not sync_slop_s >= 0.0:  # also refuses NaN
            raise ValueError(f"sync_slop_s must be >= 0, got {sync_slop_s}")
        if not max_wait_s > 0.0:
            raise ValueError(f"max_wait_s must be > 0, got {max_wait_s}")
        if not clock_reset_tolerance_s >= 0.0:
            raise ValueError(f"clock_reset_tolerance_s must be >= 0, got {clock_reset_tolerance_s}")
        self.sync_slop_s = float(sync_slop_s)
        self.max_wait_s = float(max_wait_s)
        self.clock_reset_tolerance_s = float(clock_reset_tolerance_s)
        self._slop_ns = round(self.sync_slop_s * 1e9)
        self._tolerance_ns = round(self.clock_reset_tolerance_s * 1e9)
        self._clock = clock
        self._lock = threading.Lock()
        self._mailbox = GroupMailbox()
        self._orders = {camera: StampOrder(self._tolerance_ns) for camera in self.cameras}
        self._open: list[_OpenGroup] = []
        self._sequence = 0
        # the last emitted groups: reference (ns), cameras with a view
        self._emitted: deque[tuple[int, frozenset[str]]] = deque(maxlen=EMITTED_HISTORY)
        self._episode: _ResetEpisode | None = None
        self._counts: Counter[str] = Counter()
        self._camera_counts: dict[str, Counter[str]] = {camera: Counter() for camera in self.cameras}

    # -- producers (any thread) -----------------------------------------------------------------
    def add(self, camera: str, frame: Frame) -> None:
        """A validated frame of `camera` (from its FramePairing); ValueError for an unknown camera.

        Emits the groups that have expired first, then places the frame: it joins a group (which is
        emitted when it becomes complete), opens one, or is counted as late or out of order."""
        if camera not in self._camera_counts:
            raise ValueError(f"unknown camera {camera!r}; the grouper's cameras are {list(self.cameras)}")
        stamp = stamp_ns(frame.header)
        with self._lock:
            counts = self._camera_counts[camera]
            counts["frames_received"] += 1
            self._flush_expired()
            verdict = self._orders[camera].check(stamp)
            if verdict is StampVerdict.NOT_INCREASING:
                counts["frames_out_of_order"] += 1
                return
            if verdict is StampVerdict.CLOCK_RESET:
                self._clock_reset(camera, stamp)
            episode = self._episode
            if episode is not None and camera in episode.cameras:
                episode.newest_ns = max(episode.newest_ns, stamp)
            self._place(camera, stamp, frame)

    def flush_expired(self) -> None:
        """Emit the groups whose max_wait_s has passed (the newest of them; older ones are
        superseded). Call it from the node's timer so that a group whose cameras stopped is still
        emitted when no further frame comes."""
        with self._lock:
            self._flush_expired()

    # -- the worker -----------------------------------------------------------------------------
    def take(self, timeout_s: float) -> FrameGroup | None:
        """The newest emitted group, waiting up to timeout_s for one; None on timeout or when closed."""
        group = self._mailbox.take(timeout_s)
        if group is not None:
            with self._lock:
                self._counts["groups_taken"] += 1
                for camera in group.frames:
                    self._camera_counts[camera]["frames_taken"] += 1
        return group

    # -- lifecycle --------------------------------------------------------------------------------
    def clear(self) -> None:
        """Drop the open groups (counted) and forget the emitted groups, the stamps seen and the
        reset episode (deactivate, cleanup): the next frame of every camera is in order. The counters
        and the mailbox are kept (close() empties the mailbox)."""
        with self._lock:
            for group in list(self._open):
                self._drop(group)
            self._emitted.clear()
            self._episode = None
            for order in self._orders.values():
                order.reset()

    def close(self) -> None:
        """Drop the parked group (counted) and wake the worker; take() returns None and emitted
        groups are dropped until reopen()."""
        with self._lock:
            dropped = self._mailbox.close()
            if dropped is not None:
                self._count_dropped(dropped.frames)

    def reopen(self) -> None:
        """Accept emitted groups again (an activate after a close)."""
        self._mailbox.reopen()

    # -- diagnostics ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, int]:
        """The counters, one flat dict with the same keys every time (diagnostic key-values):

        groups_complete, groups_partial: groups emitted with every view / on timeout with some
        missing; groups_partial_<n>_views for n in 1..V-1: the partial ones by their number of views;
        groups_taken: emitted groups the worker took; groups_dropped: groups that never reached the
        worker (superseded or cleared while open, replaced in the mailbox, dropped by close);
        groups_replaced: of those, the ones replaced in the mailbox (the worker is slower than the
        cameras); groups_open: groups collecting frames now; clock_resets: rig-wide clock resets;
        then "<camera>/<counter>" for every camera and CAMERA_COUNTERS. Once the mailbox is empty
        and no group is open, every camera's frames_received equals frames_taken + frames_dropped +
        frames_late + frames_out_of_order.
        """
        with self._lock:
            counts = self._counts
            values = {
                "groups_complete": counts["groups_complete"],
                "groups_partial": counts["groups_partial"],
                **{
                    f"groups_partial_{views}_views": counts[f"groups_partial_{views}_views"]
                    for views in range(1, len(self.cameras))
                },
                "groups_taken": counts["groups_taken"],
                "groups_dropped": counts["groups_dropped"],
                "groups_replaced": counts["groups_replaced"],
                "groups_open": len(self._open),
                "clock_resets": counts["clock_resets"],
            }
            for camera in self.cameras:
                for name in CAMERA_COUNTERS:
                    values[f"{camera}/{name}"] = self._camera_counts[camera][name]
            return values

    # -- internals (called with the lock held) ----------------------------------------------------
    def _flush_expired(self) -> None:
        now = self._clock()
        while True:
            expired = [group for group in self._open if now - group.opened >= self.max_wait_s]
            if not expired:
                return
            self._emit(max(expired, key=lambda group: (group.reference_ns, group.sequence)))

    def _place(self, camera: str, stamp: int, frame: Frame) -> None:
        """Join, replace, open, or count as late (the module docstring's rules)."""
        joinable = self._nearest(camera, stamp, holding=False)
        if self._is_late(camera, stamp, joinable):
            self._camera_counts[camera]["frames_late"] += 1
            return
        if joinable is not None:
            joinable.frames[camera] = (stamp, frame)
            if len(joinable.frames) == len(self.cameras):
                self._emit(joinable)
            return
        holder = self._nearest(camera, stamp, holding=True)
        if holder is not None:
            distance = abs(stamp - holder.reference_ns)
            if distance < abs(holder.frames[camera][0] - holder.reference_ns):
                holder.frames[camera] = (stamp, frame)  # the displaced frame is dropped
                self._camera_counts[camera]["frames_dropped"] += 1
                return
        if len(self._open) >= MAX_OPEN_GROUPS:
            self._drop(self._open[0])  # the first opened (the list is in opening order)
        self._sequence += 1
        group = _OpenGroup(stamp, self._clock(), self._sequence, {camera: (stamp, frame)})
        self._open.append(group)
        if len(self.cameras) == 1:
            self._emit(group)

    def _nearest(self, camera: str, stamp: int, holding: bool) -> _OpenGroup | None:
        """The open group whose reference is nearest to `stamp` within the slop, among those that
        hold a frame of `camera` (holding) or not; a tie goes to the older group."""
        candidates = [
            group
            for group in self._open
            if (camera in group.frames) == holding and abs(stamp - group.reference_ns) <= self._slop_ns
        ]
        return min(
            candidates,
            key=lambda group: (abs(stamp - group.reference_ns), group.reference_ns, group.sequence),
            default=None,
        )

    def _is_late(self, camera: str, stamp: int, joinable: _OpenGroup | None) -> bool:
        """Whether the instant of a frame stamped `stamp` has been emitted already, on its clock: an
        emitted group is newer by at most the tolerance, or the nearest emitted group not older than
        the slop has no frame of `camera` and no open group it could join is nearer (a tie goes to
        the open group). A zero stamp (no clock) is late once a stamped group has been emitted."""
        passed: tuple[int, frozenset[str]] | None = None  # the nearest emitted at or before, in slop
        for reference, cameras in self._emitted:
            if stamp < reference <= stamp + self._tolerance_ns or (stamp == 0 and reference != 0):
                return True
            if 0 <= stamp - reference <= self._slop_ns and (passed is None or reference >= passed[0]):
                passed = (reference, cameras)
        if passed is None or camera in passed[1]:
            return False
        return joinable is None or stamp - passed[0] < abs(stamp - joinable.reference_ns)

    def _emit(self, group: _OpenGroup) -> None:
        """Hand `group` to the mailbox; older open groups of its clock (within the tolerance, or
        stamped zero: no clock) are superseded (dropped)."""
        self._open.remove(group)
        oldest = group.reference_ns - self._tolerance_ns
        for older in [
            other
            for other in self._open
            if other.reference_ns < group.reference_ns
            and (other.reference_ns >= oldest or other.reference_ns == 0)
        ]:
            self._drop(older)
        frames = {camera: group.frames[camera][1] for camera in self.cameras if camera in group.frames}
        missing = tuple(camera for camera in self.cameras if camera not in group.frames)
        emitted = FrameGroup(
            stamp_ns=min(stamp for stamp, _ in group.frames.values()),
            reference_ns=group.reference_ns,
            frames=frames,
            missing=missing,
            opened=group.opened,
        )
        self._emitted.append((group.reference_ns, frozenset(frames)))
        if missing:
            self._counts["groups_partial"] += 1
            self._counts[f"groups_partial_{len(frames)}_views"] += 1
        else:
            self._counts["groups_complete"] += 1
        dropped = self._mailbox.put(emitted)
        if dropped is not None:
            self._counts["groups_replaced"] += int(dropped is not emitted)
            self._count_dropped(dropped.frames)

    def _drop(self, group: _OpenGroup) -> None:
        """An open group that will never be emitted (superseded, cleared)."""
        self._open.remove(group)
        self._count_dropped(group.frames)

    def _count_dropped(self, cameras: Iterable[str]) -> None:
        """One group that never reaches the worker, with a frame of each of `cameras`."""
        self._counts["groups_dropped"] += 1
        for camera in cameras:
            self._camera_counts[camera]["frames_dropped"] += 1

    def _clock_reset(self, camera: str, stamp: int) -> None:
        """`camera`'s stamps jumped back to `stamp`: forget the old timeline, count the reset.

        A new reset drops every open group and forgets the emitted ones. A camera that jumps to the
        timeline other cameras have just jumped to (the same rig-wide reset: it has not jumped since,
        and `stamp` is within the tolerance of the newest stamp they have sent since) only drops
        what was formed after their jump from old-timeline stamps, later than `stamp` plus the
        tolerance (its own frames still in flight): the groups of the new timeline are kept."""
        self._camera_counts[camera]["clock_resets"] += 1
        episode = self._episode
        if (
            episode is not None
            and camera not in episode.cameras
            and abs(stamp - episode.newest_ns) <= self._tolerance_ns
        ):
            episode.cameras.add(camera)
            limit = stamp + self._tolerance_ns
        else:
            self._episode = _ResetEpisode({camera}, stamp)
            self._counts["clock_resets"] += 1
            limit = -1  # everything
        for group in [group for group in self._open if group.reference_ns > limit]:
            self._drop(group)
        kept = [(reference, cameras) for reference, cameras in self._emitted if reference <= limit]
        self._emitted.clear()
        self._emitted.extend(kept)
