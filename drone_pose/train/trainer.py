"""The training loop: heatmap and PnP losses, validation with the papers' metrics, checkpoints,
resume, logs (CSV, TensorBoard), AMP on CUDA and DistributedDataParallel under torchrun.

Run folder (config.run_dir()): config.yaml (every hyper-parameter), metrics.csv (one row per
epoch), tensorboard/ (losses, metrics, timings), last.pt (training state, for --resume) and
best.pt (a self-describing drone_pose checkpoint that PoseEstimator and the node load); with
swa.start_epoch, also swa.pt (the same kind of checkpoint, of the averaged weights).
Determinism: the sample order of epoch e comes from a generator seeded with (seed, e) and the
augmentation of sample i from (seed, e, i), so a resumed run sees exactly what an uninterrupted one
does, and two CPU runs with one seed give identical losses.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch.optim.swa_utils import update_bn

from drone_pose.atomic_files import write_text
from drone_pose.nets.build import count_parameters
from drone_pose.train.config import TrainConfig, config_to_dict
from drone_pose.train.epoch import (
    EpochTimes,
    amp_enabled,
    epoch_loader,
    learning_rate,
    loss_phase,
    train_epoch,
    training_autocast,
)
from drone_pose.train.preparation import TrainingForward, TrainingRun, prepare
from drone_pose.train.run_state import (
    check_run_folder,
    clear_run,
    load_state,
    metric_value,
    open_tensorboard,
    save_best,
    save_run_checkpoint,
    save_state,
    selection_score,
    write_metrics_csv,
)
from drone_pose.train.validation import validate_run

log = logging.getLogger(__name__)


def train(
    config: TrainConfig, resume: bool = False, progress: bool = True, overwrite: bool = False
) -> dict[str, Any]:
    """Train (or resume) a run; returns a summary with the history and the best metric.

    A run folder that holds a run is continued from its last.pt with `resume` or started over with
    `overwrite` (its outputs removed first); without either, RunFolderError. Every refusal (this
    one, a resume whose configuration differs) comes before anything is written.
    """
    run_dir = config.run_dir()
    check_run_folder(run_dir, resume, overwrite)  # before the data is read
    run = prepare(config)
    main_process = run.rank == 0
    if resume and (run_dir / "last.pt").is_file():
        load_state(run, run_dir / "last.pt")
    elif overwrite and main_process:
        clear_run(run_dir)
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
    writer = open_tensorboard(run_dir) if main_process else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_enabled(run))
    started = time.perf_counter()
    for epoch in range(run.start_epoch, config.epochs):
        if epoch > 0 and loss_phase(config, epoch) != loss_phase(config, epoch - 1):
            # New loss, new gradient scale: Adam's moments of the heatmap phase would make the first
            # pose steps orders of magnitude too large.
            run.optimizer.state.clear()
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate(config, epoch)
        times = EpochTimes()
        train_loss, losses = train_epoch(run, epoch, scaler, times, progress and main_process)
        if run.averaged is not None and epoch + 1 >= config.swa.start_epoch:
            run.averaged.update_parameters(run.predictor)
        validation_started = time.perf_counter()
        metrics = validate_run(run, run.predictor) if main_process else {}
        row = {
            "epoch": epoch + 1,
            "phase": loss_phase(config, epoch),
            "train_loss": train_loss,
            **losses,
            **metrics,
            **times.means_ms(),
            "validation_s": time.perf_counter() - validation_started,
            "lr": learning_rate(config, epoch),
        }
        run.history.append(row)
        if main_process:
            score = selection_score(metrics, config.metric)
            if score > run.best or not (run_dir / "best.pt").exists():
                run.best = score
                save_best(run, row)
            save_state(run, epoch, run_dir / "last.pt")
            write_metrics_csv(run_dir / "metrics.csv", run.history)
            if writer is not None:
                for key, value in row.items():
                    if isinstance(value, (int, float)) and key != "epoch":
                        writer.add_scalar(key, value, epoch + 1)
                writer.flush()
    swa_metrics = _finish_swa(run, writer) if main_process and run.averaged is not None else None
    if writer is not None:
        writer.close()
    if run.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return {
        "rank": run.rank,
        "run_dir": str(run_dir),
        "history": run.history,
        "best": {config.metric: metric_value(run.best, config.metric)},
        "swa": swa_metrics,
        "parameters": count_parameters(run.predictor),
        "train_s": time.perf_counter() - started,
    }


def _finish_swa(run: TrainingRun, writer: Any) -> dict[str, float] | None:
    """Recompute the SWA average's BatchNorm statistics on training batches (augmented and zoomed
    like training, under the training autocast), validate it and save it as swa.pt; its metrics,
    or None when no epoch has been averaged yet."""
    config, averaged = run.config, run.averaged
    assert averaged is not None
    if int(averaged.n_averaged) == 0:
        return None
    started = time.perf_counter()
    loader = epoch_loader(run, config.epochs)  # an epoch index of its own: augmentations not seen in training
    batches = len(loader) if config.swa.bn_batches is None else min(config.swa.bn_batches, len(loader))
    images = (batch["image"] for batch in itertools.islice(loader, batches))
    with training_autocast(run):
        update_bn(images, TrainingForward(averaged.module), device=run.device)
    metrics = validate_run(run, averaged.module)
    last = run.history[-1]
    row = {**last, **metrics, "epoch": config.epochs, "validation_s": time.perf_counter() - started}
    first_epoch = config.swa.start_epoch
    swa = {"first_epoch": first_epoch, "last_epoch": config.epochs, "bn_batches": batches}
    save_run_checkpoint(run, averaged.module.network, row, config.run_dir() / "swa.pt", swa=swa)
    log.info(
        "SWA of epochs %d-%d: ACC5 %.2f, ADD5 %.2f, keypoint error %.2f px -> %s",
        first_epoch,
        config.epochs,
        metrics["ACC5"],
        metrics["ADD5"],
        metrics["keypoint_px"],
        config.run_dir() / "swa.pt",
    )
    if writer is not None:
        for key, value in metrics.items():
            writer.add_scalar(f"swa/{key}", value, config.epochs)
    return metrics
