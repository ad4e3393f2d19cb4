"""A start event: validate, resolve the targets once, lease them, write the run, go."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from chalicelib import observability
from chalicelib.clock import iso, parse_iso
from chalicelib.dependencies import Services
from chalicelib.logic import cancel, decisions, pacing, policy, results
from chalicelib.logic.finalize import announce, announce_by, finalize_run
from chalicelib.logic.transitions import phase_requests
from chalicelib.models.events import AwsEvent, DetailType
from chalicelib.models.profile import Profile, ProfileRequest, catch_up
from chalicelib.models.run_input import RunInput, validation_messages
from chalicelib.models.state import (
    BarrierRecord,
    GroupPhaseState,
    GroupRecord,
    InstanceRecord,
    InstanceStatus,
    Lease,
    Phase,
    PhaseResult,
    RunRecord,
    RunStatus,
    TallyRecord,
)
from chalicelib.models.targets import TargetInstance

MAX_ERRORS_KEPT = 50
MAX_ERROR_CHARS = 500  # an error may quote the input; the record and its event stay small
# The stored input's share of a run record (DynamoDB items hold 400 KB in all). EventBridge
# delivers at most 256 KB, so only an input that grew when written could exceed it.
MAX_STORED_INPUT_BYTES = 300_000
# A scheduled slot's start event may reach the handler this much after the catch-up
# window closed (EventBridge and Lambda retries) and still be honoured.
SLOT_DELIVERY_GRACE = timedelta(minutes=15)
# Longer than the start handler may run: a redelivered start event meanwhile is ignored.
START_CLAIM_SECONDS = 300
UNGROUPED = "-"  # instances skipped at the start belong to no group


def start_run(services: Services, raw_event: Any) -> str | None:
    """Start the run a start event asks for; its run id, or None for a poison event."""
    log = observability.logger()
    try:
        envelope = AwsEvent.model_validate(raw_event)
    except ValidationError as exc:
        event_id = raw_event.get("id") if isinstance(raw_event, dict) else None
        log.error("start event is not an EventBridge event; dropped", event_id=event_id,
                  errors=validation_messages(exc)[:MAX_ERRORS_KEPT])  # fmt: skip
        observability.count("PoisonEvents")
        return None
    request = _profile_request(envelope.detail)
    run_id = decisions.run_id_for(envelope.id, envelope.time)
    profile, slot_refused = None, []
    if isinstance(request, ProfileRequest):
        profile = services.store.get_profile(request.profile)
        slot_refused = _slot_refusal(services, request, profile)
        if request.slot is not None:
            slot_run_id = decisions.slot_run_id(request.profile, request.slot)
            # A slot's run exists once, whoever names it; a slot that is not due is
            # refused under the event's own id, so that it cannot take the slot's.
            due = profile is not None and not slot_refused
            if due or services.store.get_run(slot_run_id) is not None:
                run_id = slot_run_id
    observability.bind_run(run_id)
    existing = services.store.get_run(run_id)
    if existing is not None:
        if existing.status is RunStatus.STARTING:
            resume_start(services, existing)  # its handler may have died half-way
        elif existing.status is RunStatus.RUNNING and existing.start_announced_at is None:
            resume_announcement(services, existing)  # it died right after activating it
        else:
            log.info("duplicate start event ignored", event_id=envelope.id)
        return run_id
    detail, origin = envelope.detail, {}
    if isinstance(request, list):
        _reject(services, run_id, envelope, request)
        return run_id
    if isinstance(request, ProfileRequest):
        if profile is None or slot_refused:
            refused = slot_refused or [f"Profile: no profile named {request.profile!r}"]
            _reject(services, run_id, envelope, refused)
            return run_id
        detail = profile.run_input()
        origin = {"profile": profile.name, "slot": iso(request.slot) if request.slot else None}
    if not isinstance(detail, dict):
        _reject(services, run_id, envelope, ["detail: must be a JSON object holding the run input"])
        return run_id
    try:
        run_input = RunInput.model_validate(detail)
    except ValidationError as exc:
        _reject(services, run_id, envelope, validation_messages(exc))
        return run_id
    refused = policy.violations(run_input, services.settings)
    if refused:
        _reject(services, run_id, envelope, refused, "not allowed by this deployment")
        return run_id
    targets = _resolve(services, run_input)
    refused = policy.too_many_targets(targets[0], services.settings) or policy.not_opted_in(
        targets[1].values(), services.settings
    )
    if refused:
        _reject(services, run_id, envelope, refused, "not allowed by this deployment")
        return run_id
    kept = stored_input(detail)
    if kept is None:  # a resumed start re-reads the input: a run must keep it whole
        _reject(services, run_id, envelope, [])
        return run_id
    now, now_epoch = services.clock.now(), services.now_epoch()
    run = RunRecord(
        run_id=run_id,
        status=RunStatus.STARTING,
        created_at=iso(now),
        event_id=envelope.id,
        input_json=kept,
        **origin,
    )
    # The header first: it claims the start, so a concurrent duplicate stops right here.
    if not services.store.put_run_if_new(run, now_epoch, due_at=now_epoch + START_CLAIM_SECONDS):
        log.info("duplicate start event ignored", event_id=envelope.id)
        return run_id
    _begin(services, run, run_input, targets)
    return run_id


def stored_input(detail: Any) -> str | None:
    """The input as a run record keeps it: compact UTF-8 JSON (escaping every non-ASCII
    character would triple some inputs); None when even that is too large to keep."""
    text = json.dumps(detail, ensure_ascii=False, separators=(",", ":"))
    try:
        size = len(text.encode())
    except UnicodeEncodeError:  # a lone surrogate: only its escaped form is valid UTF-8
        text = json.dumps(detail, separators=(",", ":"))
        size = len(text)
    return text if size <= MAX_STORED_INPUT_BYTES else None


def _slot_refusal(
    services: Services, request: ProfileRequest, profile: Profile | None
) -> list[str]:
    """Why a start event's `Slot` is not one the profile's schedule has come to (a
    forged future slot would otherwise suppress the real run); [] when it is, or when
    the event names no slot."""
    slot = request.slot
    if slot is None or profile is None:
        return []
    schedule, now = profile.schedule, services.clock.now()
    if schedule is None:
        return [f"Slot: profile {profile.name!r} has no schedule"]
    if not schedule.has_slot(slot):
        return [f"Slot: {iso(slot)} is not a slot of {schedule.cron!r} ({schedule.time_zone})"]
    if slot > now:
        return [f"Slot: {iso(slot)} is in the future"]
    if slot <= parse_iso(profile.updated_at):
        return [f"Slot: {iso(slot)} is before the profile was stored or last changed"]
    window = catch_up(schedule, services.settings.schedule_catch_up_minutes)
    if now - slot > window + SLOT_DELIVERY_GRACE:
        late = int((window + SLOT_DELIVERY_GRACE).total_seconds() // 60)
        return [f"Slot: {iso(slot)} is more than {late} minutes old (the catch-up window)"]
    return []


def _profile_request(detail: Any) -> ProfileRequest | list[str] | None:
    """The profile a start event names instead of carrying the input (the errors, if it
    names one badly); None for an event that carries the input."""
    if not isinstance(detail, dict) or "Profile" not in detail:
        return None
    try:
        return ProfileRequest.model_validate(detail)
    except ValidationError as exc:
        return validation_messages(exc)


def resume_start(services: Services, run: RunRecord) -> None:
    """Finish a start whose handler died (from its redelivery, or the reconciler)."""
    now_epoch = services.now_epoch()
    if not services.store.reclaim_start(run.run_id, now_epoch, now_epoch + START_CLAIM_SECONDS):
        observability.logger().info("run is being started elsewhere")
        return
    observability.logger().warning("resuming the start of a run")
    run_input = RunInput.model_validate_json(run.input_json)
    _begin(services, run, run_input, _resolve(services, run_input), resuming=True)


def resume_announcement(services: Services, run: RunRecord) -> None:
    """Put the Run Started and first Phase Requested events of a run whose start handler
    died after activating it (from its redelivery, or the reconciler)."""
    now_epoch = services.now_epoch()
    if not services.store.reclaim_start_announcement(
        run.run_id, now_epoch, now_epoch + START_CLAIM_SECONDS
    ):
        observability.logger().info("run is being announced elsewhere")
        return
    observability.logger().warning("announcing a started run")
    if cancel.apply_pending_cancel(services, run.run_id):
        run = run.model_copy(update={"cancelled": True})
    run_input = RunInput.model_validate_json(run.input_json)
    groups = services.store.list_groups(run.run_id)
    skipped = run.instance_count - sum(group.size for group in groups)
    last_resort = now_epoch + decisions.run_budget_seconds(run_input)
    _announce_start(services, run, groups, skipped, last_resort)
    if not groups:
        finalize_run(services, run)


def _announce_start(
    services: Services, run: RunRecord, groups: list[GroupRecord], skipped: int, due_at: int
) -> None:
    """Put Run Started and the Phase Requested of every group still waiting for its
    phase, then note it on the run, which is next due at `due_at` (a last resort)."""
    started = {
        "run_id": run.run_id,
        "instance_count": run.instance_count,
        "skipped_count": skipped,
        "group_count": len(groups),
        "plan": [str(p) for p in run.plan],
    }
    now_look = services.now_epoch() + START_CLAIM_SECONDS + decisions.REQUEST_GRACE_SECONDS
    due: dict[Phase, list[str]] = {}  # a resumed announcement may find groups moved on
    for group in groups:
        if group.phase_state is GroupPhaseState.REQUESTED and (group.due_at or 0) <= now_look:
            due.setdefault(Phase(group.phase), []).append(group.group_id)  # not paced later
    requests = [r for phase, ids in due.items() for r in phase_requests(run, ids, phase)]
    services.events.emit(
        [(DetailType.RUN_STARTED, started)]
        + [(DetailType.PHASE_REQUESTED, request) for request in requests]
    )
    services.store.mark_start_announced(run.run_id, iso(services.clock.now()), due_at)


def _skipped(
    run_id: str, instance_id: str, target: TargetInstance | None, skip: decisions.SkipAtStart
) -> InstanceRecord:
    return InstanceRecord(
        run_id=run_id,
        group_id=UNGROUPED,
        instance_id=instance_id,
        original_state=target.state if target else "unknown",
        status=InstanceStatus.SKIPPED,
        reason=skip.reason,
        skip_is_error=skip.is_error,
    )


def _parts(
    candidates: dict[str, TargetInstance],
    group_by: str,
    part_size: int,
    kept: list[InstanceRecord],
    written_groups: dict[str, GroupRecord],
) -> dict[str, decisions.Part]:
    """The part of its coordination group each candidate belongs to. When resuming, a
    candidate whose coordination group already has parts joins the one with the fewest
    members (its parts and barrier are written already), rather than new ones."""
    groups: dict[tuple[str, str], list[str]] = {}
    for instance_id, target in candidates.items():
        groups.setdefault(decisions.group_of(target, group_by), []).append(instance_id)
    sizes = Counter(record.group_id for record in kept)
    assigned: dict[str, decisions.Part] = {}
    for (group_id, label), ids in groups.items():
        existing = [
            g
            for g in written_groups.values()
            if group_id in (g.group_id, g.barrier) and sizes[g.group_id]
        ]
        if not existing:
            for part in decisions.parts_of(group_id, label, ids, part_size):
                assigned |= dict.fromkeys(part.instance_ids, part)
            continue
        for instance_id in sorted(ids):
            smallest = min(existing, key=lambda g: (sizes[g.group_id], g.group_id))
            sizes[smallest.group_id] += 1
            assigned[instance_id] = decisions.Part(
                smallest.group_id, smallest.label, (instance_id,), smallest.barrier
            )
    return assigned


def _barriers(run_id: str, groups: list[GroupRecord]) -> list[BarrierRecord]:
    """The barrier of each coordination group that runs as several parts."""
    parts = Counter(group.barrier for group in groups if group.barrier is not None)
    labels = {group.barrier: group.label.split(" (part ")[0] for group in groups}
    return [
        BarrierRecord(run_id=run_id, barrier=barrier, label=labels[barrier], parts=n)
        for barrier, n in parts.items()
    ]


def _reject(
    services: Services,
    run_id: str,
    envelope: AwsEvent,
    errors: list[str],
    reason: str = "invalid run input",
) -> None:
    """Record the refusal and announce it; nothing else is touched."""
    now = services.clock.now()
    errors = [_shortened(error) for error in errors[:MAX_ERRORS_KEPT]]
    kept = stored_input(envelope.detail)
    if kept is None:
        size = len(json.dumps(envelope.detail, separators=(",", ":")).encode())
        errors.append(
            f"detail: the input ({size} bytes as JSON) is larger than the "
            f"{MAX_STORED_INPUT_BYTES} bytes a run record keeps, so it was not kept"
        )
    run = RunRecord(
        run_id=run_id,
        status=RunStatus.REJECTED,
        created_at=iso(now),
        finished_at=iso(now),
        event_id=envelope.id,
        input_json=kept or "null",
        errors=errors,
        reason=reason,
    )
    if not services.store.put_run_if_new(run, services.now_epoch(), due_at=announce_by(services)):
        return
    observability.logger().warning("run rejected", errors=errors)
    observability.count("RunsRejected")
    announce(services, run)


def _shortened(error: str) -> str:
    if len(error) <= MAX_ERROR_CHARS:
        return error
    return error[: MAX_ERROR_CHARS - 30] + f"... ({len(error)} characters)"


def _resolve(
    services: Services, run_input: RunInput
) -> tuple[list[str], dict[str, TargetInstance]]:
    """The requested instance ids, and what EC2 says about those that exist."""
    if run_input.target_ec2_instances:
        found = services.ec2.instances_by_ids(run_input.target_ec2_instances)
        requested = run_input.target_ec2_instances
    else:
        assert run_input.target_ec2_tag_key is not None
        assert run_input.target_ec2_tag_value is not None
        found = services.ec2.instances_by_tag(
            run_input.target_ec2_tag_key, run_input.target_ec2_tag_value
        )
        requested = [target.instance_id for target in found]
    return requested, {target.instance_id: target for target in found}


def _begin(
    services: Services,
    run: RunRecord,
    run_input: RunInput,
    targets: tuple[list[str], dict[str, TargetInstance]],
    resuming: bool = False,
) -> None:
    """Lease the resolved targets, write groups and instances, then go. Resuming a start
    that died, the groups and instances it wrote are kept as they are now."""
    store, log = services.store, observability.logger()
    run_id, now_epoch = run.run_id, services.now_epoch()
    requested, found = targets
    lease_until = (
        now_epoch + decisions.run_budget_seconds(run_input) + services.settings.lease_margin_seconds
    )
    phases = decisions.plan(run_input)
    # A resumed start keeps what the start that died wrote: an instance it recorded stays
    # as it was decided (member of its part, or skipped), so that its lease, its part and
    # its record keep agreeing (an instance may have gone or been freed meanwhile). Nothing
    # has moved since: a group of a run still STARTING enters no phase.
    written = {i.instance_id: i for i in store.list_instances(run_id)} if resuming else {}
    written_groups = {g.group_id: g for g in store.list_groups(run_id)} if resuming else {}
    kept = [record for record in written.values() if record.group_id != UNGROUPED]
    skipped = [record for record in written.values() if record.group_id == UNGROUPED]
    new_skipped: list[InstanceRecord] = []
    candidates: dict[str, TargetInstance] = {}
    for instance_id in requested:
        if instance_id in written:
            continue
        target = found.get(instance_id)
        skip = decisions.skip_at_start(target)
        if skip is None and target is not None:
            candidates[instance_id] = target
            continue
        assert skip is not None  # skip_at_start gives a reason whenever target is None
        new_skipped.append(_skipped(run_id, instance_id, target, skip))
    part_of = _parts(
        candidates, run_input.group_by, services.settings.group_part_size, kept, written_groups
    )
    leases = [
        Lease(instance_id=i, run_id=run_id, group_id=part_of[i].group_id, expires_at=lease_until)
        for i in candidates
    ]
    # In batches (one call per hundred instances); a lease held by another run is asked
    # about alone (`results.acquire_lease`: it may be kept for a job that is over).
    taken = {lease.instance_id for lease in store.acquire_leases(leases, now_epoch)}
    new_members: list[InstanceRecord] = []
    for lease in leases:
        target, part = candidates[lease.instance_id], part_of[lease.instance_id]
        holder = None
        if lease.instance_id not in taken:
            holder = results.acquire_lease(services, lease, now_epoch)
        if holder is not None:
            skip = decisions.SkipAtStart(results.held_by(holder), True)
            new_skipped.append(_skipped(run_id, lease.instance_id, target, skip))
            continue
        new_members.append(
            InstanceRecord(
                run_id=run_id,
                group_id=part.group_id,
                group_label=part.label,
                instance_id=lease.instance_id,
                arn=services.ec2.instance_arn(target.owner_id, lease.instance_id),
                original_state=target.state,
                phases={phase: PhaseResult() for phase in phases},
            )
        )
    for record in new_skipped:
        log.warning("instance skipped", instance_id=record.instance_id, reason=record.reason)
    members, skipped = kept + new_members, skipped + new_skipped

    # The reconciler looks at the groups after the run header (due by START_CLAIM_SECONDS
    # once activated): a start that died is announced, and a kept cancel applied, before
    # a group's first phase is requested again.
    first_look = now_epoch + START_CLAIM_SECONDS + decisions.REQUEST_GRACE_SECONDS
    sizes = Counter(member.group_id for member in members)
    parts = {part.group_id: part for part in part_of.values()} | {
        group_id: decisions.Part(group.group_id, group.label, (), group.barrier)
        for group_id, group in written_groups.items()
    }
    # Every group enters the first phase now, paced (`pacing.py`): a group whose turn is
    # later is due then, and its Phase Requested is left to the reconciler.
    slots = pacing.schedule(services.settings, phases[0], list(sizes.values()))
    tally_of = decisions.tallies_of(list(sizes), services.settings.tally_groups)
    group_records = [
        GroupRecord(
            run_id=run_id,
            group_id=group_id,
            label=parts[group_id].label,
            size=size,
            phase=str(phases[0]),
            phase_state=GroupPhaseState.REQUESTED,
            due_at=first_look + slot.offset,
            calls_per_second=slot.calls_per_second,
            barrier=parts[group_id].barrier,
            tally=tally_of.get(group_id),
        )
        for (group_id, size), slot in zip(sizes.items(), slots, strict=True)
    ]
    tallies = [
        TallyRecord(run_id=run_id, tally=tally, pending=pending)
        for tally, pending in sorted(Counter(tally_of.values()).items())
    ]
    # Written again whole when resuming (sizes may have grown): nothing changes a group,
    # nothing arrives at a barrier and nothing is counted out, while the run is STARTING.
    store.put_groups_and_instances(
        group_records, new_members + new_skipped, now_epoch, _barriers(run_id, group_records),
        tallies,
    )  # fmt: skip
    for group_id in set(written_groups) - set(sizes):
        store.drop_group(run_id, group_id)  # its instances are gone or held: no member
    for record in new_skipped if resuming else []:
        # The start that died may have leased it before it was gone (or held) by now.
        store.release_lease(record.instance_id, run_id)
    run = run.model_copy(
        update={
            "status": RunStatus.RUNNING,
            "plan": phases,
            "groups_total": len(group_records),
            "groups_pending": len(tallies) or len(group_records),
            "tallies": len(tallies),
            "instance_count": len(requested),
        }
    )
    # Due soon, until its Run Started is put (this handler may die right after this write);
    # then after the longest the run may take, as a last resort.
    if not store.activate_run(run, now_epoch + START_CLAIM_SECONDS):
        log.info("run already started elsewhere")
        return
    log.info(
        "run started",
        instances=len(requested),
        acting=len(members),
        skipped=len(skipped),
        groups=len(group_records),
        plan=[str(p) for p in phases],
    )
    observability.count("RunsStarted")
    # Before its groups' first phase is requested: a cancel kept while the run did not
    # exist or was STARTING, and one that came meanwhile, are applied by now.
    if cancel.apply_pending_cancel(services, run_id):
        run = run.model_copy(update={"cancelled": True})
    last_resort = now_epoch + decisions.run_budget_seconds(run_input)
    _announce_start(services, run, group_records, len(skipped), last_resort)
    if not group_records:
        finalize_run(services, run)
