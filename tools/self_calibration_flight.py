"""Measure rig self-calibration end to end on a multi-camera flight: the estimated extrinsics against
the bag's true rig, and the calibrated fusion with the self-calibrated rig against the fusion with
the true rig (ADD5 and the other columns of eval-bag's fused row). Prints JSON.

    .venv/bin/python tools/self_calibration_flight.py --bag flight/ [--drone tello] [--out result.json]

One network pass per view serves all three: the views' single-view poses feed the RigAccumulator
(as `drone-pose calibrate-rig` and the fusion node with `extrinsics: estimate` do), and the same
single-view estimates are fused (FusedEstimator.fuse) once with the bag's /tf_static rig and once
with the estimated one. The fused poses are scored as `drone-pose eval-bag` scores them (in the
first camera, against its ground truth): with the estimated rig the rig frame is camera
`--reference`'s optical frame, and its true pose carries the fused pose to the truth, so the other
cameras' extrinsic errors show in the score. `drone-pose calibrate-rig` + `drone-pose eval-bag`
(with and without `--rig-file`) give the same figures with three network passes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any

import numpy as np
import torch

from drone_pose.bags.rig_frames import read_rig_frames
from drone_pose.drones import load_drone
from drone_pose.evaluation.bag_evaluation import score_frames
from drone_pose.evaluation.fusion_scoring import in_first_camera, with_errors
from drone_pose.fusion.fused_estimator import TAKING_PART, FusedEstimator
from drone_pose.fusion.rig_initialisation import RigAccumulator, extrinsics_errors
from drone_pose.inference.estimator import PoseEstimate, PoseEstimator

COLUMNS = ("ADD2", "ADD5", "ACC5", "position_cm_median", "rotation_deg_median", "valid_fraction")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bag", required=True, help="a multi-camera bag with /tf_static and ground truth")
    parser.add_argument("--drone", default="m2ed", help="the shipped checkpoint of this drone")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reference", type=int, default=0, help="the reference camera's index")
    parser.add_argument("--batch-groups", type=int, default=8)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    frames = read_rig_frames(args.bag)
    complete = [group for group in frames.groups if len(group.present()) == len(frames.cameras)]
    _, cam_from_world = frames.tf_extrinsics()
    estimator = PoseEstimator.from_checkpoint(args.checkpoint, device=args.device, drone=args.drone)
    drone = load_drone(estimator.description["drone"]["name"])
    fuser = FusedEstimator(estimator)
    views_count = len(frames.cameras)
    accumulator = RigAccumulator(views_count, capacity=max(len(complete), 1), reference=args.reference)
    batches: list[tuple[list[Any], PoseEstimate, torch.Tensor]] = []
    started = time.perf_counter()
    for start in range(0, len(complete), args.batch_groups):
        groups = complete[start : start + args.batch_groups]
        images = np.stack([view["rgb"] for group in groups for view in group.views])
        K = torch.tensor(np.stack([view["K"] for group in groups for view in group.views]))
        distortion = [view["distortion"] for group in groups for view in group.views]
        views = estimator.estimate(images, K, distortion)
        taking_part = torch.tensor([reason in TAKING_PART for reason in views.reasons])
        shape = (len(groups), views_count)
        accumulator.add(
            views.R.double().view(*shape, 3, 3),
            views.t.double().view(*shape, 3),
            views.covariance.double().view(*shape, 6, 6),
            taking_part.view(shape),
        )
        batches.append((groups, views, K.view(*shape, 3, 3)))
    estimator_s = time.perf_counter() - started
    started = time.perf_counter()
    estimate = accumulator.estimate()
    estimate_s = time.perf_counter() - started
    errors = extrinsics_errors(estimate.cam_from_ref, cam_from_world, args.reference)
    rigs = {
        "true rig (/tf_static)": torch.from_numpy(cam_from_world),
        "self-calibrated rig": estimate.cam_from_ref,
    }
    fused = {label: _fused_scores(drone, fuser, batches, rig) for label, rig in rigs.items()}
    true_add5 = fused["true rig (/tf_static)"]["ADD5"]
    report = {
        "experiment": "rig self-calibration: extrinsics and calibrated fusion with the estimated rig",
        "bag": args.bag,
        "checkpoint": estimator.description.get("path"),
        "cameras": list(frames.cameras),
        "reference": frames.cameras[args.reference],
        "groups": len(frames.groups),
        "groups_complete": len(complete),
        "groups_used": accumulator.frames_kept,
        "extrinsics": {
            name: {
                "rotation_error_deg": round(errors["rotation_deg"][v], 4),
                "position_error_mm": round(1000 * errors["position_m"][v], 2),
                "position_error_percent_of_baseline": round(errors["position_percent"][v], 3),
                "baseline_m": round(errors["baseline_m"][v], 4),
                "rotation_std_deg": round(float(estimate.rotation_std_deg()[v]), 4),
                "position_std_mm": round(1000 * float(estimate.position_std_m()[v]), 2),
                "pair_inliers": int(estimate.inliers[args.reference, v]),
                "pair_outliers": int(estimate.outliers[args.reference, v]),
            }
            for v, name in enumerate(frames.cameras)
            if v != args.reference
        },
        "fused": fused,
        "ADD5_self_calibrated_over_true_percent": round(
            100 * fused["self-calibrated rig"]["ADD5"] / true_add5, 2
        )
        if true_add5 > 0
        else None,
        "estimator_s": round(estimator_s, 1),
        "rig_estimate_s": round(estimate_s, 2),
        "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {args.device}",
    }
    text = json.dumps(report, indent=1)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    print(text)
    return 0


def _fused_scores(
    drone: Any,
    fuser: FusedEstimator,
    batches: list[tuple[list[Any], PoseEstimate, torch.Tensor]],
    cam_from_rig: torch.Tensor,
) -> dict[str, float]:
    """eval-bag's fused row for the given extrinsics [V,4,4]: every batch's single-view estimates
    fused, moved into the first camera and scored against its ground truth."""
    in_camera, truths = [], []
    for groups, views, K in batches:
        count = len(groups)
        rig = cam_from_rig.double().expand(count, *cam_from_rig.shape)
        fused = fuser.fuse(views, K, rig)
        views_count = cam_from_rig.shape[0]
        first_views = views.take(torch.arange(count) * views_count)
        in_camera.append(in_first_camera(fused, rig[:, 0], first_views))
        truths.extend(group.views[0] for group in groups)
    metrics = with_errors(score_frames(drone, PoseEstimate.concatenate(in_camera), truths))
    return {key: round(float(metrics[key]), 3) for key in COLUMNS if key in metrics}


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
