"""Pose metrics: hand-computed cases, degenerate inputs and an independent numpy/OpenCV computation."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from drone_pose.drones import load_drone
from drone_pose.geometry.camera import PinholeCamera
from drone_pose.geometry.metrics import (
    evaluate_poses,
    median_viewpoint_error,
    nmpjpe,
    pmpjpe,
    pose_errors,
    silhouette_iou,
    size_bin_edges,
    size_bins,
    summarize_by_size,
    summarize_errors,
    validity_metrics,
)
from drone_pose.geometry.rotations import axis_angle_to_matrix, random_rotations

F64 = torch.float64
K = PinholeCamera.uava().K(F64)
EXPECTED_KEYS = {"NPE", "AD", "ACC2", "ACC5", "ADD2", "ADD5", "Proj2", "Proj5", "count"}


@pytest.fixture(scope="module")
def drone():
    return load_drone("m2ed")


def gt_batch(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    R = random_rotations(batch, generator)
    t = torch.stack(
        [
            torch.rand(batch, generator=generator, dtype=F64) - 0.5,
            torch.rand(batch, generator=generator, dtype=F64) - 0.5,
            3.0 + 5 * torch.rand(batch, generator=generator, dtype=F64),
        ],
        dim=-1,
    )
    return R, t


def test_identical_poses_are_perfect(drone):
    R, t = gt_batch(6)
    points = drone.keypoints_tensor(F64)
    table = evaluate_poses(R, t, R, t, points, K, drone.diagonal)
    assert set(table) == EXPECTED_KEYS
    assert table["NPE"] == pytest.approx(0.0, abs=1e-12)
    assert table["AD"] == pytest.approx(0.0, abs=1e-6)
    for key in ("ACC2", "ACC5", "ADD2", "ADD5", "Proj2", "Proj5"):
        assert table[key] == 100.0
    assert table["count"] == 6


def test_known_rotation_error(drone):
    """3 deg about the camera's optical axis: AD = 3 deg, fails ACC2, passes ACC5."""
    R, t = gt_batch(4, seed=1)
    delta = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.radians(3.0)], dtype=F64))
    errors = pose_errors(delta @ R, t, R, t, drone.keypoints_tensor(F64), K)
    torch.testing.assert_close(errors.rotation_rad, torch.full((4,), math.radians(3.0), dtype=F64))
    assert errors.accuracy(2).tolist() == [False] * 4
    assert errors.accuracy(5).tolist() == [True] * 4
    torch.testing.assert_close(errors.translation_m, torch.zeros(4, dtype=F64))


def test_pure_translation_offset(drone):
    """3 cm along x: NPE = 0.03 / |t|, ADD = 0.03 m for every point, ACC2 fails and ACC5 passes."""
    R = torch.eye(3, dtype=F64).expand(2, 3, 3)
    t_gt = torch.tensor([[0.0, 0.0, 5.0], [0.3, 0.4, 0.0 + 1.2]], dtype=F64)
    t_pred = t_gt + torch.tensor([0.03, 0.0, 0.0], dtype=F64)
    points = drone.keypoints_tensor(F64)
    errors = pose_errors(R, t_pred, R, t_gt, points, K)
    torch.testing.assert_close(errors.npe, 0.03 / t_gt.norm(dim=-1))
    torch.testing.assert_close(errors.add_m, torch.full((2,), 0.03, dtype=F64))
    assert errors.accuracy(2).tolist() == [False, False]
    assert errors.accuracy(5).tolist() == [True, True]
    # ADD thresholds: 2 % of 0.354 m = 7.1 mm < 3 cm, 5 % = 17.7 mm < 3 cm: both fail.
    assert errors.add_correct(5, drone.diagonal).tolist() == [False, False]
    assert errors.add_correct(10, drone.diagonal).tolist() == [True, True]


def test_projection_error_by_hand():
    """A single point at depth 5 m shifted 1 cm sideways moves fx * 0.01 / 5 pixels."""
    R = torch.eye(3, dtype=F64).unsqueeze(0)
    t_gt = torch.tensor([[0.0, 0.0, 5.0]], dtype=F64)
    t_pred = torch.tensor([[0.01, 0.0, 5.0]], dtype=F64)
    points = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.1, 0.0]], dtype=F64)
    errors = pose_errors(R, t_pred, R, t_gt, points, K)
    assert errors.proj_px.item() == pytest.approx(K[0, 0].item() * 0.01 / 5.0)


def test_prediction_behind_the_camera_fails_proj(drone):
    R, t = gt_batch(2)
    t_pred = t.clone()
    t_pred[1, 2] = -t_pred[1, 2]
    errors = pose_errors(R, t_pred, R, t, drone.keypoints_tensor(F64), K)
    assert math.isinf(errors.proj_px[1].item())
    assert errors.proj_correct(5).tolist() == [True, False]


@pytest.mark.parametrize("field", ["R_pred", "t_pred", "R_gt", "t_gt"])
def test_non_finite_poses_are_rejected_naming_the_samples(field, drone):
    R, t = gt_batch(5)
    poses = {"R_pred": R.clone(), "t_pred": t.clone(), "R_gt": R.clone(), "t_gt": t.clone()}
    poses[field][3].view(-1)[0] = math.nan
    with pytest.raises(ValueError, match=rf"{field}.*samples \[3\]"):
        evaluate_poses(
            poses["R_pred"],
            poses["t_pred"],
            poses["R_gt"],
            poses["t_gt"],
            drone.keypoints_tensor(F64),
            K,
            drone.diagonal,
        )


def test_degenerate_inputs_get_clear_errors(drone):
    R, t = gt_batch(3)
    points = drone.keypoints_tensor(F64)
    with pytest.raises(ValueError, match="zero ground-truth translation"):
        pose_errors(R, t, R, torch.zeros_like(t), points, K)
    with pytest.raises(ValueError, match="not a finite proper rotation"):
        pose_errors(2 * R, t, R, t, points, K)
    with pytest.raises(ValueError, match="batch sizes differ"):
        pose_errors(R[:2], t[:2], R, t, points, K)
    with pytest.raises(ValueError, match="empty batch"):
        pose_errors(R[:0], t[:0], R[:0], t[:0], points, K)
    with pytest.raises(ValueError, match="focal length"):
        pose_errors(R, t, R, t, points, torch.zeros(3, 3, dtype=F64))
    with pytest.raises(ValueError, match="diagonal"):
        evaluate_poses(R, t, R, t, points, K, diagonal=0.0)
    with pytest.raises(ValueError, match="model_points"):
        pose_errors(R, t, R, t, points[:0], K)


def reference_errors(R_pred, t_pred, R_gt, t_gt, points, K_np):
    """The same metrics written independently with numpy and OpenCV (per sample, in loops)."""
    rows = []
    for Rp, tp, Rg, tg in zip(R_pred, t_pred, R_gt, t_gt, strict=True):
        rotation = math.acos(np.clip((np.trace(Rp.T @ Rg) - 1.0) / 2.0, -1.0, 1.0))
        translation = float(np.linalg.norm(tp - tg))
        add = float(np.mean(np.linalg.norm((points @ Rp.T + tp) - (points @ Rg.T + tg), axis=1)))
        uv_p, _ = cv2.projectPoints(points, cv2.Rodrigues(Rp)[0], tp, K_np, None)
        uv_g, _ = cv2.projectPoints(points, cv2.Rodrigues(Rg)[0], tg, K_np, None)
        proj = float(np.mean(np.linalg.norm(uv_p[:, 0] - uv_g[:, 0], axis=1)))
        rows.append((translation / np.linalg.norm(tg), rotation, translation, add, proj))
    return np.array(rows)


def test_against_an_independent_numpy_computation(drone):
    R_gt, t_gt = gt_batch(200, seed=7)
    generator = torch.Generator().manual_seed(8)
    noise = axis_angle_to_matrix(0.06 * torch.randn(200, 3, generator=generator, dtype=F64))
    R_pred = noise @ R_gt
    t_pred = t_gt + 0.04 * torch.randn(200, 3, generator=generator, dtype=F64)
    points = drone.keypoints_tensor(F64)
    errors = pose_errors(R_pred, t_pred, R_gt, t_gt, points, K)
    reference = reference_errors(
        R_pred.numpy(), t_pred.numpy(), R_gt.numpy(), t_gt.numpy(), drone.keypoints, K.numpy()
    )
    np.testing.assert_allclose(errors.npe.numpy(), reference[:, 0], rtol=1e-9)
    np.testing.assert_allclose(errors.rotation_rad.numpy(), reference[:, 1], atol=1e-6)
    np.testing.assert_allclose(errors.translation_m.numpy(), reference[:, 2], rtol=1e-9)
    np.testing.assert_allclose(errors.add_m.numpy(), reference[:, 3], rtol=1e-9)
    np.testing.assert_allclose(errors.proj_px.numpy(), reference[:, 4], rtol=1e-7)

    table = evaluate_poses(R_pred, t_pred, R_gt, t_gt, points, K, drone.diagonal)
    deg, cm = np.degrees(reference[:, 1]), 100 * reference[:, 2]
    assert table["NPE"] == pytest.approx(reference[:, 0].mean())
    assert table["AD"] == pytest.approx(reference[:, 1].mean(), abs=1e-7)
    for k in (2, 5):
        assert table[f"ACC{k}"] == pytest.approx(100 * np.mean((deg < k) & (cm < k)))
        assert table[f"ADD{k}"] == pytest.approx(100 * np.mean(reference[:, 3] < k / 100 * drone.diagonal))
        assert table[f"Proj{k}"] == pytest.approx(100 * np.mean(reference[:, 4] < k))
    assert 0 < table["ACC5"] < 100, "the noise level should make the test discriminative"


def test_metrics_run_in_float32_batches(drone):
    R, t = gt_batch(8)
    table = evaluate_poses(
        R.float(), t.float(), R.float(), t.float(), drone.keypoints_tensor(), K.float(), drone.diagonal
    )
    assert table["ACC2"] == 100.0


def numpy_similarity_alignment(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Umeyama alignment of pred onto gt (rotation, translation, scale), written with numpy's SVD."""
    mu_p, mu_g = pred.mean(0), gt.mean(0)
    p, g = pred - mu_p, gt - mu_g
    U, S, Vt = np.linalg.svd(g.T @ p / len(pred))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    s = np.trace(np.diag(S) @ D) / (p**2).sum(1).mean()
    return s * p @ R.T + mu_g


def test_size_bins_hold_equal_shares_and_every_sample_once():
    sizes = 10.0 + 50.0 * torch.rand(1000, generator=torch.Generator().manual_seed(3), dtype=F64)
    sizes[-1] = 60.0  # on the top edge: the last bin holds it
    bins = size_bins(sizes, 5)
    assert len(bins) == 5
    assert bins[0][0] == 10.0
    assert bins[-1][1] == 60.0
    assert all(low < high and low == float(int(low)) for low, high, _ in bins)
    masks = torch.stack([inside for _, _, inside in bins])
    assert torch.equal(masks.sum(0), torch.ones(1000, dtype=torch.long))  # disjoint and complete
    counts = masks.sum(1)
    assert counts.min() >= 170
    assert counts.max() <= 230
    for low, high, inside in bins:
        assert bool((sizes[inside] >= low).all())
        assert bool((sizes[inside] <= high).all())


def test_size_bins_of_one_size_and_bad_sizes():
    assert size_bin_edges(torch.full((7,), 30.0, dtype=F64)) == [30.0, 31.0]
    (low, high, inside), *rest = size_bins(torch.full((7,), 30.0, dtype=F64))
    assert (low, high, int(inside.sum()), rest) == (30.0, 31.0, 7, [])
    for bad in (torch.zeros(0), torch.tensor([20.0, float("nan")])):
        with pytest.raises(ValueError, match="finite sizes"):
            size_bin_edges(bad)


def test_summarize_by_size_rows_are_the_subsets_tables(drone):
    R_gt, t_gt = gt_batch(200, seed=5)
    generator = torch.Generator().manual_seed(6)
    angle = 0.1 * torch.rand(200, generator=generator, dtype=F64)
    R_pred = R_gt @ axis_angle_to_matrix(torch.stack([angle, 0 * angle, 0 * angle], -1))
    t_pred = t_gt + 0.04 * torch.randn(200, 3, generator=generator, dtype=F64)
    x3d = torch.tensor(drone.keypoints, dtype=F64)
    errors = pose_errors(R_pred, t_pred, R_gt, t_gt, x3d, K.expand(200, 3, 3))
    size = K[0, 0] * drone.diagonal / t_gt[:, 2]
    keypoint_errors = torch.rand(200, 9, generator=generator, dtype=F64)
    keypoint_errors[:, 0] = float("nan")  # an unscored keypoint
    rows = summarize_by_size(errors, size, drone.diagonal, bins=4, keypoint_errors_px=keypoint_errors)
    assert len(rows) == 4
    assert sum(row["count"] for row in rows) == 200
    for row, (low, high, inside) in zip(rows, size_bins(size, 4), strict=True):
        assert row["size_px"] == [low, high]
        expected = summarize_errors(errors.select(inside), drone.diagonal)
        assert {k: row[k] for k in expected} == expected
        assert row["keypoint_px"] == pytest.approx(keypoint_errors[inside, 1:].mean().item())
    with pytest.raises(ValueError, match="size_px must have shape"):
        summarize_by_size(errors, size[:10], drone.diagonal)


def test_validity_metrics_score_the_flag_against_acc5():
    valid = torch.tensor([True, True, True, False, False])
    correct = torch.tensor([True, True, False, True, False])
    figures = validity_metrics(valid, correct)
    assert figures["valid_fraction"] == pytest.approx(0.6)
    assert figures["valid_ACC5"] == pytest.approx(200 / 3)  # 2 of the 3 valid are right
    assert figures["ACC5_valid_recall"] == pytest.approx(200 / 3)  # 2 of the 3 right are valid
    nothing = validity_metrics(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool))
    assert nothing["valid_fraction"] == 0.0
    assert math.isnan(nothing["valid_ACC5"])
    assert math.isnan(nothing["ACC5_valid_recall"])


def test_pmpjpe_and_nmpjpe():
    generator = torch.Generator().manual_seed(11)
    gt = torch.randn(4, 17, 3, generator=generator, dtype=F64)
    R = random_rotations(4, generator)
    similar = 0.7 * gt @ R.transpose(-1, -2) + torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    torch.testing.assert_close(pmpjpe(similar, gt), torch.zeros(4, dtype=F64), atol=1e-9, rtol=0)
    shifted_scaled = 1.3 * gt + 0.5
    torch.testing.assert_close(nmpjpe(shifted_scaled, gt), torch.zeros(4, dtype=F64), atol=1e-9, rtol=0)
    assert (nmpjpe(similar, gt) > 0.1).all(), "NMPJPE does not undo rotations"

    noisy = gt + 0.1 * torch.randn(4, 17, 3, generator=generator, dtype=F64)
    expected = [
        np.linalg.norm(numpy_similarity_alignment(n, g) - g, axis=1).mean()
        for n, g in zip(noisy.numpy(), gt.numpy(), strict=True)
    ]
    np.testing.assert_allclose(pmpjpe(noisy, gt).numpy(), expected, rtol=1e-9)
    with pytest.raises(ValueError, match="shape"):
        pmpjpe(gt[:, :1], gt[:, :1])


def test_silhouette_iou_by_hand():
    pred = torch.zeros(3, 4, 4, dtype=torch.bool)
    gt = torch.zeros(3, 4, 4, dtype=torch.bool)
    pred[0, :2, :2] = True
    gt[0, :2, :] = True  # 4 of 8
    pred[1] = gt[1] = True
    iou = silhouette_iou(pred, gt)
    assert iou.tolist() == pytest.approx([0.5, 1.0, 1.0])  # two empty masks agree
    with pytest.raises(ValueError, match="shape"):
        silhouette_iou(pred, gt[:, :2])


def test_median_viewpoint_error():
    R = random_rotations(5, torch.Generator().manual_seed(5))
    angles = torch.tensor([0.1, 0.2, 0.3, 0.4, 2.0], dtype=F64)
    delta = axis_angle_to_matrix(
        torch.stack([angles, torch.zeros(5, dtype=F64), torch.zeros(5, dtype=F64)], -1)
    )
    assert median_viewpoint_error(R @ delta, R) == pytest.approx(0.3)
