"""Measure stage-1 rig self-calibration on a multi-camera flight: single-view poses from the shipped
estimator, RigAccumulator, errors against the bag's true rig (/tf_static). Prints JSON.

    .venv/bin/python tools/rig_stage1_flight.py --drone m2ed --cameras 3 --seconds 60 --rate 10 --seed 51001
    .venv/bin/python tools/rig_stage1_flight.py --bag path/to/flight   # any bag drone-pose synth-bag wrote
    .venv/bin/python tools/rig_stage1_flight.py --poses poses.pt       # re-score saved poses (--save-poses)

Without --bag the flight is rendered into a temporary bag first (drone-pose synth-bag's renderer).
The groups reach the accumulator in batches of --batch-groups, in time order, as a fusion node
would feed it; its estimate is scored after 10, 30, 100, 300 groups and at the end. Besides the
default (information-weighted, robust), the same single-view poses are averaged with depth-based
nominal covariances instead of the estimator's, and naively (chordal mean of the rotations,
arithmetic mean of the translations, no rejection), for comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import roma
import torch

from drone_pose.bags.flight_bag import FlightBagSpec, write_flight_bag
from drone_pose.bags.rig_frames import read_rig_frames
from drone_pose.fusion.rig_file import save_rig_file
from drone_pose.fusion.rig_from_bag import view_poses
from drone_pose.fusion.rig_initialisation import (
    RigAccumulator,
    estimate_rig,
    extrinsics_errors,
    homogeneous,
    relative_to_reference,
)
from drone_pose.inference.estimator import PoseEstimator

PROGRESS = (10, 30, 100, 300)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bag", help="a multi-camera bag (default: render a synthetic flight)")
    parser.add_argument("--poses", help="single-view poses saved by --save-poses: no rendering, no network")
    parser.add_argument("--drone", default="m2ed")
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=51001)
    parser.add_argument("--checkpoint", default=None, help="default: the shipped one of --drone")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reference", default="0", help="a view index or 'auto'")
    parser.add_argument("--batch-groups", type=int, default=10)
    parser.add_argument("--save-rig", help="write the estimated rig file here")
    parser.add_argument("--save-poses", help="torch.save the single-view poses and the true rig here")
    args = parser.parse_args(argv)
    reference = args.reference if args.reference == "auto" else int(args.reference)
    poses = torch.load(args.poses, weights_only=True) if args.poses else _estimate_poses(args)
    if args.save_poses:
        torch.save(poses, args.save_poses)
    report, estimate = _score(poses, reference, args.batch_groups)
    report["machine"] = (
        f"{platform.machine()} {platform.system()} {platform.release()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {args.device}"
    )
    if args.save_rig:
        names = poses["cameras"]
        save_rig_file(estimate.to_rig(names, [f"{name}_optical" for name in names]), args.save_rig)
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


def _estimate_poses(args: argparse.Namespace) -> dict[str, Any]:
    """Render (or read) the flight and run the estimator on every view: the single-view poses, the
    verdicts, the true rig and the timings."""
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        bag = args.bag
        if bag is None:
            bag = Path(folder) / "flight"
            spec = FlightBagSpec(
                drone=args.drone,
                seconds=args.seconds,
                rate_hz=args.rate,
                cameras=args.cameras,
                seed=args.seed,
            )
            write_flight_bag(bag, spec, workers=1, progress=False)
        render_s = time.perf_counter() - started
        frames = read_rig_frames(bag)
    _, cam_from_rig_true = frames.tf_extrinsics()
    estimator = PoseEstimator.from_checkpoint(args.checkpoint, device=args.device, drone=args.drone)
    started = time.perf_counter()
    batches = [
        view_poses(estimator, frames.groups[start : start + args.batch_groups], len(frames.cameras))
        for start in range(0, len(frames.groups), args.batch_groups)
    ]
    return {
        "source": args.bag
        or f"synthetic: {args.drone}, {args.cameras} cameras, "
        f"{args.seconds} s at {args.rate} Hz, seed {args.seed}",
        "checkpoint": estimator.description.get("path"),
        "cameras": list(frames.cameras),
        "R": torch.cat([b.R for b in batches]),
        "t": torch.cat([b.t for b in batches]),
        "covariance": torch.cat([b.covariance for b in batches]),
        "taking_part": torch.cat([b.taking_part for b in batches]),
        "reasons": [reason for b in batches for row in b.reasons for reason in row],
        "truth": torch.as_tensor(cam_from_rig_true),
        "render_s": round(render_s, 1),
        "estimator_s": round(time.perf_counter() - started, 1),
    }


def _score(poses: dict[str, Any], reference: int | str, batch_groups: int) -> tuple[dict[str, Any], Any]:
    """Feed the poses to a RigAccumulator batch by batch and score it against the true rig."""
    R, t, covariance, taking_part = poses["R"], poses["t"], poses["covariance"], poses["taking_part"]
    truth, groups = poses["truth"], len(R)
    accumulator = RigAccumulator(R.shape[1], reference=reference)
    progress = {}
    for start in range(0, groups, batch_groups):
        rows = slice(start, start + batch_groups)
        accumulator.add(R[rows], t[rows], covariance[rows], taking_part[rows])
        for mark in PROGRESS:
            if start < mark <= min(start + batch_groups, groups):
                estimate = accumulator.estimate()
                progress[mark] = _scores(estimate, truth)
    tick = time.perf_counter()
    estimate = accumulator.estimate()
    estimate_ms = 1000 * (time.perf_counter() - tick)
    reasons = poses["reasons"]
    nominal = estimate_rig(R, t, None, taking_part, reference=estimate.reference)
    naive = _naive(R, t, taking_part, estimate.reference)
    report = {
        "experiment": "rig self-calibration, stage 1",
        "source": poses["source"],
        "checkpoint": poses["checkpoint"],
        "groups": groups,
        "views": len(reasons) - reasons.count("absent"),
        "views_taking_part": int(taking_part.sum()),
        "verdicts": {reason or "valid": reasons.count(reason) for reason in sorted(set(reasons))},
        "render_s": poses["render_s"],
        "estimator_s": poses["estimator_s"],
        "estimate_ms": round(estimate_ms, 1),
        "stage1": {**_scores(estimate, truth), **estimate.summary()},
        "stage1_after_groups": progress,
        "nominal_covariances": _scores(nominal, truth),
        "naive_mean": _scores(naive, truth, estimate.reference),
    }
    return report, estimate


def _scores(
    estimate: Any, truth: torch.Tensor, reference: int | None = None
) -> dict[str, list[float | None]]:
    """Errors of a RigEstimate (or of cam_from_ref [V,4,4] with its reference) against the truth."""
    cam_from_ref = estimate if isinstance(estimate, torch.Tensor) else estimate.cam_from_ref
    reference = estimate.reference if reference is None else reference
    errors = extrinsics_errors(cam_from_ref, truth, reference)
    scores: dict[str, list[float | None]] = {
        "rotation_error_deg": [round(v, 4) for v in errors["rotation_deg"]],
        "position_error_mm": [round(1000 * v, 2) for v in errors["position_m"]],
        "position_error_percent_of_baseline": [
            None if math.isnan(v) else round(v, 3) for v in errors["position_percent"]
        ],
        "baseline_m": [round(v, 3) for v in errors["baseline_m"]],
    }
    if not isinstance(estimate, torch.Tensor):
        scores["rotation_std_deg"] = [round(v, 4) for v in estimate.rotation_std_deg().tolist()]
        scores["position_std_mm"] = [round(1000 * v, 2) for v in estimate.position_std_m().tolist()]
    return scores


def _naive(R: torch.Tensor, t: torch.Tensor, taking_part: torch.Tensor, reference: int) -> torch.Tensor:
    """Per camera the chordal mean of the frames' relative rotations and the mean of their
    translations, every frame where both views take part, no weights, no rejection."""
    frames = relative_to_reference(R, t, None, taking_part, reference)
    mask = frames.valid.double()[..., None]
    count = mask.sum(0).clamp_min(1)
    rotation = roma.special_procrustes(
        (frames.cam_from_ref[..., :3, :3] * mask[..., None]).sum(0) / count[..., None]
    )
    translation = (frames.cam_from_ref[..., :3, 3] * mask).sum(0) / count
    return homogeneous(rotation, translation)


if __name__ == "__main__":
    raise SystemExit(main())
