"""prepost-backup: application-consistent EC2 backups, chained by EventBridge events.

Each handler parses its event into a model and calls one step in `chalicelib.logic`.
The flow of a run (per group of instances):

    start event -> start_run -> Phase Requested (PRE_SCRIPT) -> run_scripts -> aws.ssm
      -> script_invocation_changed -> Phase Requested (STOP) -> stop_instances -> aws.ec2
      -> instance_state_changed -> Phase Requested (BACKUP) -> start_backups -> aws.backup
      -> check_capture (polled, SQS) -> Phase Requested (START) -> start_instances -> aws.ec2
      -> instance_state_changed -> Phase Requested (POST_SCRIPT) -> run_scripts -> aws.ssm
      -> script_invocation_changed -> Phase Completed (DONE) -> finalize_group
      ... backup_job_changed (each job's end) -> Phase Completed (DONE) -> finalize_group
      -> Run Completed -> notify_run_completed -> SNS (when a topic is configured)

A group releases its instances (START, POST_SCRIPT) once their snapshots are taken, not
when their jobs complete (`ReleaseAfter`): `check_capture` polls a group waiting for its
capture; the run completes only once every job has ended.

Every few minutes `reconcile_runs` looks at the groups that are overdue: it asks AWS for
what events did not deliver, resumes side effects whose handler died, and times out what
is past its deadline. `cancel_run` stops a run's forward phases; its compensation goes on.
Every few minutes too, `start_scheduled_runs` puts a start event for each stored profile
whose scheduled slot came due (one run per slot, whatever the ticks).
"""

from __future__ import annotations

from typing import Any

from chalice.app import Chalice, CloudWatchEvent, Rate, SQSEvent

from chalicelib import observability, patterns
from chalicelib.dependencies import services
from chalicelib.logic import (
    cancel,
    capture,
    finalize,
    notify,
    phase_table,
    phases,
    reconcile,
    results,
    schedules,
    start_run,
)
from chalicelib.models.events import (
    BackupJobEvent,
    CancelRequestEvent,
    CaptureCheck,
    Ec2StateEvent,
    PhaseCompletedEvent,
    PhaseRequestEvent,
    RunCompletedEvent,
    SsmInvocationEvent,
    parse,
    parse_json,
)

app = Chalice(app_name="prepost-backup", configure_logs=False)
app.register_middleware(observability.middleware, "all")


# -- a run starts ---------------------------------------------------------------------------


@app.on_cw_event(patterns.START_RUN)
def start_run_handler(event: CloudWatchEvent) -> Any:
    return start_run.start_run(services(), event.to_dict())


@app.on_cw_event(patterns.CANCEL_RUN)
def cancel_run(event: CloudWatchEvent) -> None:
    cancel.cancel_run(services(), parse(CancelRequestEvent, event.to_dict()).detail)


# -- a group enters a phase: one function per side effect; what a phase is, and which
#    function acts for it, is declared once in `chalicelib.logic.phase_table` ------------------


@app.on_cw_event(patterns.phase_requested(*phase_table.requested_phases("run_scripts")))
def run_scripts(event: CloudWatchEvent) -> None:
    phases.enter_phase(services(), parse(PhaseRequestEvent, event.to_dict()).detail)


@app.on_cw_event(patterns.phase_requested(*phase_table.requested_phases("stop_instances")))
def stop_instances(event: CloudWatchEvent) -> None:
    phases.enter_phase(services(), parse(PhaseRequestEvent, event.to_dict()).detail)


@app.on_cw_event(patterns.phase_requested(*phase_table.requested_phases("start_backups")))
def start_backups(event: CloudWatchEvent) -> None:
    phases.enter_phase(services(), parse(PhaseRequestEvent, event.to_dict()).detail)


@app.on_cw_event(patterns.phase_requested(*phase_table.requested_phases("start_instances")))
def start_instances(event: CloudWatchEvent) -> None:
    phases.enter_phase(services(), parse(PhaseRequestEvent, event.to_dict()).detail)


# -- AWS reports what happened ----------------------------------------------------------------


@app.on_cw_event(patterns.SSM_INVOCATION)
def script_invocation_changed(event: CloudWatchEvent) -> None:
    results.script_invocation_changed(services(), parse(SsmInvocationEvent, event.to_dict()))


@app.on_cw_event(patterns.EC2_STATE)
def instance_state_changed(event: CloudWatchEvent) -> None:
    results.instance_state_changed(services(), parse(Ec2StateEvent, event.to_dict()))


@app.on_cw_event(patterns.BACKUP_JOB)
def backup_job_changed(event: CloudWatchEvent) -> None:
    results.backup_job_changed(services(), parse(BackupJobEvent, event.to_dict()))


# -- inside BACKUP, a group waiting for its members' capture is polled (AWS sends no event
#    when an AMI's snapshots start): captured, it is released to START and POST_SCRIPT ------


@app.on_sqs_message(queue=patterns.CAPTURE_POLLS, batch_size=1)
def check_capture(event: SQSEvent) -> None:
    for record in event:
        capture.check(services(), parse_json(CaptureCheck, record.body))


# -- a group is done; after the last one, the run is ------------------------------------------


@app.on_cw_event(patterns.GROUP_DONE)
def finalize_group(event: CloudWatchEvent) -> None:
    finalize.group_completed(services(), parse(PhaseCompletedEvent, event.to_dict()).detail)


@app.on_cw_event(patterns.RUN_COMPLETED)
def notify_run_completed(event: CloudWatchEvent) -> None:
    completed = parse(RunCompletedEvent, event.to_dict()).detail
    notify.notify_run_completed(services(), completed.run_id)


# -- what events did not deliver, the reconciler asks AWS for; it enforces deadlines ---------


@app.schedule(Rate(patterns.RECONCILE_EVERY_MINUTES, unit=Rate.MINUTES))
def reconcile_runs(event: CloudWatchEvent) -> None:
    reconcile.reconcile(services())


# -- scheduled profiles: a start event per slot that came due ----------------------------------


@app.schedule(Rate(patterns.SCHEDULER_EVERY_MINUTES, unit=Rate.MINUTES))
def start_scheduled_runs(event: CloudWatchEvent) -> None:
    schedules.tick(services())
