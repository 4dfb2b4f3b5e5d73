"""TransformBuffer without DDS: chains, interpolation, static and dynamic transforms, latest
lookups, extrapolation, clock resets, re-parenting, rejected transforms and concurrent use."""

from __future__ import annotations

import math
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from drone_pose.ros.transform_buffer import (
    TRANSFORM_REJECTIONS,
    ExtrapolationError,
    FramesNotConnectedError,
    TransformBuffer,
    TransformLookupError,
    UnknownFrameError,
)

S = 1_000_000_000  # ns per second
IDENTITY_Q = (0.0, 0.0, 0.0, 1.0)


def z_quaternion(angle: float) -> tuple[float, float, float, float]:
    """x, y, z, w of a rotation by `angle` (rad) about z."""
    return (0.0, 0.0, math.sin(angle / 2), math.cos(angle / 2))


def z_transform(angle: float, translation: tuple[float, float, float]) -> np.ndarray:
    """[4,4] of a rotation by `angle` about z and a translation, in closed form."""
    c, s = math.cos(angle), math.sin(angle)
    T = np.eye(4)
    T[:3, :3] = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
    T[:3, 3] = translation
    return T


def homogeneous(q, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(q).as_matrix()
    T[:3, 3] = t
    return T


def one_line(error: pytest.ExceptionInfo, *names: str) -> str:
    message = str(error.value)
    assert "\n" not in message
    for name in names:
        assert name in message, (name, message)
    return message


def test_a_chain_through_the_common_ancestor_composes_the_edges():
    rng = np.random.default_rng(0)
    buffer = TransformBuffer()
    edges = {}  # child -> (parent, T parent<-child)
    for parent, child in [("world", "base"), ("base", "mount"), ("mount", "left"), ("base", "right")]:
        q, t = Rotation.random(random_state=rng).as_quat(), rng.normal(size=3)
        assert buffer.add(parent, child, 0, q, t, static=True)
        edges[child] = (parent, homogeneous(q, t))
    q, t = Rotation.random(random_state=rng).as_quat(), rng.normal(size=3)
    assert buffer.add("world", "drone", 5 * S, q, t)
    edges["drone"] = ("world", homogeneous(q, t))

    def world_from(frame: str) -> np.ndarray:
        T = np.eye(4)
        while frame != "world":
            parent, edge = edges[frame]
            T, frame = edge @ T, parent
        return T

    for target, source in [("left", "right"), ("right", "left"), ("left", "drone"), ("drone", "world")]:
        expected = np.linalg.inv(world_from(target)) @ world_from(source)
        np.testing.assert_allclose(buffer.lookup(target, source), expected, atol=1e-12)
        np.testing.assert_allclose(buffer.lookup(target, source, 5 * S), expected, atol=1e-12)
    assert buffer.lookup("left", "left").tolist() == np.eye(4).tolist()
    assert buffer.lookup("left", "right").dtype == np.float64
    assert buffer.frames() == ["base", "drone", "left", "mount", "right", "world"]
    assert buffer.parent("left") == "mount"
    assert buffer.parent("world") is None


def test_interpolation_slerps_the_rotation_and_lerps_the_translation():
    buffer = TransformBuffer()
    buffer.add("world", "drone", 1 * S, z_quaternion(math.radians(10)), (0.0, 0.0, 0.0))
    buffer.add("world", "drone", 2 * S, z_quaternion(math.radians(50)), (1.0, 2.0, 3.0))
    expected = z_transform(math.radians(20), (0.25, 0.5, 0.75))  # a quarter of the way
    np.testing.assert_allclose(buffer.lookup("world", "drone", S + S // 4), expected, atol=1e-12)
    np.testing.assert_allclose(
        buffer.lookup("drone", "world", S + S // 4), np.linalg.inv(expected), atol=1e-12
    )
    exact = buffer.lookup("world", "drone", 2 * S)  # an exact stamp is the sample itself
    np.testing.assert_allclose(exact, z_transform(math.radians(50), (1.0, 2.0, 3.0)), atol=1e-15)


def test_interpolation_takes_the_short_way_whatever_the_quaternion_sign():
    buffer = TransformBuffer()
    buffer.add("world", "drone", 0, z_quaternion(math.radians(170)), (0.0, 0.0, 0.0))
    q = -np.array(z_quaternion(math.radians(-170)))  # the same as +190 degrees, written with w < 0
    buffer.add("world", "drone", 2 * S, q, (0.0, 0.0, 0.0))
    np.testing.assert_allclose(
        buffer.lookup("world", "drone", S), z_transform(math.pi, (0, 0, 0)), atol=1e-12
    )


def test_static_transforms_never_expire_and_dynamic_ones_do():
    buffer = TransformBuffer(cache_duration_s=10.0)
    buffer.add("base", "camera", 0, IDENTITY_Q, (0.1, 0.0, 0.0), static=True)
    for second in range(13):
        buffer.add("world", "base", second * S, IDENTITY_Q, (float(second), 0.0, 0.0))
    assert buffer.time_range("base") == (2 * S, 12 * S)
    assert buffer.time_range("camera") is None  # static
    np.testing.assert_allclose(buffer.lookup("base", "camera", 10**6 * S)[:3, 3], [0.1, 0.0, 0.0])
    np.testing.assert_allclose(buffer.lookup("world", "camera", 5 * S + S // 2)[:3, 3], [5.6, 0.0, 0.0])
    with pytest.raises(ExtrapolationError) as past:
        buffer.lookup("world", "camera", 1 * S)
    message = one_line(past, "'world' <- 'base'", "past", "2.000000000 s to 12.000000000 s", "'camera'")
    assert "by 1.000 s" in message
    assert not past.value.future
    with pytest.raises(ExtrapolationError) as future:
        buffer.lookup("world", "camera", 13 * S)
    one_line(future, "future", "by 1.000 s")
    assert future.value.future
    assert (future.value.target_frame, future.value.source_frame) == ("world", "camera")


def test_latest_is_the_newest_stamp_every_dynamic_edge_has():
    buffer = TransformBuffer()
    buffer.add("world", "base", 1 * S, IDENTITY_Q, (0.0, 0.0, 0.0))
    buffer.add("world", "base", 5 * S, IDENTITY_Q, (4.0, 0.0, 0.0))
    buffer.add("base", "drone", 2 * S, IDENTITY_Q, (0.0, 1.0, 0.0))
    buffer.add("base", "drone", 4 * S, IDENTITY_Q, (0.0, 3.0, 0.0))
    buffer.add("drone", "prop", 0, IDENTITY_Q, (0.0, 0.0, 1.0), static=True)
    T, stamp = buffer.lookup_stamped("world", "prop")
    assert stamp == 4 * S
    np.testing.assert_allclose(T[:3, 3], [3.0, 3.0, 1.0])  # base interpolated at 4 s
    np.testing.assert_allclose(buffer.lookup("world", "prop", 0), T)
    assert buffer.lookup_stamped("drone", "prop") == (pytest.approx(buffer.lookup("drone", "prop")), 0)
    assert buffer.can_transform("world", "prop")
    assert not buffer.can_transform("world", "prop", 6 * S)


def test_a_single_sample_answers_its_own_stamp_only():
    buffer = TransformBuffer()
    buffer.add("world", "drone", 3 * S, IDENTITY_Q, (1.0, 0.0, 0.0))
    np.testing.assert_allclose(buffer.lookup("world", "drone", 3 * S)[:3, 3], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(buffer.lookup("world", "drone")[:3, 3], [1.0, 0.0, 0.0])
    with pytest.raises(ExtrapolationError) as error:
        buffer.lookup("world", "drone", 3 * S + 1)
    one_line(error, "only 3.000000000 s")


def test_unknown_and_unconnected_frames_are_one_line_errors():
    buffer = TransformBuffer()
    with pytest.raises(UnknownFrameError) as empty:
        buffer.lookup("world", "drone")
    one_line(empty, "'world'", "no transform received yet")
    buffer.add("world", "drone", 0, IDENTITY_Q, (0.0, 0.0, 0.0), static=True)
    buffer.add("rig", "left", 0, IDENTITY_Q, (0.0, 0.0, 0.0), static=True)
    with pytest.raises(UnknownFrameError) as unknown:
        buffer.lookup("world", "camera")
    one_line(unknown, "'camera'", "unknown", "known frames: drone, left, rig, world")
    with pytest.raises(FramesNotConnectedError) as apart:
        buffer.lookup("left", "drone")
    one_line(apart, "not connected", "tree of 'world'", "tree of 'rig'")
    with pytest.raises(UnknownFrameError) as slash:
        buffer.lookup("/world", "drone")
    one_line(slash, "leading '/'")
    assert isinstance(apart.value, TransformLookupError)
    assert isinstance(apart.value, ValueError)


def test_a_clock_reset_clears_the_dynamic_history_and_keeps_the_static():
    buffer = TransformBuffer()
    buffer.add("base", "camera", 0, IDENTITY_Q, (0.1, 0.0, 0.0), static=True)
    for second in range(100, 106):
        buffer.add("world", "base", second * S, IDENTITY_Q, (float(second), 0.0, 0.0))
        buffer.add("camera", "drone", second * S, IDENTITY_Q, (0.0, 0.0, 2.0))
    buffer.add("world", "base", 105 * S - S // 2, IDENTITY_Q, (104.5, 0.0, 0.0))  # a reorder, kept
    assert buffer.counters()["clock_resets"] == 0
    assert buffer.add("world", "base", 1 * S, IDENTITY_Q, (1.0, 0.0, 0.0))  # the bag looped
    assert buffer.counters()["clock_resets"] == 1
    assert buffer.time_range("base") == (1 * S, 1 * S)
    assert buffer.time_range("drone") is None
    np.testing.assert_allclose(buffer.lookup("world", "camera")[:3, 3], [1.1, 0.0, 0.0])  # static kept
    with pytest.raises(ExtrapolationError) as error:
        buffer.lookup("world", "drone")
    one_line(error, "'camera' <- 'drone'", "no data since the last clock reset")
    buffer.add("camera", "drone", 1 * S, IDENTITY_Q, (0.0, 0.0, 3.0))
    assert buffer.counters()["clock_resets"] == 1  # the other frames' new stamps are no reset
    np.testing.assert_allclose(buffer.lookup("world", "drone")[:3, 3], [1.1, 0.0, 3.0])
    buffer.add("world", "base", 0, IDENTITY_Q, (0.0, 0.0, 0.0))  # zero after non-zero: a reset too
    assert buffer.counters()["clock_resets"] == 2


def test_reparenting_replaces_the_edge():
    buffer = TransformBuffer()
    buffer.add("a", "d", 0, IDENTITY_Q, (0.0, 0.0, 0.0), static=True)  # keeps a known
    buffer.add("a", "c", 1 * S, IDENTITY_Q, (1.0, 0.0, 0.0))
    buffer.add("b", "c", 2 * S, IDENTITY_Q, (2.0, 0.0, 0.0))
    assert buffer.parent("c") == "b"
    assert buffer.time_range("c") == (2 * S, 2 * S)
    with pytest.raises(FramesNotConnectedError):
        buffer.lookup("a", "c")
    np.testing.assert_allclose(buffer.lookup("b", "c")[:3, 3], [2.0, 0.0, 0.0])
    buffer.add("b", "c", 0, IDENTITY_Q, (3.0, 0.0, 0.0), static=True)  # dynamic -> static
    assert buffer.time_range("c") is None
    np.testing.assert_allclose(buffer.lookup("b", "c", 50 * S)[:3, 3], [3.0, 0.0, 0.0])
    buffer.add("b", "c", 4 * S, IDENTITY_Q, (4.0, 0.0, 0.0))  # static -> dynamic
    assert buffer.time_range("c") == (4 * S, 4 * S)


def test_bad_transforms_are_counted_and_never_stored():
    buffer = TransformBuffer()
    assert buffer.add("world", "base", 1 * S, IDENTITY_Q, (0.0, 0.0, 0.0))
    bad = [
        ("world", "x", IDENTITY_Q, (math.nan, 0.0, 0.0), "non_finite"),
        ("world", "x", (0.0, 0.0, math.inf, 1.0), (0.0, 0.0, 0.0), "non_finite"),
        ("world", "x", (0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0), "zero_quaternion"),
        ("world", "x", (0.0, 0.0, 0.0, 2.0), (0.0, 0.0, 0.0), "not_unit_quaternion"),
        ("", "x", IDENTITY_Q, (0.0, 0.0, 0.0), "bad_frame_id"),
        ("world", "/", IDENTITY_Q, (0.0, 0.0, 0.0), "bad_frame_id"),
        ("x", "x", IDENTITY_Q, (0.0, 0.0, 0.0), "bad_frame_id"),
        ("base", "world", IDENTITY_Q, (0.0, 0.0, 0.0), "loop"),
        ("world", "base", IDENTITY_Q, (9.0, 0.0, 0.0), "repeated_stamp"),
    ]
    for parent, child, q, t, _ in bad:
        assert not buffer.add(parent, child, 1 * S, q, t)
    counters = buffer.counters()
    expected = {reason: sum(b[-1] == reason for b in bad) for reason in TRANSFORM_REJECTIONS}
    assert {r: counters[f"rejected_{r}"] for r in TRANSFORM_REJECTIONS} == expected
    assert (counters["received"], counters["stored"]) == (len(bad) + 1, 1)
    assert buffer.frames() == ["base", "world"]
    np.testing.assert_allclose(buffer.lookup("world", "base")[:3, 3], [0.0, 0.0, 0.0])  # the first kept

    short_cache = TransformBuffer(cache_duration_s=0.5)
    short_cache.add("world", "base", 10 * S, IDENTITY_Q, (0.0, 0.0, 0.0))
    assert not short_cache.add("world", "base", 10 * S - S * 6 // 10, IDENTITY_Q, (0.0, 0.0, 0.0))
    assert short_cache.counters()["rejected_too_old"] == 1


def test_nearly_unit_quaternions_are_normalised_and_slashes_dropped():
    buffer = TransformBuffer()
    assert buffer.add("/world", "/drone", 0, (0.0, 0.0, 0.0, 1.004), (0.0, 0.0, 0.0), static=True)
    R = buffer.lookup("world", "drone")[:3, :3]
    np.testing.assert_allclose(R, np.eye(3), atol=1e-15)


def test_messages_are_read_through_their_fields():
    def transform(parent: str, child: str, sec: int, nanosec: int, x: float) -> SimpleNamespace:
        return SimpleNamespace(
            header=SimpleNamespace(frame_id=parent, stamp=SimpleNamespace(sec=sec, nanosec=nanosec)),
            child_frame_id=child,
            transform=SimpleNamespace(
                translation=SimpleNamespace(x=x, y=0.0, z=0.0),
                rotation=SimpleNamespace(x=0.0, y=0.0, z=0.0, w=1.0),
            ),
        )

    buffer = TransformBuffer()
    assert buffer.add_transform_stamped(transform("world", "base", 1, 500_000_000, 1.0))
    message = SimpleNamespace(
        transforms=[transform("base", "cam", 0, 0, 0.5), transform("x", "x", 0, 0, 0.0)]
    )
    assert buffer.add_tf_message(message, static=True) == 1
    T, stamp = buffer.lookup_stamped("world", "cam")
    assert stamp == S + S // 2
    np.testing.assert_allclose(T[:3, 3], [1.5, 0.0, 0.0])


def test_concurrent_writers_and_readers():
    buffer = TransformBuffer(cache_duration_s=1.0)
    buffer.add("world", "rig", 0, IDENTITY_Q, (0.0, 0.0, 0.0), static=True)
    writers, samples = 4, 500
    failures: list[BaseException] = []

    def write(index: int) -> None:
        try:
            for sample in range(1, samples + 1):
                q = z_quaternion(sample * 1e-3)
                buffer.add("rig", f"camera{index}", sample * S // 100, q, (float(index), 0.0, 0.0))
        except BaseException as error:
            failures.append(error)

    def read() -> None:
        try:
            for _ in range(300):
                for index in range(writers):
                    try:
                        T = buffer.lookup(f"camera{index}", "world")
                    except TransformLookupError:
                        continue
                    assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3))
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    threads += [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures
    assert buffer.counters()["stored"] == 1 + writers * samples
    assert buffer.time_range("camera0") == (samples * S // 100 - S, samples * S // 100)


def test_a_bags_tf_static_gives_the_extrinsics_eval_bag_fuses_with(rig_bag):
    """rosbags-deserialized /tf_static messages feed the buffer as they are; a fusion node's lookups
    (frame_id <- rig frame) equal the extrinsics drone-pose eval-bag reads from the same bag."""
    from drone_pose.bags.frames import read_topics
    from drone_pose.bags.rig_frames import read_rig_frames

    read, _ = read_topics(rig_bag, ["/tf_static"])
    buffer = TransformBuffer()
    for message in read["/tf_static"]:
        buffer.add_tf_message(message, static=True)
    frames = read_rig_frames(rig_bag)
    rig_frame, cam_from_rig = frames.tf_extrinsics()
    for frame_id, expected in zip(frames.frame_ids, cam_from_rig, strict=True):
        np.testing.assert_allclose(buffer.lookup(frame_id, rig_frame), expected, atol=1e-12)
