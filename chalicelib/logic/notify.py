"""A run is over: its summary goes to the operators' SNS topic, once, when they want it.

The summary is read from the run's record, not from the event, so a repeated, late or
forged `Run Completed` event can only announce what the record says, and only once: the
run is marked notified with a conditional write before the publish. A publish that AWS
refuses gives the mark back and raises, so Lambda's retry sends it; a function that dies
between the mark and the publish sends nothing (at most once, never twice).
"""

from __future__ import annotations

import re
from collections import Counter

from pydantic import ValidationError

from chalicelib import observability
from chalicelib.clock import iso, parse_iso
from chalicelib.config import NotifyOn
from chalicelib.dependencies import Services
from chalicelib.errors import GatewayError
from chalicelib.logic import decisions
from chalicelib.models.run_input import RunInput
from chalicelib.models.state import InstanceRecord, InstanceStatus, Phase, RunRecord, RunStatus

# SNS Publish: a subject is "UTF-8 text with no line breaks or control characters, and
# less than 100 characters long" (kept to printable ASCII, which every mail client shows);
# a message is at most 256 KiB (262,144 bytes) of UTF-8 unless the topic allows more.
MAX_SUBJECT_CHARS = 99
MAX_MESSAGE_BYTES = 262_144
MAX_REASON_CHARS = 500  # one instance's line stays readable; the record keeps it whole
UNFINISHED = frozenset({RunStatus.STARTING, RunStatus.RUNNING})
# The instances a reader must look at, most urgent first.
ATTENTION = (InstanceStatus.STUCK_STOPPED, InstanceStatus.FAILED,
             InstanceStatus.COMPLETED_WITH_ERRORS, InstanceStatus.SKIPPED)  # fmt: skip
SCRIPT_PHASES = (Phase.PRE_SCRIPT, Phase.POST_SCRIPT)


def notify_run_completed(services: Services, run_id: str) -> None:
    """Publish the summary of a completed run, if a topic is set and the policy wants it."""
    settings = services.settings
    if not settings.notify_topic_arn:
        return
    observability.bind_run(run_id)
    log, store = observability.logger(), services.store
    run = store.get_run(run_id)
    if run is None:  # e.g. another stage's run on the same bus
        log.info("completed run not in this deployment's table; not notified")
        return
    if not wants_notification(run.status, settings.notify_on):
        log.debug("run not notified", status=run.status, notify_on=settings.notify_on)
        return
    subject, message = summary(run, store.list_instances(run_id))
    at = iso(services.clock.now())
    if not store.mark_run_notified(run_id, at):
        log.info("run notified already; repeated event ignored")
        return
    try:
        message_id = services.notifications.publish(settings.notify_topic_arn, subject, message)
    except GatewayError:
        store.unmark_run_notified(run_id, at)
        raise
    log.info("run notified", status=run.status, message_id=message_id)
    observability.count("RunsNotified")


def wants_notification(status: RunStatus, notify_on: NotifyOn) -> bool:
    """`failures`: every final status but SUCCEEDED; `always`: every final status."""
    if status in UNFINISHED:
        return False
    return notify_on is NotifyOn.ALWAYS or status is not RunStatus.SUCCEEDED


def summary(
    run: RunRecord, instances: list[InstanceRecord], max_bytes: int = MAX_MESSAGE_BYTES
) -> tuple[str, str]:
    """(subject, message) of the plain-text notification of a completed run."""
    return subject_of(run), message_of(run, instances, max_bytes)


def subject_of(run: RunRecord) -> str:
    """One line of printable ASCII, shorter than SNS's 100 characters."""
    text = f"prepost-backup: {run.status} run {run.run_id}"
    if run.profile:
        text += f" (profile {run.profile})"
    text = re.sub(r"[^\x20-\x7e]", "?", re.sub(r"\s+", " ", text)).strip()
    if len(text) > MAX_SUBJECT_CHARS:
        text = text[: MAX_SUBJECT_CHARS - 3] + "..."
    return text


def message_of(run: RunRecord, instances: list[InstanceRecord], max_bytes: int) -> str:
    """The body: what happened, to which instances, where to look. Fits in `max_bytes`."""
    head = [f"Run {run.run_id}: {run.status}", ""]
    if run.reason:
        head.append(f"Reason:    {_one_line(run.reason)}")
    head += [
        f"Profile:   {run.profile or 'none (started by a start event)'}",
        f"Started:   {run.created_at}",
        f"Finished:  {run.finished_at or '-'}",
        f"Duration:  {_duration(run)}",
    ]
    counts = run.counts or dict(Counter(str(i.status) for i in instances))
    head += ["", f"Instances: {sum(counts.values())}"]
    head += [f"  {status:<22} {n}" for status, n in sorted(counts.items())]
    if run.errors:
        head += ["", "Errors:"] + [f"  - {_one_line(error)}" for error in run.errors]
    troubled = _needing_attention(instances)
    if troubled:
        head += ["", f"Needs attention: {len(troubled)} of {len(instances)} instances"]
        if any(i.status is InstanceStatus.STUCK_STOPPED for i in troubled):
            head.append("  (STUCK_STOPPED: this run stopped it and could not start it: start it)")
    tail = _outputs(run)
    tail += ["", f"Details: prepost status {run.run_id}"]
    labelled = len({i.group_id for i in instances}) > 1
    lines = [_instance_line(i, labelled) for i in troubled]
    return "\n".join(head + _fitting(lines, head, tail, run.run_id, max_bytes) + tail) + "\n"


def _needing_attention(instances: list[InstanceRecord]) -> list[InstanceRecord]:
    order = {status: n for n, status in enumerate(ATTENTION)}
    wanted = [
        i
        for i in instances
        if i.status in order and (i.status is not InstanceStatus.SKIPPED or i.skip_is_error)
    ]
    return sorted(wanted, key=lambda i: (order[i.status], i.instance_id))


def _instance_line(instance: InstanceRecord, labelled: bool) -> str:
    group = f" [{instance.group_label or instance.group_id}]" if labelled else ""
    reason = _one_line(instance.reason or "no reason recorded")
    return f"  {instance.instance_id}{group} {instance.status}: {reason}"


def _fitting(
    lines: list[str], head: list[str], tail: list[str], run_id: str, max_bytes: int
) -> list[str]:
    """As many of `lines` as fit beside `head` and `tail`, then "and N more" for the rest."""
    more = f"  ... and {len(lines)} more (prepost status {run_id} lists them all)"
    budget = max_bytes - _size(head + tail) - _size([more])
    kept: list[str] = []
    for line in lines:
        cost = _size([line])
        if cost > budget:
            break
        kept.append(line)
        budget -= cost
    left = len(lines) - len(kept)
    if left:
        kept.append(f"  ... and {left} more (prepost status {run_id} lists them all)")
    return kept


def _size(lines: list[str]) -> int:
    """Bytes that `lines` add to the message: each line and its newline, in UTF-8."""
    return sum(len(line.encode()) + 1 for line in lines)


def _outputs(run: RunRecord) -> list[str]:
    """Where the scripts of the run wrote their output, if the input asked for it."""
    try:
        run_input = RunInput.model_validate_json(run.input_json)
    except ValidationError:  # a rejected input: no script ran
        return []
    found = []
    for phase in SCRIPT_PHASES:
        script = run_input.pre_script if phase is Phase.PRE_SCRIPT else run_input.post_script
        if phase in run.plan and script is not None and script.output_s3_bucket_name:
            prefix = decisions.script_output_prefix(script.output_s3_key_prefix, run.run_id, phase)
            found.append(f"  {phase:<12} s3://{script.output_s3_bucket_name}/{prefix}/")
    return ["", "Script output (S3):", *found] if found else []


def _duration(run: RunRecord) -> str:
    if not run.finished_at:
        return "-"
    seconds = max(0, int((parse_iso(run.finished_at) - parse_iso(run.created_at)).total_seconds()))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d} ({seconds} s)"


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."
