"""The documentation stays true: every `drone-pose` command it names runs `--help`, every command
is documented, and the node reference lists exactly the node's parameters, topics and rejections."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from drone_pose.cli import build_parser, main
from drone_pose.ros.fusion_parameters import FUSION_PARAMETERS
from drone_pose.ros.tracker_parameters import TRACKER_PARAMETERS

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250


def subcommands() -> set[tuple[str, ...]]:
    """Every `drone-pose` command the parser knows, as argument tuples (bench's as pairs)."""
    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    found = set()
    for name, sub in commands.choices.items():
        nested = [a for a in sub._actions if a.dest == "target"]
        found |= {(name, target) for target in nested[0].choices} if nested else {(name,)}
    return found


def named_commands() -> set[tuple[str, ...]]:
    """The commands the README and docs name as `drone-pose <command>` (bench with its target);
    AssertionError for a name that is no command (a misspelling in the docs)."""
    known = subcommands()
    firsts = {command[0] for command in known}
    named, unknown = set(), []
    for document in DOCUMENTS:
        text = document.read_text()
        for first, second in re.findall(r"drone-pose ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", text):
            if first not in firsts:
                unknown.append(f"{document.name}: drone-pose {first}")
            elif first == "bench":
                if (first, second) not in known:
                    unknown.append(f"{document.name}: drone-pose bench {second}")
                named.add((first, second))
            else:
                named.add((first,))
    assert not unknown, unknown
    return named


def test_the_readme_is_a_front_door():
    assert len((REPO_ROOT / "README.md").read_text().splitlines()) <= README_MAX_LINES


def test_every_command_is_documented():
    named = named_commands()
    missing = sorted(" ".join(c) for c in subcommands() - named)
    assert not missing, f"not named in README.md or docs/: {missing}"
    cli_page = (REPO_ROOT / "docs" / "cli.md").read_text()
    for command in subcommands():
        assert f"drone-pose {' '.join(command)}" in cli_page, command


@pytest.mark.parametrize("command", sorted(named_commands()), ids=" ".join)
def test_every_named_command_answers_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: drone-pose" in capsys.readouterr().out


def node_reference_rows(page: str = "tracker_node.md") -> dict[str, list[str]]:
    """A node page's parameter table: name -> [default, range, run-time, description]."""
    text = (REPO_ROOT / "docs" / page).read_text()
    header = "| parameter | default | range | run-time | description |"
    assert header in text
    rows = {}
    for line in text.split(header, 1)[1].splitlines()[2:]:
        if not line.startswith("| `"):
            break
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def yaml_text(value: object) -> str:
    """A default as the docs and tracker.yaml write it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return '""' if value == "" else str(value)


@pytest.mark.parametrize(
    ("page", "table"), [("tracker_node.md", TRACKER_PARAMETERS), ("fusion_node.md", FUSION_PARAMETERS)]
)
def test_the_node_reference_lists_every_parameter_with_its_default(page, table):
    rows = node_reference_rows(page)
    assert list(rows) == [spec.name for spec in table]
    for spec in table:
        default, documented_range, runtime, description = rows[spec.name]
        assert default.strip("`") == yaml_text(spec.default), spec.name
        if spec.range is not None:  # the documented interval is the declared one
            numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?(?:e\d+)?", documented_range)]
            assert numbers == list(spec.range), (spec.name, documented_range)
            assert ("> 0" in documented_range) == spec.positive, (spec.name, documented_range)
        assert runtime == ("yes" if spec.runtime else "no"), spec.name
        assert description


def test_the_node_reference_names_every_topic_and_rejection():
    from drone_pose.ros.tracker_node import INPUT_REJECTIONS

    text = (REPO_ROOT / "docs" / "tracker_node.md").read_text()
    for topic in (
        "image",
        "image/compressed",
        "camera_info",
        "pose",
        "pose_with_covariance",
        "/tf",
        "marker",
        "overlay",
        "/diagnostics",
    ):
        assert f"`{topic}`" in text, topic
    for reason in (*INPUT_REJECTIONS, "low_confidence", "high_reprojection_error", "uncertain_pose"):
        assert f"`{reason}`" in text, reason


def test_the_fusion_node_reference_names_every_topic_and_rejection():
    from drone_pose.ros.fusion_node import CAMERA_REJECTIONS

    text = (REPO_ROOT / "docs" / "fusion_node.md").read_text()
    for topic in ("<camera>/camera_info", "pose", "pose_with_covariance", "/tf", "marker", "/diagnostics"):
        assert f"`{topic}`" in text, topic
    for reason in (*CAMERA_REJECTIONS, "no_usable_view", "views_gated"):
        assert f"`{reason}`" in text, reason
