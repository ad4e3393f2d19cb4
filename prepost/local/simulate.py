"""Run a scenario on the local cloud and report what happened, in virtual time."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prepost.local import STAGE
from prepost.local.cloud import LocalCloud, stage_environment
from prepost.local.scenario import InputResources, Scenario, directory_of
from prepost.report import run_report, seconds_between

Progress = Callable[[LocalCloud, str | None], None]
WIDENED = f"{STAGE} (widened to the input)"


@dataclass
class Simulation:
    report: dict[str, Any]
    timeline: list[tuple[str, str]] = field(default_factory=list)  # (+HH:MM:SS, what)
    expected: dict[str, str] = field(default_factory=dict)  # instance id -> status
    # Where the run differs from the scenario's `expect`, one sentence each, e.g.
    # "run: expected SUCCEEDED, got FAILED"; empty when `expect` was not checked.
    misses: list[str] = field(default_factory=list)
    expect_checked: bool = False  # the scenario's own input ran and states an `expect`


def simulate(
    scenario: Scenario,
    instances: int | None = None,
    seed: int = 0,
    run_input: Any = None,
    store: str = "dynamodb",
    progress: Progress | None = None,
    stage: str | None = None,
) -> Simulation:
    """Run `scenario` (its fleet resized to `instances`) and report the run.

    The input is the scenario's own, or `run_input` (any JSON value) simulated as given:
    the local account holds the vault, buckets and backup role it names, and the fleet
    carries the tag it targets, or is exactly the instances it lists (`instances` is then
    ignored); what is not well-formed is left for the start handler to refuse. Under
    `stage` the allow lists and limits are that stage's, as deployed; without one, local
    mode's own, their allow lists widened to what `run_input` names (never the command
    policy: a command it refuses is refused). The report says which lists applied
    (`allow_lists`) and what was created (`provisioned`). The scenario's `expect` is
    checked (`misses`) only when its own input ran: another input may target other
    instances or mean another outcome. Instance and event ids and the scenario's random
    faults follow `seed`."""
    scenario = _resized(scenario, instances)
    detail = run_input if run_input is not None else scenario.run_input()
    resources = InputResources.of(detail)
    with _cloud(scenario, seed, store, stage) as cloud, _quiet():
        applied = stage or STAGE
        if stage is None:  # local mode's own stage takes any fleet it simulates (a deployed
            # stage's limit, PREPOST_MAX_INSTANCES_PER_RUN, is what its operator sets)
            limit = max(scenario.fleet.count, len(resources.target_ids), 1000)
            keys = {"PREPOST_MAX_INSTANCES_PER_RUN": str(limit)}
            widened = _widened(resources) if run_input is not None else {}
            if widened:
                applied = WIDENED
            cloud.configure_stage(**keys, **widened)
        ids = scenario.prepare(cloud, run_input)
        event = cloud.start_event(detail)
        cloud.publish(event)
        run_id: str | None = None
        while cloud.step(25):
            run_id = run_id or _run_id(cloud)
            if progress is not None:
                progress(cloud, run_id)
        run_id = run_id or _run_id(cloud)
        if run_id is None:
            raise RuntimeError("the run did not start; see the start handler's logs")
        document = report(cloud, run_id) | {
            "allow_lists": allow_lists(applied),
            "provisioned": resources.summary(),
        }
        checked = run_input is None and scenario.expect is not None
        return Simulation(
            report=document,
            timeline=timeline(cloud),
            expected=scenario.expected(ids) if checked else {},
            misses=scenario.misses(ids, document) if checked else [],
            expect_checked=checked,
        )


def _widened(resources: InputResources) -> dict[str, str]:
    """The allow lists of the current stage with what `resources` names added to them,
    where they lack it (only those lists)."""
    from chalicelib.dependencies import services
    from chalicelib.logic.policy import script_sources

    settings = services().settings
    prefixes = script_sources(settings)
    lists = {
        "PREPOST_ALLOWED_SCRIPT_SOURCES": (
            settings.allowed_script_sources,
            [
                directory_of(script)
                for script in resources.scripts
                if not any(script.is_under(allowed) for allowed in prefixes)
            ],
        ),
        "PREPOST_ALLOWED_OUTPUT_BUCKETS": (
            settings.allowed_output_buckets,
            resources.output_buckets,
        ),
        "PREPOST_ALLOWED_BACKUP_VAULTS": (settings.allowed_backup_vaults, resources.vaults),
        "PREPOST_ALLOWED_BACKUP_ROLES": (settings.allowed_backup_roles, resources.roles),
    }
    widened = {}
    for key, (allowed, named) in lists.items():
        missing = [name for name in dict.fromkeys(named) if name not in allowed]
        if missing:
            widened[key] = ",".join([*allowed, *missing])
    return widened


def allow_lists(stage: str) -> dict[str, Any]:
    """The allow lists and limits the run was checked against, as the app read them."""
    from chalicelib.dependencies import services

    settings = services().settings
    return {
        "stage": stage,
        "PREPOST_ALLOWED_SCRIPT_SOURCES": settings.allowed_script_sources,
        "PREPOST_ALLOWED_OUTPUT_BUCKETS": settings.allowed_output_buckets,
        "PREPOST_ALLOWED_BACKUP_VAULTS": settings.allowed_backup_vaults,
        "PREPOST_ALLOWED_BACKUP_ROLES": settings.allowed_backup_roles,
        "PREPOST_ALLOWED_COMMANDS": settings.allowed_commands,
        "PREPOST_OPT_IN_TAG": f"{settings.opt_in_tag_key}={settings.opt_in_tag_value}",
        "PREPOST_MAX_INSTANCES_PER_RUN": settings.max_instances_per_run,
    }


def simulate_schedule(
    scenario: Scenario,
    instances: int | None = None,
    seed: int = 0,
    store: str = "dynamodb",
    stage: str | None = None,
) -> Simulation:
    """Store the scenario's input as a scheduled profile, let its virtual hours pass with
    the scheduler ticking, and report every run (and missed slot) of the profile."""
    from chalicelib.clock import iso
    from chalicelib.models.profile import Profile

    spec = scenario.schedule
    if spec is None:
        raise ValueError("the scenario has no schedule")
    scenario = _resized(scenario, instances)
    with _cloud(scenario, seed, store, stage) as cloud, _quiet():
        scenario.prepare(cloud)
        document = spec.document(scenario.run_input())
        cloud.store.put_profile(
            Profile.from_document(spec.profile, document, iso(cloud.clock.now()))
        )
        cloud.pass_time(spec.hours * 3600)
        ids = {e["detail"]["run_id"] for e in cloud.emitted if "run_id" in e["detail"]}
        found = [cloud.store.get_run(run_id) for run_id in ids]
        runs = sorted(
            (run for run in found if run is not None and run.profile == spec.profile),
            key=lambda run: run.slot or run.created_at,
        )
        rows = [
            {
                "run_id": run.run_id,
                "slot": run.slot,
                "status": str(run.status),
                "reason": run.reason,
                "counts": run.counts,
                "duration_seconds": seconds_between(run.created_at, run.finished_at),
            }
            for run in runs
        ]
        fine = bool(rows) and all(row["status"] == "SUCCEEDED" for row in rows)
        status = "SUCCEEDED" if fine else "COMPLETED_WITH_ERRORS"
        expect, misses = scenario.expect, []
        if expect is not None and status != expect.run:
            misses.append(f"run: expected {expect.run}, got {status}")
        if expect is not None:
            misses += [
                f"run {row['run_id']} (slot {row['slot']}): expected {expect.run}, "
                f"got {row['status']}"
                for row in rows
                if row["status"] != expect.run
            ]
        return Simulation(
            report={
                "profile": spec.profile,
                "schedule": f"{spec.cron} ({spec.time_zone})",
                "virtual_hours": spec.hours,
                "status": status,
                "runs": rows,
                "lambda_invocations": sum(cloud.invocations.values()),
                "aws_calls": aws_calls(cloud),
                "allow_lists": allow_lists(stage or STAGE),
            },
            timeline=timeline(cloud),
            misses=misses,
            expect_checked=expect is not None,
        )


def _resized(scenario: Scenario, instances: int | None) -> Scenario:
    if instances is None:
        return scenario
    fleet = scenario.fleet.model_copy(update={"count": instances})
    return scenario.model_copy(update={"fleet": fleet})


def _cloud(scenario: Scenario, seed: int, store: str, stage: str | None) -> LocalCloud:
    """The local cloud of a simulation, its ids (instances, events, jobs) drawn from
    `seed`; KeyError for a stage `.chalice/config.json` lacks."""
    if stage is None:
        return LocalCloud(behaviour=scenario.behaviour(seed), store=store, seed=seed)
    stage_environment(stage)  # an unknown stage fails here, before anything starts
    return LocalCloud(behaviour=scenario.behaviour(seed), store=store, stage=stage, seed=seed)


def aws_calls(cloud: LocalCloud) -> dict[str, int]:
    """How many calls of each `service:Operation` the app's handlers made."""
    made = Counter(f"{service}:{operation}" for _, service, operation, _ in cloud.handler_calls)
    return dict(sorted(made.items()))


def _run_id(cloud: LocalCloud) -> str | None:
    for event in cloud.emitted:
        if event["detail-type"] in ("PrePostBackup Run Started", "PrePostBackup Run Completed"):
            return str(event["detail"]["run_id"])
    return None


def report(cloud: LocalCloud, run_id: str) -> dict[str, Any]:
    """One JSON document: the run and, per instance, each phase's status and reason."""
    run = cloud.store.get_run(run_id)
    if run is None:
        raise LookupError(f"no run {run_id} in the local table")
    instances, groups = cloud.store.list_instances(run_id), cloud.store.list_groups(run_id)
    return run_report(run, instances, groups) | {
        "virtual_duration_seconds": seconds_between(run.created_at, run.finished_at),
        "lambda_invocations": sum(cloud.invocations.values()),
        "aws_calls": aws_calls(cloud),
    }


def timeline(cloud: LocalCloud) -> list[tuple[str, str]]:
    """What happened, condensed: the app's events and its side effects, in virtual time."""
    lines: list[tuple[str, str, int]] = []
    for when, what in cloud.timeline:
        if what.startswith("event prepost-backup"):
            text = what.removeprefix("event prepost-backup ").replace("PrePostBackup ", "")
        elif what.startswith("call ") and not what.split(":")[1].startswith(
            ("Describe", "Get", "List", "RunInstances", "PutEvents", "SendMessage")
        ):
            text = what.removeprefix("call ")
        elif what.startswith(("lost", "crash", "error", "late", "image ", "volume ")):
            text = what
        elif what.startswith("capture poll"):
            text = "capture poll"
        else:
            continue
        text = re.sub(r" ?run_id=\S+", "", text)
        stamp = _elapsed(cloud.clock.started, when)
        if lines and lines[-1][:2] == (stamp, text):
            lines[-1] = (stamp, text, lines[-1][2] + 1)
            continue
        lines.append((stamp, text, 1))
    return [(stamp, text + (f" x{n}" if n > 1 else "")) for stamp, text, n in lines]


def _elapsed(start: datetime, moment: datetime) -> str:
    seconds = int((moment - start).total_seconds())
    return f"+{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@contextmanager
def _quiet() -> Iterator[None]:
    """No app logs or metrics on the terminal while a local run prints its own account."""
    from chalicelib import observability

    logger, metrics_flag = observability.logger(), os.environ.get("POWERTOOLS_METRICS_DISABLED")
    level = logger.log_level
    logger.setLevel("ERROR")
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    try:
        yield
    finally:
        logger.setLevel(level)
        if metrics_flag is None:
            os.environ.pop("POWERTOOLS_METRICS_DISABLED", None)
        else:
            os.environ["POWERTOOLS_METRICS_DISABLED"] = metrics_flag
