"""`drone-pose synth-bag`: bags that rosbags and the mcap ROS 2 decoder both read, with consistent
stamps, frames, QoS and ground truth; deterministic; clear errors."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict

import numpy as np
import pytest
import roma
import torch
import yaml
from mcap_ros2.reader import read_ros2_messages
from rosbags.interfaces import QosDurability
from rosbags.rosbag2 import Reader

from drone_pose.bags import messages
from drone_pose.bags.flight_bag import GROUND_TRUTH_FRAME, FlightBagSpec, write_flight_bag
from drone_pose.cli import main
from drone_pose.geometry.camera import PinholeCamera


def rotation(q):
    return roma.unitquat_to_rotmat(torch.tensor([q.x, q.y, q.z, q.w], dtype=torch.float64)).numpy()


def read_all(path):
    """{topic: [(log_time, message)]} and the connections, through rosbags."""
    out = defaultdict(list)
    with Reader(path) as reader:
        connections = {c.topic: c for c in reader.connections}
        for connection, timestamp, raw in reader.messages():
            out[connection.topic].append((timestamp, messages.deserialize(raw, connection.msgtype)))
    metadata = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    return out, connections, metadata["custom_data"]


@pytest.fixture(scope="module")
def two_camera_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("bags") / "flight"
    spec = FlightBagSpec(drone="m2ed", seconds=1.0, rate_hz=15.0, cameras=2, seed=3)
    summary = write_flight_bag(path, spec, workers=1, progress=False)
    return path, summary


def test_bag_topics_stamps_frames_and_qos(two_camera_bag):
    path, summary = two_camera_bag
    assert summary["frames"] == 15
    assert summary["cameras"] == ["camera0", "camera1"]
    topics, connections, _ = read_all(path)
    for name in ("camera0", "camera1"):
        images = topics[f"/{name}/image_raw"]
        infos = topics[f"/{name}/camera_info"]
        poses = topics[f"/{name}/ground_truth/pose"]
        assert len(images) == len(infos) == len(poses) == 15
        stamps = [messages.stamp_ns(m.header) for _, m in images]
        assert all(b > a for a, b in itertools.pairwise(stamps))
        assert [t for t, _ in images] == stamps  # log time = header stamp
        np.testing.assert_allclose(np.diff(stamps), 1e9 / 15, atol=1)
        assert {m.header.frame_id for _, m in images + infos + poses} == {f"{name}_optical"}
        image = images[0][1]
        assert (image.encoding, image.width, image.height, image.step) == ("rgb8", 320, 240, 960)
        assert len(image.data) == 320 * 240 * 3
        np.testing.assert_allclose(infos[0][1].k.reshape(3, 3), PinholeCamera.uava().K(torch.float64).numpy())
    assert len(topics["/tf"]) == 15
    assert len(topics["/tf_static"]) == 1
    assert connections["/tf_static"].ext.offered_qos_profiles[0].durability == QosDurability.TRANSIENT_LOCAL
    assert connections["/camera0/image_raw"].ext.offered_qos_profiles[0].durability == QosDurability.VOLATILE
    static = {tf.child_frame_id: tf for tf in topics["/tf_static"][0][1].transforms}
    assert set(static) == {"camera0_optical", "camera1_optical"}
    assert {tf.header.frame_id for tf in static.values()} == {"world"}


def test_ground_truth_is_consistent_across_topics(two_camera_bag):
    """world pose = static extrinsics x per-camera pose, and /tf carries the first camera's pose."""
    path, _ = two_camera_bag
    topics, _, _ = read_all(path)
    static = {tf.child_frame_id: tf.transform for tf in topics["/tf_static"][0][1].transforms}
    for frame in (0, 7, 14):
        world = topics["/ground_truth/pose"][frame][1].pose
        R_world, p_world = (
            rotation(world.orientation),
            np.array([world.position.x, world.position.y, world.position.z]),
        )
        assert np.linalg.det(R_world) == pytest.approx(1.0)
        for name in ("camera0", "camera1"):
            extrinsic = static[f"{name}_optical"]
            R_wc = rotation(extrinsic.rotation)
            p_wc = np.array([extrinsic.translation.x, extrinsic.translation.y, extrinsic.translation.z])
            pose = topics[f"/{name}/ground_truth/pose"][frame][1].pose
            R_cd = rotation(pose.orientation)
            t_cd = np.array([pose.position.x, pose.position.y, pose.position.z])
            np.testing.assert_allclose(R_wc @ R_cd, R_world, atol=1e-9)
            np.testing.assert_allclose(R_wc @ t_cd + p_wc, p_world, atol=1e-9)
            assert 0.5 < t_cd[2] < 3.5  # the M2ED's UAVA-like distances
        tf = topics["/tf"][frame][1].transforms[0]
        assert (tf.header.frame_id, tf.child_frame_id) == ("camera0_optical", GROUND_TRUTH_FRAME)
        camera0 = topics["/camera0/ground_truth/pose"][frame][1].pose
        assert tf.transform.translation.z == pytest.approx(camera0.position.z)


def test_the_mcap_library_decodes_the_bag(two_camera_bag):
    path, _ = two_camera_bag
    counts, last = defaultdict(int), {}
    for item in read_ros2_messages(str(path / "flight.mcap")):
        topic = item.channel.topic
        counts[topic] += 1
        if topic != "/tf_static":
            stamp = item.ros_msg.transforms[0].header.stamp if topic == "/tf" else item.ros_msg.header.stamp
            ns = stamp.sec * 1_000_000_000 + stamp.nanosec
            assert ns > last.get(topic, -1)
            last[topic] = ns
        if topic == "/camera1/image_raw":
            assert item.ros_msg.encoding == "rgb8"
            assert len(item.ros_msg.data) == 240 * 960
    assert counts["/camera1/image_raw"] == 15
    assert counts["/tf_static"] == 1
    assert len(counts) == 9


def test_same_seed_same_bag_whatever_the_workers_and_sqlite3_storage(tmp_path):
    spec = FlightBagSpec(drone="tello", seconds=0.4, rate_hz=10.0, seed=5)
    write_flight_bag(tmp_path / "a", spec, workers=1, progress=False)
    write_flight_bag(tmp_path / "b", spec, storage="sqlite3", workers=2, progress=False)
    a, _, custom = read_all(tmp_path / "a")
    b, _, _ = read_all(tmp_path / "b")
    assert list((tmp_path / "b").glob("*.db3"))
    assert len(a["/camera/image_raw"]) == 4
    for (ta, ma), (tb, mb) in zip(a["/camera/image_raw"], b["/camera/image_raw"], strict=True):
        assert ta == tb
        assert np.array_equal(ma.data, mb.data)
    first, last = a["/camera/image_raw"][0][1].data, a["/camera/image_raw"][-1][1].data
    assert not np.array_equal(first, last)
    assert custom["drone_pose.drone"] == "tello"
    assert custom["drone_pose.seed"] == "5"


def test_command_line_and_bad_requests(tmp_path, capsys):
    arguments = [
        "--drone",
        "tello",
        "--seconds",
        "0.2",
        "--rate",
        "10",
        "--out",
        str(tmp_path / "c"),
        "--workers",
        "1",
    ]
    assert main(["synth-bag", *arguments]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 2
    with pytest.raises(ValueError, match="already exists"):
        write_flight_bag(tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="unknown drone"):
        write_flight_bag(tmp_path / "d", FlightBagSpec(drone="no_such_drone"), progress=False)
    with pytest.raises(ValueError, match="path is empty"):
        write_flight_bag("", progress=False)
    with pytest.raises(ValueError, match="1 to 4 cameras"):
        write_flight_bag(tmp_path / "e", FlightBagSpec(cameras=5), progress=False)
    with pytest.raises(ValueError, match="unknown storage"):
        write_flight_bag(tmp_path / "f", storage="rosbag1", progress=False)
    with pytest.raises(ValueError, match="focal length"):
        write_flight_bag(tmp_path / "g", FlightBagSpec(K=((0, 0, 0), (0, 0, 0), (0, 0, 1))), progress=False)
    assert not any((tmp_path / name).exists() for name in "defg")


def test_read_frames_carries_the_lens_and_skips_bad_camera_info_and_ground_truth(two_camera_bag, tmp_path):
    """A copy of the bag with one NaN K, one unsupported lens model, one zero quaternion and one real
    plumb_bob lens: the first three frames are skipped and counted, the lens is carried on its frame."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from drone_pose.bags.frames import read_frames
    from drone_pose.bags.messages import TYPESTORE

    path, _ = two_camera_bag
    frames, _ = read_frames(path, "camera0")
    stamps = [frame["stamp"] for frame in frames]
    nan_k, bad_lens, bad_truth, lens = stamps[1:5]
    altered = tmp_path / "altered"
    with Reader(path) as reader, Writer(altered, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {
            c.id: writer.add_connection(
                c.topic, c.msgtype, typestore=TYPESTORE, offered_qos_profiles=c.ext.offered_qos_profiles
            )
            for c in reader.connections
        }
        for connection, timestamp, raw in reader.messages():
            if connection.topic not in ("/camera0/camera_info", "/camera0/ground_truth/pose"):
                writer.write(connections[connection.id], timestamp, raw)
                continue
            message = messages.deserialize(raw, connection.msgtype)
            stamp = messages.stamp_ns(message.header)
            if connection.topic == "/camera0/camera_info" and stamp in (nan_k, bad_lens, lens):
                if stamp == nan_k:
                    message.k = np.concatenate(([np.nan], message.k[1:]))
                else:
                    message.distortion_model = "kannala_brandt" if stamp == bad_lens else "plumb_bob"
                    message.d = np.array([-0.2, 0.05, 0.001, -0.001, 0.0])
                raw = messages.serialize(message)
            if connection.topic == "/camera0/ground_truth/pose" and stamp == bad_truth:
                message.pose.orientation.x = message.pose.orientation.y = 0.0
                message.pose.orientation.z = message.pose.orientation.w = 0.0
                raw = messages.serialize(message)
            writer.write(connections[connection.id], timestamp, raw)
    altered_frames, skipped = read_frames(altered, "camera0")
    assert skipped["bad_camera_info"] == 2
    assert skipped["bad_ground_truth"] == 1
    assert [frame["stamp"] for frame in altered_frames] == [
        s for s in stamps if s not in (nan_k, bad_lens, bad_truth)
    ]
    by_stamp = {frame["stamp"]: frame for frame in altered_frames}
    assert by_stamp[lens]["distortion"].model == "plumb_bob"
    assert by_stamp[stamps[0]]["distortion"] is None  # the synthetic camera is a pinhole
    for frame in altered_frames:
        assert np.isfinite(frame["K"]).all()
        assert np.isfinite(frame["R"]).all()
