"""An in-memory state store with the same methods and conditions as the DynamoDB one.

For runs of hundreds of fault schedules (the property test) and large benchmarks, where
moto's DynamoDB costs milliseconds per write. `tests/functional/test_memory_store.py`
holds it to the real store: the same scenarios through both give the same records.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

from chalicelib.gateways.state_store import (
    PARTITION_KEY,
    PROFILES,
    SORT_KEY,
    _dump,
    _group,
    command_key,
    group_key,
    instance_key,
    job_key,
    lease_key,
    profile_key,
    run_key,
)
from chalicelib.models.profile import Profile
from chalicelib.models.state import (
    DONE,
    GroupPhaseState,
    GroupRecord,
    InstanceRecord,
    InstanceStatus,
    Lease,
    Phase,
    PhaseResult,
    PhaseStatus,
    RunRecord,
    RunStatus,
)

Key = tuple[str, str]


def _k(key: dict[str, str]) -> Key:
    return key[PARTITION_KEY], key[SORT_KEY]


class InMemoryStateStore:
    def __init__(self, retention_seconds: int = 90 * 86400) -> None:
        self.items: dict[Key, dict[str, Any]] = {}
        self._retention = retention_seconds
        self._lock = threading.RLock()

    # -- helpers ---------------------------------------------------------------------------

    def _get(self, key: dict[str, str]) -> dict[str, Any] | None:
        item = self.items.get(_k(key))
        return copy.deepcopy(item) if item is not None else None

    def _item(self, key: dict[str, str]) -> dict[str, Any] | None:
        return self.items.get(_k(key))

    def _phase(self, key: dict[str, str], phase: Phase) -> dict[str, Any] | None:
        item = self._item(key)
        if item is None:
            return None
        result: dict[str, Any] | None = item.get("phases", {}).get(str(phase))
        return result

    def expiry(self, now_epoch: int) -> int:
        return now_epoch + self._retention

    # -- runs ------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRecord | None:
        item = self._get(run_key(run_id))
        return RunRecord.model_validate(item) if item else None

    def put_run_if_new(self, run: RunRecord, now_epoch: int, due_at: int | None = None) -> bool:
        with self._lock:
            if self._item(run_key(run.run_id)) is not None:
                return False
            self.items[_k(run_key(run.run_id))] = _dump(run) | (
                {"due_at": due_at} if due_at is not None else {}
            )
            return True

    def activate_run(self, run: RunRecord, due_at: int) -> bool:
        with self._lock:
            item = self._item(run_key(run.run_id))
            if item is None or item.get("status") != RunStatus.STARTING:
                return False
            item.update(
                status=str(RunStatus.RUNNING),
                plan=[str(p) for p in run.plan],
                groups_total=run.groups_total,
                groups_pending=run.groups_total,
                instance_count=run.instance_count,
                due_at=due_at,
            )
            return True

    def reclaim_start(self, run_id: str, now_epoch: int, until: int) -> bool:
        with self._lock:
            item = self._item(run_key(run_id))
            if item is None or item.get("status") != RunStatus.STARTING:
                return False
            if "due_at" not in item or item["due_at"] > now_epoch:
                return False
            item["due_at"] = until
            return True

    def complete_run(
        self,
        run_id: str,
        status: RunStatus,
        counts: dict[str, int],
        reason: str | None,
        at: str,
        announce_by: int,
    ) -> bool:
        with self._lock:
            item = self._item(run_key(run_id))
            if item is None or item.get("status") != RunStatus.RUNNING:
                return False
            item.update(status=str(status), counts=dict(counts), finished_at=at, reason=reason)
            item["due_at"] = announce_by
            return True

    def mark_announced(self, run_id: str, at: str) -> None:
        with self._lock:
            item = self._item(run_key(run_id))
            if item is not None:
                item["announced_at"] = at
                item.pop("due_at", None)

    def cancel_run(self, run_id: str) -> bool:
        with self._lock:
            item = self._item(run_key(run_id))
            if item is None or item.get("status") != RunStatus.RUNNING:
                return False
            item["cancelled"] = True
            return True

    def rearm_run(self, run_id: str, due_at: int) -> None:
        with self._lock:
            item = self._item(run_key(run_id))
            if item is not None and "due_at" in item:
                item["due_at"] = due_at

    # -- groups and instances --------------------------------------------------------------

    def put_groups_and_instances(
        self, groups: list[GroupRecord], instances: list[InstanceRecord], now_epoch: int
    ) -> None:
        with self._lock:
            for g in groups:
                self.items[_k(group_key(g.run_id, g.group_id))] = _dump(
                    g, exclude={"counts", "finalized"}
                )
            for i in instances:
                self.items[_k(instance_key(i.run_id, i.group_id, i.instance_id))] = _dump(i)

    def get_group(self, run_id: str, group_id: str) -> GroupRecord | None:
        item = self._get(group_key(run_id, group_id))
        return _group(item) if item else None

    def get_instance(self, run_id: str, group_id: str, instance_id: str) -> InstanceRecord | None:
        item = self._get(instance_key(run_id, group_id, instance_id))
        return InstanceRecord.model_validate(item) if item else None

    def _prefixed(self, run_id: str, prefix: str) -> list[dict[str, Any]]:
        partition = f"RUN#{run_id}"
        with self._lock:
            return [
                copy.deepcopy(item)
                for (pk, sk), item in sorted(self.items.items())
                if pk == partition and sk.startswith(prefix)
            ]

    def list_instances(self, run_id: str, group_id: str | None = None) -> list[InstanceRecord]:
        prefix = "INST#" if group_id is None else f"INST#{group_id}#"
        return [InstanceRecord.model_validate(i) for i in self._prefixed(run_id, prefix)]

    def list_groups(self, run_id: str) -> list[GroupRecord]:
        return [_group(item) for item in self._prefixed(run_id, "GROUP#")]

    def open_phase(
        self,
        run_id: str,
        group_id: str,
        phase: Phase,
        pending: int,
        skipped: int,
        deadline: int,
        due_at: int,
        claim_until: int,
    ) -> bool:
        with self._lock:
            group = self._item(group_key(run_id, group_id))
            if group is None or group.get("phase") != phase:
                return False
            if group.get("phase_state") != GroupPhaseState.REQUESTED:
                return False
            group.update(
                phase_state=str(GroupPhaseState.OPEN),
                pending=pending,
                deadline=deadline,
                due_at=due_at,
                claim_until=claim_until,
            )
            group[f"n_{phase}_SKIPPED"] = skipped
            return True

    def claim_phase(
        self, run_id: str, group_id: str, phase: Phase, now_epoch: int, until: int
    ) -> bool:
        with self._lock:
            group = self._item(group_key(run_id, group_id))
            if group is None or group.get("phase") != phase:
                return False
            if group.get("phase_state") != GroupPhaseState.OPEN:
                return False
            if "claim_until" not in group or group["claim_until"] > now_epoch:
                return False
            group["claim_until"] = until
            return True

    def rearm(self, run_id: str, group_id: str, phase: str, due_at: int) -> None:
        with self._lock:
            group = self._item(group_key(run_id, group_id))
            if group is not None and group.get("phase") == phase and "due_at" in group:
                group["due_at"] = due_at

    def cancel_group(self, run_id: str, group_id: str) -> None:
        with self._lock:
            group = self._item(group_key(run_id, group_id))
            if group is not None:
                group["cancelled"] = True

    def due_items(self, now_epoch: int) -> list[tuple[str, str]]:
        with self._lock:
            due = [
                (
                    item["due_at"],
                    pk.removeprefix("RUN#"),
                    sk.removeprefix("GROUP#") if sk != "RUN" else "",
                )
                for (pk, sk), item in self.items.items()
                if pk.startswith("RUN#") and "due_at" in item and item["due_at"] <= now_epoch
            ]
        return [(run_id, group_id) for _, run_id, group_id in sorted(due)]

    def set_phase_result(
        self,
        run_id: str,
        group_id: str,
        instance_id: str,
        phase: Phase,
        result: PhaseResult,
        expected: PhaseStatus,
    ) -> bool:
        with self._lock:
            key = instance_key(run_id, group_id, instance_id)
            current = self._phase(key, phase)
            if current is None or current.get("status") != expected:
                return False
            item = self._item(key)
            assert item is not None
            item["phases"][str(phase)] = _dump(result)
            return True

    def annotate_phase(
        self, run_id: str, group_id: str, instance_id: str, phase: Phase, **fields: str | bool
    ) -> None:
        with self._lock:
            current = self._phase(instance_key(run_id, group_id, instance_id), phase)
            if current is None:
                raise KeyError(f"no phase {phase} on {instance_id}")
            current.update(fields)

    def annotate_late_report(
        self, run_id: str, group_id: str, instance_id: str, phase: Phase, status: str, text: str
    ) -> None:
        with self._lock:
            current = self._phase(instance_key(run_id, group_id, instance_id), phase)
            if current is None or current.get("status") in (status, PhaseStatus.IN_PROGRESS):
                return
            current["late_report"] = text

    def mark_terminated(self, run_id: str, group_id: str, instance_id: str) -> None:
        with self._lock:
            item = self._item(instance_key(run_id, group_id, instance_id))
            if item is not None:
                item["terminated"] = True

    def finish_phase(
        self,
        run_id: str,
        group_id: str,
        instance_id: str,
        phase: Phase,
        status: PhaseStatus,
        fields: dict[str, Any],
    ) -> bool:
        with self._lock:
            current = self._phase(instance_key(run_id, group_id, instance_id), phase)
            group = self._item(group_key(run_id, group_id))
            if current is None or current.get("status") != PhaseStatus.IN_PROGRESS:
                return False
            if group is None or group.get("phase") != phase:
                return False
            if group.get("phase_state") != GroupPhaseState.OPEN:
                return False
            current.update(fields)
            current["status"] = str(status)
            group["pending"] = group.get("pending", 0) - 1
            name = f"n_{phase}_{status}"
            group[name] = group.get(name, 0) + 1
            return True

    def advance_group(
        self,
        run_id: str,
        group_id: str,
        from_phase: Phase,
        to_phase: Phase | None,
        aborted: bool,
        due_at: int,
    ) -> bool:
        with self._lock:
            group = self._item(group_key(run_id, group_id))
            if group is None or group.get("phase") != from_phase:
                return False
            if group.get("phase_state") != GroupPhaseState.OPEN or group.get("pending", 0) > 0:
                return False
            group.update(
                phase=str(to_phase) if to_phase else DONE,
                phase_state=str(GroupPhaseState.REQUESTED if to_phase else GroupPhaseState.DONE),
                aborted=aborted,
                pending=0,
                due_at=due_at,
            )
            group.pop("deadline", None)
            return True

    def finish_group(self, run_id: str, group_id: str) -> bool:
        with self._lock:
            group = self._item(group_key(run_id, group_id))
            run = self._item(run_key(run_id))
            if group is None or group.get("phase_state") != GroupPhaseState.DONE:
                return False
            if "finalized" in group:
                return False
            group["finalized"] = True
            group.pop("due_at", None)
            if run is not None:
                run["groups_pending"] = run.get("groups_pending", 0) - 1
            return True

    def set_instance_outcome(
        self,
        run_id: str,
        group_id: str,
        instance_id: str,
        status: InstanceStatus,
        reason: str | None,
    ) -> None:
        with self._lock:
            item = self._item(instance_key(run_id, group_id, instance_id))
            if item is not None:
                item.update(status=str(status), reason=reason)

    # -- profiles --------------------------------------------------------------------------

    def put_profile(self, profile: Profile) -> None:
        self.items[_k(profile_key(profile.name))] = _dump(profile)

    def get_profile(self, name: str) -> Profile | None:
        item = self._get(profile_key(name))
        return Profile.model_validate(item) if item else None

    def list_profiles(self) -> list[Profile]:
        return [
            Profile.model_validate(copy.deepcopy(item))
            for (pk, sk), item in sorted(self.items.items())
            if pk == PROFILES and sk.startswith("PROFILE#")
        ]

    def delete_profile(self, name: str) -> bool:
        with self._lock:
            return self.items.pop(_k(profile_key(name)), None) is not None

    def advance_profile(self, name: str, updated_at: str, previous: str | None, slot: str) -> bool:
        with self._lock:
            item = self._item(profile_key(name))
            if item is None or item["updated_at"] != updated_at:
                return False
            if item.get("last_slot") != previous:
                return False
            item["last_slot"] = slot
            return True

    # -- leases ----------------------------------------------------------------------------

    def acquire_lease(self, lease: Lease, now_epoch: int) -> Lease | None:
        with self._lock:
            current = self._item(lease_key(lease.instance_id))
            if (
                current is None
                or current["run_id"] == lease.run_id
                or current["expires_at"] < now_epoch
            ):
                self.items[_k(lease_key(lease.instance_id))] = _dump(lease)
                return None
            return Lease.model_validate(current)

    def get_lease(self, instance_id: str) -> Lease | None:
        item = self._get(lease_key(instance_id))
        return Lease.model_validate(item) if item else None

    def release_lease(self, instance_id: str, run_id: str) -> None:
        with self._lock:
            current = self._item(lease_key(instance_id))
            if current is not None and current["run_id"] == run_id:
                del self.items[_k(lease_key(instance_id))]

    # -- correlation -----------------------------------------------------------------------

    def put_command(
        self, command_id: str, run_id: str, group_id: str, phase: Phase, now_epoch: int
    ) -> None:
        self.items[_k(command_key(command_id))] = {
            "run_id": run_id, "group_id": group_id, "phase": str(phase)
        }  # fmt: skip

    def get_command(self, command_id: str) -> dict[str, Any] | None:
        return self._get(command_key(command_id))

    def put_job(
        self, backup_job_id: str, run_id: str, group_id: str, instance_id: str, now_epoch: int
    ) -> None:
        self.items[_k(job_key(backup_job_id))] = {
            "run_id": run_id, "group_id": group_id, "instance_id": instance_id
        }  # fmt: skip

    def get_job(self, backup_job_id: str) -> dict[str, Any] | None:
        return self._get(job_key(backup_job_id))

    # -- notifications ---------------------------------------------------------------------

    def mark_run_notified(self, run_id: str, at: str) -> bool:
        with self._lock:
            item = self._item(run_key(run_id))
            if item is None or "notified_at" in item:
                return False
            item["notified_at"] = at
            return True

    def unmark_run_notified(self, run_id: str, at: str) -> None:
        with self._lock:
            item = self._item(run_key(run_id))
            if item is not None and item.get("notified_at") == at:
                del item["notified_at"]
