"""PoseEstimator: RGB images + intrinsics -> keypoints, pose camera<-drone, covariance, validity.

The one inference path shared by the ROS node, bag evaluation, the demo and the tests:
resize to the network input -> normalise -> heatmap network -> (HigherHRNet: average of the
upsampled 1/4 maps and the 1/2 maps) -> sub-pixel decoding -> keypoints in the original image ->
(with a lens distortion: undistorted, drone_pose.geometry.distortion) -> PnP with the given K.
Images of any size are resized, and keypoints are mapped back to the original pixels exactly, so
the caller's K is used unchanged; PnP weighs each keypoint by its heatmap confidence
(keypoint_weights). With zoom settings (a checkpoint's
input.zoom, or given), drones smaller than the zoom target get a second network pass on an
enlarged window around them (drone_pose.nets.zoom) before PnP. A network with the silhouette head
(drone_pose.nets.mask_head) also gives the drone's predicted silhouette, placed in the original
image (drone_pose.nets.silhouette).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drone_pose.geometry.camera import project_points, validate_intrinsics
from drone_pose.geometry.distortion import Distortion, per_image, undistort_pixels
from drone_pose.geometry.pose_covariance import CovarianceScales
from drone_pose.inference.checkpoint import (
    DEFAULT_DRONE,
    default_checkpoint,
    load_checkpoint,
    network_from_checkpoint,
)
from drone_pose.inference.thresholds import EstimatorThresholds
from drone_pose.nets.cuda_graphs import GraphedPass
from drone_pose.nets.flip import flip_averaged, mirror_permutation, validate_flip_test
from drone_pose.nets.heatmap_codec import decode_heatmaps, heatmap_to_image
from drone_pose.nets.predictor import IMAGENET_MEAN, IMAGENET_STD, HeatmapPredictor, StackedSilhouette
from drone_pose.nets.silhouette import (
    concatenate_silhouettes,
    image_grid,
    take_silhouettes,
    zoomed_silhouettes,
)
from drone_pose.nets.zoom import ZoomSettings, locate_heatmaps, merge_zoomed, plan_zoom
from drone_pose.pnp import PnPResult, PnPStatus, solve_pnp
from drone_pose.render.image_window import ImageWindow, SilhouetteMap


def keypoint_weights(confidences: Tensor, min_confidence: float, power: float) -> Tensor:
    """PnP residual weights [B,K] from heatmap confidences [B,K]: 0 below `min_confidence`, else
    (confidence / the image's highest confidence) ** power, floored at 0.1 ** power.

    A lower heatmap peak marks a less certain keypoint, so it counts less in the pose (figures in
    docs/experiments.md, confidence-weighted PnP).
    Relative to the image's best keypoint, so weights stay in (0, 1] and the Huber threshold keeps
    its meaning in pixels for that keypoint. power 0 gives every confident keypoint weight 1.
    """
    confident = confidences >= min_confidence
    best = torch.where(confident, confidences, torch.zeros_like(confidences)).amax(-1, keepdim=True)
    relative = (confidences / best.clamp_min(1e-6)).clamp(0.1, 1.0)
    return torch.where(confident, relative**power, torch.zeros_like(relative))


def keypoint_pnp(
    keypoints: Tensor, confidences: Tensor, keypoints_3d: Tensor, K: Tensor, thresholds: EstimatorThresholds
) -> PnPResult:
    """The estimator's PnP: keypoints [B,K,2] image px with confidences [B,K], model keypoints [K,3]
    metres, K [B,3,3]; confidence weights (keypoint_weights) and the Huber kernel of `thresholds`."""
    weights = keypoint_weights(
        confidences, thresholds.min_keypoint_confidence, thresholds.keypoint_confidence_power
    )
    return solve_pnp(keypoints, keypoints_3d, K, weights=weights, huber=thresholds.huber_px)


def reprojection_rms(
    keypoints_3d: Tensor, result: PnPResult, K: Tensor, keypoints: Tensor, confident: Tensor
) -> Tensor:
    """RMS distance [B] px between the confident keypoints [B,K,2] and the model keypoints [K,3]
    projected at the solved pose."""
    reprojected, _ = project_points(keypoints_3d, result.R, result.t, K)
    squared = ((reprojected - keypoints) ** 2).sum(-1)
    return torch.sqrt((squared * confident).sum(-1) / confident.sum(-1).clamp_min(1))


def pose_verdicts(
    confident: Tensor, result: PnPResult, rms: Tensor, spread: Tensor, thresholds: EstimatorThresholds
) -> list[str]:
    """Per image "" for a valid pose, else the first rule it breaks: low_confidence (fewer than
    min_keypoints confident keypoints [B,K]), solver_<status> (PnP did not converge),
    high_reprojection_error (rms [B] px), uncertain_pose (position std `spread` [B] m)."""
    reasons = []
    for b in range(len(confident)):
        if int(confident[b].sum()) < thresholds.min_keypoints:
            reasons.append("low_confidence")
        elif not bool(result.converged[b]):
            reasons.append(f"solver_{PnPStatus(int(result.status[b])).name.lower()}")
        elif not float(rms[b]) <= thresholds.max_reprojection_rms_px:
            reasons.append("high_reprojection_error")
        elif not float(spread[b]) <= thresholds.max_position_std_m:
            reasons.append("uncertain_pose")
        else:
            reasons.append("")
    return reasons


def position_std(covariance: Tensor) -> Tensor:
    """Position standard deviation [B] metres, sqrt(trace) of the translation block of pose
    covariances [B,6,6]: the RMS distance between estimated and true drone origin the covariance
    predicts; NaN where the covariance is not finite."""
    return covariance[:, :3, :3].diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(0.0).sqrt()


@dataclass(frozen=True)
class _Batch:
    """Preprocessed images: original [B,3,H,W] and network-input pixels [B,3,h,w] in [0, 1] on the
    estimator's device, intrinsics K [B,3,3] float64 on the CPU."""

    original: Tensor
    pixels: Tensor
    K: Tensor


@dataclass(frozen=True)
class PoseEstimate:
    """Results for a batch of B images (tensors on the CPU).

    keypoints [B,K,2] original-image pixels; confidences [B,K]; R [B,3,3], t [B,3] metres
    (camera optical frame <- drone body frame); covariance [B,6,6] (tx, ty, tz, rx, ry, rz),
    PnP's, scaled by the estimator's covariance_scales;
    reprojection_rms [B] px; valid [B] bool; reasons: per image "" when valid, else why not
    (low_confidence, solver_<status>, high_reprojection_error, uncertain_pose);
    timings_ms: stage -> milliseconds for the whole batch; zoomed [B] bool: keypoints from the
    zoomed second pass (all False without zoom settings); undistorted_keypoints [B,K,2]: with a
    lens distortion, the keypoints in the ideal pinhole image of K, which PnP solved on and
    reprojection_rms measures (keypoints stay in the distorted image); None without one;
    silhouette: with a mask-head network, the predicted silhouettes (probability [B,h,w] in [0, 1]
    on grids placed in the original image's pixels, drone_pose.render.image_window): the zoomed
    window's map where the second pass ran, else the first pass's; maps of different sizes are
    padded with zeros on their right and bottom; None for a network without the head.
    """

    keypoints: Tensor
    confidences: Tensor
    R: Tensor
    t: Tensor
    covariance: Tensor
    reprojection_rms: Tensor
    valid: Tensor
    reasons: list[str]
    timings_ms: dict[str, float] = field(default_factory=dict)
    zoomed: Tensor | None = None
    undistorted_keypoints: Tensor | None = None
    silhouette: SilhouetteMap | None = None

    def take(self, index: Tensor) -> PoseEstimate:
        """The images `index` [M] (int64) of this estimate, in that order (timings are dropped)."""
        pick = lambda v: None if v is None else v[index]  # noqa: E731
        return PoseEstimate(
            keypoints=self.keypoints[index],
            confidences=self.confidences[index],
            R=self.R[index],
            t=self.t[index],
            covariance=self.covariance[index],
            reprojection_rms=self.reprojection_rms[index],
            valid=self.valid[index],
            reasons=[self.reasons[int(i)] for i in index],
            zoomed=pick(self.zoomed),
            undistorted_keypoints=pick(self.undistorted_keypoints),
            silhouette=take_silhouettes(self.silhouette, index),
        )

    @staticmethod
    def concatenate(estimates: list[PoseEstimate]) -> PoseEstimate:
        """One PoseEstimate of the images of several, in order (timings are per call: dropped)."""
        tensors = {
            key: torch.cat([getattr(e, key) for e in estimates])
            for key in ("keypoints", "confidences", "R", "t", "covariance", "reprojection_rms", "valid")
        }
        zoomed = torch.cat(
            [torch.zeros(len(e.valid), dtype=torch.bool) if e.zoomed is None else e.zoomed for e in estimates]
        )
        undistorted = None
        if any(e.undistorted_keypoints is not None for e in estimates):
            undistorted = torch.cat(
                [
                    e.keypoints if e.undistorted_keypoints is None else e.undistorted_keypoints
                    for e in estimates
                ]
            )
        return PoseEstimate(
            reasons=[r for e in estimates for r in e.reasons],
            zoomed=zoomed,
            undistorted_keypoints=undistorted,
            silhouette=concatenate_silhouettes([e.silhouette for e in estimates]),
            **tensors,
        )


class PoseEstimator:
    """Keypoint network + PnP for one drone model.

    network: images [B,3,H,W] normalised -> list of heatmaps, finest last; keypoints_3d [K,3]
    metres; input_size (width, height) of the network; mean/std: RGB normalisation; zoom: the
    zoomed second pass for small drones, or None for one pass; covariance_scales: variance factors
    for the PnP covariance (a checkpoint's pose_covariance), None for the covariance PnP reports;
    flip_test: "off", "zoom" or "all", the network passes averaged with their mirrored image
    (drone_pose.nets.flip; needs mirror-symmetric keypoints); cuda_graphs: on a CUDA device, replay
    each network pass (with its flip test) from a CUDA graph captured per input shape
    (drone_pose.nets.cuda_graphs), False for eager passes; ignored with compile_network. A network
    with the mask head makes every pass also give the silhouette (`silhouette` True).
    """

    def __init__(
        self,
        network: nn.Module,
        keypoints_3d: Tensor | np.ndarray,
        input_size: tuple[int, int],
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        device: str | torch.device | None = None,
        thresholds: EstimatorThresholds | None = None,
        compile_network: bool = False,
        warm_up: bool = True,
        description: dict | None = None,
        zoom: ZoomSettings | None = None,
        covariance_scales: CovarianceScales | None = None,
        flip_test: str = "off",
        cuda_graphs: bool = True,
    ) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.use_cuda = self.device.type == "cuda"
        self.keypoints_3d = torch.tensor(np.asarray(keypoints_3d), dtype=torch.float64)
        self.predictor = HeatmapPredictor(network, self.keypoints_3d.shape[0], mean, std).eval()
        self.predictor = self.predictor.to(self.device)
        # NHWC: faster convolutions on CUDA and on CPU (docs/experiments.md)
        self.predictor = self.predictor.to(memory_format=torch.channels_last)
        # with the mask head each pass gives [N,K+1,h,w]: the heatmaps, then the silhouette
        self.silhouette = self.predictor.has_silhouette
        forward = StackedSilhouette(self.predictor) if self.silhouette else self.predictor
        self._forward = torch.compile(forward) if compile_network else forward
        self.input_width, self.input_height = input_size
        self.thresholds = thresholds or EstimatorThresholds()
        self.description = description or {}
        self.zoom = zoom
        validate_flip_test(flip_test, self.keypoints_3d)
        self.flip_permutation = mirror_permutation(self.keypoints_3d)  # None: the drone is not symmetric
        channels = None
        if self.flip_permutation is not None:  # the silhouette channel mirrors onto itself
            channels = self.flip_permutation + ([len(self.flip_permutation)] if self.silhouette else [])
        flipped = None if channels is None else flip_averaged(self._network_pass, channels)
        self.cuda_graphs = cuda_graphs and not compile_network
        self._single_pass: Callable[[Tensor], Tensor] = self._network_pass
        self._flipped_pass = flipped
        if self.cuda_graphs:  # GraphedPass runs CPU inputs eagerly
            self._single_pass = GraphedPass(self._network_pass)
            self._flipped_pass = None if flipped is None else GraphedPass(flipped)
        self.flip_test = flip_test  # may be switched to "off" and back at run time (tracker_node)
        self.covariance_scales = covariance_scales or CovarianceScales()
        if warm_up:
            self.estimate(
                np.zeros((self.input_height, self.input_width, 3), np.uint8), _centre_intrinsics(input_size)
            )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | None = None,
        device: str | torch.device | None = None,
        drone: str = DEFAULT_DRONE,
        zoom: ZoomSettings | Literal["checkpoint"] | None = "checkpoint",
        flip_test: str = "checkpoint",
        **options,
    ) -> PoseEstimator:
        """Load a self-describing checkpoint (drone_pose.inference.checkpoint); clear errors when bad.
        Without a path, the shipped default checkpoint for `drone` (models/checkpoints). zoom:
        "checkpoint" runs the second pass the checkpoint was trained for (input.zoom), None none.
        flip_test: "checkpoint" (its input.flip_test, "off" when absent), "off", "zoom" or "all"."""
        path = default_checkpoint(drone) if path is None or str(path) == "" else path
        checkpoint = load_checkpoint(path)
        network = network_from_checkpoint(checkpoint, str(path))
        spec = checkpoint["input"]
        description = {
            k: checkpoint[k]
            for k in ("network", "drone", "training", "metrics", "pose_covariance")
            if k in checkpoint
        }
        description["path"] = str(path)
        return cls(
            network,
            np.asarray(checkpoint["drone"]["keypoints"], dtype=np.float64),
            (spec["width"], spec["height"]),
            tuple(spec["mean"]),
            tuple(spec["std"]),
            device=device,
            description=description,
            zoom=ZoomSettings.from_dict(spec.get("zoom")) if zoom == "checkpoint" else zoom,
            covariance_scales=CovarianceScales.from_dict(checkpoint.get("pose_covariance")),
            flip_test=spec.get("flip_test", "off") if flip_test == "checkpoint" else flip_test,
            **options,
        )

    @torch.inference_mode()
    def estimate(
        self,
        images: np.ndarray | Tensor,
        K: np.ndarray | Tensor,
        distortion: Distortion | Sequence[Distortion | None] | None = None,
    ) -> PoseEstimate:
        """Poses for uint8 RGB images [B,H,W,3] (or one [H,W,3]) with intrinsics K [3,3] or [B,3,3].

        distortion: the camera's lens distortion (drone_pose.geometry.distortion), one for the batch
        or one (or None) per image; None for undistorted (or rectified) images. With a distortion,
        the keypoints found in the image are undistorted to the ideal pinhole camera of K before
        PnP; the returned keypoints stay in the (distorted) image, so overlays match it, and
        undistorted_keypoints holds what PnP solved on.

        Four stages: preprocess (images to the network input), keypoints (network, decode and the
        zoomed second pass), PnP (confidence-weighted, with the reprojection RMS) and the verdicts
        (the validity rules of `thresholds`). timings_ms has preprocess, network, decode, zoom (when
        it runs), undistort (when a distortion is given), pnp and total.
        """
        thresholds = self.thresholds  # read once: the node may replace them from another thread
        timings: dict[str, float] = {}
        start = self._clock()
        batch = self._preprocess(images, K)
        models = per_image(distortion, batch.K.shape[0])
        timings["preprocess"] = self._clock() - start
        keypoints, confidences, zoomed, silhouette = self._keypoints(batch, thresholds, timings)
        pinhole_keypoints, pnp_confidences = keypoints, confidences
        if models is not None:
            start = self._clock()
            undistorted, invertible = undistort_pixels(keypoints, batch.K, models)
            # where the camera model cannot be inverted, the keypoint takes no part in the pose
            pinhole_keypoints = torch.where(invertible[..., None], undistorted, keypoints)
            pnp_confidences = torch.where(invertible, confidences, torch.full_like(confidences, -math.inf))
            timings["undistort"] = self._clock() - start
        start = self._clock()
        result = keypoint_pnp(pinhole_keypoints, pnp_confidences, self.keypoints_3d, batch.K, thresholds)
        confident = pnp_confidences >= thresholds.min_keypoint_confidence
        rms = reprojection_rms(self.keypoints_3d, result, batch.K, pinhole_keypoints, confident)
        timings["pnp"] = self._clock() - start
        covariance = self.covariance_scales.apply(result.covariance)
        reasons = pose_verdicts(confident, result, rms, position_std(covariance), thresholds)
        timings["total"] = sum(timings.values())
        return PoseEstimate(
            keypoints,
            confidences,
            result.R,
            result.t,
            covariance,
            rms,
            torch.tensor([reason == "" for reason in reasons]),
            reasons,
            timings,
            zoomed,
            None if models is None else pinhole_keypoints,
            silhouette,
        )

    def _preprocess(self, images: np.ndarray | Tensor, K: np.ndarray | Tensor) -> _Batch:
        """Validated images on the estimator's device in [0, 1], resized to the network input."""
        batch_images = _as_image_batch(images)
        batch, height, width = batch_images.shape[:3]
        K64 = torch.as_tensor(np.asarray(K) if not isinstance(K, Tensor) else K, dtype=torch.float64).cpu()
        validate_intrinsics(K64)
        K64 = K64.expand(batch, 3, 3) if K64.ndim == 2 else K64
        if K64.shape[0] != batch:
            raise ValueError(f"got {batch} images but {K64.shape[0]} intrinsics matrices")
        original = batch_images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        pixels = original
        if (height, width) != (self.input_height, self.input_width):
            pixels = F.interpolate(
                original,
                size=(self.input_height, self.input_width),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        return _Batch(original, pixels, K64)

    def _keypoints(
        self, batch: _Batch, thresholds: EstimatorThresholds, timings: dict[str, float]
    ) -> tuple[Tensor, Tensor, Tensor, SilhouetteMap | None]:
        """Keypoints [B,K,2] original-image px and confidences [B,K] (float64, CPU), which images
        took the zoomed second pass [B], and the silhouettes (CPU; None without the mask head);
        times the network, decode and zoom stages."""
        start = self._clock()
        flip_test = self.flip_test  # read once, as zoom below: the node may switch them
        outputs = self._flip_pass(flip_test == "all")(batch.pixels)
        count = self.keypoints_3d.shape[0]
        heatmaps = outputs[:, :count] if self.silhouette else outputs
        timings["network"] = self._clock() - start
        start = self._clock()
        xy, confidences = decode_heatmaps(heatmaps)
        height, width = batch.original.shape[-2:]
        # heatmap px -> original image px (pixel centres at integers throughout)
        stride = xy.new_tensor([width / heatmaps.shape[-1], height / heatmaps.shape[-2]])
        keypoints = heatmap_to_image(xy, stride)
        silhouette = None
        if self.silhouette:  # on the grid the keypoints were mapped from
            grid = image_grid(
                (heatmaps.shape[-1], heatmaps.shape[-2]), (width, height), len(keypoints), outputs.device
            )
            silhouette = SilhouetteMap(outputs[:, count].float(), grid)
        timings["decode"] = self._clock() - start
        zoomed = torch.zeros(len(keypoints), dtype=torch.bool)
        zoom = self.zoom
        if zoom is not None:
            start = self._clock()
            plan = plan_zoom(
                batch.original,
                batch.pixels,
                keypoints.float(),
                confidences.float(),
                thresholds.min_keypoint_confidence,
                zoom,
            )
            keypoints, confidences = keypoints.float(), confidences.float()
            if plan.index.numel() > 0:
                window_outputs = self._flip_pass(flip_test != "off")(plan.crops)
                window_points, window_confidences = locate_heatmaps(
                    window_outputs[:, :count], plan.crops.shape[-1]
                )
                keypoints, confidences = merge_zoomed(
                    plan, keypoints, confidences, window_points, window_confidences
                )
                if silhouette is not None:
                    silhouette = zoomed_silhouettes(silhouette, plan, window_outputs[:, count].float())
            zoomed = plan.active.cpu()
            timings["zoom"] = self._clock() - start
        if silhouette is not None:
            grid = silhouette.grid
            silhouette = SilhouetteMap(
                silhouette.probability.cpu(),
                ImageWindow(grid.origin.cpu(), grid.pixel_size.cpu(), grid.width, grid.height),
            )
        return keypoints.double().cpu(), confidences.double().cpu(), zoomed, silhouette

    def _network_pass(self, pixels: Tensor) -> Tensor:
        """Heatmaps [N,K,h,w] of network-input images [N,3,H,W] in [0,1] (half precision on CUDA);
        with the mask head [N,K+1,h,w], the silhouette probability as channel K."""
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.use_cuda):
            return self._forward(pixels)

    def _flip_pass(self, flip: bool) -> Callable[[Tensor], Tensor]:
        """_network_pass, averaged with the mirrored images' heatmaps when `flip`."""
        return self._flipped_pass if flip and self._flipped_pass is not None else self._single_pass

    def to(self, device: str | torch.device) -> PoseEstimator:
        """Move the network to `device` (e.g. "cpu" to free GPU memory while a node is inactive)."""
        previous = self.device
        self.device = torch.device(device)
        self.use_cuda = self.device.type == "cuda"
        self.predictor = self.predictor.to(self.device)
        for graphed in (self._single_pass, self._flipped_pass):
            if isinstance(graphed, GraphedPass):
                graphed.clear()  # captured for the old device's memory
        if previous.type == "cuda" and not self.use_cuda:
            torch.cuda.empty_cache()
        return self

    def _clock(self) -> float:
        if self.use_cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter() * 1e3


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _centre_intrinsics(size: tuple[int, int]) -> np.ndarray:
    width, height = size
    return np.array([[width, 0.0, width / 2], [0.0, width, height / 2], [0.0, 0.0, 1.0]])


def _as_image_batch(images: np.ndarray | Tensor) -> Tensor:
    """uint8 RGB images as a tensor [B,H,W,3]; raises ValueError for anything else."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4 or tensor.shape[-1] != 3 or tensor.dtype != torch.uint8:
        raise ValueError(
            f"images must be uint8 RGB [B, H, W, 3] or [H, W, 3], got {tuple(tensor.shape)} {tensor.dtype}"
        )
    if min(tensor.shape[1:3]) < 8:
        raise ValueError(f"images of {tensor.shape[2]}x{tensor.shape[1]} pixels are too small")
    return tensor
