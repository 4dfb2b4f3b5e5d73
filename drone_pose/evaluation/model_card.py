"""Ship a trained checkpoint: copy it next to a model card (Markdown) and its figures (JSON).

The card records what a user needs to trust and reproduce the model: the training configuration
and data, the epochs and time it took on which hardware, the validation curve, the papers' metric
table on a held-out synthetic test set rendered with a seed not used in training (plus the figure
for its first `check_samples` images, which the test suite reproduces), and inference timings.
A checkpoint with the silhouette head (drone_pose.nets.mask_head) also gets its silhouettes' IoU on
that set and the head's training (silhouette_training_record).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from drone_pose.atomic_files import atomic_path, write_text
from drone_pose.data.dataset import ShardDataset
from drone_pose.evaluation.keypoint_budget import budget_markdown, keypoint_budget
from drone_pose.evaluation.reports import markdown_table, size_table, validity_sentence
from drone_pose.evaluation.split_evaluation import evaluate_checkpoint
from drone_pose.inference.checkpoint import load_checkpoint
from drone_pose.inference.estimator import PoseEstimator
from drone_pose.nets.build import preset_name

# Noise stds (px) of the card's keypoint budget: what ground-truth keypoints + noise reach.
BUDGET_SIGMAS_PX = (0.1, 0.25, 0.5, 1.0, 2.0)

# The study's HRNet on UAVA (paper 000, Table 3, l_h): ACC5 and ADD5 in percent.
STUDY_REFERENCE = {"m2ed": {"ACC5": 98.0, "ADD5": 91.4}, "tello": {"ACC5": 75.0, "ADD5": 43.3}}
ACCEPTANCE = {"m2ed": {"ACC5": 90.0, "ADD5": 80.0}, "tello": {"ACC5": 60.0, "ADD5": 35.0}}


def estimator_latency_ms(
    checkpoint: str | Path, heldout: str | Path, repeats: int = 30, candidates: int = 20
) -> dict[str, float]:
    """Median PoseEstimator time (ms) per frame, batch 1, on this CPU, by stage, on the held-out test
    image with the smallest drone among the first `candidates` (the zoomed second pass runs there)."""
    estimator = PoseEstimator.from_checkpoint(checkpoint, device="cpu")
    dataset = ShardDataset(heldout, "test")
    count = min(candidates, len(dataset))
    sizes = [float(np.ptp(dataset[i]["keypoints"].numpy(), axis=0).max()) for i in range(count)]
    sample = dataset[int(np.argmin(sizes))]
    image = (sample["image"].permute(1, 2, 0) * 255.0).round().to(torch.uint8).numpy()
    K = sample["K"].double().numpy()
    stages: dict[str, list[float]] = {}
    for _ in range(repeats):
        for key, value in estimator.estimate(image, K).timings_ms.items():
            stages.setdefault(key, []).append(value)
    return {key: round(float(np.median(values)), 2) for key, values in stages.items()}


def _validation_curve(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    return list(csv.DictReader(path.open())) if path.is_file() else []


def training_record(run_dir: str | Path) -> dict[str, Any]:
    """What a card says about training, from a run folder (config.yaml, metrics.csv): config,
    epochs_run, seconds_per_step, validation_curve."""
    run_dir = Path(run_dir)
    curve = _validation_curve(run_dir)
    return {
        "config": yaml.safe_load((run_dir / "config.yaml").read_text()),
        "epochs_run": len(curve),
        "seconds_per_step": _step_seconds(curve),
        "validation_curve": [_curve_row(row) for row in curve],
    }


def card_training_record(card: str | Path) -> dict[str, Any]:
    """The same record from an earlier model card's JSON (to re-card a shipped checkpoint whose run
    folder is gone, e.g. after changing its inference settings), plus its data command and note,
    and its silhouette head's training record (None when it has none)."""
    figures = json.loads(Path(card).read_text())
    training = figures.get("training", {})
    keys = ("config", "epochs_run", "seconds_per_step", "validation_curve")
    missing = [key for key in keys if key not in training]
    if missing:
        raise ValueError(f"{card}: training.{missing[0]} missing: not a drone-pose model card")
    return {
        **{key: training[key] for key in keys},
        "command": training.get("command"),
        "note": figures.get("note"),
        "silhouette": (figures.get("silhouette") or {}).get("training"),
    }


def silhouette_training_record(
    run_dir: str | Path, data_command: str, note: str | None = None
) -> dict[str, Any]:
    """What a card says about a silhouette head's training run (config.yaml, metrics.csv): config,
    epochs_run, seconds_per_step, the validation curve of its silhouette IoU, the data command and a
    free-text note (e.g. the wall time)."""
    run_dir = Path(run_dir)
    curve = _validation_curve(run_dir)
    columns = ("epoch", "train_loss", "mask_IoU", "mask_soft_IoU")
    return {
        "config": yaml.safe_load((run_dir / "config.yaml").read_text()),
        "epochs_run": len(curve),
        "seconds_per_step": _step_seconds(curve),
        "validation_curve": [{key: float(row[key]) for key in columns if row.get(key)} for row in curve],
        "command": data_command,
        "note": note,
    }


def write_model_card(
    checkpoint: str | Path,
    training: dict[str, Any],
    heldout: str | Path,
    out_stem: str | Path,
    data_command: str,
    heldout_command: str,
    check_samples: int = 200,
    note: str | None = None,
    silhouette_training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Copy `checkpoint` to out_stem.pt and write out_stem.md / out_stem.json; returns the figures.
    training: training_record() of its run folder or card_training_record() of an earlier card;
    silhouette_training: for a checkpoint with the silhouette head, silhouette_training_record() of
    the head's run (default: training["silhouette"], an earlier card's)."""
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    shipped = out_stem.with_suffix(".pt")
    if Path(checkpoint).resolve() != shipped.resolve():
        with atomic_path(shipped) as temporary:
            shutil.copyfile(checkpoint, temporary)
    description = load_checkpoint(shipped)
    drone = description["drone"]["name"]
    config = training["config"]
    started = time.perf_counter()
    full = evaluate_checkpoint(shipped, heldout, "test", device="cpu")
    zoom = description["input"].get("zoom")
    flip_test = description["input"].get("flip_test", "off")
    no_flip = (
        evaluate_checkpoint(shipped, heldout, "test", device="cpu", flip_test="off")
        if flip_test != "off"
        else None
    )
    one_pass = (
        evaluate_checkpoint(shipped, heldout, "test", device="cpu", zoom=None, flip_test="off")
        if zoom
        else None
    )
    check = evaluate_checkpoint(shipped, heldout, "test", device="cpu", limit=check_samples)
    budget = keypoint_budget(str(heldout), "test", BUDGET_SIGMAS_PX)
    figures = {
        "checkpoint": shipped.name,
        "drone": drone,
        "network": _shipped_network_name(description["network"], config["network"]),
        "parameters_m": round(sum(v.numel() for v in description["state_dict"].values()) / 1e6, 3),
        "heldout": {
            "command": heldout_command,
            "samples": full["samples"],
            "metrics": full["metrics"],
            "by_size": full["by_size"],
        },
        "zoom": zoom,
        "flip_test": flip_test,
        "pose_covariance": description.get("pose_covariance"),
        "heldout_no_flip_test": None if no_flip is None else no_flip["metrics"],
        "heldout_one_pass": None if one_pass is None else one_pass["metrics"],
        "check": {"samples": check["samples"], "metrics": check["metrics"]},
        "keypoint_budget": budget["rows"],
        "training": {
            "command": data_command,
            "config": config,
            "epochs_run": training["epochs_run"],
            "swa": description["training"].get("swa"),
            "validation": description.get("metrics"),
            "seconds_per_step": training["seconds_per_step"],
            "validation_curve": training["validation_curve"],
        },
        "estimator_ms_cpu_batch1": estimator_latency_ms(shipped, heldout),
        "hardware": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "evaluation_seconds": round(time.perf_counter() - started, 1),
        "note": note,
    }
    if "silhouette" in full:
        figures["silhouette"] = {
            "heldout": full["silhouette"],
            "heldout_one_pass": None if one_pass is None else one_pass.get("silhouette"),
            "check": check.get("silhouette"),
            "training": silhouette_training or training.get("silhouette"),
        }
    write_text(out_stem.with_suffix(".json"), json.dumps(figures, indent=2) + "\n")
    table = full["table"]
    if one_pass is not None or no_flip is not None:
        passes = "two passes" if zoom else "one pass"
        rows = [(f"{full['label']}, {passes}" + (", flip test" if no_flip else ""), full["metrics"])]
        if no_flip is not None:
            rows.append((f"{full['label']}, {passes}", no_flip["metrics"]))
        if one_pass is not None:
            rows.append((f"{full['label']}, one pass", one_pass["metrics"]))
        table = markdown_table(rows)
    write_text(out_stem.with_suffix(".md"), _card_text(figures, table, shipped))
    return figures


def _network_name(network: str | dict[str, Any]) -> str:
    """A run's network as the card names it: its preset, else the YAML path or "custom <architecture>"."""
    name = preset_name(network)
    if name is not None:
        return name
    return network if isinstance(network, str) else f"custom {network['architecture']}"


def _shipped_network_name(checkpoint_network: dict[str, Any], config_network: str | dict[str, Any]) -> str:
    """The card's network name: the run's, plus " + silhouette head" when the shipped checkpoint has
    the head (its keypoint network is then the run's with the head added)."""
    if checkpoint_network.get("mask_head"):
        plain = {key: value for key, value in checkpoint_network.items() if key != "mask_head"}
        return f"{_network_name(plain)} + silhouette head"
    return _network_name(config_network)


def _curve_row(row: dict[str, str]) -> dict[str, float]:
    """The card's columns of one metrics.csv row, as numbers."""
    return {key: float(row[key]) for key in ("epoch", "train_loss", "keypoint_px", "ACC5", "ADD5")}


def _step_seconds(curve: list[dict[str, str]]) -> float | None:
    """Mean seconds per training step from Table 1's timings (forward + backward + optimiser)."""
    if not curve:
        return None
    per_step = [
        (float(row["forward_ms"]) + float(row["backward_ms"]) + float(row["optimiser_step_ms"])) / 1e3
        for row in curve
    ]
    return round(float(np.mean(per_step)), 3)


def _trained_zoom(config: dict[str, Any]) -> dict[str, float] | None:
    """The run's zoom section when it trained for the second pass, else None."""
    zoom = config.get("zoom", {})
    return zoom if zoom.get("probability", 0) > 0 else None


def _zoom_recipe(config: dict[str, Any]) -> str:
    zoom = _trained_zoom(config)
    if zoom is None:
        return ""
    return (
        f", {100 * zoom['probability']:.0f} % of the training windows zoomed like the second pass "
        f"(drone enlarged to about {zoom['target_px']:g} px, at most {zoom['max_zoom']:g}x)"
    )


def _covariance_text(scales: dict[str, Any] | None, metrics: dict[str, Any]) -> str:
    """What the published covariance (PoseWithCovarianceStamped) is and how well it fits the errors."""
    source = (
        "PnP's covariance as the solver reports it (no pose_covariance scales: fit them with "
        "`drone-pose calibrate-covariance`)"
        if not scales
        else f"PnP's covariance times the checkpoint's variance scales (pose_covariance: translation "
        f"{scales['translation']:.2f}, rotation {scales['rotation']:.2f}, fitted on {scales['samples']} "
        "validation poses)"
    )
    if "covariance_ratio" not in metrics:
        return f"Pose covariance: {source}."
    return (
        f"Pose covariance: {source}. On this set the median squared Mahalanobis distance of the pose "
        f"errors is {metrics['covariance_ratio']:.2f}x its chi-square median (1 when calibrated) and "
        f"{metrics['covariance_cover95']:.1f} % of the poses lie inside their 95 % ellipsoid."
    )


def _window_text(zoom: dict[str, Any]) -> str:
    window = zoom.get("window")
    return "network-input-sized" if window is None else f"{window[0]}x{window[1]}"


def _keypoint_error_text(metrics: dict[str, Any]) -> str:
    """Mean (and, where measured, median) keypoint error over in-image keypoints."""
    if "keypoint_px_median" not in metrics:
        return f"{metrics['keypoint_px']:.2f} px (mean over in-image keypoints)"
    return (
        f"{metrics['keypoint_px']:.2f} px mean, {metrics['keypoint_px_median']:.2f} px median over "
        "in-image keypoints (a few gross errors rule the mean)"
    )


def _weights_choice(config: dict[str, Any], training: dict[str, Any]) -> str:
    """How the shipped weights were chosen: the best epoch, or an SWA average (swa.pt)."""
    swa = training.get("swa")
    if not swa:
        return f"best epoch by {config['metric']}"
    validation = training.get("validation") or {}
    scored = (
        f" (validation: keypoint error {validation['keypoint_px']:.2f} px, ACC5 {validation['ACC5']:.1f}, "
        f"ADD5 {validation['ADD5']:.1f})"
        if {"keypoint_px", "ACC5", "ADD5"} <= set(validation)
        else ""
    )
    return (
        f"weights: swa.pt, the average (SWA) of the weights at the end of epochs {swa['first_epoch']}-"
        f"{swa['last_epoch']}, BatchNorm statistics recomputed on {swa['bn_batches']} training "
        f"batches{scored}"
    )


def _card_text(figures: dict[str, Any], table: str, shipped: Path) -> str:
    """The card's Markdown: a header, the held-out results, the keypoint budget, training and
    inference time."""
    sections = (
        _header_section(figures, shipped),
        _heldout_section(figures, table, shipped),
        _budget_section(figures),
        _training_section(figures),
        _silhouette_section(figures),
        _inference_section(figures),
    )
    return "\n".join(line for section in sections for line in section)


def _header_section(figures: dict[str, Any], shipped: Path) -> list[str]:
    drone = figures["drone"]
    return [
        f"# Model card: `{shipped.name}`",
        "",
        f"Keypoint network `{figures['network']}` ({figures['parameters_m']} M parameters) for the "
        f"built-in `{drone}` drone, trained on synthetic UAVA-like images on CPU. Load it with "
        f"`PoseEstimator.from_checkpoint()` (no path: the shipped default for `{drone}`), "
        "`tracker_node` (empty `checkpoint`), `drone-pose eval --checkpoint` or `eval-bag`.",
        "",
    ]


def _heldout_section(figures: dict[str, Any], table: str, shipped: Path) -> list[str]:
    """The held-out table, what the second pass and flip test are, the size bins, the covariance's
    calibration and the targets."""
    drone = figures["drone"]
    metrics = figures["heldout"]["metrics"]
    reference, acceptance = STUDY_REFERENCE.get(drone, {}), ACCEPTANCE.get(drone, {})
    lines = [
        "## Held-out synthetic test set",
        "",
        f"`{figures['heldout']['command']}` ({figures['heldout']['samples']} images, a seed not used in "
        "training), `drone-pose eval --checkpoint models/checkpoints/"
        f"{shipped.name} --data <that folder> --split test`:",
        "",
        table.strip(),
        "",
        f"Keypoint error {_keypoint_error_text(metrics)}. "
        + (validity_sentence(metrics) or f"Valid {100 * metrics['valid_fraction']:.1f} %."),
        "",
    ]
    if figures.get("zoom"):
        zoom = figures["zoom"]
        lines += [
            f"The checkpoint asks for the zoomed second pass (input.zoom: drones smaller than "
            f"{zoom['target_px']:g} px are re-run on a {_window_text(zoom)} window enlarged up to "
            f"{zoom['max_zoom']:g}x; "
            f"{100 * metrics.get('zoomed_fraction', 0.0):.1f} % of these images). The `one pass` row is "
            "the same network with `drone-pose eval --zoom off`.",
            "",
        ]
    if figures.get("flip_test", "off") != "off":
        passes = {"zoom": "the second pass", "all": "every network pass"}[figures["flip_test"]]
        lines += [
            f"Flip test (input.flip_test: {figures['flip_test']}): {passes} averages the network's "
            "heatmaps with those of the mirrored image, left and right keypoints swapped "
            "(drone_pose.nets.flip); the row without it is `drone-pose eval --flip-test off`.",
            "",
        ]
    if figures["heldout"].get("by_size"):
        lines += [
            "By the drone's size in the image (model diagonal in pixels; bins of about equal counts)"
            + (", two passes:" if figures.get("zoom") else ":"),
            "",
            size_table(figures["heldout"]["by_size"]).strip(),
            "",
        ]
    lines += [_covariance_text(figures.get("pose_covariance"), metrics), ""]
    if acceptance:
        verdict = all(metrics[key] >= value for key, value in acceptance.items())
        lines += [
            f"Target for this model: ACC5 >= {acceptance['ACC5']} %, ADD5 >= {acceptance['ADD5']} % "
            f"({'met' if verdict else 'not met'}). The study's HRNet-W48 on real UAVA images: "
            f"ACC5 {reference['ACC5']} %, ADD5 {reference['ADD5']} %.",
            "",
        ]
    return lines


def _budget_section(figures: dict[str, Any]) -> list[str]:
    """The keypoint budget table and the figure test_shipped_models reproduces."""
    lines = [
        "What the targets ask of the keypoints: ground-truth keypoints of the same images plus Gaussian "
        "noise (std per image axis) through the estimator's PnP (`drone-pose keypoint-budget --data "
        "<that folder>`). A network whose mean keypoint error exceeds the one at which a target is missed "
        "is unlikely to meet it (network errors are not Gaussian: a guide, not a bound):",
        "",
        budget_markdown(figures["keypoint_budget"]).strip(),
        "",
    ]
    check = figures["check"]
    lines += [
        f"First {check['samples']} test images (what `test/test_shipped_models.py` reproduces): "
        + ", ".join(f"{k} {check['metrics'][k]:.2f}" for k in ("ACC5", "ADD5", "Proj5", "keypoint_px")),
        "",
    ]
    return lines


def _training_section(figures: dict[str, Any]) -> list[str]:
    """Data, recipe, epochs, hardware and the validation curve."""
    config = figures["training"]["config"]
    lines = [
        "## Training",
        "",
        f"- Data: `{figures['training']['command']}` (train split for training, val for model selection).",
        f"- Recipe (run `{config['name']}`; its full configuration is in the .json card): "
        f"loss {config['loss']['kind']} "
        f"({config['loss']['heatmap']}, foreground weight {config['loss'].get('foreground_weight', 0)}), "
        f"Adam lr {config['optim']['lr']} ({config['optim']['schedule']}), batch {config['batch_size']}, "
        f"{config['epochs']} epochs, training crops {config['data'].get('crop')}, seed {config['seed']}"
        + _zoom_recipe(config)
        + f"; {_weights_choice(config, figures['training'])}.",
        *([f"- Note: {figures['note']}"] if figures.get("note") else []),
        f"- Epochs run: {figures['training']['epochs_run']}; mean time per training step "
        f"{figures['training']['seconds_per_step']} s (forward + backward + optimiser).",
        f"- Hardware: {figures['hardware']['platform']}, {figures['hardware']['cpu_count']} CPU cores, "
        f"torch {figures['hardware']['torch']}, GPU: {figures['hardware']['cuda'] or 'none'}.",
        "",
        "Validation curve (full 320x240 frames"
        + (", with the second pass" if _trained_zoom(config) else "")
        + "):",
        "",
        "| epoch | train loss | keypoint px | ACC5 | ADD5 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in figures["training"]["validation_curve"]:
        lines.append(
            f"| {row['epoch']:.0f} | {row['train_loss']:.4f} | {row['keypoint_px']:.2f} | "
            f"{row['ACC5']:.1f} | {row['ADD5']:.1f} |"
        )
    return lines


def _silhouette_section(figures: dict[str, Any]) -> list[str]:
    """The silhouette head: held-out IoU (overall, one pass, by size) and its training."""
    silhouette = figures.get("silhouette")
    if not silhouette:
        return []
    heldout = silhouette["heldout"]
    lines = [
        "",
        "## Silhouette head",
        "",
        "The network also predicts the drone's whole silhouette (occluders ignored) on its finest heatmap "
        "grid (drone_pose.nets.mask_head); `PoseEstimator` returns it as `silhouette`, the zoomed "
        "window's map where the second pass ran. The keypoint layers are those of the figures above, "
        "unchanged. On the held-out set (`drone-pose eval`'s `silhouette`), the silhouettes resampled to "
        "the image's pixels against the rendered full masks, mean over the images showing the drone: "
        f"IoU {heldout['mask_IoU']:.1f} % (probability > 0.5), soft IoU {heldout['mask_soft_IoU']:.1f} % "
        f"({heldout['count']:.0f} images)"
        + (
            f"; first pass only (`--zoom off`): IoU {one['mask_IoU']:.1f} %, soft IoU "
            f"{one['mask_soft_IoU']:.1f} %."
            if (one := silhouette.get("heldout_one_pass"))
            else "."
        ),
        "",
    ]
    if heldout.get("by_size"):
        one_pass_rows = (silhouette.get("heldout_one_pass") or {}).get("by_size")
        if one_pass_rows and len(one_pass_rows) == len(heldout["by_size"]):
            header = "| drone size (px) | images | IoU | soft IoU | IoU first pass | soft IoU first pass |"
            rule = "| --- | --- | --- | --- | --- | --- |"
            extra = [f" {row['mask_IoU']:.1f} | {row['mask_soft_IoU']:.1f} |" for row in one_pass_rows]
            passes = ", as the checkpoint runs it and with the first pass only (`--zoom off`)"
        else:
            header, rule = "| drone size (px) | images | IoU | soft IoU |", "| --- | --- | --- | --- |"
            extra, passes = [""] * len(heldout["by_size"]), ""
        lines += [
            f"By the drone's size in the image (model diagonal in pixels; the bins above){passes}:",
            "",
            header,
            rule,
            *(
                f"| {row['size_px'][0]:g}-{row['size_px'][1]:g} | {row['count']:.0f} | "
                f"{row['mask_IoU']:.1f} | {row['mask_soft_IoU']:.1f} |{more}"
                for row, more in zip(heldout["by_size"], extra, strict=True)
            ),
            "",
        ]
    if silhouette.get("check"):
        check = silhouette["check"]
        lines += [
            f"First {figures['check']['samples']} test images: IoU {check['mask_IoU']:.2f}, soft IoU "
            f"{check['mask_soft_IoU']:.2f}.",
            "",
        ]
    training = silhouette.get("training")
    if training:
        config = training["config"]
        mask = config.get("mask", {})
        lines += [
            f"- Data: `{training['command']}` (train split for training, val for model selection).",
            f"- Recipe (run `{config['name']}`): the mask head alone trained "
            + ("(everything else frozen, BatchNorm statistics included), " if mask.get("head_only") else "")
            + f"binary cross-entropy (weight {mask.get('weight', 1.0)}) against the full masks "
            f"area-averaged to the heatmap grid, Adam lr {config['optim']['lr']} "
            f"({config['optim']['schedule']}), batch {config['batch_size']}, {config['epochs']} epochs, "
            f"training crops {config['data'].get('crop')}"
            + _zoom_recipe(config)
            + f"; best epoch by {config['metric']}.",
            f"- Epochs run: {training['epochs_run']}; mean time per training step "
            f"{training['seconds_per_step']} s.",
            *([f"- Note: {training['note']}"] if training.get("note") else []),
            "",
            "| epoch | train loss | IoU | soft IoU |",
            "| --- | --- | --- | --- |",
            *(
                f"| {row['epoch']:.0f} | {row['train_loss']:.4f} | {row.get('mask_IoU', float('nan')):.1f} | "
                f"{row.get('mask_soft_IoU', float('nan')):.1f} |"
                for row in training["validation_curve"]
            ),
        ]
    return lines


def _inference_section(figures: dict[str, Any]) -> list[str]:
    timings = figures["estimator_ms_cpu_batch1"]
    return [
        "",
        "## Inference time",
        "",
        "PoseEstimator per 320x240 frame, batch 1, this CPU (median ms; the held-out image with the "
        "smallest drone of the first 20, so the second pass runs when the checkpoint asks for it): "
        + ", ".join(f"{k} {v}" for k, v in timings.items()),
        "",
    ]
