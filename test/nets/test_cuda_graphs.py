"""Network passes replayed from CUDA graphs give the eager heatmaps; CPU inputs stay eager."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drone_pose.data.synth import render_scene
from drone_pose.drones import load_drone
from drone_pose.inference.checkpoint import default_checkpoint
from drone_pose.inference.estimator import PoseEstimator
from drone_pose.nets.build import build_network
from drone_pose.nets.cuda_graphs import GraphedPass
from drone_pose.nets.predictor import HeatmapPredictor

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cpu_inputs_run_eagerly_without_graphs():
    calls = []

    def forward(images):
        calls.append(images.shape)
        return images * 2.0

    graphed = GraphedPass(forward)
    images = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(graphed(images), images * 2.0)
    assert calls == [images.shape]
    assert len(graphed) == 0
    assert graphed.captures == 0
    with pytest.raises(ValueError, match="at least 1"):
        GraphedPass(forward, max_graphs=0)


@pytest.mark.cuda
@needs_cuda
def test_replayed_heatmaps_match_eager_per_shape():
    predictor = (
        HeatmapPredictor(build_network("hrnet_lite"), 9).eval().cuda().to(memory_format=torch.channels_last)
    )

    def forward(images):
        with torch.autocast("cuda", dtype=torch.float16):
            return predictor(images.contiguous(memory_format=torch.channels_last))

    graphed = GraphedPass(forward, max_graphs=2)
    with torch.inference_mode():
        for batch, height, width in ((1, 240, 320), (4, 240, 320), (1, 160, 192), (1, 240, 320)):
            images = torch.rand(batch, 3, height, width, device="cuda")
            torch.testing.assert_close(graphed(images), forward(images), atol=2e-3, rtol=0)
        first = graphed(torch.zeros(1, 3, 240, 320, device="cuda"))
        second = graphed(torch.ones(1, 3, 240, 320, device="cuda"))
        assert not torch.equal(first, second), "each replay returns its own output, not the static buffer"
    assert graphed.captures == 4  # the third shape evicted the first, which came back
    assert len(graphed) == 2


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("drone", ["m2ed", "tello"])
def test_estimator_with_graphs_matches_eager(drone):
    """The shipped estimators give the same keypoints with and without graphs, on a small drone whose
    second pass runs with the flip test, also after a trip of the model to the CPU and back."""
    K = np.array([[252.7, 0.0, 160.0], [0.0, 252.7, 120.0], [0.0, 0.0, 1.0]])
    R = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # facing the camera
    image = render_scene(load_drone(drone), R, np.array([0.1, 0.05, 3.0]), K, 320, 240, seed=1).image
    images = np.stack([image, image[:, ::-1]])
    eager = PoseEstimator.from_checkpoint(default_checkpoint(drone), device="cuda", cuda_graphs=False)
    graphed = PoseEstimator.from_checkpoint(default_checkpoint(drone), device="cuda", cuda_graphs=True)
    assert graphed.zoom is not None
    assert graphed.flip_test != "off"
    for trip in range(3):  # capture, replay, and replay after the model went to the CPU and back
        if trip == 2:
            graphed.to("cpu").to("cuda")
        a, b = eager.estimate(images, K), graphed.estimate(images, K)
        assert b.zoomed.all(), "the second pass (flip test on) must run for this small drone"
        torch.testing.assert_close(b.keypoints, a.keypoints, atol=0.05, rtol=0)
        torch.testing.assert_close(b.confidences, a.confidences, atol=2e-3, rtol=0)
        assert b.valid.tolist() == a.valid.tolist()
