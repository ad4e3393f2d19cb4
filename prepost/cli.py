"""The `prepost` command: operator tooling, not deployed."""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from prepost.errors import EXIT_INTERNAL, EXIT_NOT_SUCCEEDED, EXIT_USAGE, CliError, UsageError
from prepost.local import MAX_FLEET
from prepost.report import run_report

app = typer.Typer(help="prepost-backup operator tooling.", no_args_is_help=True)
# Documents and tables go to stdout; messages, errors and progress to stderr. Rich assumes
# 80 columns when output is not a terminal (CI logs, `make demo | tee`): tables are printed
# as wide as they need there (`_print_table`), never cut.
console = Console(width=None if sys.stdout.isatty() else 120)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 120)

STATUS_STYLE = {
    "SUCCEEDED": "green",
    "COMPLETED_WITH_ERRORS": "yellow",
    "SKIPPED": "dim",
    "IN_PROGRESS": "cyan",
    "PENDING": "dim",
}
SHORT = {"SUCCEEDED": "ok", "SKIPPED": "skipped", "IN_PROGRESS": "running"}
MAX_ROWS = 20  # larger fleets are shown per group, and at most this many groups


@app.callback()
def _commands() -> None:
    """prepost-backup operator tooling."""


def _local_mode() -> None:
    """Before a local run: the app's log lines are not the command's output, so stdout
    holds only the documents and tables, whatever the run logs."""
    from chalicelib import observability

    observability.log_to("stderr")


class Output(StrEnum):
    table = "table"
    json = "json"


OutputOption = Annotated[
    Output,
    typer.Option(
        "--output",
        "-o",
        case_sensitive=False,
        help="table (for people) or json (one document on stdout).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="The same as --output json.")]


def _json(output: Output, as_json: bool) -> bool:
    return as_json or output is Output.json


def _document(document: Any) -> None:
    """One JSON document on stdout, nothing else."""
    print(json.dumps(document, indent=2, default=str))


@contextmanager
def _errors_said() -> Iterator[None]:
    """An operator's error as its one sentence on stderr and its exit code."""
    try:
        yield
    except CliError as exc:
        _say_error(str(exc))
        raise typer.Exit(exc.exit_code) from exc


def _say_error(message: str) -> None:
    """On stderr as it is: never wrapped, so that one sentence stays one line."""
    print(f"prepost: {message}", file=sys.stderr)


@app.command()
def demo(output: OutputOption = Output.table, as_json: JsonOption = False) -> None:
    """Back up a simulated fleet of five with the seed README's example input, locally."""
    as_document = _json(output, as_json)
    _simulate(
        "seed-example", instances=5, seed=0, input_file=None, as_json=as_document,
        show_timeline=not as_document, store="dynamodb", stage=None,
    )  # fmt: skip


ScenarioArgument = Annotated[
    str, typer.Argument(help="A scenario name in events/scenarios/, or a file.")
]
InputOption = Annotated[Path | None, typer.Option("--input", help="A run input JSON file.")]


class Store(StrEnum):
    dynamodb = "dynamodb"
    memory = "memory"


StoreOption = Annotated[
    Store, typer.Option(help="dynamodb (moto's) or memory (faster, for big fleets).")
]


@app.command()
def simulate(
    scenario: ScenarioArgument = "seed-example",
    input_file: InputOption = None,
    instances: Annotated[int | None, typer.Option(min=1, max=MAX_FLEET, help="Fleet size.")] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the scenario's random faults and of the instance ids.")
    ] = 0,
    output: OutputOption = Output.table,
    as_json: JsonOption = False,
    show_timeline: Annotated[bool, typer.Option("--timeline", help="Print the timeline.")] = False,
    store: StoreOption = Store.dynamodb,
    stage: Annotated[
        str | None,
        typer.Option(
            help="Apply this stage of .chalice/config.json (allow lists, limits) as deployed."
        ),
    ] = None,
) -> None:
    """Run a scenario on a simulated fleet, locally; exit code 0 only if it SUCCEEDED (and
    met the scenario's expectations)."""
    _simulate(scenario, instances, seed, input_file, _json(output, as_json), show_timeline,
              store.value, stage)  # fmt: skip


def _simulate(
    scenario_name: str,
    instances: int | None,
    seed: int,
    input_file: Path | None,
    as_json: bool,
    show_timeline: bool,
    store: str,
    stage: str | None,
) -> None:
    from prepost.documents import read_object

    with _errors_said():  # what the command line names, checked before local mode loads
        run_input = read_object(input_file) if input_file is not None else None
        if stage is not None and stage not in _stages():
            raise UsageError(f"no stage {stage!r} in .chalice/config.json")
        scenario = _scenario(scenario_name)
    _local_mode()
    if scenario.schedule is not None:  # a scheduled profile over virtual hours
        _simulate_schedule(scenario, instances, seed, run_input, as_json, store, stage)
        return
    from prepost.local.simulate import simulate as run

    if as_json:
        result = run(scenario, instances, seed, run_input, store, stage=stage)
    else:
        console.print(f"[bold]{scenario.description}[/]")
        with _LiveView() as view:
            result = run(
                scenario, instances, seed, run_input, store, progress=view.update, stage=stage
            )
    misses: list[str] = list(result.misses)
    if as_json:
        _document(result.report | {"expect_misses": misses})
    else:
        if show_timeline:
            _print_timeline(result.timeline)
        _print_report(result.report)
        _print_allow_lists(result.report.get("allow_lists"))
        _print_misses(misses)
    failed = result.report["status"] != "SUCCEEDED" or misses
    raise typer.Exit(EXIT_NOT_SUCCEEDED if failed else 0)


def _simulate_schedule(
    scenario: Any,
    instances: int | None,
    seed: int,
    run_input: dict[str, Any] | None,
    as_json: bool,
    store: str,
    stage: str | None,
) -> None:
    from prepost.local.simulate import simulate_schedule

    if run_input is not None:  # the input given is the profile's, refused as `profile put` would
        from pydantic import ValidationError

        from chalicelib.models.run_input import RunInput, validation_messages

        try:
            RunInput.model_validate(run_input)
        except ValidationError as exc:
            _say_error("\n".join(["invalid run input for a profile:",
                                   *validation_messages(exc)]))  # fmt: skip
            raise typer.Exit(EXIT_USAGE) from exc
        scenario = scenario.model_copy(update={"input": run_input, "input_changes": {}})
    with _errors_said():
        result = simulate_schedule(scenario, instances, seed, store, stage)
    misses: list[str] = list(result.misses)
    if as_json:
        _document(result.report | {"expect_misses": misses})
    else:
        _print_schedule_report(scenario.description, result.report)
        _print_misses(misses)
    failed = result.report["status"] != "SUCCEEDED" or misses
    raise typer.Exit(EXIT_NOT_SUCCEEDED if failed else 0)


def _print_misses(misses: list[str]) -> None:
    """Each way the run missed its scenario's `expect`."""
    for miss in misses:
        console.print(f"expectation missed: {miss}", style="red", markup=False, soft_wrap=True)


def _scenario(name: str) -> Any:
    """The scenario `name` names (a shipped one, or a file); UsageError if there is none."""
    from prepost.local.scenario import Scenario

    try:
        return Scenario.load(name)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    except ValueError as exc:  # not JSON, or not a scenario
        raise UsageError(f"{name} is not a scenario: {_first_line(exc)}") from exc


def _stages() -> set[str]:
    """The stages `.chalice/config.json` defines."""
    from prepost.local import ROOT

    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    return set(config.get("stages", {}))


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0]


def _print_allow_lists(lists: dict[str, Any] | None) -> None:
    """Which allow lists the simulated deployment applied (README, Local mode)."""
    if not lists:
        return
    console.print(f"allow lists applied: {lists.get('stage', '?')}", style="dim", soft_wrap=True)
    for key, values in lists.items():
        if key != "stage":
            shown = ", ".join(values) if isinstance(values, list) else str(values)
            line = f"  {key}: {shown or '(none)'}"
            console.print(line, style="dim", markup=False, soft_wrap=True)


def _print_schedule_report(description: str, report: dict[str, Any]) -> None:
    console.print(f"[bold]{description}[/]")
    listing = Table(
        title=f"profile {report['profile']}: {report['schedule']}, "
        f"{report['virtual_hours']:g} virtual hours"
    )
    for column in ("slot", "run", "status", "instances", "took", "reason"):
        listing.add_column(column)
    for row in report["runs"]:
        counts = ", ".join(f"{s} {n}" for s, n in sorted(row["counts"].items()))
        took = row["duration_seconds"]
        listing.add_row(row["slot"] or "", row["run_id"], _style(row["status"]), counts,
                        f"{took / 60:.0f} min" if took is not None else "",
                        row["reason"] or "")  # fmt: skip
    _print_table(listing)
    console.print(f"{len(report['runs'])} slots, {report['lambda_invocations']} Lambda "
                  f"invocations; overall: {_style(report['status'])}")  # fmt: skip


class _LiveView:
    """A bar for the run and a row per group: the phase it is in."""

    def __init__(self) -> None:
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} group phases"),
            console=errors,
        )
        self._task = self._bar.add_task("run", total=None)
        self._groups = Table(show_header=True, header_style="bold", box=None)
        self._live = Live(Group(self._bar, self._groups), console=errors, transient=True)

    def __enter__(self) -> _LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)

    def update(self, cloud: Any, run_id: str | None) -> None:
        if run_id is None:
            return
        run = cloud.store.get_run(run_id)
        groups = cloud.store.list_groups(run_id)
        if run is None or not run.plan or not groups:
            return
        order = [str(p) for p in run.plan] + ["DONE"]
        done = sum(order.index(g.phase) for g in groups)
        self._bar.update(
            self._task,
            total=len(groups) * len(run.plan),
            completed=done,
            description=f"run {run_id} [{cloud.clock.elapsed()} simulated]",
        )
        table = Table(show_header=True, header_style="bold", box=None)
        table.add_column("group")
        table.add_column("members", justify="right")
        table.add_column("phase")
        for group in groups[:MAX_ROWS]:
            table.add_row(group.label, str(group.size), f"{group.phase} {group.phase_state}")
        if len(groups) > MAX_ROWS:
            table.add_row(f"... {len(groups) - MAX_ROWS} more groups", "", "")
        self._live.update(Group(self._bar, table))


@app.command()
def bench(
    scenario: ScenarioArgument = "seed-example",
    sizes: Annotated[str, typer.Option(help="Fleet sizes, comma-separated.")] = "10,100,1000,10000",
    output: OutputOption = Output.table,
    as_json: JsonOption = False,
) -> None:
    """What a run costs per instance, and its largest handler invocation and hottest item,
    measured locally, beside the polling design's model."""
    fleet_sizes = _fleet_sizes(sizes)
    with _errors_said():
        _scenario(scenario)
    _local_mode()
    from prepost.local.bench import measure

    results = []
    for size in fleet_sizes:
        errors.print(f"running {scenario} on {size} instances ...", highlight=False)
        results.append(measure(size, scenario))
    if _json(output, as_json):
        _document({"scenario": scenario, "sizes": [r.document() for r in results]})
        return
    _bench_table(scenario, results)


def _held(window: dict[str, int] | None) -> str:
    return "-" if window is None else f"{_duration(window['median'])} / {_duration(window['max'])}"


def _fleet_sizes(text: str) -> list[int]:
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or not 1 <= int(part) <= MAX_FLEET:
            _usage_error(
                f"--sizes takes whole numbers of instances (1 to {MAX_FLEET}), not {part!r}"
            )
        sizes.append(int(part))
    if not sizes:
        _usage_error("--sizes names no fleet size")
    return sizes


def _usage_error(sentence: str) -> None:
    _say_error(sentence)
    raise typer.Exit(EXIT_USAGE)


def _bench_table(scenario: str, results: list[Any]) -> None:
    table = Table(title=f"cost of one run of {scenario}, per instance unless stated")
    table.add_column("")
    for result in results:
        table.add_column(f"{result.instances} instances", justify="right")
    table.add_column("seed's polling design (model)", justify="right")
    seed = results[0].seed_model

    def row(label: str, values: list[str], seed_value: str = "") -> None:
        table.add_row(label, *values, seed_value)

    row("run status", [r.status for r in results])
    row("wall seconds (whole run)", [f"{r.wall_seconds:.1f}" for r in results])
    row("virtual duration", [_duration(r.virtual_seconds) for r in results],
        _duration(results[0].virtual_seconds))  # fmt: skip
    row("Lambda invocations (scheduled ticks included)",
        [f"{r.invocations_per_instance:.2f}" for r in results],
        f"{seed['lambda_invocations']:.0f}")  # fmt: skip
    row("Step Functions state transitions", ["0" for _ in results],
        f"{seed['state_transitions']:.0f}")  # fmt: skip
    row("AWS calls (all, state table included)",
        [f"{r.aws_calls_per_instance:.2f}" for r in results])  # fmt: skip
    row("DynamoDB reads", [f"{r.dynamodb_reads_per_instance:.1f}" for r in results], "0")
    row("DynamoDB writes (items)", [f"{r.dynamodb_writes_per_instance:.1f}" for r in results], "0")
    for held in ("frozen", "stopped"):
        if any(held in r.windows for r in results):
            row(f"{held} window per instance (median / max)",
                [_held(r.windows.get(held)) for r in results],
                _duration(int(seed[f"{held}_seconds"])))  # fmt: skip
    row("DynamoDB capacity units (RCU + WCU)",
        [f"{r.capacity_units_per_instance.get('read', 0):.1f} + "
         f"{r.capacity_units_per_instance.get('write', 0):.1f}" for r in results])  # fmt: skip
    polling = [
        sum(n for op, n in r.calls_per_instance.items()
            if op.split(":")[1].startswith(("Describe", "Get")) and not op.startswith("dynamodb"))
        for r in results
    ]  # fmt: skip
    row("AWS polling calls (Describe*, Get*)", [f"{n:.2f}" for n in polling],
        f"{seed['describe_calls']:.0f}")  # fmt: skip
    row("per run:", ["" for _ in results])
    row("  most AWS calls in one invocation",
        [f"{r.max_aws_calls_per_invocation} ({r.busiest_handler})" for r in results])  # fmt: skip
    row("  longest invocation (estimated s)",
        [f"{r.longest_invocation_seconds:.1f} ({r.longest_handler})" for r in results])  # fmt: skip
    row("  most writes to one item in a phase",
        [f"{r.max_writes_per_item_per_phase} ({r.hottest_item})" for r in results])  # fmt: skip
    row("  largest item (bytes, whole table)", [str(r.largest_item_bytes) for r in results])
    row("AWS API calls by operation:", ["" for _ in results])
    for operation in sorted({op for r in results for op in r.calls_per_instance}):
        row(f"  {operation}", [f"{r.calls_per_instance.get(operation, 0):.2f}" for r in results])
    _print_table(table)
    console.print(
        "The seed column models its design (1 s between script polls, 10 s between instance "
        "and backup polls, each poll a Lambda invocation, a Describe call and 3 state "
        "transitions) for the same durations; it is not a measurement. Durations are "
        "estimated from assumed call latencies (prepost/local/ledger.py).",
        style="dim",
    )


TableOption = Annotated[
    str | None, typer.Option("--table", help="The state table (default: $PREPOST_TABLE_NAME).")
]
BusOption = Annotated[
    str,
    typer.Option(
        "--bus",
        envvar="PREPOST_EVENT_BUS_NAME",
        help="The event bus of the deployment (its PREPOST_EVENT_BUS_NAME).",
    ),
]
# As in the AWS CLI: a named profile of the AWS config files, and the Region.
RegionOption = Annotated[
    str | None,
    typer.Option(
        "--region",
        help="The AWS Region (default: AWS_REGION, AWS_DEFAULT_REGION, the profile's).",
    ),
]
AwsProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile", help="A named profile of your AWS config files (default: AWS_PROFILE)."
    ),
]


def _aws(region: str | None, profile: str | None) -> Any:
    """The session every command that talks to AWS uses (`prepost.operator.connect`)."""
    from prepost.operator import connect

    return connect(region, profile)


@app.command()
def start(
    input_file: Annotated[
        Path,
        typer.Option(
            "--input", help='The run input JSON file, or a profile reference {"Profile": name}.'
        ),
    ],
    bus: BusOption = "default",
    region: RegionOption = None,
    profile: AwsProfileOption = None,
    output: OutputOption = Output.table,
    as_json: JsonOption = False,
) -> None:
    """Start a run on AWS: put the start event (the input is checked first)."""
    from prepost.operator import start as put_start
    from prepost.operator import start_detail

    with _errors_said():
        detail = start_detail(input_file)
        event_id, run_id = put_start(_aws(region, profile), detail, bus)
    if _json(output, as_json):
        _document({"event_id": event_id, "run_id": run_id, "bus": bus})
        return
    console.print(f"start event {event_id} put; run id [bold]{run_id}[/]")
    console.print(f"follow it with: prepost status {run_id}")


@app.command()
def status(
    run_id: str,
    table: TableOption = None,
    region: RegionOption = None,
    profile: AwsProfileOption = None,
    output: OutputOption = Output.table,
    as_json: JsonOption = False,
) -> None:
    """Show a run on AWS: its status and, per instance, each phase."""
    from prepost.operator import status as read_status
    from prepost.operator import table_name

    with _errors_said():
        name = table_name(table)
        run, instances, groups = read_status(_aws(region, profile), run_id, name)
    report = run_report(run, instances, groups)
    if _json(output, as_json):
        _document(report)
        return
    _print_report(report, simulated=False)
    _print_phase_timeline(report["timeline"])
    console.print(f"created {run.created_at}, finished {run.finished_at or '(running)'}"
                  + (f", profile {run.profile}" if run.profile else ""))  # fmt: skip


@app.command()
def runs(
    table: TableOption = None,
    limit: Annotated[int, typer.Option(min=1, help="How many, newest first.")] = 20,
    run_profile: Annotated[
        str | None,
        typer.Option("--run-profile", help="Only the runs of this stored run profile."),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only runs created this recently: 7d, 12h, 30m.")
    ] = None,
    region: RegionOption = None,
    profile: AwsProfileOption = None,
    output: OutputOption = Output.table,
    as_json: JsonOption = False,
) -> None:
    """List the latest runs on AWS with their outcome counts."""
    from prepost.operator import runs as list_runs
    from prepost.operator import table_name

    cutoff = _since(since) if since is not None else None
    with _errors_said():
        name = table_name(table)
        found = list_runs(_aws(region, profile), name, limit, run_profile, cutoff)
    if _json(output, as_json):
        _document([_run_summary(run) for run in found])
        return
    title = f"latest {len(found)} runs" + (f" of profile {run_profile}" if run_profile else "")
    listing = Table(title=title + (f" created since {cutoff}" if cutoff else ""))
    listing.add_column("run", no_wrap=True, overflow="fold")
    for column in ("profile", "status", "instances", "created", "finished"):
        listing.add_column(column)
    for run in found:
        counts = ", ".join(f"{s} {n}" for s, n in sorted(run.counts.items()))
        listing.add_row(run.run_id, run.profile or "", _style(str(run.status)),
                        counts or str(run.instance_count), run.created_at,
                        run.finished_at or "")  # fmt: skip
    _print_table(listing)


def _run_summary(run: Any) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "profile": run.profile,
        "status": str(run.status),
        "instances": run.instance_count,
        "counts": dict(sorted(run.counts.items())),
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "reason": run.reason,
    }


def _print_table(table: Table) -> None:
    """A table on stdout; off a terminal as wide as it needs, so that nothing is cut or
    wrapped for whoever reads it with grep or awk."""
    if console.is_terminal:
        console.print(table)
        return
    unbounded = console.options.update_width(100_000)
    width = max(console.width, console.measure(table, options=unbounded).maximum)
    Console(file=console.file, width=width).print(table)


SINCE_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def _since(text: str) -> str:
    """The moment `text` (Nd, Nh or Nm) ago, in the stored timestamp format."""
    from datetime import UTC, datetime, timedelta

    from chalicelib.clock import iso

    match = re.fullmatch(r"\s*(\d{1,6})([dhm])\s*", text)
    if match is None or int(match.group(1)) == 0:
        raise typer.BadParameter(
            f"{text!r} is not an age: give days, hours or minutes, e.g. 7d, 12h or 30m",
            param_hint="'--since'",
        )
    age = timedelta(**{SINCE_UNITS[match.group(2)]: int(match.group(1))})
    return iso(datetime.now(UTC) - age)


@app.command()
def cancel(
    run_id: str,
    bus: BusOption = "default",
    reason: Annotated[str | None, typer.Option(help="Why, for the record.")] = None,
    region: RegionOption = None,
    profile: AwsProfileOption = None,
    output: OutputOption = Output.table,
    as_json: JsonOption = False,
) -> None:
    """Cancel a run on AWS: no more forward side effects; instances restored and thawed."""
    from prepost.operator import cancel as put_cancel

    with _errors_said():
        event_id = put_cancel(_aws(region, profile), run_id, bus, reason)
    if _json(output, as_json):
        _document({"event_id": event_id, "run_id": run_id, "bus": bus})
        return
    console.print(f"cancel event {event_id} put for run {run_id}")


profile_app = typer.Typer(
    help="Stored run profiles: named run definitions, optionally scheduled.",
    no_args_is_help=True,
)
app.add_typer(profile_app, name="profile")


@profile_app.command("put")
def profile_put(
    name: str,
    file: Annotated[Path, typer.Option("--file", help="The profile document (JSON).")],
    table: TableOption = None,
    region: RegionOption = None,
    profile: AwsProfileOption = None,
    output: OutputOption = Output.table,
    as_json: JsonOption = False,
) -> None:
    """Validate a run profile document and store it (replacing one of the same name)."""
    from prepost.operator import profile_document, table_name
    from prepost.operator import profile_put as put

    with _errors_said():
        document, name_of_table = profile_document(file), table_name(table)
        stored, replaced = put(_aws(region, profile), name, document, name_of_table)
    if _json(output, as_json):
        _document(_profile_document(stored) | {"replaced": replaced})
        return
    console.print(f"profile [bold]{name}[/] {'replaced' if replaced else 'stored'}")
    if stored.schedule is not None:
        console.print("next slots: " + ", ".join(_next_slots(stored)))


@profile_app.command("list")
def profile_list(
    table: TableOption = None,
    region: RegionOption = None,
    profile: AwsProfileOption = None,
    output: OutputOption = Output.table,
    as_json: JsonOption = False,
) -> None:
    """List the stored run profiles and their schedules."""
    from prepost.operator import profile_list as list_profiles
    from prepost.operator import table_name

    with _errors_said():
        name_of_table = table_name(table)
        found = list_profiles(_aws(region, profile), name_of_table)
    if _json(output, as_json):
        _document([_profile_document(stored) for stored in found])
        return
    listing = Table(title=f"{len(found)} profiles")
    listing.add_column("profile", no_wrap=True, overflow="fold")
    for column in ("schedule", "time zone", "last slot", "updated"):
        listing.add_column(column)
    for stored in found:
        schedule = stored.schedule
        listing.add_row(stored.name, schedule.cron if schedule else "(on demand)",
                        schedule.time_zone if schedule else "", stored.last_slot or "",
                        stored.updated_at)  # fmt: skip
    _print_table(listing)


@profile_app.command("show")
def profile_show(
    name: str,
    table: TableOption = None,
    region: RegionOption = None,
    profile: AwsProfileOption = None,
    output: OutputOption = Output.table,
    as_json: JsonOption = False,
) -> None:
    """Show a run profile: its input, its schedule and its next three slots."""
    from prepost.operator import profile_get, table_name

    with _errors_said():
        name_of_table = table_name(table)
        stored = profile_get(_aws(region, profile), name, name_of_table)
    if _json(output, as_json):
        _document(_profile_document(stored))
        return
    console.print(f"profile [bold]{stored.name}[/] (stored {stored.created_at}, "
                  f"updated {stored.updated_at})")  # fmt: skip
    console.print_json(json.dumps(stored.run_input()))
    if stored.schedule is None:
        console.print("no schedule: started on demand with a start event naming it")
        return
    schedule = stored.schedule
    console.print(f"schedule: {schedule.cron} ({schedule.time_zone}); last slot dealt with: "
                  f"{stored.last_slot or 'none yet'}")  # fmt: skip
    console.print("next slots: " + ", ".join(_next_slots(stored)))


@profile_app.command("delete")
def profile_delete(
    name: str,
    table: TableOption = None,
    region: RegionOption = None,
    profile: AwsProfileOption = None,
    output: OutputOption = Output.table,
    as_json: JsonOption = False,
) -> None:
    """Delete a run profile; its past runs stay."""
    from prepost.operator import profile_delete as delete
    from prepost.operator import table_name

    with _errors_said():
        name_of_table = table_name(table)
        delete(_aws(region, profile), name, name_of_table)
    if _json(output, as_json):
        _document({"profile": name, "deleted": True})
        return
    console.print(f"profile [bold]{name}[/] deleted")


def _next_slots(stored: Any) -> list[str]:
    from datetime import UTC, datetime

    return [slot.isoformat() for slot in stored.schedule.next_slots(datetime.now(UTC), 3)]


def _profile_document(stored: Any) -> dict[str, Any]:
    schedule = stored.schedule
    return {
        "profile": stored.name,
        "input": stored.run_input(),
        "schedule": None
        if schedule is None
        else {"cron": schedule.cron, "time_zone": schedule.time_zone},
        "next_slots": _next_slots(stored) if schedule is not None else [],
        "last_slot": stored.last_slot,
        "created_at": stored.created_at,
        "updated_at": stored.updated_at,
    }


def _style(status: str, short: bool = False) -> str:
    text = SHORT.get(status, status) if short else status
    return f"[{STATUS_STYLE.get(status, 'red')}]{text}[/]"


def _print_phase_timeline(rows: list[dict[str, Any]]) -> None:
    """Per group and phase: first start, last end, outcomes; per phase for many groups."""
    if len(rows) > MAX_ROWS and len({row["group"] for row in rows}) > 1:
        rows = _per_phase(rows)
    table = Table(title="phases")
    for column in ("group", "phase", "started", "ended", "took", "outcomes"):
        table.add_column(column, justify="right" if column == "took" else "left")
    for row in rows:
        took = row["duration_seconds"]
        table.add_row(row["group"], row["phase"], row["started_at"] or "-",
                      row["ended_at"] or ("(running)" if row["started_at"] else "-"),
                      _duration(took) if took is not None else "",
                      ", ".join(f"{_style(s)} {n}" for s, n in row["counts"].items()))  # fmt: skip
    _print_table(table)


def _per_phase(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The timeline rows of many groups, folded into one row per phase."""
    from prepost.report import seconds_between

    by_phase: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_phase.setdefault(row["phase"], []).append(row)
    folded = []
    for phase, same in by_phase.items():
        started = min((r["started_at"] for r in same if r["started_at"]), default=None)
        ends = [r["ended_at"] for r in same]
        ended = max(ends) if all(ends) else None
        counts: Counter[str] = Counter()
        for r in same:
            counts.update(r["counts"])
        folded.append({"group": f"all {len(same)} groups", "phase": phase,
                       "started_at": started, "ended_at": ended,
                       "duration_seconds": seconds_between(started, ended)
                       if started and ended else None,
                       "counts": dict(sorted(counts.items()))})  # fmt: skip
    return folded


def _print_timeline(lines: list[tuple[str, str]]) -> None:
    table = Table(title="timeline (virtual time)", show_header=False, box=None)
    table.add_column(style="cyan")
    table.add_column()
    for stamp, what in lines:
        table.add_row(stamp, what)
    _print_table(table)


def _print_report(report: dict[str, Any], simulated: bool = True) -> None:
    instances = report["instances"]
    phases = list(instances[0]["phases"]) if instances else []
    if len(instances) <= MAX_ROWS:
        table = Table(title=f"run {report['run_id']}")
        table.add_column("instance", no_wrap=True, overflow="fold")
        for phase in phases:
            table.add_column(phase.lower().replace("_", "-"))
        table.add_column("consistency")
        table.add_column("frozen", justify="right")
        table.add_column("stopped", justify="right")
        table.add_column("result")
        for instance in instances:
            table.add_row(
                instance["instance_id"],
                *[_style(instance["phases"][p]["status"], short=True) for p in phases],
                instance["phases"].get("BACKUP", {}).get("consistency") or "-",
                *[
                    _maybe_duration(instance.get(f"{held}_seconds"))
                    for held in ("frozen", "stopped")
                ],
                _style(instance["status"]),
            )
    else:  # a large fleet: one row per group
        table = Table(title=f"run {report['run_id']} ({len(instances)} instances)")
        table.add_column("group")
        table.add_column("instances", justify="right")
        table.add_column("results")
        by_group: dict[str, Counter[str]] = {}
        for instance in instances:
            by_group.setdefault(instance["group"], Counter())[instance["status"]] += 1
        for group, counts in sorted(by_group.items()):
            results = ", ".join(f"{_style(s)} {n}" for s, n in sorted(counts.items()))
            table.add_row(group, str(sum(counts.values())), results)
    _print_table(table)
    troubled = [i for i in instances if i["status"] != "SUCCEEDED" and i["reason"]]
    for instance in troubled[:MAX_ROWS]:
        console.print(f"  {instance['instance_id']}: {instance['reason']}", style="dim")
    if len(troubled) > MAX_ROWS:
        console.print(f"  ... and {len(troubled) - MAX_ROWS} more (--json for all)", style="dim")
    console.print(
        f"run status: {_style(report['status'])}  ({len(instances)} instances, "
        + (
            f"{_duration(report['virtual_duration_seconds'])} of simulated time, "
            f"{report['lambda_invocations']} Lambda invocations)"
            if simulated
            else f"took {_duration(report['duration_seconds'])})"
        )
    )
    _print_release(instances)
    if report["reason"]:
        console.print(f"reason: {report['reason']}")
    for error in report.get("errors", []):
        console.print(f"  {error}", style="red")
    for aside in report.get("set_aside", []):
        console.print(
            f"set aside by the reconciler: {aside['item']}: {aside['reason']}", style="red"
        )


def _print_release(instances: list[dict[str, Any]]) -> None:
    """How many were released at capture, and how long they were held (frozen, stopped)."""
    released = [i for i in instances if i.get("released_at")]
    if not released:
        return
    captured = sum(1 for i in released if i.get("captured_at"))
    parts = [f"released at capture: {captured} of {len(instances)} instances"]
    if len(released) > captured:
        parts.append(f"{len(released) - captured} released uncaptured (crash-consistent)")
    for held in ("frozen", "stopped"):
        spans = sorted(
            i[f"{held}_seconds"] for i in instances if i.get(f"{held}_seconds") is not None
        )
        if spans:
            median = spans[len(spans) // 2]
            parts.append(f"{held} median {_duration(median)}, max {_duration(spans[-1])}")
    console.print("; ".join(parts))


def _maybe_duration(seconds: int | None) -> str:
    return "-" if seconds is None else _duration(seconds)


def _duration(seconds: int) -> str:
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def main() -> None:
    sys.exit(run(sys.argv[1:]))


def run(argv: list[str]) -> int:
    """The command's exit code for `argv`: usage errors as one sentence on stderr (2), and
    no traceback for anyone but a developer who sets PREPOST_DEBUG=1 (70 otherwise)."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="prepost", standalone_mode=False)
    except typer.TyperException as exc:  # typer's own click: usage errors, bad values
        context = getattr(exc, "ctx", None)
        where = context.command_path if context is not None else "prepost"
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"{where}: {message}", file=sys.stderr)
        return EXIT_USAGE
    except typer.Abort:
        print("prepost: interrupted", file=sys.stderr)
        return 130
    except CliError as exc:
        _say_error(str(exc))
        return exc.exit_code
    except Exception as exc:
        if os.environ.get("PREPOST_DEBUG"):
            raise
        print(
            f"prepost: internal error ({type(exc).__name__}: {exc}); run again with "
            "PREPOST_DEBUG=1 for the traceback, and please report it",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    main()
