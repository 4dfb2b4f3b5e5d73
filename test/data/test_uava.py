"""The UAVA reader on a small fixture written in the public UAVA layout from rendered scenes."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from drone_pose.data.generate import GenerationSpec, render_sample
from drone_pose.data.poses import PoseSamplingConfig
from drone_pose.data.shards import DatasetFormatError
from drone_pose.data.synth import SceneConfig
from drone_pose.data.uava import OPENGL_TO_OPENCV, UAVADataset, parse_image_name
from drone_pose.geometry.camera import PinholeCamera

K = PinholeCamera.uava().K(torch.float64).numpy()
BUILDINGS = {"train": ["house_a", "house_b"], "val": ["office"], "test": ["school"]}


def write_fixture(root, convention="opencv"):
    """Three frames per building for the m2ed; returns {(building, frame): scene}."""
    spec = GenerationSpec("m2ed", tuple(map(tuple, K)), 320, 240, 11, "", SceneConfig(), PoseSamplingConfig())
    table, scenes, index = {}, {}, 0
    (root / "data splits").mkdir(parents=True)
    for split, buildings in BUILDINGS.items():
        (root / "data splits" / f"scenes_{split}.txt").write_text("\n".join(buildings) + "\n")
        for building in buildings:
            colour = root / "m2ed" / "exocentric" / "colour" / building
            silhouette = root / "m2ed" / "exocentric" / "silhouette" / building
            colour.mkdir(parents=True)
            silhouette.mkdir(parents=True)
            frames = {}
            for frame in range(3):
                scene = render_sample(spec, index)["scene"]
                index += 1
                name = f"0_20200101_{frame}_0_exocentric_{{}}.png"
                cv2.imwrite(str(colour / name.format("colour")), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
                cv2.imwrite(str(silhouette / name.format("silhouette")), scene.mask.astype(np.uint8) * 255)
                R, t = scene.R, scene.t
                if convention == "opengl":
                    R, t = OPENGL_TO_OPENCV @ R, OPENGL_TO_OPENCV @ t
                pose = np.eye(4)
                pose[:3, :3], pose[:3, 3] = R, t
                frames[str(frame)] = {
                    "pose": json.dumps(pose.ravel().tolist()),
                    "3dpoints": scene.keypoints.tolist(),
                    "visibleAll": bool(scene.visibility.all()),
                    "2dbbox": scene.bbox.tolist(),
                }
                scenes[(building, frame)] = scene
            table[f"{building}_0_20200101"] = {"exocentric": frames}
    (root / "annotations.json").write_text(json.dumps({"drones": {"m2ed": table}}))
    return scenes


def test_file_names_parse_like_the_published_loader():
    assert parse_image_name("3_20200101_12_0_exocentric_colour.png") == ("3", "20200101", "12", "exocentric")
    assert parse_image_name("3_20200101_12_0_x_egocentric_colour.png")[-1] == "egocentric"
    with pytest.raises(ValueError, match="not a UAVA image name"):
        parse_image_name("frame12.png")


@pytest.mark.parametrize("convention", ["opencv", "opengl"])
def test_reader_returns_the_fixture_ground_truth(tmp_path, convention):
    scenes = write_fixture(tmp_path, convention)
    data = UAVADataset(tmp_path, "m2ed", "train", camera_convention=convention, require_all_inside=False)
    assert len(data) == 6
    assert data.rejected == []
    check = data.reprojection_check()
    assert check["max_px"] < 1e-3
    sample = data[4]
    scene = scenes[("house_b", 1)]
    torch.testing.assert_close(sample["R"], torch.from_numpy(scene.R).float())
    torch.testing.assert_close(sample["t"], torch.from_numpy(scene.t).float())
    torch.testing.assert_close(sample["keypoints"], torch.from_numpy(scene.keypoints).float())
    assert torch.equal(sample["mask"], torch.from_numpy(scene.mask))
    assert (sample["image"] * 255 - torch.from_numpy(scene.image).permute(2, 0, 1)).abs().max() < 0.01
    assert len(UAVADataset(tmp_path, "m2ed", "val", camera_convention=convention)) <= 3


def test_a_wrong_convention_is_named_in_the_error(tmp_path):
    write_fixture(tmp_path, "opencv")
    with pytest.raises(DatasetFormatError, match="wrong camera_convention"):
        UAVADataset(tmp_path, "m2ed", "test", camera_convention="opengl", require_all_inside=False)


def test_a_wrong_keypoint_order_is_caught_by_the_reprojection_check(tmp_path):
    write_fixture(tmp_path)
    path = tmp_path / "annotations.json"
    data = json.loads(path.read_text())
    for sequence in data["drones"]["m2ed"].values():
        for frame in sequence["exocentric"].values():
            frame["3dpoints"] = frame["3dpoints"][1:] + frame["3dpoints"][:1]
    path.write_text(json.dumps(data))
    assert (
        UAVADataset(tmp_path, "m2ed", "train", require_all_inside=False).reprojection_check()["median_px"] > 3
    )


def test_malformed_annotations_are_rejected_and_counted(tmp_path):
    write_fixture(tmp_path)
    path = tmp_path / "annotations.json"
    data = json.loads(path.read_text())
    frames = data["drones"]["m2ed"]["house_a_0_20200101"]["exocentric"]
    frames["0"]["pose"] = "[1, 2, 3]"
    frames["1"]["3dpoints"] = frames["1"]["3dpoints"][:4]
    del frames["2"]
    path.write_text(json.dumps(data))
    reader = UAVADataset(tmp_path, "m2ed", "train", require_all_inside=False)
    assert len(reader) == 3
    assert len(reader.rejected) == 3
    reasons = " ".join(reason for _, reason in reader.rejected)
    assert "ValueError" in reasons
    assert "4 keypoints" in reasons
    assert "KeyError" in reasons


def test_bad_roots_give_clear_errors(tmp_path):
    with pytest.raises(DatasetFormatError, match="not a UAVA root"):
        UAVADataset(tmp_path, "m2ed")
    write_fixture(tmp_path)
    (tmp_path / "tello" / "exocentric" / "colour").mkdir(parents=True)
    with pytest.raises(DatasetFormatError, match="no drone 'tello'"):
        UAVADataset(tmp_path, "tello")
    (tmp_path / "data splits" / "scenes_val.txt").unlink()
    with pytest.raises(DatasetFormatError, match=r"scenes_val\.txt"):
        UAVADataset(tmp_path, "m2ed", "val")
    (tmp_path / "annotations.json").write_text("{")
    with pytest.raises(DatasetFormatError, match="unreadable annotation JSON"):
        UAVADataset(tmp_path, "m2ed")
