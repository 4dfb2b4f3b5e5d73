"""`drone-pose eval` and `drone-pose eval-bag` score the same frames the same way (one scoring path)."""

from __future__ import annotations

import csv
import json

import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

from drone_pose.bags import messages
from drone_pose.cli import main
from drone_pose.data.dataset import ShardDataset
from drone_pose.data.generate import generate_dataset
from drone_pose.inference.checkpoint import default_checkpoint

FRAMES = 12
PERIOD_NS = 100_000_000


def write_bag_of_split(dataset: ShardDataset, path) -> None:
    """A bag with /camera/image_raw, camera_info and ground_truth/pose for every sample of `dataset`,
    the images quantised as `drone-pose eval` quantises them."""
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:

        def add(topic: str, msgtype: str):
            qos = [messages.bag_qos(10)]
            return writer.add_connection(
                topic, msgtype, typestore=messages.TYPESTORE, offered_qos_profiles=qos
            )

        image_c = add("/camera/image_raw", messages.IMAGE)
        info_c = add("/camera/camera_info", messages.CAMERA_INFO)
        truth_c = add("/camera/ground_truth/pose", messages.POSE_STAMPED)
        for index in range(len(dataset)):
            sample = dataset[index]
            rgb = (sample["image"].permute(1, 2, 0) * 255.0).round().byte().numpy()
            stamp = (index + 1) * PERIOD_NS
            K = sample["K"].double().numpy()
            height, width = rgb.shape[:2]
            writer.write(
                image_c, stamp, messages.serialize(messages.image_rgb8(rgb, stamp, "camera_optical"))
            )
            info = messages.camera_info(K, width, height, stamp, "camera_optical")
            writer.write(info_c, stamp, messages.serialize(info))
            pose = messages.pose_stamped(
                sample["R"].double().numpy(), sample["t"].double().numpy(), stamp, "camera_optical"
            )
            writer.write(truth_c, stamp, messages.serialize(pose))


@pytest.mark.slow
def test_eval_and_eval_bag_give_identical_tables_on_the_same_frames(tmp_path, capsys):
    data = tmp_path / "data"
    generate_dataset("m2ed", FRAMES, data, seed=31, workers=1, fractions=(0.0, 0.0, 1.0), progress=False)
    write_bag_of_split(ShardDataset(data, "test"), tmp_path / "bag")
    checkpoint = str(default_checkpoint("m2ed"))
    common = ["--checkpoint", checkpoint, "--device", "cpu", "--batch-size", "4"]
    assert (
        main(["eval", "--data", str(data), "--split", "test", "--out", str(tmp_path / "eval"), *common]) == 0
    )
    assert main(["eval-bag", str(tmp_path / "bag"), "--out", str(tmp_path / "eval_bag"), *common]) == 0
    capsys.readouterr()

    from_split = json.loads((tmp_path / "eval" / "results.json").read_text())
    from_bag = json.loads((tmp_path / "eval_bag" / "results.json").read_text())
    assert from_split["metrics"]["count"] == from_bag["metrics"]["count"] == FRAMES
    # a working network on the shipped model, so that agreement is not agreement on zeros
    assert from_split["metrics"]["ACC5"] > 50.0
    assert set(from_split["metrics"]) == set(from_bag["metrics"])
    for key, value in from_split["metrics"].items():
        # keypoints: the dataset stores them in float32, the bag scoring projects the true pose
        assert from_bag["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-4, nan_ok=True), key
    assert len(from_split["by_size"]) == len(from_bag["by_size"]) > 1
    for split_row, bag_row in zip(from_split["by_size"], from_bag["by_size"], strict=True):
        assert bag_row.keys() == split_row.keys()
        for key, value in split_row.items():
            assert bag_row[key] == pytest.approx(value, rel=1e-6, abs=1e-4), key
    # the Markdown documents: the same table, covariance line, validity sentence and size table
    split_md = (tmp_path / "eval" / "results.md").read_text().replace(from_split["label"], "LABEL")
    bag_md = (tmp_path / "eval_bag" / "results.md").read_text().replace(from_bag["label"], "LABEL")
    assert split_md == bag_md
    assert "By the drone's size" in bag_md
    assert "Pose covariance" in bag_md

    with (tmp_path / "eval" / "samples.csv").open() as handle:
        split_rows = list(csv.DictReader(handle))
    with (tmp_path / "eval_bag" / "samples.csv").open() as handle:
        bag_rows = list(csv.DictReader(handle))
    for split_row, bag_row in zip(split_rows, bag_rows, strict=True):
        assert bag_row["valid"] == split_row["valid"]
        for key in ("rotation_deg", "translation_cm", "size_px"):
            assert float(bag_row[key]) == pytest.approx(float(split_row[key]), rel=1e-6, abs=1e-4)
