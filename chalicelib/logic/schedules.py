"""The scheduler: every few minutes, start each scheduled profile whose slot came due.

For each profile with a schedule, the slots since the last one dealt with (or since the
profile was stored) up to now are considered once:
- the latest slot still within the catch-up window is run: a start event naming the
  profile and the slot; the run id comes from the two, so a duplicated or retried tick,
  or two ticks at once, make one run per slot;
- every other slot is recorded as a `MISSED` run with the reason (past the window, or
  superseded by a later slot in the same tick: a profile runs at most once per tick),
  and announced like any finished run.
Then the profile's cursor moves on with a conditional write. A tick that dies half-way is
repeated by the next one without a second run or record.
"""

from __future__ import annotations

from chalicelib import observability
from chalicelib.clock import iso, parse_iso
from chalicelib.dependencies import Services
from chalicelib.logic.decisions import slot_run_id
from chalicelib.logic.finalize import announce, announce_by
from chalicelib.models.events import DetailType
from chalicelib.models.profile import Profile, catch_up
from chalicelib.models.state import RunRecord, RunStatus

# Slots considered per profile and tick; older ones (a scheduler down for long, a cron far
# more frequent than the tick) are only counted in a warning.
MAX_SLOTS_PER_TICK = 50


def tick(services: Services) -> None:
    """One scheduler tick over every stored profile. A profile that fails (EventBridge
    refusing its start event, say) is logged and counted (`ScheduleErrors`, alarmed) and
    left where it was, so the next tick tries it again; it holds up no other profile."""
    for profile in services.store.list_profiles():
        if profile.schedule is None:
            continue
        try:
            advance(services, profile)
        except Exception as exc:  # one profile's trouble must not starve the others
            observability.logger().exception(
                "scheduling a profile failed", profile=profile.name, error=str(exc)
            )
            observability.count("ScheduleErrors")


def advance(services: Services, profile: Profile) -> None:
    """Deal with the slots of one profile that came due since its cursor."""
    assert profile.schedule is not None
    log, now = observability.logger(), services.clock.now()
    since = parse_iso(profile.last_slot or profile.updated_at)
    slots = profile.schedule.slots_after(since, now, MAX_SLOTS_PER_TICK + 1)
    if not slots:
        return
    if len(slots) > MAX_SLOTS_PER_TICK:
        log.warning("older slots not considered", profile=profile.name, before=iso(slots[1]))
        slots = slots[1:]
    window = catch_up(profile.schedule, services.settings.schedule_catch_up_minutes)
    due = [slot for slot in slots if now - slot <= window]
    chosen = due[-1] if due else None
    for slot in slots:
        if slot == chosen:
            continue
        reason = (
            f"superseded by the later slot {iso(chosen)} in the same tick"
            if chosen is not None and slot < chosen
            else f"more than {int(window.total_seconds() // 60)} minutes late"
        )
        _record_missed(services, profile, iso(slot), reason)
    if chosen is not None:
        log.info("scheduled run requested", profile=profile.name, slot=iso(chosen))
        services.events.emit(
            [(DetailType.START_REQUESTED, {"Profile": profile.name, "Slot": iso(chosen)})]
        )
        observability.count("ScheduledRunsRequested")
    if not services.store.advance_profile(
        profile.name, profile.updated_at, profile.last_slot, iso(slots[-1])
    ):
        log.info("profile changed or advanced meanwhile", profile=profile.name)


def _record_missed(services: Services, profile: Profile, slot: str, reason: str) -> None:
    now = iso(services.clock.now())
    run = RunRecord(
        run_id=slot_run_id(profile.name, parse_iso(slot)),
        status=RunStatus.MISSED,
        created_at=slot,
        finished_at=now,
        input_json=profile.input_json,
        reason=reason,
        profile=profile.name,
        slot=slot,
    )
    if not services.store.put_run_if_new(run, services.now_epoch(), due_at=announce_by(services)):
        return  # recorded (or run) already; the reconciler announces it if need be
    observability.logger().warning("scheduled slot missed", profile=profile.name, slot=slot,
                                   reason=reason)  # fmt: skip
    observability.count("SlotsMissed")
    announce(services, run)
