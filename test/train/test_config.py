"""Training configs: every shipped experiment loads; bad configs fail before training, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from drone_pose.cli import main
from drone_pose.train.config import ConfigError, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "config" / "train").glob("*.yaml"))


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "data" / "m2ed").mkdir(parents=True)
    (tmp_path / "data" / "tello").mkdir(parents=True)
    return tmp_path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_experiments_load_with_the_study_defaults(path, data_dir, monkeypatch):
    """The study's experiments keep its defaults; the light CPU recipes of the shipped checkpoints
    deviate on purpose (shorter, smaller batches, training windows, foreground weighting)."""
    monkeypatch.chdir(data_dir)
    init = yaml.safe_load(path.read_text()).get("init")
    if init is not None:  # a recipe stage starts from the previous stage's output
        (data_dir / init).parent.mkdir(parents=True, exist_ok=True)
        (data_dir / init).touch()
    config = load_config(path)
    assert config.name == path.stem
    if "_lite_" in path.stem or "_small_" in path.stem:
        assert (config.seed, config.batch_size, config.data.crop) == (1989, 16, (192, 160))
        # a silhouette-head recipe trains the head alone: the heatmap loss is not computed
        assert config.loss.foreground_weight == 10.0 or config.mask.head_only
    else:
        assert (config.seed, config.epochs, config.batch_size) == (1989, 44, 24)
    assert config.optim.betas == (0.9, 0.999)
    assert config.optim.weight_decay == 0.0


def test_overrides_and_yaml_numbers(data_dir):
    config = load_config(
        None,
        [
            f"data.path={data_dir / 'data' / 'm2ed'}",
            "optim.lr=3e-4",
            "loss.kind=pose",
            "network={architecture: hourglass, heatmaps: 9}",
        ],
    )
    assert config.optim.lr == pytest.approx(3e-4)
    assert config.loss.kind == "pose"
    assert config.network == {"architecture": "hourglass", "heatmaps": 9}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lossx.kind=pose"], "unknown key lossx"),
        (["loss.kindd=pose"], "unknown key loss.kindd"),
        (["epochs=ten"], "epochs must be an integer"),
        (["loss.beta=[1]"], "loss.beta must be a number"),
        (["amp=maybe"], "amp must be true or false"),
        (["loss.kind=magic"], "loss.kind must be one of"),
        (["optim.betas=[0.9]"], "optim.betas must be a list of 2"),
        (["data.path=/no/such/folder"], "data.path: dataset folder not found"),
        (["metric=speed"], "metric must be one of"),
        (["zoom.probability=1.5"], r"zoom\.probability must be in \[0, 1\]"),
        (["zoom.max_zoom=0.5"], r"zoom\.max_zoom must be at least 1"),
        (["epochs=3", "swa.start_epoch=4"], r"swa\.start_epoch must be in \[0, epochs\]"),
        (["swa.bn_batches=0"], r"swa\.bn_batches must be at least 1"),
        (["flip_test=mirror"], "flip_test must be one of"),
        (["data.mirror=1.5"], r"data\.mirror must be in \[0, 1\]"),
        (["data.mirror=0.5", "data.augment=false"], r"data\.mirror must be 0 when data\.augment is false"),
        (["flip_test=zoom"], "flip_test must be off or all when the run does not train for the second pass"),
        (["epochs"], "must look like key.sub=value"),
    ],
)
def test_bad_configs_name_the_key(overrides, message, data_dir):
    base = [f"data.path={data_dir / 'data' / 'm2ed'}"]
    with pytest.raises(ConfigError, match=message):
        load_config(None, base + overrides)


def test_missing_dataset_fails_in_the_command_before_training(tmp_path, capsys):
    assert main(["train", f"output={tmp_path}"]) == 2
    assert "set exactly one of data.path" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
