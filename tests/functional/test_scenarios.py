"""Every shipped scenario runs, on a small fleet, to the outcome it promises."""

from __future__ import annotations

import json
import re

import pytest

from prepost.local.scenario import SCENARIOS_DIR, Scenario
from prepost.local.simulate import simulate, simulate_schedule

NAMES = sorted(path.stem for path in SCENARIOS_DIR.glob("*.json"))
SMALL_FLEET = 16  # enough for two members in each of eight consistency groups


def test_the_scenarios_the_issue_asks_for_are_shipped() -> None:
    assert set(NAMES) >= {
        "seed-example", "pre-script-fails-continue", "pre-script-fails-abort", "backup-fails",
        "lost-backup-events", "start-capacity", "consistency-groups-200",
    }  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_scenario_ends_as_it_says(name: str) -> None:
    scenario = Scenario.load(name)
    assert scenario.expect is not None, "a shipped scenario states its expected outcome"
    if scenario.schedule is not None:  # a profile's runs over virtual hours
        schedule = simulate_schedule(scenario, instances=min(scenario.fleet.count, 4))
        assert schedule.misses == []
        report = schedule.report
        assert report["status"] == scenario.expect.run
        days = int(scenario.schedule.hours // 24)
        assert [run["status"] for run in report["runs"]] == [scenario.expect.run] * days
        return
    result = simulate(scenario, instances=min(scenario.fleet.count, SMALL_FLEET))

    assert result.expect_checked
    assert result.misses == []
    assert result.report["status"] == scenario.expect.run
    statuses = {i["instance_id"]: i["status"] for i in result.report["instances"]}
    assert result.expected
    for instance_id, expected in result.expected.items():
        assert statuses[instance_id] == expected, instance_id


def test_unknown_scenario_names_the_known_ones() -> None:
    with pytest.raises(FileNotFoundError, match="seed-example"):
        Scenario.load("no-such-scenario")


def test_the_readme_example_scenario_is_valid() -> None:
    readme = (SCENARIOS_DIR.parents[1] / "README.md").read_text()
    blocks = [b for b in re.findall(r"```json\n(.*?)```", readme, re.S) if '"fleet"' in b]
    assert blocks
    for block in blocks:
        example = Scenario.model_validate(json.loads(block))
        assert simulate(example, instances=4).report["status"] == example.expect.run
