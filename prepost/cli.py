"""The `prepost` command: operator tooling, not deployed."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

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


@app.callback()
def _commands() -> None:
    """prepost-backup operator tooling."""


SHORT = {"SUCCEEDED": "ok", "SKIPPED": "skipped", "IN_PROGRESS": "running"}


def _style(status: str, short: bool = False) -> str:
    text = SHORT.get(status, status) if short else status
    return f"[{STATUS_STYLE.get(status, 'red')}]{text}[/]"


@app.command()
def demo(
    instances: Annotated[int, typer.Option(min=1, max=500, help="Fleet size.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Back up a simulated fleet with the seed README's example input, locally."""
    from prepost.local.cloud import LocalCloud
    from prepost.samples import load_event

    with LocalCloud() as cloud, _quiet():
        detail = load_event("start-seed-example")["detail"]
        cloud.create_vault(detail["BackupDetails"]["BackupVaultName"])
        cloud.launch(instances, tags={detail["TargetEC2TagKey"]: detail["TargetEC2TagValue"]})
        run_id = cloud.run(detail)
        report = _report(cloud, run_id)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    raise typer.Exit(0 if report["status"] == "SUCCEEDED" else 1)


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


def _report(cloud: Any, run_id: str) -> dict[str, Any]:
    run = cloud.store.get_run(run_id)
    instances = sorted(cloud.store.list_instances(run_id), key=lambda i: i.instance_id)
    return {
        "run_id": run_id,
        "status": str(run.status),
        "reason": run.reason,
        "counts": run.counts,
        "virtual_duration_seconds": int(cloud.clock.elapsed().total_seconds()),
        "lambda_invocations": sum(cloud.invocations.values()),
        "instances": [
            {
                "instance_id": i.instance_id,
                "status": str(i.status),
                "reason": i.reason,
                "phases": {
                    str(phase): {
                        "status": str(result.status),
                        "reason": result.reason,
                        **({"consistency": str(result.consistency)} if result.consistency else {}),
                        **(
                            {"recovery_point_arn": result.recovery_point_arn}
                            if result.recovery_point_arn
                            else {}
                        ),
                    }
                    for phase, result in i.phases.items()
                },
            }
            for i in instances
        ],
    }


def _print_report(report: dict[str, Any]) -> None:
    phases = list(report["instances"][0]["phases"]) if report["instances"] else []
    table = Table(title=f"run {report['run_id']}")
    table.add_column("instance")
    for phase in phases:
        table.add_column(phase.lower().replace("_", "-"))
    table.add_column("consistency")
    table.add_column("result")
    for instance in report["instances"]:
        backup = instance["phases"].get("BACKUP", {})
        table.add_row(
            instance["instance_id"],
            *[_style(instance["phases"][p]["status"], short=True) for p in phases],
            backup.get("consistency", "-"),
            _style(instance["status"]),
        )
    console.print(table)
    duration = timedelta(seconds=report["virtual_duration_seconds"])
    console.print(
        f"run status: {_style(report['status'])}  "
        f"({len(report['instances'])} instances, {duration} of simulated time, "
        f"{report['lambda_invocations']} Lambda invocations)"
    )
    if report["reason"]:
        console.print(f"reason: {report['reason']}")


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
