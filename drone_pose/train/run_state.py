"""What a run leaves in its folder: the resumable training state (last.pt), the self-describing
checkpoints (best.pt, swa.pt), metrics.csv and TensorBoard logs; checkpoint selection."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drone_pose.atomic_files import atomic_open
from drone_pose.errors import UserError
from drone_pose.geometry.pose_covariance import CovarianceScales
from drone_pose.inference.checkpoint import (
    load_checkpoint,
    make_checkpoint,
    plain_network_config,
    save_checkpoint,
    write_torch,
)
from drone_pose.train.config import TrainConfig, config_to_dict
from drone_pose.train.preparation import TrainingRun, zoom_settings

log = logging.getLogger(__name__)


STATE_FORMAT = "drone_pose.training_state"
# The files that make a folder hold a run (config.yaml and tensorboard/ alone are an unstarted one).
RUN_FILES = ("last.pt", "best.pt", "swa.pt", "metrics.csv")
# Settings that place a run rather than define it: a moved run folder resumes with new ones.
LOCATION_KEYS = ("name", "output")


class RunFolderError(UserError):
    """A run folder that cannot be used as asked: it holds a run, or it cannot be resumed."""


def run_files(run_dir: Path) -> list[str]:
    """The RUN_FILES present in run_dir."""
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def check_run_folder(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """RunFolderError unless the run folder can be used: training into a folder that holds a run
    needs `resume` (continue it from last.pt) or `overwrite` (start over, replacing it)."""
    if resume and overwrite:
        raise RunFolderError("--resume continues a run and --overwrite replaces it: choose one")
    found = run_files(run_dir)
    if not found or overwrite:
        return
    if not resume:
        raise RunFolderError(
            f"{run_dir} already holds a run ({', '.join(found)}): continue it with --resume, or "
            "start it over with --overwrite (replaces those files), or choose another name=..."
        )
    if not (run_dir / "last.pt").is_file():
        raise RunFolderError(
            f"{run_dir} holds {', '.join(found)} but no last.pt to resume from: start it over with "
            "--overwrite, or choose another name=..."
        )


def clear_run(run_dir: Path) -> None:
    """Remove a run's outputs from run_dir (RUN_FILES and tensorboard/), before starting it over."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    if (run_dir / "tensorboard").is_dir():
        shutil.rmtree(run_dir / "tensorboard")


def place_in_run_folder(
    config: TrainConfig, config_path: str | Path | None, overrides: Sequence[str] = ()
) -> TrainConfig:
    """The config with the run folder where `config_path` is, when that is a run folder's own
    config.yaml (next to a last.pt): a run folder that was moved or renamed continues in place with
    `--config RUN_DIR/config.yaml --resume`. A name= or output= override keeps the config's place."""
    if config_path is None or any(item.split("=", 1)[0] in LOCATION_KEYS for item in overrides):
        return config
    folder = Path(config_path).parent
    if Path(config_path).name != "config.yaml" or not (folder / "last.pt").is_file():
        return config
    return dataclasses.replace(config, output=str(folder.parent), name=folder.name)


def selection_score(metrics: dict[str, float], metric: str) -> list[float]:
    """Checkpoint selection key, larger is better: the metric (keypoint_px negated), then the
    keypoint error as tie-breaker (percentages plateau on small validation sets)."""
    keypoint = metrics.get("keypoint_px", math.inf)
    keypoint = -keypoint if math.isfinite(keypoint) else -math.inf
    primary = keypoint if metric == "keypoint_px" else metrics.get(metric, -math.inf)
    return [float(primary), float(keypoint)]


def metric_value(score: list[float], metric: str) -> float:
    """The selection metric's value from a selection_score (keypoint_px un-negated)."""
    return -score[0] if metric == "keypoint_px" else score[0]


def save_state(run: TrainingRun, epoch: int, path: Path) -> None:
    """The resumable training state after `epoch` (weights, optimiser, SWA average, best score,
    history) at `path`, written to a temporary name first and then renamed."""
    state = {
        "format": STATE_FORMAT,
        "epoch": epoch,
        "config": config_to_dict(run.config),
        "model": run.predictor.network.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        **({} if run.averaged is None else {"swa": run.averaged.state_dict()}),
        "best": run.best,
        "history": run.history,
    }
    write_torch(state, path)


# Settings a resumed run may change: the schedule's length and how the steps execute.
RESUMABLE_CHANGES = ("epochs", "amp", "cpu_bf16", "channels_last")


def load_state(run: TrainingRun, path: Path) -> None:
    """Resume `run` from a training state; RunFolderError when it is not one or when the
    configuration differs in anything but RESUMABLE_CHANGES and the run's place (LOCATION_KEYS)."""
    state = torch.load(path, map_location=run.device, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise RunFolderError(f"{path}: not a drone_pose training state")
    saved, current = dict(state["config"]), config_to_dict(run.config)
    for key in (*RESUMABLE_CHANGES, *LOCATION_KEYS):
        saved.pop(key, None)
        current.pop(key, None)
    defaults = config_to_dict(TrainConfig())
    for key in set(current) - set(saved):  # sections added since the state was saved, at their defaults
        if current[key] == defaults.get(key):
            saved[key] = current[key]
    if saved != current:
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise RunFolderError(
            f"{path}: cannot resume with a different configuration (changed: {', '.join(changed)}); "
            "nothing was changed on disk: resume with the run's own settings (its config.yaml), or "
            "start it over with --overwrite, or choose another name=..."
        )
    run.predictor.network.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.averaged is not None and "swa" in state:
        run.averaged.load_state_dict(state["swa"])
    run.best = [float(v) for v in state["best"]]
    run.history = list(state["history"])
    run.start_epoch = int(state["epoch"]) + 1


def save_best(run: TrainingRun, row: dict[str, Any]) -> None:
    """The run's network as best.pt, with the validation figures of `row`."""
    save_run_checkpoint(run, run.predictor.network, row, run.config.run_dir() / "best.pt")


def save_run_checkpoint(
    run: TrainingRun, network: nn.Module, row: dict[str, Any], path: Path, swa: dict[str, int] | None = None
) -> None:
    """`network` as a drone_pose checkpoint at `path`, with the validation figures of `row` (an
    epoch's metrics.csv row) and, for an SWA average, the epochs it averages. A mask.head_only run
    changed nothing but the silhouette head: its checkpoint is the init checkpoint (description,
    input settings, covariance scales, figures) with the new weights and network, and the head's
    training under training.mask_head."""
    config = run.config
    if config.mask.head_only:
        save_checkpoint(head_only_checkpoint(run, network, row), path)
        return
    training = {
        "experiment": config.name,
        "epoch": row["epoch"],
        "data": config.data.path or config.data.uava_root,
        "loss": config_to_dict(config)["loss"],
        "device": str(run.device),
        "world_size": run.world,
        "timings_ms": {k: row[k] for k in ("forward_ms", "backward_ms", "optimiser_step_ms")},
        **({} if swa is None else {"swa": swa}),
    }
    metrics = {
        k: v
        for k, v in row.items()
        if k
        in (
            *("NPE", "AD", "ACC2", "ACC5", "ADD2", "ADD5", "Proj2", "Proj5", "count", "keypoint_px"),
            *MASK_METRICS,
        )
    }
    checkpoint = make_checkpoint(
        network,
        config.network,
        run.drone,
        run.image_size,
        heatmap_sigma=config.loss.sigma,
        training=training,
        metrics=metrics,
        zoom=None if (settings := zoom_settings(config)) is None else settings.to_dict(),
        flip_test=config.flip_test,
        covariance_scales=CovarianceScales(
            row["covariance_translation_scale"],
            row["covariance_rotation_scale"],
            int(row["covariance_fit_samples"]),
        ),
    )
    save_checkpoint(checkpoint, path)


MASK_METRICS = ("mask_IoU", "mask_soft_IoU")


def head_only_checkpoint(run: TrainingRun, network: nn.Module, row: dict[str, Any]) -> dict[str, Any]:
    """The init checkpoint with `network`'s weights and the run's network configuration (its
    silhouette head added), and training.mask_head: the head's run, epoch, data, mask settings,
    step timings and validation silhouette IoU (row: an epoch's metrics.csv row)."""
    config = run.config
    checkpoint = load_checkpoint(config.init)
    checkpoint["network"] = plain_network_config(config.network)
    checkpoint["state_dict"] = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    checkpoint["training"] = {
        **checkpoint.get("training", {}),
        "mask_head": {
            "experiment": config.name,
            "epoch": row["epoch"],
            "data": config.data.path or config.data.uava_root,
            "mask": config_to_dict(config)["mask"],
            "device": str(run.device),
            "timings_ms": {k: row[k] for k in ("forward_ms", "backward_ms", "optimiser_step_ms")},
            "validation": {k: row[k] for k in MASK_METRICS if k in row},
        },
    }
    return checkpoint


def write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """All epochs so far, columns the union of every row's (phases add loss terms)."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def open_tensorboard(run_dir: Path) -> Any:
    """A TensorBoard SummaryWriter in run_dir/tensorboard, or None when it cannot be opened."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a declared dependency; tolerate a trimmed install
        log.warning("tensorboard is not installed: no TensorBoard logs")
        return None
    with contextlib.suppress(Exception):
        return SummaryWriter(str(run_dir / "tensorboard"))
    return None
