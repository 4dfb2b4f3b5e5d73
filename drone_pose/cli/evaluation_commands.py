"""`drone-pose eval | eval-bag | calibrate-covariance | calibrate-rig | keypoint-budget | model-card`:
scoring, calibration and model cards."""

from __future__ import annotations

import argparse
import json
import sys

from drone_pose.cli.arguments import (
    add_flip_test_argument,
    add_split_arguments,
    device_option,
    non_negative_float,
    positive_float,
    positive_int,
    split_options,
    zoom_option,
)


def _cmd_eval(args: argparse.Namespace) -> int:
    from drone_pose.evaluation.split_evaluation import evaluate_checkpoint

    summary = evaluate_checkpoint(
        args.checkpoint, args.data, zoom=args.zoom, flip_test=args.flip_test, **split_options(args)
    )
    print(summary.pop("table"))
    print(summary.pop("size_table"))
    fusion = _fusion_summary(args)
    if fusion is not None:
        print(fusion.pop("table"))
        summary["fusion"] = fusion
    print(json.dumps(summary, indent=2))
    return 0


def _fusion_summary(args: argparse.Namespace) -> dict | None:
    """On a multi-camera dataset (drone-pose synth --cameras N): fused against single views."""
    from drone_pose.data.shards import read_index
    from drone_pose.evaluation.fusion_evaluation import evaluate_fusion

    if args.uava_drone is not None or "rig" not in read_index(args.data):
        return None
    cameras = int(read_index(args.data)["rig"]["cameras"])
    return evaluate_fusion(
        args.checkpoint,
        args.data,
        split=args.split,
        out=args.out,
        device=args.device,
        groups_per_batch=max(1, args.batch_size // cameras),
        limit=None if args.limit is None else max(1, args.limit // cameras),
        gate_mahalanobis=args.gate,
        zoom=args.zoom,
        flip_test=args.flip_test,
    )


def _add_eval(commands: argparse._SubParsersAction) -> None:
    evaluation = commands.add_parser("eval", help="a checkpoint's metric table on a dataset split (+ plots)")
    add_split_arguments(
        evaluation,
        "test",
        "the split to score",
        "report folder: results.md/json, samples.csv, plots, overlays",
    )
    evaluation.add_argument(
        "--zoom",
        type=zoom_option,
        default="checkpoint",
        help="zoomed second pass for small drones: checkpoint (as trained, default), off, or "
        "TARGET_PX[,MAX_ZOOM]",
    )
    add_flip_test_argument(evaluation, "network passes averaged with their mirror image")
    evaluation.add_argument(
        "--gate",
        type=positive_float,
        default=5.0,
        help="multi-camera sets: Mahalanobis distance beyond which a view is left out of the fusion",
    )
    evaluation.set_defaults(run=_cmd_eval)


def _cmd_eval_bag(args: argparse.Namespace) -> int:
    from drone_pose.bags.rig_frames import bag_cameras
    from drone_pose.errors import UserError
    from drone_pose.evaluation.bag_evaluation import evaluate_bag

    fusion_options = [
        option
        for option, value in (
            ("--cameras", args.cameras),
            ("--rig-file", args.rig_file),
            ("--gate", args.gate),
        )
        if value is not None
    ]
    if args.camera is not None and fusion_options:
        raise UserError(
            f"--camera evaluates one camera alone and {', '.join(fusion_options)} fuses several: give one"
        )
    camera, cameras = args.camera, args.cameras
    if camera is None and cameras is None:
        found = bag_cameras(args.bag)
        if len(found) > 1 or fusion_options:
            cameras = found
        else:
            camera = found[0] if found else "camera"
    if cameras is not None:
        summary = _fused_bag_summary(args, cameras)
    else:
        summary = evaluate_bag(
            args.bag, args.checkpoint, args.out, camera=camera, device=args.device, batch_size=args.batch_size
        )
    print(summary.pop("table"))
    print(json.dumps(summary, indent=2))
    return 0


def _fused_bag_summary(args: argparse.Namespace, cameras: list[str]) -> dict:
    """eval-bag on several cameras: their fused poses against the rig's ground truth."""
    from drone_pose.evaluation.fused_bag_evaluation import evaluate_fused_bag
    from drone_pose.fusion.fused_estimator import DEFAULT_GATE_MAHALANOBIS

    return evaluate_fused_bag(
        args.bag,
        args.checkpoint,
        args.out,
        cameras=cameras,
        rig_file=args.rig_file,
        device=args.device,
        gate_mahalanobis=DEFAULT_GATE_MAHALANOBIS if args.gate is None else args.gate,
        batch_size=args.batch_size,
    )


def _camera_names(text: str) -> list[str]:
    """An argparse type: comma-separated camera names (camera0,camera2)."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected camera names separated by commas, got {text!r}")
    return names


def _add_eval_bag(commands: argparse._SubParsersAction) -> None:
    bag_eval = commands.add_parser(
        "eval-bag",
        help="the estimator over a bag's frames vs its ground truth (offline); several cameras: fused",
    )
    bag_eval.add_argument(
        "bag", help="rosbag2 folder with /<camera>/image_raw, camera_info, ground_truth/pose"
    )
    bag_eval.add_argument("--checkpoint", help="default: the shipped checkpoint of the bag's drone")
    bag_eval.add_argument(
        "--out", required=True, help="report folder (results, frames.csv, plots, estimates/)"
    )
    bag_eval.add_argument(
        "--camera",
        help="evaluate this camera alone (default: the bag's only camera; a bag of several is fused)",
    )
    bag_eval.add_argument(
        "--cameras",
        type=_camera_names,
        help="fuse these cameras, comma-separated (default: every camera of the bag)",
    )
    bag_eval.add_argument(
        "--rig-file", help="the cameras' extrinsics as a rig YAML file (default: the bag's /tf_static)"
    )
    bag_eval.add_argument(
        "--gate",
        type=positive_float,
        help="fusion: Mahalanobis distance beyond which a view is left out (default 5)",
    )
    bag_eval.add_argument("--device", type=device_option, help="cpu or cuda (default: cuda when available)")
    bag_eval.add_argument("--batch-size", type=positive_int, default=8, help="frames (or groups) per pass")
    bag_eval.set_defaults(run=_cmd_eval_bag)


def _cmd_calibrate_covariance(args: argparse.Namespace) -> int:
    from drone_pose.evaluation.covariance_calibration import calibrate_checkpoint

    options = split_options(args)
    summary = calibrate_checkpoint(args.checkpoint, args.data, flip_test=args.flip_test, **options)
    print(json.dumps(summary, indent=2))
    return 0


def _add_calibrate_covariance(commands: argparse._SubParsersAction) -> None:
    calibrate = commands.add_parser(
        "calibrate-covariance",
        help="fit a checkpoint's pose covariance scales on labelled data and store them in it",
    )
    add_split_arguments(
        calibrate,
        "val",
        "a split neither trained nor tested on",
        "write the calibrated checkpoint here (default: in place)",
    )
    add_flip_test_argument(
        calibrate, "network passes averaged with their mirror image, written into the checkpoint"
    )
    calibrate.set_defaults(run=_cmd_calibrate_covariance)


def _cmd_calibrate_rig(args: argparse.Namespace) -> int:
    from drone_pose.errors import UserError
    from drone_pose.fusion.rig_file import save_rig_file
    from drone_pose.fusion.rig_from_bag import calibrate_rig_bag

    calibration = calibrate_rig_bag(
        args.bag,
        args.cameras,
        args.reference,
        args.checkpoint,
        args.device,
        args.rig_frame,
        args.batch_size,
    )
    summary = calibration.summary
    if calibration.rig is None:
        print(json.dumps(summary, indent=2))
        missing = [c["camera"] for c in summary["camera_estimates"] if not c["resolved"]]
        raise UserError(
            f"no rig file written: cameras {', '.join(missing)} never co-observed the drone often enough "
            f"with a resolved camera (see the pairs above)"
        )
    summary["out"] = str(save_rig_file(calibration.rig, args.out))
    print(json.dumps(summary, indent=2))
    return 0


def _add_calibrate_rig(commands: argparse._SubParsersAction) -> None:
    calibrate = commands.add_parser(
        "calibrate-rig",
        help="a multi-camera bag's extrinsics from the drone's single-view poses (no board): a rig file",
    )
    calibrate.add_argument("bag", help="rosbag2 folder with /<camera>/image_raw and camera_info")
    calibrate.add_argument(
        "--cameras", type=_camera_names, help="the rig's cameras, comma-separated (default: every camera)"
    )
    calibrate.add_argument(
        "--reference", help="the camera whose optical frame is the rig frame (default: the first)"
    )
    calibrate.add_argument("--out", required=True, help="rig YAML file to write (docs/fusion.md#rig-files)")
    calibrate.add_argument(
        "--rig-frame", help="name of the rig frame (default: the reference camera's optical frame id)"
    )
    calibrate.add_argument("--checkpoint", help="default: the shipped checkpoint of the bag's drone")
    calibrate.add_argument("--device", type=device_option, help="cpu or cuda (default: cuda when available)")
    calibrate.add_argument("--batch-size", type=positive_int, default=8, help="groups per network pass")
    calibrate.set_defaults(run=_cmd_calibrate_rig)


def _cmd_keypoint_budget(args: argparse.Namespace) -> int:
    from drone_pose.evaluation.keypoint_budget import keypoint_budget

    summary = keypoint_budget(args.data, args.split, args.sigmas, args.limit, args.seed, args.out)
    print(summary.pop("table"))
    print(json.dumps(summary, indent=2))
    return 0


def _add_keypoint_budget(commands: argparse._SubParsersAction) -> None:
    budget = commands.add_parser(
        "keypoint-budget",
        help="metrics of ground-truth keypoints + Gaussian noise: the keypoint accuracy a target needs",
    )
    budget.add_argument("--data", required=True, help="dataset folder (drone-pose synth)")
    budget.add_argument("--split", default="test")
    budget.add_argument(
        "--sigmas", type=non_negative_float, nargs="+", help="noise stds, px (default 0 0.1 0.25 0.5 1 2)"
    )
    budget.add_argument("--limit", type=positive_int, help="only the first N samples")
    budget.add_argument("--seed", type=int, default=0, help="seed of the noise draw")
    budget.add_argument("--out", help="also write the rows as JSON to this file")
    budget.set_defaults(run=_cmd_keypoint_budget)


def _cmd_model_card(args: argparse.Namespace) -> int:
    from drone_pose.evaluation.model_card import (
        card_training_record,
        silhouette_training_record,
        training_record,
        write_model_card,
    )

    if (args.run_dir is None) == (args.training_from_card is None):
        print("drone-pose model-card: give exactly one of --run-dir or --training-from-card", file=sys.stderr)
        return 2
    if args.run_dir is not None:
        training, note, command = training_record(args.run_dir), args.note, args.data_command
    else:
        training = card_training_record(args.training_from_card)
        note = args.note if args.note is not None else training["note"]
        command = args.data_command or training["command"]
    if not command:
        print("drone-pose model-card: --data-command is required", file=sys.stderr)
        return 2
    silhouette = None
    if args.silhouette_run_dir is not None:
        silhouette = silhouette_training_record(
            args.silhouette_run_dir, args.silhouette_data_command or command, args.silhouette_note
        )
    figures = write_model_card(
        args.checkpoint,
        training,
        args.heldout,
        args.out,
        command,
        args.heldout_command,
        note=note,
        silhouette_training=silhouette,
    )
    print(json.dumps(figures["heldout"], indent=2))
    return 0


def _add_model_card(commands: argparse._SubParsersAction) -> None:
    card = commands.add_parser("model-card", help="ship a checkpoint: copy it and write its model card")
    card.add_argument("--checkpoint", required=True, help="the run's best.pt")
    card.add_argument("--run-dir", help="the training run folder (config.yaml, metrics.csv)")
    card.add_argument(
        "--training-from-card",
        help="instead of --run-dir: an earlier model card's .json (re-card a shipped checkpoint; its data "
        "command and note are kept unless given)",
    )
    card.add_argument("--heldout", required=True, help="held-out dataset folder (test split)")
    card.add_argument("--out", required=True, help="output stem, e.g. models/checkpoints/m2ed_hrnet_lite")
    card.add_argument("--data-command", help="how the training data was rendered (required with --run-dir)")
    card.add_argument("--heldout-command", required=True, help="how the held-out set was rendered")
    card.add_argument("--note", help="free text for the card (e.g. how a multi-stage run was made)")
    card.add_argument(
        "--silhouette-run-dir",
        help="a checkpoint with the silhouette head: the head's training run folder (default: the "
        "earlier card's record with --training-from-card)",
    )
    card.add_argument(
        "--silhouette-data-command",
        help="how the head's training data was rendered (default: --data-command)",
    )
    card.add_argument("--silhouette-note", help="free text on the head's training (e.g. its wall time)")
    card.set_defaults(run=_cmd_model_card)


def register(commands: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the `drone-pose` parser."""
    _add_eval(commands)
    _add_eval_bag(commands)
    _add_calibrate_covariance(commands)
    _add_calibrate_rig(commands)
    _add_keypoint_budget(commands)
    _add_model_card(commands)
