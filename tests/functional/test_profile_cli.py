"""prepost profile put / list / show / delete, against the table as moto answers it."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from prepost.cli import app
from prepost.local.cloud import LocalCloud
from prepost.samples import EVENTS_DIR

runner = CliRunner()
SAMPLE = EVENTS_DIR / "profiles" / "nightly-db.json"


def test_profiles_are_validated_stored_shown_and_deleted(cloud: LocalCloud, tmp_path: Path) -> None:
    table = ["--table", cloud.table_name]
    stored = runner.invoke(app, ["profile", "put", "nightly-db", "--file", str(SAMPLE), *table])
    assert stored.exit_code == 0, stored.output
    assert "profile nightly-db stored" in stored.output
    assert "next slots: " in stored.output

    profile = cloud.store.get_profile("nightly-db")
    assert profile is not None
    assert profile.schedule is not None
    assert profile.schedule.time_zone == "Europe/Paris"
    assert profile.run_input() == json.loads(SAMPLE.read_text())["Input"]

    shown = runner.invoke(app, ["profile", "show", "nightly-db", *table])
    assert shown.exit_code == 0, shown.output
    assert "30 2 * * * (Europe/Paris)" in shown.output
    assert shown.output.count("T02:30:00+01:00") == 3  # the next three slots, Paris time

    again = runner.invoke(app, ["profile", "put", "nightly-db", "--file", str(SAMPLE), *table])
    assert "profile nightly-db replaced" in again.output
    listed = runner.invoke(app, ["profile", "list", *table])
    assert "nightly-db" in listed.output

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Input": {}, "Schedule": {"Cron": "every night"}}))
    refused = runner.invoke(app, ["profile", "put", "other", "--file", str(bad), *table])
    assert refused.exit_code == 2
    assert "invalid profile" in refused.output
    assert "Input.BackupDetails: is required" in refused.output
    assert "Schedule.Cron" in refused.output
    assert cloud.store.get_profile("other") is None

    deleted = runner.invoke(app, ["profile", "delete", "nightly-db", *table])
    assert deleted.exit_code == 0, deleted.output
    gone = runner.invoke(app, ["profile", "delete", "nightly-db", *table])
    assert gone.exit_code == 3
    assert "no profile 'nightly-db'" in gone.output
