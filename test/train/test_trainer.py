"""Tiny real training runs on rendered images: overfitting, determinism, resume, checkpoints."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import torch

from drone_pose.data.generate import generate_dataset
from drone_pose.drones import load_drone
from drone_pose.evaluation.model_card import card_training_record, training_record, write_model_card
from drone_pose.geometry.pose_covariance import CovarianceScales
from drone_pose.inference.checkpoint import load_checkpoint, network_from_checkpoint, save_checkpoint
from drone_pose.inference.estimator import PoseEstimator
from drone_pose.nets.build import build_network
from drone_pose.nets.zoom import ZoomSettings
from drone_pose.train.config import ConfigError, load_config
from drone_pose.train.preparation import augment_config, initial_weights_fit, prepare
from drone_pose.train.trainer import train

from ..tiny_models import TINY_NET, tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data") / "m2ed"
    generate_dataset(
        "m2ed", 5, root, seed=2, workers=1, width=128, height=96, fractions=(0.8, 0.2, 0.0), progress=False
    )
    return root


def config(tiny_data, out, name, *overrides):
    return load_config(
        None,
        [
            f"name={name}",
            f"output={out}",
            f"data.path={tiny_data}",
            "data.workers=0",
            "batch_size=4",
            f"network={json.dumps(TINY_NET)}",
            *overrides,
        ],
    )


def losses(summary):
    return [row["train_loss"] for row in summary["history"]]


def test_same_seed_same_losses_and_resume_equals_an_uninterrupted_run(tiny_data, tmp_path):
    full = train(config(tiny_data, tmp_path / "a", "run", "epochs=4", "optim.lr=1e-3"), progress=False)
    again = train(config(tiny_data, tmp_path / "b", "run", "epochs=4", "optim.lr=1e-3"), progress=False)
    assert losses(full) == losses(again)
    first = train(config(tiny_data, tmp_path / "c", "run", "epochs=2", "optim.lr=1e-3"), progress=False)
    resumed = train(
        config(tiny_data, tmp_path / "c", "run", "epochs=4", "optim.lr=1e-3"), resume=True, progress=False
    )
    assert losses(resumed)[:2] == losses(first)
    assert losses(resumed) == losses(full)
    with pytest.raises(ValueError, match="different configuration"):
        train(
            config(tiny_data, tmp_path / "c", "run", "epochs=5", "optim.lr=2e-3"), resume=True, progress=False
        )
    rows = list(csv.DictReader((tmp_path / "c" / "run" / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert {"forward_ms", "backward_ms", "optimiser_step_ms", "ACC5", "ADD5", "keypoint_px"} <= set(rows[0])
    assert (tmp_path / "c" / "run" / "config.yaml").is_file()
    assert list((tmp_path / "c" / "run" / "tensorboard").glob("events.*"))


def test_a_finished_run_is_continued_or_replaced_only_when_asked_and_can_be_moved(
    tiny_data, tmp_path, capsys
):
    """Training into a folder that holds a run is refused without --resume or --overwrite; a
    refused resume (another configuration) leaves every file as it was; a renamed run folder
    continues in place through its own config.yaml."""
    from drone_pose.cli import main
    from drone_pose.train.run_state import RunFolderError

    run_dir = tmp_path / "runs" / "first"
    train(config(tiny_data, tmp_path / "runs", "first", "epochs=1"), progress=False)
    files = ("best.pt", "last.pt", "metrics.csv", "config.yaml")
    before = {name: (run_dir / name).read_bytes() for name in files}
    with pytest.raises(RunFolderError, match="already holds a run") as refused:
        train(config(tiny_data, tmp_path / "runs", "first", "epochs=1", "seed=5"), progress=False)
    assert str(run_dir) in str(refused.value)
    assert "--resume" in str(refused.value)
    assert "--overwrite" in str(refused.value)
    with pytest.raises(RunFolderError, match=r"different configuration \(changed: seed\)"):
        train(
            config(tiny_data, tmp_path / "runs", "first", "epochs=2", "seed=5"), resume=True, progress=False
        )
    assert {name: (run_dir / name).read_bytes() for name in files} == before

    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    run_dir.rename(moved)
    arguments = ["train", "--config", str(moved / "config.yaml"), "--resume", "epochs=2", "--no-progress"]
    assert main(arguments) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["run_dir"] == str(moved)
    assert [int(row["epoch"]) for row in csv.DictReader((moved / "metrics.csv").open())] == [1, 2]
    assert not run_dir.exists()

    replaced = train(
        config(tiny_data, tmp_path / "elsewhere", "renamed", "epochs=1"), overwrite=True, progress=False
    )
    assert [row["epoch"] for row in replaced["history"]] == [1]
    assert [int(row["epoch"]) for row in csv.DictReader((moved / "metrics.csv").open())] == [1]
    assert torch.load(moved / "last.pt", weights_only=True)["epoch"] == 0


def test_swa_averages_the_epochs_weights_resumes_and_ships_a_checkpoint(tiny_data, tmp_path):
    swa = ["optim.lr=1e-3", "swa.start_epoch=2", "swa.bn_batches=1"]
    full = train(config(tiny_data, tmp_path / "a", "swa", "epochs=3", *swa), progress=False)
    train(config(tiny_data, tmp_path / "b", "swa", "epochs=2", *swa), progress=False)
    run_dir = tmp_path / "b" / "swa"
    epoch2 = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    train(config(tiny_data, tmp_path / "b", "swa", "epochs=3", *swa), resume=True, progress=False)
    epoch3 = torch.load(run_dir / "last.pt", weights_only=True)["model"]

    averaged = load_checkpoint(run_dir / "swa.pt")
    assert averaged["training"]["swa"] == {"first_epoch": 2, "last_epoch": 3, "bn_batches": 1}
    weights = [
        key for key in epoch3 if not key.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    for key in weights:
        torch.testing.assert_close(averaged["state_dict"][key], (epoch2[key] + epoch3[key]) / 2)
    statistics = [key for key in epoch3 if key.endswith("running_mean")]
    assert statistics
    assert any(not torch.equal(averaged["state_dict"][k], epoch3[k]) for k in statistics)
    uninterrupted = load_checkpoint(tmp_path / "a" / "swa" / "swa.pt")["state_dict"]
    assert all(torch.equal(uninterrupted[k], averaged["state_dict"][k]) for k in uninterrupted)
    assert full["swa"]["count"] == 1
    assert math.isfinite(full["swa"]["keypoint_px"])
    assert averaged["metrics"]["ACC5"] == full["swa"]["ACC5"]
    # swa.pt carries the covariance scales its own validation fitted, and the estimator uses them
    estimator = PoseEstimator.from_checkpoint(run_dir / "swa.pt", device="cpu", warm_up=False)
    assert estimator.covariance_scales == CovarianceScales(
        full["swa"]["covariance_translation_scale"], full["swa"]["covariance_rotation_scale"], 1
    )

    heldout = tmp_path / "heldout"
    generate_dataset(
        "m2ed", 2, heldout, seed=5, workers=1, width=128, height=96, fractions=(0, 0, 1), progress=False
    )
    write_model_card(
        run_dir / "swa.pt", training_record(run_dir), heldout, tmp_path / "card" / "swa", "synth", "synth"
    )
    card = (tmp_path / "card" / "swa.md").read_text()
    assert "the average (SWA) of the weights at the end of epochs 2-3" in card
    assert "px median over in-image keypoints" in card


def test_cpu_bf16_on_a_cpu_without_native_bfloat16_warns(tiny_data, tmp_path, monkeypatch, caplog):
    """Emulated bfloat16 is about 10x slower than float32: a run that asks for it there is told so."""
    monkeypatch.setattr("drone_pose.train.preparation.native_cpu_bfloat16", lambda: False)
    with caplog.at_level("WARNING", logger="drone_pose.train.preparation"):
        prepare(config(tiny_data, tmp_path, "bf16", "cpu_bf16=true"))
    assert "no native bfloat16" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="drone_pose.train.preparation"):
        prepare(config(tiny_data, tmp_path, "fp32"))
    assert "bfloat16" not in caplog.text


def test_memory_format_and_cpu_bfloat16_steps(tiny_data, tmp_path):
    """channels_last changes the memory layout only, not the losses; bfloat16 autocast on CPU trains
    to nearly the same losses; a resumed run may switch either (how steps run, not what they learn)."""
    base = ("epochs=3", "optim.lr=1e-3")
    nhwc = train(config(tiny_data, tmp_path, "nhwc", *base), progress=False)
    nchw = train(config(tiny_data, tmp_path, "nchw", *base, "channels_last=false"), progress=False)
    assert losses(nhwc) == pytest.approx(losses(nchw), rel=1e-3)  # float summation order only
    bf16 = train(config(tiny_data, tmp_path, "bf16", *base, "cpu_bf16=true"), progress=False)
    assert all(math.isfinite(loss) for loss in losses(bf16))
    assert losses(bf16) == pytest.approx(losses(nhwc), rel=0.02)
    assert losses(bf16) != losses(nhwc)  # the autocast did run in bfloat16
    switched = train(
        config(tiny_data, tmp_path, "nchw", "epochs=4", "optim.lr=1e-3", "cpu_bf16=true"),
        resume=True,
        progress=False,
    )
    assert [row["epoch"] for row in switched["history"]] == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def heatmap_overfit(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("overfit")
    overrides = [
        "epochs=500",
        "optim.lr=3e-3",
        "optim.schedule=cosine",  # a step size that shrinks at the end: the last epochs settle
        "data.augment=false",
        "loss.heatmap=mse",
        "loss.foreground_weight=3",
        "data.val_split=train",
        "metric=keypoint_px",
    ]
    return out, train(config(tiny_data, out, "heatmap", *overrides), progress=False)


def test_heatmap_loss_overfits_a_few_images(heatmap_overfit):
    """l_h (foreground-weighted MSE, cosine lr) on 4 images: keypoint error on the training set below
    1 px, loss falling monotonically over the last epochs."""
    out, summary = heatmap_overfit
    assert summary["history"][-1]["keypoint_px"] < 1.0
    tail = losses(summary)[-10:]
    assert all(b < a for a, b in itertools.pairwise(tail))
    estimator = PoseEstimator.from_checkpoint(out / "heatmap" / "best.pt", device="cpu")
    assert estimator.description["metrics"]["keypoint_px"] < 1.0
    # best.pt carries the covariance scales its validation epoch fitted, and the estimator uses them
    best = next(r for r in summary["history"] if r["epoch"] == estimator.description["training"]["epoch"])
    assert estimator.covariance_scales == CovarianceScales(
        best["covariance_translation_scale"], best["covariance_rotation_scale"], 4
    )
    K = torch.tensor([[100.0, 0, 64], [0, 100.0, 48], [0, 0, 1]])
    result = estimator.estimate(np.zeros((96, 128, 3), np.uint8), K)  # a blank frame: no NaN pose
    assert torch.isfinite(result.R).all()
    assert torch.isfinite(result.t).all()


def test_pose_loss_fine_tunes_through_bpnp_and_overfits(heatmap_overfit, tiny_data, tmp_path):
    """l_p = l_reg + l_proj through the exact BPnP layer, started from the l_h weights (the study's
    two-phase recipe): the reprojection loss collapses, keypoints stay below 1 px, ACC5 improves."""
    out, heatmap_summary = heatmap_overfit
    overrides = [
        f"init={out / 'heatmap' / 'best.pt'}",
        "epochs=60",
        "optim.lr=5e-5",
        "optim.schedule=cosine",
        "data.augment=false",
        "loss.kind=pose",
        "loss.pnp=bpnp_exact",
        "data.val_split=train",
    ]
    summary = train(config(tiny_data, tmp_path, "pose", *overrides), progress=False)
    history = summary["history"]
    assert history[0]["l_proj"] > 5.0
    assert history[-1]["l_proj"] < 0.05
    assert history[-1]["keypoint_px"] < 1.0
    assert history[-1]["ACC5"] >= heatmap_summary["history"][-1]["ACC5"]
    tail = losses(summary)[-5:]
    assert all(b <= a for a, b in itertools.pairwise(tail)), tail


def test_init_starts_a_higher_hrnet_from_the_plain_hrnet_checkpoint(tiny_data, tmp_path):
    """HigherHRNet as in its paper: the HRNet part starts from an HRNet checkpoint, the added
    1/2-resolution module untrained; a checkpoint of another network is refused by name."""
    start = tiny_checkpoint(tmp_path / "hrnet.pt")
    trained = load_checkpoint(start)["state_dict"]
    higher = json.dumps({**TINY_NET, "higher": True})
    run = prepare(config(tiny_data, tmp_path, "higher", f"network={higher}", f"init={start}"))
    weights = run.predictor.network.state_dict()
    assert all(torch.equal(weights[name], value) for name, value in trained.items())
    assert any(name.startswith("final_higher.") for name in weights)
    lighter = json.dumps({**TINY_NET, "higher": True, "deconv_blocks": 1})
    run = prepare(config(tiny_data, tmp_path, "lighter", f"network={lighter}", f"init={start}"))
    weights = run.predictor.network.state_dict()
    assert all(torch.equal(weights[name], value) for name, value in trained.items())
    assert not any(name.startswith("deconv.4.") for name in weights)  # one BasicBlock, not four
    other = json.dumps({**TINY_NET, "stem_channels": 8})
    with pytest.raises(ValueError, match="different network"):
        prepare(config(tiny_data, tmp_path, "other", f"network={other}", f"init={start}"))
    # A module of another size is not a trunk: a HigherHRNet checkpoint starts only its own network.
    assert not initial_weights_fit(
        {**TINY_NET, "higher": True, "deconv_blocks": 2}, {**TINY_NET, "higher": True}
    )


def test_a_head_only_run_adds_the_silhouette_head_and_keeps_every_heatmap_bit_for_bit(tiny_data, tmp_path):
    """mask.head_only from a checkpoint without the head: the head learns (its loss falls), nothing
    else changes (weights, BatchNorm statistics, heatmaps), and best.pt is the init checkpoint's
    description with the head added and its training recorded."""
    start = tiny_checkpoint(tmp_path / "old.pt", (128, 96))
    checkpoint = load_checkpoint(start)
    checkpoint["pose_covariance"] = {"translation": 2.0, "rotation": 3.0, "samples": 7}
    start = save_checkpoint(checkpoint, start)
    masked = json.dumps({**TINY_NET, "mask_head": True})
    overrides = (f"network={masked}", f"init={start}", "mask.head_only=true", "metric=mask_IoU")
    summary = train(
        config(tiny_data, tmp_path, "head", *overrides, "epochs=3", "optim.lr=3e-3"), progress=False
    )
    l_mask = [row["l_mask"] for row in summary["history"]]
    assert l_mask[-1] < l_mask[0]
    assert all(math.isfinite(row["mask_IoU"]) for row in summary["history"])
    assert "l_h" not in summary["history"][0]
    best = load_checkpoint(tmp_path / "head" / "best.pt")
    assert best["network"]["mask_head"] is True
    assert best["pose_covariance"] == checkpoint["pose_covariance"]
    assert best["training"]["mask_head"]["mask"] == {"weight": 1.0, "head_only": True}
    assert "mask_IoU" in best["training"]["mask_head"]["validation"]
    for name, value in checkpoint["state_dict"].items():
        assert torch.equal(best["state_dict"][name], value), name
    old = PoseEstimator.from_checkpoint(start, device="cpu", warm_up=False)
    new = PoseEstimator.from_checkpoint(tmp_path / "head" / "best.pt", device="cpu", warm_up=False)
    images = np.random.default_rng(0).integers(0, 255, (2, 96, 128, 3), dtype=np.uint8)
    K = np.array([[120.0, 0.0, 64.0], [0.0, 120.0, 48.0], [0.0, 0.0, 1.0]])
    before, after = old.estimate(images, K), new.estimate(images, K)
    assert torch.equal(before.keypoints, after.keypoints)
    assert torch.equal(before.confidences, after.confidences)
    assert before.silhouette is None
    assert after.silhouette.probability.shape == (2, 24, 32)
    with pytest.raises(ConfigError, match=r"mask\.head_only: the network has no silhouette head"):
        prepare(config(tiny_data, tmp_path, "plain", f"init={start}", "mask.head_only=true"))
    with pytest.raises(ConfigError, match=r"mask\.head_only must be false without init"):
        config(tiny_data, tmp_path, "no_init", f"network={masked}", "mask.head_only=true")


def test_init_widens_a_narrower_hrnet_checkpoint_to_the_configs_widths(tiny_data, tmp_path):
    """A wider HRNet of the same layout starts from the narrower checkpoint computing about the same
    heatmaps (drone_pose.nets.widen), not from scratch."""
    start = tiny_checkpoint(tmp_path / "hrnet.pt")
    narrow = network_from_checkpoint(load_checkpoint(start), str(start)).eval()
    stage = {"modules": 1, "blocks": [1, 1], "channels": [24, 48]}
    wider = {**TINY_NET, "stem_channels": 24, "stages": [stage]}
    run = prepare(config(tiny_data, tmp_path, "wider", f"network={json.dumps(wider)}", f"init={start}"))
    wide = run.predictor.network.eval()
    assert wide.state_dict()["stem.0.0.weight"].shape[0] == 24
    images = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        expected, got = narrow(images)[-1], wide(images)[-1]
    assert float((got - expected).abs().max()) < 0.05 * float(expected.abs().max())
    fresh = build_network(wider).eval()
    with torch.no_grad():
        assert float((fresh(images)[-1] - expected).abs().max()) > 0.05 * float(expected.abs().max())


def test_data_mirror_flips_training_samples_of_a_symmetric_drone_only(tiny_data, tmp_path):
    """data.mirror gives the training augmentation the drone's left/right permutation; a drone without
    a mirror symmetry is refused before training, naming the key."""
    run = prepare(config(tiny_data, tmp_path, "mirror", "data.mirror=0.5"))
    augment = run.train_data.augment_config
    assert (augment.mirror_probability, augment.mirror_permutation) == (0.5, (0, 2, 1, 4, 3, 6, 5, 8, 7))
    drone = load_drone("m2ed")
    keypoints = drone.keypoints.copy()
    keypoints[1, 1] += 0.01  # front-left motor moved outwards: no mirror image among the keypoints
    lopsided = dataclasses.replace(drone, keypoints=keypoints)
    mirrored = config(tiny_data, tmp_path, "lopsided", "data.mirror=0.5")
    with pytest.raises(ConfigError, match=r"data\.mirror: m2ed is not mirror-symmetric"):
        augment_config(mirrored, lopsided)
    assert augment_config(config(tiny_data, tmp_path, "plain"), lopsided).mirror_probability == 0


def test_a_zoom_trained_run_asks_the_estimator_for_the_second_pass_and_resumes_older_states(
    tiny_data, tmp_path
):
    """zoom.probability > 0: the checkpoint carries input.zoom (its window: the training crop) and
    PoseEstimator runs that pass, with the run's flip test; a training state saved before the zoom
    section existed still resumes (the section at its default)."""
    zoomed = config(
        tiny_data,
        tmp_path,
        "zoomed",
        "epochs=1",
        "zoom={probability: 0.5, target_px: 40, max_zoom: 2}",
        "data.crop=[64, 48]",
        "flip_test=zoom",
    )
    train(zoomed, progress=False)
    best = tmp_path / "zoomed" / "best.pt"
    assert load_checkpoint(best)["input"]["zoom"] == {"target_px": 40.0, "max_zoom": 2.0, "window": [64, 48]}
    assert load_checkpoint(best)["input"]["flip_test"] == "zoom"
    trained_zoom = ZoomSettings(40.0, 2.0, window=(64, 48))
    estimator = PoseEstimator.from_checkpoint(best, device="cpu", warm_up=False)
    assert (estimator.zoom, estimator.flip_test) == (trained_zoom, "zoom")
    assert PoseEstimator.from_checkpoint(best, device="cpu", warm_up=False, zoom=None).zoom is None

    heldout = tmp_path / "heldout"
    generate_dataset(
        "m2ed", 4, heldout, seed=5, workers=1, width=128, height=96, fractions=(0, 0, 1), progress=False
    )
    figures = write_model_card(
        best,
        training_record(tmp_path / "zoomed"),
        heldout,
        tmp_path / "card" / "tiny",
        "synth ...",
        "synth heldout ...",
    )
    card = (tmp_path / "card" / "tiny.md").read_text()
    assert figures["zoom"] == {"target_px": 40.0, "max_zoom": 2.0, "window": [64, 48]}
    assert "re-run on a 64x48 window" in card
    assert "Valid (what `tracker_node` publishes)" in card
    assert set(figures["heldout_one_pass"]) >= {"ACC5", "ADD5", "keypoint_px"}
    assert set(figures["heldout_no_flip_test"]) >= {"ACC5", "ADD5", "keypoint_px"}
    assert "heldout/test, two passes, flip test |" in card
    assert "heldout/test, two passes |" in card
    assert "heldout/test, one pass |" in card
    assert "Flip test (input.flip_test: zoom)" in card
    assert "zoomed like the second pass" in card
    assert sum(row["count"] for row in figures["heldout"]["by_size"]) == 4
    assert "| drone size (px) | images | keypoint px |" in card
    assert figures["pose_covariance"] == load_checkpoint(best)["pose_covariance"]
    assert "PnP's covariance times the checkpoint's variance scales" in card
    assert "% of the poses lie inside their 95 % ellipsoid" in card

    # re-carding the shipped copy from its card (the run folder gone) keeps the training record
    recarded = write_model_card(
        tmp_path / "card" / "tiny.pt",
        card_training_record(tmp_path / "card" / "tiny.json"),
        heldout,
        tmp_path / "card" / "tiny",
        "synth ...",
        "synth heldout ...",
    )
    assert recarded["training"] == figures["training"]
    assert recarded["heldout"]["metrics"] == figures["heldout"]["metrics"]

    plain = config(tiny_data, tmp_path, "plain", "epochs=1")
    train(plain, progress=False)
    assert "zoom" not in load_checkpoint(tmp_path / "plain" / "best.pt")["input"]
    state_path = tmp_path / "plain" / "last.pt"
    state = torch.load(state_path, weights_only=True)
    del state["config"]["zoom"]  # as written before this section existed
    torch.save(state, state_path)
    resumed = train(config(tiny_data, tmp_path, "plain", "epochs=2"), resume=True, progress=False)
    assert [row["epoch"] for row in resumed["history"]] == [1, 2]


def test_distributed_data_parallel_under_torchrun(tiny_data, tmp_path):
    """Two CPU processes (gloo) through torchrun: one report, one run folder, checkpoints written."""
    import subprocess
    import sys

    network = json.dumps(TINY_NET)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "drone_pose.cli",
        "train",
        f"data.path={tiny_data}",
        f"output={tmp_path}",
        "name=ddp",
        "epochs=2",
        "batch_size=2",
        "data.workers=0",
        f"network={network}",
        "--no-progress",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.count('"run_dir"') == 1
    rows = list(csv.DictReader((tmp_path / "ddp" / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert (tmp_path / "ddp" / "best.pt").is_file()
    assert (tmp_path / "ddp" / "last.pt").is_file()


def test_reproduce_writes_measured_and_study_tables(tmp_path, capsys):
    from drone_pose.cli import main

    results = tmp_path / "results.md"
    arguments = [
        "reproduce",
        "--out",
        str(tmp_path / "work"),
        "--results",
        str(results),
        "--drones",
        "m2ed",
        "--tables",
        "3",
        "--epochs",
        "1",
        "--images",
        "10",
        "--width",
        "128",
        "--height",
        "96",
        "--network",
        json.dumps(TINY_NET),
        "--set",
        "data.workers=0",
        "--set",
        "batch_size=4",
        "--no-progress",
    ]
    assert main(arguments) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["runs"] == 3
    page = results.read_text()
    for label in ("l_h", "l_m", "l_p"):
        assert f"| m2ed | {label} | measured |" in page
        assert f"| m2ed | {label} | study |" in page
    assert "| m2ed | l_p | study | 0.012 | 0.026 | 95.20 | 98.36 | 90.29 | 96.81 | 98.05 | 99.14 |" in page
    assert '"epochs": 1' in page
    assert (tmp_path / "work" / "reports").is_dir()


def test_reproduce_starts_fitting_rows_from_init_and_reuses_finished_rows(tmp_path, capsys):
    """Table 4 with an HRNet checkpoint: HRNet and HigherHRNet start from it, the Hourglass from
    scratch, and the page says so; the same command again reuses the finished rows."""
    from drone_pose.cli import main

    start = tiny_checkpoint(tmp_path / "hrnet.pt")
    results = tmp_path / "results.md"
    arguments = [
        "reproduce",
        *("--out", str(tmp_path / "work"), "--results", str(results)),
        *("--drones", "m2ed", "--tables", "4", "--epochs", "1", "--images", "10"),
        *("--width", "128", "--height", "96", "--network", json.dumps(TINY_NET)),
        *("--set", "data.workers=0", "--set", "batch_size=4", "--no-progress"),
        *("--init", f"m2ed={start}"),
    ]
    assert main(arguments) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == 3
    page = results.read_text()
    assert "| m2ed | HRNet | measured, from hrnet.pt |" in page
    assert "| m2ed | HigherHRNet | measured, from hrnet.pt |" in page
    assert "| m2ed | Hourglass | measured |" in page
    assert "| m2ed | hrnet.pt |" in page  # the starting checkpoint's own figures on the test split
    assert "With 1 test images a percentage's 95 % sampling interval is up to +-98.0 points" in page
    hourglass_run = tmp_path / "work" / "runs" / "m2ed_hrnet_lh_hourglass" / "config.yaml"
    assert "network: hourglass_lite" in hourglass_run.read_text()  # scaled like the HRNet rows
    logs = sorted((tmp_path / "work" / "runs").glob("*/metrics.csv"))
    assert len(logs) == 3
    written = [log.stat().st_mtime_ns for log in logs]
    assert main(arguments) == 0
    assert [log.stat().st_mtime_ns for log in logs] == written
    assert results.read_text() == page


def test_reproduce_refuses_a_malformed_init(tmp_path, capsys):
    from drone_pose.cli import main

    assert main(["reproduce", "--out", str(tmp_path), "--init", "model.pt"]) == 2
    assert "DRONE=CHECKPOINT" in capsys.readouterr().err
    assert main(["reproduce", "--out", str(tmp_path), "--init", f"m2ed={tmp_path / 'missing.pt'}"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
