"""`drone-pose calibrate-covariance`: fit a checkpoint's pose covariance scales on labelled data.

Training stores scales fitted on its validation split in best.pt; this command fits them for any
checkpoint (older ones, or a network moved to a user's own data) through the real inference path
and writes them into the checkpoint's pose_covariance entry. Fit on data the network did not train
on and that is not the test set the model is scored on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from drone_pose.evaluation.drone_pairing import data_drone, refuse_other_drone
from drone_pose.evaluation.split_evaluation import estimate_batches, open_dataset
from drone_pose.geometry.pose_covariance import (
    CovarianceScales,
    covariance_consistency,
    fit_covariance_scales,
    pose_error_vectors,
)
from drone_pose.inference.checkpoint import load_checkpoint, save_checkpoint
from drone_pose.inference.estimator import PoseEstimator


def calibrate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    split: str = "val",
    out: str | Path | None = None,
    uava_drone: str | None = None,
    device: str | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    flip_test: str = "checkpoint",
) -> dict[str, Any]:
    """Fit the scales on `split` of `data`, write the checkpoint with them to `out` (default: in
    place) and return a summary: the scales and the covariance consistency before and after.
    flip_test: "checkpoint" keeps the checkpoint's input.flip_test; "off", "zoom" or "all" sets it
    (the scales are fitted with it: the flip test changes the keypoint noise)."""
    estimator = PoseEstimator.from_checkpoint(checkpoint, device=device, flip_test=flip_test)
    estimator.covariance_scales = CovarianceScales()  # fit against what PnP reports
    dataset = open_dataset(data, split, uava_drone, limit)
    trained = str(estimator.description.get("drone", {}).get("name", ""))
    refuse_other_drone(trained, data_drone(dataset), str(data))
    errors, covariances = [], []
    for batch, _, _, result in estimate_batches(estimator, dataset, batch_size):
        errors.append(pose_error_vectors(result.R, result.t, batch["R"], batch["t"]))
        covariances.append(result.covariance)
    if not errors:
        raise ValueError(f"{data} has no {split!r} samples to calibrate on")
    error, covariance = torch.cat(errors), torch.cat(covariances)
    scales = fit_covariance_scales(error, covariance)
    if scales.samples == 0:
        raise ValueError(f"no pose on {data}/{split} had a usable covariance: nothing to fit")
    document = load_checkpoint(checkpoint)
    document["pose_covariance"] = scales.to_dict()
    document["input"].pop("flip_test", None)
    if estimator.flip_test != "off":
        document["input"]["flip_test"] = estimator.flip_test
    target = save_checkpoint(document, out or checkpoint)
    return {
        "checkpoint": str(target),
        "data": f"{data}/{split}",
        "samples": len(error),
        "pose_covariance": scales.to_dict(),
        "flip_test": estimator.flip_test,
        "before": covariance_consistency(error, covariance),
        "after": covariance_consistency(error, scales.apply(covariance)),
    }
