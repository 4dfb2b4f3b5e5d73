"""A TF buffer (tf2's BufferCore, reduced to what drone_pose needs): plain Python, no rclpy.

Transforms parent <- child (p_parent = R(q) p_child + t; quaternion x, y, z, w; metres; stamps in
integer nanoseconds) form a forest: every frame has at most one parent. TransformListener
(drone_pose.ros.tf) feeds it from /tf and /tf_static; tests and other code feed it directly.
Messages are read through their fields only (`header.frame_id`, `header.stamp.sec`/`nanosec`,
`child_frame_id`, `transform.translation.x/y/z`, `transform.rotation.x/y/z/w`), so no message
type is imported here.

Rules:

- Static transforms never expire; one per child frame.
- Dynamic transforms are kept per child frame, sorted by stamp, for `cache_duration_s` (10 s, as
  tf2) behind that frame's newest stamp. Lookups between two stamps interpolate: slerp for the
  rotation, linear for the translation. A stamp outside a frame's time range is an extrapolation
  error; a frame with a single stamp answers that stamp only (as tf2).
- The newest transform of a child frame decides its parent and kind: one with another parent, or
  static after dynamic (or the reverse), replaces the frame's edge and its history (re-parenting).
  A frame is known while a stored transform names it (as child or parent).
- A repeated stamp of a child frame keeps the first transform (as tf2).
- Rejected and counted, never stored: non-finite numbers, a zero quaternion, a quaternion whose
  squared norm is off 1 by more than 0.01 (tf2's tolerance; nearer ones are normalised), an empty
  frame id or a child equal to its parent, an edge that would close a loop, a stamp older than the
  frame's cache. A leading "/" of a frame id is dropped (as tf2).
- A dynamic stamp older than its frame's newest by more than 1 s, or zero after non-zero stamps (a
  looped bag, a restarted driver, a reset simulation clock) is a clock reset: every dynamic
  history is cleared (frames and parents stay known, static transforms stay), then it is stored.
  This is drone_pose.ros.frame_pairing.StampOrder's rule.
- `lookup(target, source, stamp_ns)` gives target <- source [4,4] float64, walking from both
  frames up to their nearest common ancestor. stamp_ns 0 means "latest": the newest stamp at which
  every dynamic edge on the path has data (tf2's latest common time). Errors are
  TransformLookupError subclasses with one-line messages naming the frames and the reason.

Thread-safe: one lock guards every method (the listener's callbacks and a worker thread).
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from drone_pose.errors import UserError

DEFAULT_CACHE_DURATION_S = 10.0
CLOCK_RESET_TOLERANCE_S = 1.0  # as drone_pose.ros.frame_pairing
QUATERNION_TOLERANCE = 0.01  # on |q|^2 - 1, as tf2
# Reasons a transform is not stored (counted as rejected_<reason>).
TRANSFORM_REJECTIONS = (
    "non_finite",
    "zero_quaternion",
    "not_unit_quaternion",
    "bad_frame_id",
    "loop",
    "too_old",
    "repeated_stamp",
)
MAX_LISTED_FRAMES = 8


class TransformLookupError(UserError):
    """A lookup that cannot be answered; the message names the frames and why."""

    def __init__(self, message: str, target_frame: str, source_frame: str) -> None:
        super().__init__(message)
        self.target_frame = target_frame
        self.source_frame = source_frame


class UnknownFrameError(TransformLookupError):
    """A frame no transform has named (yet), or an invalid frame id."""


class FramesNotConnectedError(TransformLookupError):
    """Both frames are known but lie in different trees."""


class ExtrapolationError(TransformLookupError):
    """The stamp is outside the time range of a dynamic edge on the path (or it has no data).

    `future` is True when the data needed is newer than any received (waiting may help)."""

    def __init__(self, message: str, target_frame: str, source_frame: str, future: bool) -> None:
        super().__init__(message, target_frame, source_frame)
        self.future = future


@dataclass
class _Edge:
    """parent <- child transforms of one child frame: one sample when static, else a history
    sorted by stamp (rotations xyzw unit [4], translations [3], metres)."""

    parent: str
    static: bool
    stamps: list[int] = field(default_factory=list)
    rotations: list[np.ndarray] = field(default_factory=list)
    translations: list[np.ndarray] = field(default_factory=list)

    def clear(self) -> None:
        self.stamps.clear()
        self.rotations.clear()
        self.translations.clear()


def message_stamp_ns(header: Any) -> int:
    """A header's stamp in integer nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def seconds_text(stamp: int) -> str:
    """Integer nanoseconds as exact seconds text: 12.000000345."""
    sign = "-" if stamp < 0 else ""
    stamp = abs(stamp)
    return f"{sign}{stamp // 1_000_000_000}.{stamp % 1_000_000_000:09d}"


def homogeneous(rotation_xyzw: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """[4,4] float64 of a unit quaternion (x, y, z, w) and a translation [3]."""
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(rotation_xyzw).as_matrix()
    T[:3, 3] = translation
    return T


def rigid_inverse(T: np.ndarray) -> np.ndarray:
    """The inverse of a rigid transform [4,4]."""
    inverse = np.eye(4)
    inverse[:3, :3] = T[:3, :3].T
    inverse[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return inverse


class TransformBuffer:
    """The TF forest with static transforms and time-bounded dynamic histories (module docstring).

    cache_duration_s: how long (s) dynamic transforms are kept behind each frame's newest stamp;
    clock_reset_tolerance_s: how far back a dynamic stamp may jump and still be a reorder (stored
    in order) rather than a clock reset.
    """

    def __init__(
        self,
        cache_duration_s: float = DEFAULT_CACHE_DURATION_S,
        clock_reset_tolerance_s: float = CLOCK_RESET_TOLERANCE_S,
    ) -> None:
        if not cache_duration_s > 0 or not clock_reset_tolerance_s > 0:
            raise ValueError("cache_duration_s and clock_reset_tolerance_s must be > 0")
        self.cache_duration_ns = round(cache_duration_s * 1e9)
        self._tolerance_ns = round(clock_reset_tolerance_s * 1e9)
        self._edges: dict[str, _Edge] = {}
        self._counters: Counter[str] = Counter()
        self._lock = threading.Lock()

    # ---- adding ----------------------------------------------------------------------------

    def add(
        self,
        parent_frame: str,
        child_frame: str,
        stamp_ns: int,
        rotation_xyzw: Iterable[float],
        translation: Iterable[float],
        static: bool = False,
    ) -> bool:
        """Store parent <- child at stamp_ns (integer ns; ignored for static transforms); True when
        stored, False when rejected (counted by reason, see TRANSFORM_REJECTIONS)."""
        q = np.asarray(rotation_xyzw, dtype=np.float64).reshape(4)
        t = np.asarray(translation, dtype=np.float64).reshape(3)
        parent, child = str(parent_frame).removeprefix("/"), str(child_frame).removeprefix("/")
        stamp = int(stamp_ns)
        with self._lock:
            self._counters["received"] += 1
            reason = self._rejection(parent, child, q, t)
            if reason is None:
                q = q / np.linalg.norm(q)
                reason = self._store(parent, child, stamp, q, t, static)
            if reason is not None:
                self._counters[f"rejected_{reason}"] += 1
                return False
            self._counters["stored"] += 1
            return True

    def add_transform_stamped(self, message: Any, static: bool = False) -> bool:
        """Store a geometry_msgs/TransformStamped (or anything with its fields); see add()."""
        r, p = message.transform.rotation, message.transform.translation
        return self.add(
            message.header.frame_id,
            message.child_frame_id,
            message_stamp_ns(message.header),
            (r.x, r.y, r.z, r.w),
            (p.x, p.y, p.z),
            static,
        )

    def add_tf_message(self, message: Any, static: bool = False) -> int:
        """Store every transform of a tf2_msgs/TFMessage (`transforms`); the number stored."""
        return sum(self.add_transform_stamped(transform, static) for transform in message.transforms)

    def _rejection(self, parent: str, child: str, q: np.ndarray, t: np.ndarray) -> str | None:
        if not (np.isfinite(q).all() and np.isfinite(t).all()):
            return "non_finite"
        squared_norm = float(q @ q)
        if squared_norm < 1e-18:
            return "zero_quaternion"
        if abs(squared_norm - 1.0) > QUATERNION_TOLERANCE:
            return "not_unit_quaternion"
        if not parent or not child or parent == child:
            return "bad_frame_id"
        ancestor: str | None = parent
        while ancestor is not None:  # the forest has no loops, so this ends
            if ancestor == child:
                return "loop"
            edge = self._edges.get(ancestor)
            ancestor = edge.parent if edge is not None else None
        return None

    def _store(
        self, parent: str, child: str, stamp: int, q: np.ndarray, t: np.ndarray, static: bool
    ) -> str | None:
        """Insert a validated transform; the rejection reason, or None when stored."""
        edge = self._edges.get(child)
        if edge is None or edge.parent != parent or edge.static != static or static:
            edge = _Edge(parent, static)
            self._edges[child] = edge
        if static:
            edge.stamps[:], edge.rotations[:], edge.translations[:] = [stamp], [q], [t]
            return None
        if edge.stamps and (
            edge.stamps[-1] - stamp > self._tolerance_ns or (stamp == 0 and edge.stamps[-1] != 0)
        ):  # a clock reset (frame_pairing.StampOrder's rule)
            self._counters["clock_resets"] += 1
            for other in self._edges.values():
                if not other.static:
                    other.clear()
        index = bisect.bisect_left(edge.stamps, stamp)
        if index < len(edge.stamps) and edge.stamps[index] == stamp:
            return "repeated_stamp"
        if edge.stamps and stamp < edge.stamps[-1] - self.cache_duration_ns:
            return "too_old"
        edge.stamps.insert(index, stamp)
        edge.rotations.insert(index, q)
        edge.translations.insert(index, t)
        expired = bisect.bisect_left(edge.stamps, edge.stamps[-1] - self.cache_duration_ns)
        if expired:
            del edge.stamps[:expired], edge.rotations[:expired], edge.translations[:expired]
        return None

    # ---- looking up ------------------------------------------------------------------------

    def lookup(self, target_frame: str, source_frame: str, stamp_ns: int = 0) -> np.ndarray:
        """target <- source [4,4] float64 (p_target = T p_source, metres) at stamp_ns (integer ns;
        0: the latest common stamp). TransformLookupError (a subclass) when it cannot be answered."""
        return self.lookup_stamped(target_frame, source_frame, stamp_ns)[0]

    def lookup_stamped(
        self, target_frame: str, source_frame: str, stamp_ns: int = 0
    ) -> tuple[np.ndarray, int]:
        """lookup() and the stamp it answered for (stamp_ns itself, or the latest common stamp; 0
        when the path is static only)."""
        if stamp_ns < 0:
            raise ValueError(f"stamp_ns must be >= 0, got {stamp_ns}")
        with self._lock:
            up_from_source, up_from_target = self._paths(target_frame, source_frame)
            children = up_from_source + up_from_target
            stamp = stamp_ns or self._latest_common_stamp(children, target_frame, source_frame)
            target_from_ancestor = np.eye(4)
            for child in up_from_target:
                target_from_ancestor = target_from_ancestor @ rigid_inverse(
                    self._transform_at(child, stamp, target_frame, source_frame)
                )
            ancestor_from_source = np.eye(4)
            for child in up_from_source:
                ancestor_from_source = (
                    self._transform_at(child, stamp, target_frame, source_frame) @ ancestor_from_source
                )
        return target_from_ancestor @ ancestor_from_source, stamp

    def can_transform(self, target_frame: str, source_frame: str, stamp_ns: int = 0) -> bool:
        """Whether lookup(target_frame, source_frame, stamp_ns) would succeed."""
        try:
            self.lookup_stamped(target_frame, source_frame, stamp_ns)
        except TransformLookupError:
            return False
        return True

    def _known(self) -> set[str]:
        return set(self._edges) | {edge.parent for edge in self._edges.values()}

    def _chain(self, frame: str) -> list[str]:
        """frame, its parent, ..., its root."""
        chain = [frame]
        while (edge := self._edges.get(chain[-1])) is not None:
            chain.append(edge.parent)
        return chain

    def _paths(self, target: str, source: str) -> tuple[list[str], list[str]]:
        """The child frames of the edges from source and from target up to (excluding) their
        nearest common ancestor."""
        known = self._known()
        for frame in (target, source):
            if not isinstance(frame, str) or not frame or frame.startswith("/"):
                raise UnknownFrameError(
                    f"cannot transform {source!r} into {target!r}: frame id {frame!r} is not valid "
                    "(non-empty, without a leading '/')",
                    target,
                    source,
                )
            if frame not in known:
                listed = ", ".join(sorted(known)[:MAX_LISTED_FRAMES]) + (
                    ", ..." if len(known) > MAX_LISTED_FRAMES else ""
                )
                raise UnknownFrameError(
                    f"cannot transform {source!r} into {target!r}: frame {frame!r} is unknown "
                    f"({'known frames: ' + listed if known else 'no transform received yet'})",
                    target,
                    source,
                )
        from_source, from_target = self._chain(source), self._chain(target)
        depth = {frame: index for index, frame in enumerate(from_source)}
        for index, frame in enumerate(from_target):
            if frame in depth:
                return from_source[: depth[frame]], from_target[:index]
        raise FramesNotConnectedError(
            f"cannot transform {source!r} into {target!r}: they are not connected ({source!r} is in "
            f"the tree of {from_source[-1]!r}, {target!r} in the tree of {from_target[-1]!r})",
            target,
            source,
        )

    def _latest_common_stamp(self, children: list[str], target: str, source: str) -> int:
        newest = []
        for child in children:
            edge = self._edges[child]
            if edge.static:
                continue
            if not edge.stamps:
                raise self._no_data(edge, child, target, source)
            newest.append(edge.stamps[-1])
        return min(newest, default=0)

    def _no_data(self, edge: _Edge, child: str, target: str, source: str) -> ExtrapolationError:
        return ExtrapolationError(
            f"cannot transform {source!r} into {target!r}: {edge.parent!r} <- {child!r} has no data "
            "since the last clock reset",
            target,
            source,
            future=True,
        )

    def _transform_at(self, child: str, stamp: int, target: str, source: str) -> np.ndarray:
        """parent <- child [4,4] at stamp (interpolated; static edges at any stamp)."""
        edge = self._edges[child]
        if edge.static:
            return homogeneous(edge.rotations[0], edge.translations[0])
        stamps = edge.stamps
        if not stamps:
            raise self._no_data(edge, child, target, source)
        if not stamps[0] <= stamp <= stamps[-1]:
            future = stamp > stamps[-1]
            gap = stamp - stamps[-1] if future else stamps[0] - stamp
            held = (
                f"only {seconds_text(stamps[0])} s"
                if len(stamps) == 1
                else f"{seconds_text(stamps[0])} s to {seconds_text(stamps[-1])} s"
            )
            raise ExtrapolationError(
                f"cannot transform {source!r} into {target!r} at {seconds_text(stamp)} s: "
                f"{edge.parent!r} <- {child!r} would need extrapolation into the "
                f"{'future' if future else 'past'} by {gap / 1e9:.3f} s (it holds {held})",
                target,
                source,
                future=future,
            )
        index = bisect.bisect_left(stamps, stamp)
        if stamps[index] == stamp:
            return homogeneous(edge.rotations[index], edge.translations[index])
        before, after = index - 1, index
        alpha = (stamp - stamps[before]) / (stamps[after] - stamps[before])
        r0 = Rotation.from_quat(edge.rotations[before])
        r1 = Rotation.from_quat(edge.rotations[after])
        rotation = r0 * Rotation.from_rotvec(alpha * (r0.inv() * r1).as_rotvec())
        T = np.eye(4)
        T[:3, :3] = rotation.as_matrix()
        T[:3, 3] = (1.0 - alpha) * edge.translations[before] + alpha * edge.translations[after]
        return T

    # ---- state ---------------------------------------------------------------------------

    def frames(self) -> list[str]:
        """Every frame named by a stored transform (as child or parent), sorted."""
        with self._lock:
            return sorted(self._known())

    def parent(self, frame: str) -> str | None:
        """The parent of `frame`, None for a root or an unknown frame."""
        with self._lock:
            edge = self._edges.get(frame)
            return edge.parent if edge is not None else None

    def time_range(self, frame: str) -> tuple[int, int] | None:
        """Oldest and newest stamp (ns) of a dynamic frame's history; None for a static, root,
        unknown or emptied frame."""
        with self._lock:
            edge = self._edges.get(frame)
            if edge is None or edge.static or not edge.stamps:
                return None
            return edge.stamps[0], edge.stamps[-1]

    def counters(self) -> dict[str, int]:
        """received, stored, clock_resets and rejected_<reason> for each TRANSFORM_REJECTIONS reason."""
        with self._lock:
            keys = ("received", "stored", "clock_resets", *(f"rejected_{r}" for r in TRANSFORM_REJECTIONS))
            return {key: self._counters[key] for key in keys}

    def clear(self) -> None:
        """Forget every transform, static and dynamic (counters stay)."""
        with self._lock:
            self._edges.clear()
