"""Deployment export: ONNX and TorchScript files give the PyTorch heatmaps and carry their description."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from drone_pose.cli import main
from drone_pose.drones import load_drone
from drone_pose.inference.checkpoint import (
    CheckpointError,
    default_checkpoint,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
)
from drone_pose.inference.export import export_checkpoint, predictor_from_checkpoint, read_export_metadata
from drone_pose.nets import build_network
from drone_pose.nets.flip import flip_averaged

from ..tiny_models import TINY_NET

INPUT = (160, 128)


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory):
    torch.manual_seed(0)
    network = build_network("hrnet_lite")
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode differs from identity
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("export") / "lite.pt"
    return save_checkpoint(make_checkpoint(network, "hrnet_lite", load_drone("tello"), INPUT), path)


def reference_heatmaps(checkpoint_path, images: torch.Tensor) -> np.ndarray:
    predictor = predictor_from_checkpoint(load_checkpoint(checkpoint_path), "test")
    with torch.inference_mode():
        return predictor(images).numpy()


def test_onnx_export_matches_pytorch_at_several_batch_sizes(checkpoint_path, tmp_path):
    import onnxruntime

    report = export_checkpoint(checkpoint_path, tmp_path / "lite.onnx", "onnx")
    assert report["output"]["shape"] == ["batch", 9, 32, 40]
    assert max(report["verification"]["max_abs_difference"].values()) < 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "lite.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        images = torch.rand(batch, 3, INPUT[1], INPUT[0], generator=torch.Generator().manual_seed(batch))
        (heatmaps,) = session.run(None, {"images": images.numpy()})
        expected = reference_heatmaps(checkpoint_path, images)
        assert heatmaps.shape == (batch, 9, 32, 40)
        np.testing.assert_allclose(heatmaps, expected, atol=1e-4, rtol=0)
    metadata = read_export_metadata(tmp_path / "lite.onnx")
    assert metadata["drone"]["name"] == "tello"
    assert metadata["input"]["width"] == INPUT[0]
    assert len(metadata["drone"]["keypoints"]) == 9


def test_torchscript_export_through_the_cli_matches_pytorch(checkpoint_path, tmp_path, capsys):
    out = tmp_path / "lite.ts"
    assert (
        main(["export", "--checkpoint", str(checkpoint_path), "--format", "torchscript", "--out", str(out)])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(out)
    assert max(report["verification"]["max_abs_difference"].values()) < 1e-5
    module = torch.jit.load(str(out))
    images = torch.rand(2, 3, INPUT[1], INPUT[0], generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        heatmaps = module(images).numpy()
    np.testing.assert_allclose(heatmaps, reference_heatmaps(checkpoint_path, images), atol=1e-5, rtol=0)
    assert read_export_metadata(out)["drone"]["name"] == "tello"
    assert "flip_test_permutation" not in read_export_metadata(out)


def test_a_flip_test_checkpoint_exports_the_channel_order_of_the_mirrored_image(tmp_path):
    """The shipped Tello checkpoint asks for the flip test: its export says how to undo the mirror, and
    following that recipe with the exported model gives the estimator's flip-averaged heatmaps."""
    shipped = default_checkpoint("tello")
    assert load_checkpoint(shipped)["input"]["flip_test"] == "zoom"
    out = tmp_path / "tello.ts"
    export_checkpoint(shipped, out, "torchscript", verify=False)
    permutation = read_export_metadata(out)["flip_test_permutation"]
    assert permutation == [0, 2, 1, 4, 3, 6, 5, 8, 7]
    module = torch.jit.load(str(out))
    images = torch.rand(1, 3, 240, 320, generator=torch.Generator().manual_seed(3))
    predictor = predictor_from_checkpoint(load_checkpoint(shipped), "test")
    with torch.inference_mode():
        # the shipped network has the silhouette head: TorchScript gives (heatmaps, silhouette)
        exported, silhouette = module(torch.cat((images, images.flip(-1))))
        recipe = 0.5 * (exported[:1] + exported[1:].flip(-1)[:, permutation])
        expected = flip_averaged(predictor, permutation)(images)
        _, own_silhouette = predictor.forward_with_silhouette(images)
    torch.testing.assert_close(recipe, expected, atol=1e-4, rtol=0)
    assert silhouette.shape == (2, *exported.shape[-2:])
    torch.testing.assert_close(silhouette[:1], own_silhouette, atol=1e-4, rtol=0)


def test_export_errors_are_clear(checkpoint_path, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        export_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="export format must be one of"):
        export_checkpoint(checkpoint_path, tmp_path / "x.bin", "tflite")


def test_a_mask_head_checkpoint_exports_the_silhouette_as_a_second_output(tmp_path):
    import onnxruntime

    torch.manual_seed(1)
    spec = {**TINY_NET, "mask_head": True}
    network = build_network(spec)
    path = save_checkpoint(make_checkpoint(network, spec, load_drone("m2ed"), INPUT), tmp_path / "mask.pt")
    predictor = predictor_from_checkpoint(load_checkpoint(path), "test")
    images = torch.rand(2, 3, INPUT[1], INPUT[0], generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        heatmaps, silhouette = predictor.forward_with_silhouette(images)
    report = export_checkpoint(path, tmp_path / "mask.onnx", "onnx")
    assert report["silhouette_output"] == {"name": "silhouette", "shape": ["batch", 32, 40]}
    assert max(report["verification"]["silhouette_max_abs_difference"].values()) < 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "mask.onnx"), providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == ["heatmaps", "silhouette"]
    onnx_heatmaps, onnx_silhouette = session.run(None, {"images": images.numpy()})
    np.testing.assert_allclose(onnx_heatmaps, heatmaps.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(onnx_silhouette, silhouette.numpy(), atol=1e-4, rtol=0)
    export_checkpoint(path, tmp_path / "mask.ts", "torchscript", verify=False)
    with torch.inference_mode():
        scripted = torch.jit.load(str(tmp_path / "mask.ts"))(images)
    torch.testing.assert_close(scripted[1], silhouette, atol=1e-5, rtol=0)
    plain = export_checkpoint(path, tmp_path / "plain.ts", "torchscript", silhouette=False)
    assert "silhouette_output" not in plain
    with torch.inference_mode():
        torch.testing.assert_close(
            torch.jit.load(str(tmp_path / "plain.ts"))(images), heatmaps, atol=1e-5, rtol=0
        )
