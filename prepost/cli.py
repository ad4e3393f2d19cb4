"""The `prepost` command: operator tooling, not deployed."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from prepost.report import run_report

app = typer.Typer(help="prepost-backup operator tooling.", no_args_is_help=True)
# Rich assumes 80 columns when output is not a terminal (CI logs, `make demo | tee`).
console = Console(width=None if sys.stdout.isatty() else 120)

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


@app.command()
def demo() -> None:
    """Back up a simulated fleet of five with the seed README's example input, locally."""
    _simulate(
        "seed-example", instances=5, seed=0, input_file=None, as_json=False,
        show_timeline=True, store="dynamodb",
    )  # fmt: skip


ScenarioArgument = Annotated[
    str, typer.Argument(help="A scenario name in events/scenarios/, or a file.")
]
InputOption = Annotated[Path | None, typer.Option("--input", help="A run input JSON file.")]
StoreOption = Annotated[
    str, typer.Option(help="dynamodb (moto's) or memory (faster, for big fleets).")
]


@app.command()
def simulate(
    scenario: ScenarioArgument = "seed-example",
    input_file: InputOption = None,
    instances: Annotated[int | None, typer.Option(min=1, max=5000, help="Fleet size.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the scenario's random faults.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    show_timeline: Annotated[bool, typer.Option("--timeline", help="Print the timeline.")] = False,
    store: StoreOption = "dynamodb",
) -> None:
    """Run a scenario on a simulated fleet, locally; exit code 0 only if it SUCCEEDED."""
    _simulate(scenario, instances, seed, input_file, as_json, show_timeline, store)


def _simulate(
    scenario_name: str,
    instances: int | None,
    seed: int,
    input_file: Path | None,
    as_json: bool,
    show_timeline: bool,
    store: str,
) -> None:
    from prepost.local.scenario import Scenario
    from prepost.local.simulate import simulate as run

    if store not in ("dynamodb", "memory"):
        raise typer.BadParameter("dynamodb or memory", param_hint="--store")
    try:
        scenario = Scenario.load(scenario_name)
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    run_input = None
    if input_file is not None:
        try:
            run_input = json.loads(input_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            console.print(f"[red]cannot read {input_file}: {exc}[/]")
            raise typer.Exit(2) from exc
    if as_json:
        result = run(scenario, instances, seed, run_input, store)
        print(json.dumps(result.report, indent=2))
    else:
        console.print(f"[bold]{scenario.description}[/]")
        with _LiveView() as view:
            result = run(scenario, instances, seed, run_input, store, progress=view.update)
        if show_timeline:
            _print_timeline(result.timeline)
        _print_report(result.report)
    raise typer.Exit(0 if result.report["status"] == "SUCCEEDED" else 1)


class _LiveView:
    """A bar for the run and a row per group: the phase it is in."""

    def __init__(self) -> None:
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} group phases"),
            console=console,
        )
        self._task = self._bar.add_task("run", total=None)
        self._groups = Table(show_header=True, header_style="bold", box=None)
        self._live = Live(Group(self._bar, self._groups), console=console, transient=True)

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
    sizes: Annotated[str, typer.Option(help="Fleet sizes, comma-separated.")] = "10,100,1000",
    scenario: ScenarioArgument = "seed-example",
) -> None:
    """What a run costs per instance, measured locally, beside the polling design's model."""
    from prepost.local.bench import measure

    fleet_sizes = [int(size) for size in sizes.split(",") if size.strip()]
    results = []
    for size in fleet_sizes:
        console.print(f"running {scenario} on {size} instances ...")
        results.append(measure(size, scenario))
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
    row("Lambda invocations", [f"{r.invocations_per_instance:.1f}" for r in results],
        f"{seed['lambda_invocations']:.0f}")  # fmt: skip
    row("Step Functions state transitions", ["0" for _ in results],
        f"{seed['state_transitions']:.0f}")  # fmt: skip
    row("DynamoDB reads", [f"{r.dynamodb_reads_per_instance:.1f}" for r in results], "0")
    row("DynamoDB writes (items)", [f"{r.dynamodb_writes_per_instance:.1f}" for r in results], "0")
    row("largest item (bytes, whole table)", [str(r.largest_item_bytes) for r in results], "")
    polling = [
        sum(n for op, n in r.calls_per_instance.items()
            if op.split(":")[1].startswith(("Describe", "Get")) and not op.startswith("dynamodb"))
        for r in results
    ]  # fmt: skip
    row("AWS polling calls (Describe*, Get*)", [f"{n:.2f}" for n in polling],
        f"{seed['describe_calls']:.0f}")  # fmt: skip
    row("AWS API calls by operation:", ["" for _ in results])
    for operation in sorted({op for r in results for op in r.calls_per_instance}):
        row(f"  {operation}", [f"{r.calls_per_instance.get(operation, 0):.2f}" for r in results])
    console.print(table)
    console.print(
        "The seed column models its design (1 s between script polls, 10 s between instance "
        "and backup polls, each poll a Lambda invocation, a Describe call and 3 state "
        "transitions) for the same durations; it is not a measurement.",
        style="dim",
    )


TableOption = Annotated[
    str | None, typer.Option("--table", help="The state table (default: $PREPOST_TABLE_NAME).")
]
BusOption = Annotated[str, typer.Option("--bus", help="The event bus of the deployment.")]


@app.command()
def start(
    input_file: Annotated[Path, typer.Option("--input", help="The run input JSON file.")],
    bus: BusOption = "default",
) -> None:
    """Start a run on AWS: put the start event (the input is checked first)."""
    from prepost.operator import start as put_start

    event_id, run_id = _operator(put_start, input_file, bus)
    console.print(f"start event {event_id} put; run id [bold]{run_id}[/]")
    console.print(f"follow it with: prepost status {run_id}")


@app.command()
def status(
    run_id: str,
    table: TableOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Show a run on AWS: its status and, per instance, each phase."""
    from prepost.operator import status as read_status
    from prepost.operator import table_name

    run, instances = _operator(lambda: read_status(run_id, table_name(table)))
    report = run_report(run, instances)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    _print_report(report, simulated=False)
    console.print(f"created {run.created_at}, finished {run.finished_at or '(running)'}")


@app.command()
def runs(
    table: TableOption = None,
    limit: Annotated[int, typer.Option(min=1, help="How many, newest first.")] = 20,
) -> None:
    """List the latest runs on AWS with their outcome counts."""
    from prepost.operator import runs as list_runs
    from prepost.operator import table_name

    found = _operator(lambda: list_runs(table_name(table), limit))
    listing = Table(title=f"latest {len(found)} runs")
    for column in ("run", "status", "instances", "created", "finished"):
        listing.add_column(column)
    for run in found:
        counts = ", ".join(f"{s} {n}" for s, n in sorted(run.counts.items()))
        listing.add_row(run.run_id, _style(str(run.status)), counts or str(run.instance_count),
                        run.created_at, run.finished_at or "")  # fmt: skip
    console.print(listing)


@app.command()
def cancel(
    run_id: str,
    bus: BusOption = "default",
    reason: Annotated[str | None, typer.Option(help="Why, for the record.")] = None,
) -> None:
    """Cancel a run on AWS: no more forward side effects; instances restored and thawed."""
    from prepost.operator import cancel as put_cancel

    event_id = _operator(put_cancel, run_id, bus, reason)
    console.print(f"cancel event {event_id} put for run {run_id}")


def _operator(call: Any, *args: Any) -> Any:
    from prepost.operator import OperatorError

    try:
        return call(*args)
    except OperatorError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc


def _style(status: str, short: bool = False) -> str:
    text = SHORT.get(status, status) if short else status
    return f"[{STATUS_STYLE.get(status, 'red')}]{text}[/]"


def _print_timeline(lines: list[tuple[str, str]]) -> None:
    table = Table(title="timeline (virtual time)", show_header=False, box=None)
    table.add_column(style="cyan")
    table.add_column()
    for stamp, what in lines:
        table.add_row(stamp, what)
    console.print(table)


def _print_report(report: dict[str, Any], simulated: bool = True) -> None:
    instances = report["instances"]
    phases = list(instances[0]["phases"]) if instances else []
    if len(instances) <= MAX_ROWS:
        table = Table(title=f"run {report['run_id']}")
        table.add_column("instance")
        for phase in phases:
            table.add_column(phase.lower().replace("_", "-"))
        table.add_column("consistency")
        table.add_column("result")
        for instance in instances:
            table.add_row(
                instance["instance_id"],
                *[_style(instance["phases"][p]["status"], short=True) for p in phases],
                instance["phases"].get("BACKUP", {}).get("consistency", "-"),
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
    console.print(table)
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
    if report["reason"]:
        console.print(f"reason: {report['reason']}")
    for error in report.get("errors", []):
        console.print(f"  {error}", style="red")


def _duration(seconds: int) -> str:
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
