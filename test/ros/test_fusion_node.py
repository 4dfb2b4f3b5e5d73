"""The fusion node over real DDS, in its own process: three cameras of a rendered flight published
from the test process, one camera cut mid-flight and one sending garbage; fused poses in the rig
frame with the group stamps, counted in the per-camera diagnostics."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from drone_pose.bags.flight_bag import FlightBagSpec, plan_flight, write_flight_bag
from drone_pose.bags.frames import read_frames
from drone_pose.fusion.rig_file import save_rig_file
from drone_pose.ros.fusion_benchmark import rig_of
from drone_pose.ros.image_conversions import numpy_to_image
from drone_pose.ros.qos import TF_TOPIC, sensor_data_qos, tf_qos

from .conftest import spin_until

pytestmark = pytest.mark.ros

CAMERAS = ("camera0", "camera1", "camera2")
SPEC = FlightBagSpec(drone="m2ed", seconds=2.0, rate_hz=5.0, cameras=3, seed=11)


@pytest.fixture(scope="module")
def rig_flight(tmp_path_factory):
    """A rendered 3-camera flight (frames per camera, in stamp order) and its rig file."""
    root = tmp_path_factory.mktemp("fusion")
    bag = root / "flight"
    write_flight_bag(bag, SPEC, workers=1, progress=False)
    frames = {camera: read_frames(bag, camera)[0] for camera in CAMERAS}
    rig_cameras, flight = plan_flight(SPEC)
    rig = rig_of(rig_cameras)
    rig_file = save_rig_file(rig, root / "rig.yaml")
    return frames, rig_file, flight


def start_fusion(*parameters: str) -> subprocess.Popen:
    arguments = [item for p in ("device:=cpu", *parameters) for item in ("-p", p)]
    return subprocess.Popen(
        [sys.executable, "-m", "drone_pose.ros.fusion_node", "--ros-args", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def camera_info_of(frame: dict, header: Header) -> CameraInfo:
    info = CameraInfo(header=header, width=frame["rgb"].shape[1], height=frame["rgb"].shape[0])
    info.k = [float(v) for v in frame["K"].reshape(9)]
    return info


def statuses(array: DiagnosticArray) -> dict[str, dict[str, str]]:
    return {status.name: {kv.key: kv.value for kv in status.values} for status in array.status}


def test_a_cut_camera_and_a_garbage_camera_leave_fusion_running_on_the_others(ros_node, rig_flight):
    node, executor = ros_node
    frames, rig_file, flight = rig_flight
    count = len(frames["camera0"])
    assert count == 10
    assert all(len(frames[c]) == count for c in CAMERAS)
    poses, covariances, transforms, diagnostics = [], [], [], []
    node.create_subscription(PoseStamped, "/pose", poses.append, QoSProfile(depth=50))
    node.create_subscription(
        PoseWithCovarianceStamped, "/pose_with_covariance", covariances.append, QoSProfile(depth=50)
    )
    node.create_subscription(TFMessage, TF_TOPIC, transforms.append, tf_qos())
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, QoSProfile(depth=20))
    images = {c: node.create_publisher(Image, f"/{c}/image_raw", sensor_data_qos(10)) for c in CAMERAS}
    infos = {c: node.create_publisher(CameraInfo, f"/{c}/camera_info", sensor_data_qos(10)) for c in CAMERAS}
    fusion = start_fusion(
        "cameras:=" + ",".join(CAMERAS),
        f"rig_file:={rig_file}",
        "drone_frame:=drone_fused",
        "max_wait_s:=0.3",
    )
    try:
        ready = spin_until(
            executor,
            lambda: (
                all(node.count_subscribers(f"/{c}/image_raw") > 0 for c in CAMERAS)
                and node.count_publishers("/pose") > 0
                and node.count_publishers("/pose_with_covariance") > 0
            ),
            timeout_s=60.0,
        )
        assert ready, "the fusion node did not come up: " + (fusion.stderr.read() if fusion.poll() else "")
        spin_until(executor, lambda: False, timeout_s=1.0)  # let the best-effort readers match
        garbage, cut_after = {3, 4}, 5  # camera1 sends garbage at frames 3 and 4; camera2 stops after 5
        for index in range(count):
            stamp = frames["camera0"][index]["stamp"]
            for camera in CAMERAS:
                if camera == "camera2" and index >= cut_after:
                    continue
                frame = frames[camera][index]
                header = Header(
                    stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id=frame["frame_id"]
                )
                infos[camera].publish(camera_info_of(frame, header))
                image = numpy_to_image(frame["rgb"], "rgb8", header.stamp, frame["frame_id"])
                if camera == "camera1" and index in garbage:
                    image.encoding = "bogus16"  # garbage: an encoding nobody can decode
                images[camera].publish(image)
            spin_until(executor, lambda: False, timeout_s=0.4)  # 2.5 Hz: the CPU keeps up

        def settled() -> bool:
            if not diagnostics:
                return False
            report = statuses(diagnostics[-1])
            fused = report.get("drone_pose: fusion", {})
            return int(fused.get("groups_processed", 0)) + int(
                fused.get("groups_dropped", 0)
            ) >= count and int(fused.get("poses_published", 0)) <= len(poses)

        spin_until(executor, settled, timeout_s=60.0)
        spin_until(executor, lambda: False, timeout_s=2.5)  # the next reports: the cut camera has gone quiet
    finally:
        fusion.terminate()
        fusion.wait(timeout=20)
    report = statuses(diagnostics[-1])
    fused = report["drone_pose: fusion"]
    cut, noisy, steady = (report[f"drone_pose: fusion camera {c}"] for c in ("camera2", "camera1", "camera0"))
    # every group was fused, with whatever views came
    assert int(fused["groups_processed"]) == count, fused
    assert int(fused["poses_published"]) == count == len(poses) == len(covariances), fused
    assert int(fused["groups_complete"]) == count - len(garbage) - (count - cut_after), fused
    assert int(fused["groups_partial_2_views"]) == len(garbage) + (count - cut_after), fused
    # counted per camera
    assert int(cut["frames_received"]) == cut_after, cut
    assert int(cut["views_estimated"]) == cut_after, cut
    assert float(cut["input_rate_hz"]) == 0.0, cut  # the cut camera shows as quiet
    assert int(noisy["rejected_bad_image"]) == len(garbage), noisy
    assert noisy["last_rejection"] == "bad_image", noisy
    assert int(noisy["views_estimated"]) == count - len(garbage), noisy
    assert int(steady["views_estimated"]) == count, steady
    assert "rejected_bad_image" not in steady, steady
    for camera in (cut, noisy, steady):  # each estimated view is fused, gated or invalid by its own verdict
        left_out = sum(int(v) for k, v in camera.items() if k.startswith("views_invalid_"))
        left_out += int(camera.get("views_gated", 0))
        assert int(camera["views_used"]) + left_out == int(camera["views_estimated"]), camera
    used = sum(int(camera["views_used"]) for camera in (cut, noisy, steady))
    assert float(fused["views_used_mean"]) == pytest.approx(used / count, abs=1e-3), fused
    assert used >= 2 * count, fused  # of the 23 views that came, at most 3 left out
    assert fused["extrinsics"] == "rig_file"
    assert fused["rig_frame"] == "world"
    # poses in the rig frame, with the groups' stamps, close to the truth with 2 or 3 views
    stamps = [f["stamp"] for f in frames["camera0"]]
    assert [p.header.stamp.sec * 10**9 + p.header.stamp.nanosec for p in poses] == stamps
    assert {p.header.frame_id for p in poses} == {"world"}
    position = np.array([[p.pose.position.x, p.pose.position.y, p.pose.position.z] for p in poses])
    error_cm = 100 * np.linalg.norm(position - flight.position[: len(poses)], axis=1)
    assert np.median(error_cm) < 3.0, error_cm
    assert error_cm.max() < 10.0, error_cm
    covariance = np.array([c.pose.covariance for c in covariances]).reshape(-1, 6, 6)
    assert np.isfinite(covariance).all()
    assert (np.linalg.eigvalsh(covariance) > 0).all()
    sent = [t for m in transforms for t in m.transforms if t.child_frame_id == "drone_fused"]
    assert sent
    assert {t.header.frame_id for t in sent} == {"world"}


def test_a_missing_rig_file_fails_configure_with_one_line():
    fusion = start_fusion("cameras:=camera0,camera1", "rig_file:=/nonexistent/rig.yaml")
    try:
        _, err = fusion.communicate(timeout=60)
    finally:
        if fusion.poll() is None:
            fusion.kill()
    assert fusion.returncode == 2, err
    line = [line for line in err.splitlines() if line.startswith("fusion_node: configure failed")]
    assert line, err
    assert "/nonexistent/rig.yaml" in line[0], err


def test_estimated_extrinsics_with_a_rig_file_fail_configure_with_one_line():
    fusion = start_fusion("cameras:=camera0,camera1", "extrinsics:=estimate", "rig_file:=/tmp/rig.yaml")
    try:
        _, err = fusion.communicate(timeout=60)
    finally:
        if fusion.poll() is None:
            fusion.kill()
    assert fusion.returncode == 2, err
    line = [line for line in err.splitlines() if line.startswith("fusion_node: configure failed")]
    assert line, err
    assert "extrinsics:=estimate does not read rig_file:=/tmp/rig.yaml" in line[0], err


def test_a_camera_missing_from_the_rig_file_fails_configure(rig_flight):
    _, rig_file, _ = rig_flight
    fusion = start_fusion("cameras:=camera0,camera9", f"rig_file:={rig_file}")
    try:
        _, err = fusion.communicate(timeout=60)
    finally:
        if fusion.poll() is None:
            fusion.kill()
    assert fusion.returncode == 2, err
    assert "no camera 'camera9'" in err, err


def test_a_replayed_flight_gives_the_offline_evaluations_poses_in_the_rig_frame(ros_node, rig_bag, tmp_path):
    """`drone-pose replay` of a 3-camera bag into the fusion node (extrinsics from the bag's
    /tf_static): one pose per group, in `world`, with the group's stamp, equal to the poses
    `drone-pose eval-bag` computes offline from the same bag."""
    import csv
    import os

    from drone_pose.evaluation.fused_bag_evaluation import evaluate_fused_bag
    from drone_pose.ros.launch_plan import fastdds_profile

    node, executor = ros_node
    poses, transforms = [], []
    node.create_subscription(PoseStamped, "/pose", poses.append, QoSProfile(depth=50))
    node.create_subscription(TFMessage, TF_TOPIC, transforms.append, tf_qos())
    fusion = start_fusion("cameras:=" + ",".join(CAMERAS), "drone_frame:=drone_fused")
    try:
        assert spin_until(
            executor,
            lambda: (
                all(node.count_subscribers(f"/{c}/image_raw") > 0 for c in CAMERAS)
                and node.count_publishers("/pose") > 0
            ),
            timeout_s=60.0,
        ), "the fusion node did not come up"
        replay = subprocess.Popen(
            [
                *(sys.executable, "-m", "drone_pose.cli", "replay", str(rig_bag)),
                *("--wait-for", "/camera2/image_raw", "--wait-timeout", "60", "--rate", "0.5"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "FASTDDS_DEFAULT_PROFILES_FILE": fastdds_profile()},
        )
        assert spin_until(executor, lambda: replay.poll() is not None, timeout_s=90.0), (
            "replay did not finish"
        )
        _, err = replay.communicate(timeout=10)
        assert replay.returncode == 0, err[-2000:]
        spin_until(executor, lambda: False, timeout_s=3.0)  # the last group is fused and published
    finally:
        fusion.terminate()
        fusion.wait(timeout=20)
    offline = evaluate_fused_bag(rig_bag, None, tmp_path / "eval", device="cpu")
    with open(offline["files"]["frames"], newline="") as handle:
        rows = {int(row["stamp_ns"]): row for row in csv.DictReader(handle)}
    assert len(rows) == 6
    valid = {stamp for stamp, row in rows.items() if row["valid"] == "1"}
    assert len(valid) >= 5, rows
    received = {p.header.stamp.sec * 10**9 + p.header.stamp.nanosec: p for p in poses}
    assert set(received) == valid  # a pose for every group that has one offline, none for the others
    for stamp, pose in received.items():
        row = rows[stamp]
        assert pose.header.frame_id == "world"
        position = np.array([pose.pose.position.x, pose.pose.position.y, pose.pose.position.z])
        expected = np.array([float(row[k]) for k in ("tx", "ty", "tz")])
        assert np.abs(position - expected).max() < 1e-6, (stamp, position, expected)
        q = pose.pose.orientation
        q_offline = np.array([float(row[k]) for k in ("qx", "qy", "qz", "qw")])
        assert abs(abs(float(np.dot([q.x, q.y, q.z, q.w], q_offline))) - 1.0) < 1e-9, (stamp, q, q_offline)
    sent = {
        t.header.stamp.sec * 10**9 + t.header.stamp.nanosec
        for m in transforms
        for t in m.transforms
        if t.child_frame_id == "drone_fused" and t.header.frame_id == "world"
    }
    assert sent == valid


@pytest.fixture(scope="module")
def uncalibrated_flight(tmp_path_factory):
    """A 3-camera M2ED flight bag of 12 groups (2.4 s at 5 Hz, 160x120) and its frames read back."""
    from drone_pose.bags.rig_frames import read_rig_frames

    bag = tmp_path_factory.mktemp("self_calibration") / "flight"
    spec = FlightBagSpec(seconds=2.4, rate_hz=5.0, cameras=3, seed=31, width=160, height=120)
    write_flight_bag(bag, spec, workers=1, progress=False)
    return bag, read_rig_frames(bag)


def test_a_replayed_flight_without_tf_static_calibrates_the_rig_and_is_fused(
    ros_node, uncalibrated_flight, tmp_path
):
    """`drone-pose replay` of a 3-camera bag's cameras only (no /tf_static, no rig file) into the
    fusion node with extrinsics:=estimate: the reference camera's own poses until the rig is
    estimated, then fused poses, all in camera0's optical frame; the estimated cameras on
    /tf_static close to the bag's true rig, their uncertainty in /diagnostics, and the rig file
    written for rig_file mode."""
    import os

    from drone_pose.fusion.rig_file import invert_rigid, load_rig_file
    from drone_pose.fusion.rig_initialisation import extrinsics_errors
    from drone_pose.ros.launch_plan import fastdds_profile
    from drone_pose.ros.qos import TF_STATIC_TOPIC, tf_static_listener_qos

    bag, truth = uncalibrated_flight
    node, executor = ros_node
    poses, statics, diagnostics = [], [], []
    node.create_subscription(PoseStamped, "/pose", poses.append, QoSProfile(depth=50))
    node.create_subscription(TFMessage, TF_STATIC_TOPIC, statics.append, tf_static_listener_qos())
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, QoSProfile(depth=20))
    rig_file = tmp_path / "estimated_rig.yaml"
    fusion = start_fusion(
        "cameras:=" + ",".join(CAMERAS),
        "extrinsics:=estimate",
        "rig_min_groups:=4",
        "rig_estimate_period_s:=0.2",
        f"rig_output_file:={rig_file}",
        "drone_frame:=drone_fused",
    )
    topics = [f"/{c}/{kind}" for c in CAMERAS for kind in ("image_raw", "camera_info")]
    try:
        assert spin_until(
            executor,
            lambda: (
                all(node.count_subscribers(f"/{c}/image_raw") > 0 for c in CAMERAS)
                and node.count_publishers("/pose") > 0
            ),
            timeout_s=60.0,
        ), "the fusion node did not come up: " + (fusion.stderr.read() if fusion.poll() else "")
        replay = subprocess.Popen(
            [
                *(sys.executable, "-m", "drone_pose.cli", "replay", str(bag), "--topics", *topics),
                *("--wait-for", "/camera2/image_raw", "--wait-timeout", "60", "--rate", "0.5"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "FASTDDS_DEFAULT_PROFILES_FILE": fastdds_profile()},
        )
        assert spin_until(executor, lambda: replay.poll() is not None, timeout_s=90.0), (
            "replay did not finish"
        )
        _, err = replay.communicate(timeout=10)
        assert replay.returncode == 0, err[-2000:]

        def settled() -> bool:
            fused = statuses(diagnostics[-1]).get("drone_pose: fusion", {}) if diagnostics else {}
            return int(fused.get("groups_processed", 0)) + int(fused.get("groups_dropped", 0)) >= 12 and int(
                fused.get("poses_published", 0)
            ) <= len(poses)

        spin_until(executor, settled, timeout_s=30.0)
    finally:
        fusion.terminate()
        fusion.wait(timeout=20)
    report = statuses(diagnostics[-1])
    fused = report["drone_pose: fusion"]
    assert fused["extrinsics"] == "estimate", fused
    assert fused["rig_state"] == "estimated", fused
    assert fused["rig_frame"] == "camera0_optical", fused
    single, published = int(fused["poses_single_view"]), int(fused["poses_published"])
    assert single >= 1, fused  # the reference camera's own poses while the rig was being estimated
    assert published - single >= 2, fused  # fused poses with the estimated rig
    assert published == len(poses), fused
    assert {p.header.frame_id for p in poses} == {"camera0_optical"}
    # the poses against the truth moved into camera0's optical frame
    camera0_from_world = truth.tf_extrinsics()[1][0]
    truth_at = {
        group.stamp: camera0_from_world[:3, :3] @ group.t + camera0_from_world[:3, 3]
        for group in truth.groups
    }
    error_cm = [
        100
        * np.linalg.norm(
            np.array([p.pose.position.x, p.pose.position.y, p.pose.position.z])
            - truth_at[p.header.stamp.sec * 10**9 + p.header.stamp.nanosec]
        )
        for p in poses
    ]
    assert np.median(error_cm) < 5.0, error_cm
    # the cameras on /tf_static from the reference camera, close to the true rig
    sent = {t.child_frame_id: t for m in statics for t in m.transforms}
    assert set(sent) == {"camera1_optical", "camera2_optical"}, set(sent)
    assert {t.header.frame_id for t in sent.values()} == {"camera0_optical"}
    rig = load_rig_file(rig_file)  # written for rig_file mode
    assert rig.rig_frame == "camera0_optical"
    assert rig.camera_names == CAMERAS
    assert rig.frame_ids == ("camera0_optical", "camera1_optical", "camera2_optical")
    for v, frame_id in ((1, "camera1_optical"), (2, "camera2_optical")):
        translation = sent[frame_id].transform.translation
        position = np.array([translation.x, translation.y, translation.z])
        np.testing.assert_allclose(position, invert_rigid(rig.cam_from_rig[v])[:3, 3], atol=1e-9)
    errors = extrinsics_errors(rig.cam_from_rig, truth.tf_extrinsics()[1], reference=0)
    assert max(errors["rotation_deg"][1:]) < 2.0, errors
    assert max(errors["position_percent"][1:]) < 5.0, errors
    for camera in ("camera1", "camera2"):  # uncertainty in the diagnostics
        status = report[f"drone_pose: fusion camera {camera}"]
        assert status["extrinsics_resolved"] == "True", status
        assert 0.0 < float(status["extrinsics_rotation_std_deg"]) < 5.0, status
        assert 0.0 < float(status["extrinsics_position_std_m"]) < 0.2, status
    assert int(fused["rig_files_written"]) >= 1, fused
