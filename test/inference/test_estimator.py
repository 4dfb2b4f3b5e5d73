"""PoseEstimator: pose recovery through decoding + PnP, a real network forward, checkpoint errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from drone_pose.bench.pnp_problems import pose_errors_deg_m
from drone_pose.data.dataset import ShardDataset
from drone_pose.data.generate import generate_dataset
from drone_pose.drones import load_drone
from drone_pose.geometry.camera import PinholeCamera, project_points
from drone_pose.geometry.distortion import Distortion
from drone_pose.geometry.pose_covariance import CovarianceScales
from drone_pose.geometry.rotations import axis_angle_to_matrix
from drone_pose.inference.checkpoint import CheckpointError, make_checkpoint, save_checkpoint
from drone_pose.inference.estimator import PoseEstimator, keypoint_weights, position_std
from drone_pose.inference.thresholds import EstimatorThresholds
from drone_pose.nets import build_network, image_to_heatmap
from drone_pose.nets.zoom import ZoomSettings

INPUT = (320, 240)


class HeatmapStandIn(nn.Module):
    """Plumbing stand-in for a network: returns Gaussian heatmaps at given keypoints, ignores pixels."""

    def __init__(
        self, keypoints_input_px: torch.Tensor, strides: tuple[int, ...], peaks: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.keypoints = keypoints_input_px  # [B,K,2] network-input pixels
        self.strides = strides
        self.peaks = torch.ones(keypoints_input_px.shape[:2]) if peaks is None else peaks  # [B,K]
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for stride in self.strides:
            h, w = -(-images.shape[-2] // stride), -(-images.shape[-1] // stride)
            centre = image_to_heatmap(self.keypoints, stride).float()
            yy, xx = torch.meshgrid(
                torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
            )
            sigma = 2.0 * 4 / stride
            d2 = (xx - centre[..., 0, None, None]) ** 2 + (yy - centre[..., 1, None, None]) ** 2
            outputs.append(self.peaks[..., None, None] * torch.exp(-d2 / (2 * sigma**2)) + self.anchor)
        return outputs


def known_poses(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    R = axis_angle_to_matrix(
        torch.tensor([[0.3, -0.2, 0.1], [-0.5, 0.4, 2.0], [1.2, 0.1, -0.3]], dtype=torch.float64)
    )[:count]
    t = torch.tensor([[0.1, -0.05, 1.6], [-0.3, 0.2, 2.5], [0.2, 0.1, 1.2]], dtype=torch.float64)[:count]
    return R, t


@pytest.mark.parametrize(
    ("strides", "pixel_tolerance", "degrees_tolerance"),
    [
        ((4,), 0.02, 0.1),
        ((4, 2), 0.15, 0.4),
    ],  # bilinear upsampling of the 1/4 maps (HigherHRNet) costs ~0.1 px
)
def test_estimator_recovers_a_known_pose_from_consistent_heatmaps(
    strides, pixel_tolerance, degrees_tolerance
):
    """Original images at 640x480 (network input 320x240): keypoints map back to original pixels exactly."""
    drone = load_drone("m2ed")
    camera = PinholeCamera.uava().resized(640, 480)
    K = camera.K(torch.float64)
    R, t = known_poses(3)
    uv, _ = project_points(drone.keypoints_tensor(torch.float64), R, t, K)
    uv_input = (uv + 0.5) * 0.5 - 0.5  # original (640x480) -> network input (320x240) pixels
    # the stand-in's keypoints live on the CPU: pin the estimator there on machines with a GPU too
    estimator = PoseEstimator(
        HeatmapStandIn(uv_input, strides), drone.keypoints, INPUT, device="cpu", warm_up=False
    )
    result = estimator.estimate(np.zeros((3, 480, 640, 3), np.uint8), K.numpy())
    assert result.valid.all(), result.reasons
    torch.testing.assert_close(result.keypoints, uv, atol=pixel_tolerance, rtol=0)
    rotation, translation = pose_errors_deg_m(result.R, result.t, R, t)
    assert rotation.max() < degrees_tolerance
    assert (translation / t.norm(dim=-1)).max() < 20 * pixel_tolerance / 100
    assert set(result.timings_ms) == {"preprocess", "network", "decode", "pnp", "total"}


def test_keypoint_weights_follow_confidence_relative_to_the_best_keypoint():
    confidences = torch.tensor([[0.9, 0.45, 0.05, 0.9], [-0.2, -0.1, -0.3, -0.4]], dtype=torch.float64)
    weights = keypoint_weights(confidences, min_confidence=0.1, power=4.0)
    torch.testing.assert_close(weights[0], torch.tensor([1.0, 0.5**4, 0.0, 1.0], dtype=torch.float64))
    assert (weights[1] == 0).all()  # nothing confident: nothing to weigh
    permissive = keypoint_weights(confidences, min_confidence=-1.0, power=4.0)  # all kept, peaks <= 0
    assert torch.isfinite(permissive).all()
    assert ((permissive > 0) & (permissive <= 1)).all()
    assert (keypoint_weights(confidences, 0.1, power=0.0) == (confidences >= 0.1)).all()


def test_pnp_trusts_confident_keypoints_more():
    """One keypoint 3 px off with a low heatmap peak (0.6): the weighted pose barely moves."""
    drone = load_drone("m2ed")
    K = PinholeCamera.uava().K(torch.float64)
    R, t = known_poses(1)
    uv, _ = project_points(drone.keypoints_tensor(torch.float64), R, t, K)
    observed, peaks = uv.clone(), torch.ones(uv.shape[:2])
    observed[0, 3] += torch.tensor([3.0, -2.0], dtype=torch.float64)
    peaks[0, 3] = 0.6
    image = np.zeros((1, INPUT[1], INPUT[0], 3), np.uint8)
    errors = {}
    for power in (0.0, 4.0):
        estimator = PoseEstimator(
            HeatmapStandIn(observed, (4,), peaks),
            drone.keypoints,
            INPUT,
            thresholds=EstimatorThresholds(keypoint_confidence_power=power),
            device="cpu",
            warm_up=False,
        )
        result = estimator.estimate(image, K.numpy())
        assert result.valid.all(), result.reasons
        errors[power] = pose_errors_deg_m(result.R, result.t, R, t)
    assert errors[4.0][0] < 0.3 * errors[0.0][0]  # rotation, degrees
    assert errors[4.0][1] < 0.3 * errors[0.0][1]  # translation, metres


def test_poses_the_calibrated_covariance_calls_uncertain_are_rejected():
    """3 px keypoint noise: every reprojection RMS is under 8 px, but at 2.5 m the position is
    uncertain to more than 0.1 m (default gate); scaling the covariance (a calibrated checkpoint)
    moves the 1.6 m pose over the gate too."""
    drone = load_drone("m2ed")
    K = PinholeCamera.uava().K(torch.float64)
    R, t = known_poses(3)  # depths 1.6, 2.5, 1.2 m
    uv, _ = project_points(drone.keypoints_tensor(torch.float64), R, t, K)
    noisy = uv + 3.0 * torch.randn(uv.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    image = np.zeros((3, INPUT[1], INPUT[0], 3), np.uint8)

    def estimate(keypoints, **options):
        network = HeatmapStandIn(keypoints, (4,))
        estimator = PoseEstimator(network, drone.keypoints, INPUT, device="cpu", warm_up=False, **options)
        return estimator.estimate(image, K)

    clean = estimate(uv)
    assert clean.valid.all(), clean.reasons
    assert (position_std(clean.covariance) < 1e-3).all()
    result = estimate(noisy)
    spread = position_std(result.covariance)
    torch.testing.assert_close(spread, result.covariance[:, :3, :3].diagonal(dim1=1, dim2=2).sum(-1).sqrt())
    assert (result.reprojection_rms < 4.0).all()
    assert result.reasons == ["", "uncertain_pose", ""], spread
    assert spread[1] > 0.1 > spread[0]
    assert estimate(noisy, thresholds=EstimatorThresholds(max_position_std_m=1e6)).valid.all()
    scaled = estimate(noisy, covariance_scales=CovarianceScales(translation=4.0, rotation=1.0))
    torch.testing.assert_close(position_std(scaled.covariance), 2.0 * spread)
    assert scaled.reasons == ["uncertain_pose", "uncertain_pose", ""]


@pytest.fixture(scope="module")
def lite_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    drone = load_drone("m2ed")
    network = build_network("hrnet_lite")
    path = tmp_path_factory.mktemp("ckpt") / "lite.pt"
    return save_checkpoint(make_checkpoint(network, "hrnet_lite", drone, INPUT), path)


def test_a_real_network_runs_through_the_whole_path_on_cpu(lite_checkpoint):
    estimator = PoseEstimator.from_checkpoint(lite_checkpoint, device="cpu")
    images = np.random.default_rng(0).integers(0, 255, (2, 240, 320, 3), dtype=np.uint8)
    result = estimator.estimate(images, PinholeCamera.uava().K(torch.float64).numpy())
    assert result.keypoints.shape == (2, 9, 2)
    for tensor in (result.keypoints, result.R, result.t, result.covariance, result.confidences):
        assert torch.isfinite(tensor).all()
    assert len(result.reasons) == 2
    assert all(reason == "" or reason for reason in result.reasons)
    assert not result.valid.any(), "an untrained network must not produce a confident pose"


def test_checkpoint_errors_are_clear(lite_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        PoseEstimator.from_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(lite_checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable"):
        PoseEstimator.from_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a drone_pose checkpoint"):
        PoseEstimator.from_checkpoint(foreign)
    checkpoint = torch.load(lite_checkpoint, weights_only=True)
    checkpoint["network"] = {**checkpoint["network"], "stem_channels": 48}
    mismatched = tmp_path / "mismatched.pt"
    torch.save(checkpoint, mismatched)
    with pytest.raises(CheckpointError, match="weights do not match"):
        PoseEstimator.from_checkpoint(mismatched)
    checkpoint = torch.load(lite_checkpoint, weights_only=True)
    checkpoint["drone"]["keypoints"] = checkpoint["drone"]["keypoints"][:5]
    with pytest.raises(CheckpointError, match="9 heatmaps but drone has 5"):
        save_checkpoint(checkpoint, tmp_path / "five.pt")
    for bad in ({"translation": -1.0, "rotation": 1.0}, {"translation": 2.0}, [2.0, 2.0]):
        checkpoint = torch.load(lite_checkpoint, weights_only=True)
        checkpoint["pose_covariance"] = bad
        with pytest.raises(CheckpointError, match="pose_covariance must be"):
            save_checkpoint(checkpoint, tmp_path / "scales.pt")
    for bad in (
        {"target_px": 100.0, "max_zoom": 0.5},
        {"target_px": 100.0, "max_zoom": 5.0, "window": [192]},
        {"target_px": 100.0, "max_zoom": 5.0, "window": [192.0, 160.0]},
        {"target_px": 100.0, "max_zoom": 5.0, "window": [8, 160]},
        {"target_px": 100.0, "max_zoom": 5.0, "size": [192, 160]},
    ):
        checkpoint = torch.load(lite_checkpoint, weights_only=True)
        checkpoint["input"]["zoom"] = bad
        with pytest.raises(CheckpointError, match=r"input\.zoom must be"):
            save_checkpoint(checkpoint, tmp_path / "zoom.pt")
    checkpoint["input"]["zoom"] = {"target_px": 100.0, "max_zoom": 5.0, "window": [192, 160]}
    windowed = PoseEstimator.from_checkpoint(save_checkpoint(checkpoint, tmp_path / "zoom.pt"), warm_up=False)
    assert windowed.zoom == ZoomSettings(100.0, 5.0, window=(192, 160))
    for bad, message in (("sometimes", "one of off, zoom, all"), (True, "one of off, zoom, all")):
        checkpoint["input"]["flip_test"] = bad
        with pytest.raises(CheckpointError, match=rf"input\.flip_test: flip_test must be {message}"):
            save_checkpoint(checkpoint, tmp_path / "flip.pt")
    checkpoint["input"]["flip_test"] = "all"
    checkpoint["drone"]["keypoints"][1][1] += 0.01  # no longer mirror-symmetric
    with pytest.raises(CheckpointError, match="mirror-symmetric"):
        save_checkpoint(checkpoint, tmp_path / "flip.pt")


def test_bad_images_and_intrinsics_are_rejected(lite_checkpoint):
    estimator = PoseEstimator.from_checkpoint(lite_checkpoint, device="cpu")
    K = PinholeCamera.uava().K(torch.float64).numpy()
    with pytest.raises(ValueError, match="uint8 RGB"):
        estimator.estimate(np.zeros((240, 320, 3), np.float32), K)
    with pytest.raises(ValueError, match="uint8 RGB"):
        estimator.estimate(np.zeros((240, 320), np.uint8), K)
    with pytest.raises(ValueError, match="focal length"):
        estimator.estimate(np.zeros((240, 320, 3), np.uint8), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="2 images but 3 intrinsics"):
        estimator.estimate(np.zeros((2, 240, 320, 3), np.uint8), np.stack([K] * 3))


@pytest.fixture(scope="module")
def small_drones(tmp_path_factory):
    """Rendered M2ED test images whose drone spans less than 70 px: uint8 [N,240,320,3], K [N,3,3],
    true keypoints [N,9,2]."""
    root = tmp_path_factory.mktemp("small") / "m2ed"
    generate_dataset("m2ed", 48, root, seed=77, workers=1, fractions=(0, 0, 1), progress=False)
    dataset = ShardDataset(root, "test")
    samples = [dataset[i] for i in range(len(dataset))]
    samples = [s for s in samples if float(np.ptp(s["keypoints"].numpy(), axis=0).max()) < 70][:16]
    images = np.stack([(s["image"].permute(1, 2, 0) * 255).round().byte().numpy() for s in samples])
    return (
        images,
        torch.stack([s["K"] for s in samples]).double(),
        torch.stack([s["keypoints"] for s in samples]),
    )


def keypoint_error_px(result, truth) -> float:
    return float((result.keypoints - truth.double()).norm(dim=-1).median())


def test_the_zoomed_second_pass_sharpens_small_drones(small_drones):
    """The shipped M2ED network: small drones get the second pass, and their keypoints get better."""
    images, K, truth = small_drones
    assert len(images) >= 8
    one_pass = PoseEstimator.from_checkpoint(drone="m2ed", device="cpu", zoom=None, warm_up=False)
    two_pass = PoseEstimator.from_checkpoint(drone="m2ed", device="cpu", zoom=ZoomSettings(), warm_up=False)
    before, after = one_pass.estimate(images, K), two_pass.estimate(images, K)
    assert not before.zoomed.any()
    assert after.zoomed.all()
    assert "zoom" in after.timings_ms
    assert keypoint_error_px(after, truth) < 0.8 * keypoint_error_px(before, truth)


def test_the_second_pass_works_on_images_larger_than_the_network_input(small_drones):
    """The same scenes at 640x480 (bilinear 2x): keypoints as good, in the larger image's pixels."""
    images, K, truth = small_drones
    large = np.stack([cv2.resize(image, (640, 480), interpolation=cv2.INTER_LINEAR) for image in images])
    scale = torch.tensor([[2.0, 0.0, 0.5], [0.0, 2.0, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
    two_pass = PoseEstimator.from_checkpoint(drone="m2ed", device="cpu", zoom=ZoomSettings(), warm_up=False)
    small_result = two_pass.estimate(images, K)
    large_result = two_pass.estimate(large, scale @ K)
    assert large_result.zoomed.all()
    large_error = keypoint_error_px(large_result, 2.0 * truth + 0.5) / 2.0
    assert large_error < 1.3 * keypoint_error_px(small_result, truth) + 0.2
    rotation, _ = pose_errors_deg_m(large_result.R, large_result.t, small_result.R, small_result.t)
    assert float(rotation.median()) < 5.0


def test_distortion_is_undistorted_before_pnp_and_keypoints_stay_in_the_image():
    """Off-centre drones seen through a wide-angle lens (plumb_bob, as cv2.projectPoints draws
    them): honouring the distortion recovers the pose; ignoring it (the pinhole path) is far off."""
    drone = load_drone("m2ed")
    K = PinholeCamera.uava().resized(640, 480).K(torch.float64)
    distortion = Distortion("plumb_bob", (-0.28, 0.07, 0.0005, -0.0003, 0.0))
    R, _ = known_poses(3)
    t = torch.tensor([[0.7, -0.45, 1.6], [-0.9, 0.6, 2.5], [0.45, 0.35, 1.2]], dtype=torch.float64)
    rotation_vectors = [cv2.Rodrigues(r.numpy())[0] for r in R]
    distorted = torch.stack(
        [
            torch.from_numpy(
                cv2.projectPoints(
                    drone.keypoints, rvec, tb.numpy(), K.numpy(), np.asarray(distortion.coefficients)
                )[0].reshape(-1, 2)
            )
            for rvec, tb in zip(rotation_vectors, t, strict=True)
        ]
    )
    pinhole, _ = project_points(drone.keypoints_tensor(torch.float64), R, t, K)
    assert (distorted - pinhole).norm(dim=-1).max() > 10  # the lens moves keypoints by many pixels
    estimator = PoseEstimator(
        HeatmapStandIn((distorted + 0.5) * 0.5 - 0.5, (4,)),
        drone.keypoints,
        INPUT,
        device="cpu",
        warm_up=False,
    )
    images = np.zeros((3, 480, 640, 3), np.uint8)
    honoured = estimator.estimate(images, K.numpy(), distortion)
    ignored = estimator.estimate(images, K.numpy())
    assert honoured.valid.all(), honoured.reasons
    torch.testing.assert_close(honoured.keypoints, distorted, atol=0.02, rtol=0)  # the image's own pixels
    torch.testing.assert_close(honoured.undistorted_keypoints, pinhole, atol=0.05, rtol=0)  # what PnP saw
    assert ignored.undistorted_keypoints is None
    assert "undistort" in honoured.timings_ms
    assert "undistort" not in ignored.timings_ms
    rotation, translation = pose_errors_deg_m(honoured.R, honoured.t, R, t)
    rotation_ignored, translation_ignored = pose_errors_deg_m(ignored.R, ignored.t, R, t)
    assert rotation.max() < 0.2
    assert (translation / t.norm(dim=-1)).max() < 0.002
    assert (rotation < 0.1 * rotation_ignored).all(), (rotation, rotation_ignored)
    assert (translation < 0.1 * translation_ignored).all(), (translation, translation_ignored)
    assert (honoured.reprojection_rms < 0.1).all()
    # one model per image: the pinhole image of the batch is solved on its keypoints as they are
    mixed = estimator.estimate(images, K.numpy(), [distortion, None, distortion])
    torch.testing.assert_close(mixed.R[[0, 2]], honoured.R[[0, 2]])
    torch.testing.assert_close(mixed.R[1], ignored.R[1])
    torch.testing.assert_close(mixed.undistorted_keypoints[1], mixed.keypoints[1])
    with pytest.raises(ValueError, match="got 3 images but 2 distortions"):
        estimator.estimate(images, K.numpy(), [distortion, None])
