"""The shipped checkpoints' recipes are files: each stage names the previous stage's output through
`init:`, so `drone-pose train --config` reproduces every stage, and the last stage is what the model
card recorded."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import yaml

from drone_pose.inference.checkpoint import default_checkpoint
from drone_pose.train.config import TrainConfig, config_to_dict, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "config" / "train"
# stage files in order; the card of the last stage's output
TELLO_CHAIN = (
    "tello_small_zoom",
    "tello_small_zoom_stage2",
    "tello_small_zoom_stage3",
    "tello_small_zoom8",
    "tello_small_swa",
)
# Keys of the recorded run that depend on where and how it ran, not on the recipe.
RUN_LOCAL_KEYS = ("init", "output", "cpu_bf16", "amp", "channels_last", "log_every")


def test_each_tello_stage_starts_from_the_previous_stages_output():
    for previous, stage in itertools.pairwise(TELLO_CHAIN):
        raw = yaml.safe_load((CONFIG_DIR / f"{stage}.yaml").read_text())
        assert raw["name"] == stage
        assert raw["init"] == f"runs/{previous}/best.pt", stage
        assert f"{stage}.yaml" in (CONFIG_DIR / f"{TELLO_CHAIN[0]}.yaml").read_text()  # the chain is listed
    assert "init" not in yaml.safe_load((CONFIG_DIR / f"{TELLO_CHAIN[0]}.yaml").read_text())


def test_the_last_tello_stage_is_the_recipe_the_shipped_card_records(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "tello").mkdir(parents=True)
    last = load_config(CONFIG_DIR / f"{TELLO_CHAIN[-1]}.yaml", [f"init={default_checkpoint('tello')}"])
    card = json.loads((REPO_ROOT / "models" / "checkpoints" / "tello_hrnet_small.json").read_text())
    recorded = dict(card["training"]["config"])
    recipe = config_to_dict(last)
    # The one deliberate difference: the shipped run validated without the flip test and had it
    # written into the checkpoint afterwards by calibrate-covariance; the stage files validate
    # with it from the start, as the checkpoint is used.
    assert recorded.get("flip_test", "off") == "off"
    assert recipe["flip_test"] == "zoom"
    recipe["flip_test"] = "off"
    for key in RUN_LOCAL_KEYS:
        recorded.pop(key, None)
        recipe.pop(key, None)
    # keys added to the config since the run, at their defaults, were not recorded
    defaults = config_to_dict(TrainConfig())
    recorded = {key: recorded.get(key, defaults[key]) for key in recipe}
    recorded["data"] = {**defaults["data"], **recorded["data"], "path": "data/tello"}
    assert recipe == recorded
