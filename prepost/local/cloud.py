"""An AWS account on this machine: moto, plus what moto lacks, plus EventBridge routing.

- moto answers EC2, DynamoDB, S3, EventBridge PutEvents, SSM SendCommand and SNS Publish
  (it keeps what was published: `notifications`).
- `BackupEmulator` answers StartBackupJob and DescribeBackupJob at the boto3 boundary
  (after botocore has validated the request against the service model).
- After each side effect the emulation schedules the events AWS would send (SSM
  invocation status, EC2 state changes, Backup job states), built from the real-shaped
  samples in `events/`, with the outcomes and durations of `Behaviour`.
- It is as strict as AWS where moto is lax (docs/aws-facts.md, "Emulation fidelity"):
  one backup job per resource, SSM agents that do not answer, `stopping` and `pending`
  that last and refuse the opposite change, ListCommands per command, and a record of
  which calls were refused (`refused`, `succeeded`).
- `LocalBus` delivers every event, in virtual time, to the app's handlers whose
  EventBridge patterns match it and whose rules listen on the event's bus
  (`chalicelib.patterns.listens_on`), through `chalice.test.Client`. AWS services put
  their events on the default bus; the app and operators put theirs on the stage's
  configured bus (`PREPOST_EVENT_BUS_NAME`), which is created in moto as the template
  creates it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import heapq
import itertools
import json
import os
import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import botocore
from botocore.awsrequest import AWSResponse

from chalicelib.models.events import APP_SOURCE
from chalicelib.patterns import DEFAULT_BUS, capture_queue_name, listens_on
from chalicelib.store import Store
from prepost.local import ROOT, STAGE
from prepost.local.clock import VirtualClock
from prepost.local.fast_dynamodb import FastDynamoDB
from prepost.local.ledger import (
    DEFAULT_LATENCY_SECONDS,
    LATENCY_SECONDS,
    READS,
    WRITES,
    Ledger,
    written_keys,
)
from prepost.local.memory_store import InMemoryStateStore
from prepost.local.moto_speedups import speedups
from prepost.local.patterns import matches
from prepost.samples import load_event

ACCOUNT = "123456789012"
AMI = "ami-12c6146b"
LAMBDA_ASYNC_RETRIES = 2
# StatusDetails values whose API Status is another word (GetCommandInvocation).
SSM_STATUS_DETAILS = {
    "Undeliverable": "Failed",
    "Delivery Timed Out": "TimedOut",
    "Execution Timed Out": "Failed",
    "Terminated": "Failed",
    "Access Denied": "Failed",
}
# SSM: a command not delivered by its total timeout (delivery timeout `TimeoutSeconds`,
# 3600 s when absent, plus the document's execution timeout, 3600 s by default) ends
# Delivery Timed Out; an agent that does not answer makes it Delayed meanwhile.
SSM_DEFAULT_DELIVERY_TIMEOUT = 3600
SSM_DEFAULT_EXECUTION_TIMEOUT = 3600
SSM_DELAYED_AFTER = 60
# AWS Backup runs one job per resource; a job started while another runs waits, and
# expires at the end of its start window (8 hours by default) with this message.
BACKUP_ACTIVE_STATES = ("CREATED", "PENDING", "RUNNING", "ABORTING")
BACKUP_TERMINAL = ("COMPLETED", "FAILED", "ABORTED", "EXPIRED", "PARTIAL")
BACKUP_DEFAULT_START_WINDOW_MINUTES = 8 * 60
BACKUP_SAME_RESOURCE = "Backup job failed because there was a running job for the same resource."
# EC2 instance state codes (botocore `InstanceState.Code`).
EC2_STATE_CODES = {
    "pending": 0,
    "running": 16,
    "shutting-down": 32,
    "terminated": 48,
    "stopping": 64,
    "stopped": 80,
}
# The states from which EC2 refuses a power change with IncorrectInstanceState.
EC2_REFUSED_FROM = {
    "StartInstances": ("stopping", "shutting-down", "terminated"),
    "StopInstances": ("pending", "shutting-down", "terminated"),
}
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    # moto would build its catalogue of ~7,800 public AMIs for every new account: the
    # simulated fleet needs none of them.
    "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
}


@dataclass
class Behaviour:
    """How the simulated fleet and services behave. Durations in virtual seconds."""

    script_seconds: float = 30
    # Script duration per instance id, where it differs from `script_seconds`.
    script_seconds_by_instance: dict[str, float] = field(default_factory=dict)
    stop_seconds: float = 45
    start_seconds: float = 40
    backup_seconds: float = 2 * 3600
    # A backup job goes from CREATED to RUNNING this long after it is started, and its AMI
    # and the EBS snapshots that AMI lists appear this long after it runs (AWS documents
    # neither figure); the snapshots stay `pending` until the job completes.
    backup_run_seconds: float = 60
    backup_image_seconds: float = 30
    # Instances whose jobs never leave CREATED: they expire at the end of the start window.
    backup_never_runs: set[str] = field(default_factory=set)
    # Instances one of whose snapshots fails (`error`): their jobs end FAILED.
    snapshot_fails: set[str] = field(default_factory=set)
    # Instances given one more EBS volume right after their backup job was created (after
    # the freeze or the stop): the job's AMI does not hold it.
    volume_attached_after_freeze: set[str] = field(default_factory=set)
    # Instances whose jobs, asked for a Windows VSS backup, take a regular one instead (AWS
    # Backup falls back when VSS fails: docs/aws-facts.md).
    vss_fails: set[str] = field(default_factory=set)
    # Final SSM invocation status per (instance id, phase); default Success.
    script_status: dict[tuple[str, str], str] = field(default_factory=dict)
    # Final backup job state per instance id; default COMPLETED.
    backup_state: dict[str, str] = field(default_factory=dict)
    # Error code that EC2 answers to (instance id, "StopInstances" or "StartInstances").
    power_errors: dict[tuple[str, str], str] = field(default_factory=dict)
    # Error code that SSM answers a SendCommand naming this instance id with.
    send_command_errors: dict[str, str] = field(default_factory=dict)
    # Events that AWS never delivers (AWS Backup documents its events as best effort).
    lose_event: Callable[[dict[str, Any]], bool] | None = None
    # Virtual seconds between runs of the scheduled reconciler; None: it never runs.
    reconcile_every: float | None = 300
    # How many times EventBridge delivers an event (at least once: 1 is the minimum).
    copies: Callable[[dict[str, Any]], int] | None = None
    # Deliver the copies of an event at the same moment, from threads.
    concurrent_copies: bool = False
    # Virtual seconds by which an event is late (so events arrive out of order).
    delay: Callable[[dict[str, Any]], float] | None = None
    # The handler dies right after this AWS call succeeds, this many times
    # (e.g. {"SendCommand": 1}): the call's effect happened, its record did not.
    crash_after: dict[str, int] = field(default_factory=dict)
    # The named handler dies right after its n-th successful call of the operation
    # (counted over its invocations from when this is set), once: e.g.
    # {("run_scripts", "UpdateItem"): 3} dies half-way through marking a phase's members.
    crash_at_call: dict[tuple[str, str], int] = field(default_factory=dict)
    # EventBridge refuses the entries of this detail-type, this many times
    # (PutEvents answers with FailedEntryCount and the entry's ErrorCode InternalFailure).
    refuse_events: dict[str, int] = field(default_factory=dict)
    # Instances whose SSM Agent does not answer: a command sent to them stays Pending,
    # then Delayed, and times out undelivered unless `LocalCloud.set_agent_online`
    # brings the agent back before the command expires.
    agent_offline: set[str] = field(default_factory=set)
    # Transient refusals: the error codes answered in turn to the calls of an operation
    # ("SendCommand", "StopInstances", "StartInstances") naming the instance id, one
    # per call ("": that call goes through); then the calls go through.
    refuse_calls: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    # Virtual seconds an instance spends shutting down before it is terminated.
    terminate_seconds: float = 30
    # EC2's resource token buckets, by operation ("StopInstances", "StartInstances"):
    # (tokens when full, refilled per second), one token per instance a call names; a
    # call naming more than the bucket holds is refused RequestLimitExceeded. Empty: no
    # limit (AWS's are 1000 and 20 or 2 a second: docs/aws-facts.md).
    ec2_buckets: dict[str, tuple[int, float]] = field(default_factory=dict)
    # Virtual seconds DescribeInstances lists a terminated instance: about an hour on AWS
    # (docs/aws-facts.md), then it is absent from the answer.
    terminated_visible_seconds: float = 3600
    # Every n-th TransactWriteItems of a handler is cancelled for a TransactionConflict
    # (another request on one of its items at that moment), as DynamoDB does under
    # contention; 0: never.
    transaction_conflict_every: int = 0


@dataclass
class Invocation:
    """One instance's copy of a command, as SSM tracks it."""

    final: str  # the status it ends with once run (HANG: it never ends)
    seconds: float  # how long it runs once the agent has it
    expires: datetime  # the command's total timeout: undelivered by then, it times out
    started: datetime | None = None  # when the agent got it; None while undelivered
    delayed_from: datetime | None = None  # the agent did not answer: Delayed from then

    def status(self, now: datetime) -> str:
        """Its status now: an API Status, or a StatusDetails name where they differ."""
        if self.started is None:
            if now >= self.expires:
                return "Delivery Timed Out"
            if self.delayed_from is not None and now >= self.delayed_from:
                return "Delayed"
            return "Pending"
        if self.final == HANG or now < self.started + timedelta(seconds=self.seconds):
            return "InProgress"
        return self.final


# The handler the current thread is running, if any (set around each invocation).
_HANDLER: contextvars.ContextVar[str | None] = contextvars.ContextVar("handler", default=None)
# The serial number of the invocation the current thread is running (for the ledger).
_INVOCATION: contextvars.ContextVar[int | None] = contextvars.ContextVar("invocation", default=None)


class SimulatedCrash(BaseException):
    """The Lambda function died (timeout, out of memory) right after an AWS call.

    A BaseException, as a real death is not an exception at all: no `except Exception` of
    the code under test (the reconciler's per-item containment, the scheduler's) may catch
    it and carry on in a function that no longer exists."""


# The AWS managed key of EBS (`LocalCloud.launch(volume_key=...)`).
AWS_MANAGED_EBS_KEY = "alias/aws/ebs"
HANG = "Hang"  # a script status that never ends: the invocation stays InProgress


def stage_environment(stage: str) -> dict[str, str]:
    """The environment variables `.chalice/config.json` gives a stage."""
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    env = dict(config.get("environment_variables", {}))
    env.update(config["stages"][stage].get("environment_variables", {}))
    return env


def _ok(parsed: dict[str, Any]) -> tuple[AWSResponse, dict[str, Any]]:
    parsed.setdefault("ResponseMetadata", {"HTTPStatusCode": 200, "RequestId": str(uuid.uuid4())})
    return AWSResponse("https://localhost", 200, {}, None), parsed


def _error(code: str, message: str, status: int = 400) -> tuple[AWSResponse, dict[str, Any]]:
    return AWSResponse("https://localhost", status, {}, None), {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }


STOPPABLE_JOB_STATES = frozenset({"CREATED", "PENDING", "RUNNING"})


class BackupEmulator:
    """AWS Backup jobs, which moto does not implement."""

    def __init__(self, cloud: LocalCloud) -> None:
        self._cloud = cloud
        self.vaults: set[str] = set()
        self.jobs: dict[str, dict[str, Any]] = {}
        self._by_token: dict[str, str] = {}
        # Error codes to answer StartBackupJob with, in turn, per instance id.
        self.refuse: dict[str, list[str]] = {}
        # Instance ids whose jobs are past the point where StopBackupJob can stop them:
        # it is refused and the job goes on to its final state.
        self.unstoppable: set[str] = set()
        # How long a stopped job stays ABORTING before it is ABORTED.
        self.abort_seconds: float = 120
        # The AMIs completed EC2 jobs produced (image id -> its tags: the recovery point's).
        self.images: dict[str, dict[str, str]] = {}

    def start_backup_job(self, params: dict[str, Any]) -> tuple[AWSResponse, dict[str, Any]]:
        vault = params["BackupVaultName"]
        if vault not in self.vaults:
            return _error("ResourceNotFoundException", f"Backup vault {vault} does not exist")
        refusals = self.refuse.get(params["ResourceArn"].rsplit("/", 1)[-1])
        if refusals:
            return _error(refusals.pop(0), "refused (simulated)")
        token = params.get("IdempotencyToken")
        if token and token in self._by_token:  # AWS: same token, same job
            job = self.jobs[self._by_token[token]]
            return _ok({"BackupJobId": job["BackupJobId"], "CreationDate": job["CreationDate"]})
        clock = self._cloud.clock
        job_id = self._cloud.new_id().upper()
        instance_id = params["ResourceArn"].rsplit("/", 1)[-1]
        final = self._cloud.behaviour.backup_state.get(instance_id, "COMPLETED")
        window = params.get("StartWindowMinutes", BACKUP_DEFAULT_START_WINDOW_MINUTES)
        job = {
            "AccountId": ACCOUNT,
            "BackupJobId": job_id,
            "BackupVaultName": vault,
            "BackupVaultArn": self._cloud.arn("backup", f"backup-vault:{vault}"),
            "ResourceArn": params["ResourceArn"],
            "ResourceType": "EC2",
            "IamRoleArn": params["IamRoleArn"],
            "CreationDate": clock.now(),
            "State": "CREATED",
            "RecoveryPointTags": params.get("RecoveryPointTags", {}),
            "IdempotencyToken": token,
            "StartBy": clock.after(60 * window),
            "FinalState": final,
            "Queued": False,
        }
        job["Volumes"] = self._cloud.attached_volumes(instance_id)
        if params.get("BackupOptions", {}).get("WindowsVSS") == "enabled":
            job["BackupOptions"] = dict(params["BackupOptions"])
        if instance_id in self._cloud.behaviour.volume_attached_after_freeze:
            self._cloud.schedule(1, lambda: self._cloud.attach_volume(instance_id) and None)
        busy = self._active_on(params["ResourceArn"])
        self.jobs[job_id] = job
        if token:
            self._by_token[token] = job_id
        self._cloud.schedule(5, self._job_event, job_id, "CREATED")
        if busy:  # one job per resource: this one waits, and expires if it never starts
            job["Queued"] = True
            self._cloud.schedule(60 * window, self._expire_if_queued, job_id)
        else:
            self._run(job_id)
        return _ok({"BackupJobId": job_id, "CreationDate": clock.now(), "IsParent": False})

    def _active_on(self, resource_arn: str) -> bool:
        return any(
            job["ResourceArn"] == resource_arn
            and job["State"] in BACKUP_ACTIVE_STATES
            and not job["Queued"]
            for job in self.jobs.values()
        )

    def _run(self, job_id: str) -> None:
        job, behaviour = self.jobs[job_id], self._cloud.behaviour
        job["Queued"] = False
        if job["ResourceArn"].rsplit("/", 1)[-1] in behaviour.backup_never_runs:
            window = (job["StartBy"] - self._cloud.clock.now()).total_seconds()
            expired = "Backup job expired before it could start (simulated)"
            self._cloud.schedule(window, self._job_event, job_id, "EXPIRED", expired)
            return
        run = behaviour.backup_run_seconds
        self._cloud.schedule(run, self._job_event, job_id, "RUNNING")
        self._cloud.schedule(run + behaviour.backup_image_seconds, self._make_image, job_id)
        ends = max(behaviour.backup_seconds, run + behaviour.backup_image_seconds + 1)
        self._cloud.schedule(ends, self._job_ends, job_id)

    def _job_ends(self, job_id: str) -> dict[str, Any] | None:
        """The job reaches its final state (as decided by then: a failed snapshot fails it)."""
        return self._job_event(job_id, self.jobs[job_id]["FinalState"])

    def _make_image(self, job_id: str) -> None:
        """The running job makes its AMI: a snapshot of each volume the instance had when
        the job was created, `pending` and initiated now, in moto's EC2, tagged with the
        job's recovery point tags (AWS Backup copies them to the AMI)."""
        job = self.jobs[job_id]
        if job["State"] != "RUNNING" or job.get("StopRequested"):
            return
        instance_id = job["ResourceArn"].rsplit("/", 1)[-1]
        image_id = "ami-" + self._cloud.new_id().replace("-", "")[:17]
        fails = instance_id in self._cloud.behaviour.snapshot_fails
        job["ImageId"] = image_id
        job["Snapshots"] = self._cloud.make_backup_image(
            image_id, job["Volumes"], dict(job["RecoveryPointTags"]), fails
        )
        fails = fails or len(job["Snapshots"]) < len(job["Volumes"])
        self.images[image_id] = dict(job["RecoveryPointTags"])
        if not fails:  # the moment its data was captured (for the property test's invariants)
            job["CapturedAt"] = self._cloud.clock.now()
        if fails:
            job["FinalState"] = "FAILED"
            job["FailMessage"] = "A snapshot of the instance's volumes failed (simulated)"

    def _expire_if_queued(self, job_id: str) -> dict[str, Any] | None:
        if not self.jobs[job_id]["Queued"]:
            return None
        self.jobs[job_id]["Queued"] = False
        return self._job_event(job_id, "EXPIRED", BACKUP_SAME_RESOURCE)

    def _start_next(self, resource_arn: str) -> None:
        """The resource's job is over: the oldest job waiting for it starts."""
        now = self._cloud.clock.now()
        for job_id, job in self.jobs.items():
            if job["ResourceArn"] == resource_arn and job["Queued"] and now < job["StartBy"]:
                self._run(job_id)
                return

    def list_backup_jobs(self, params: dict[str, Any]) -> tuple[AWSResponse, dict[str, Any]]:
        """ListBackupJobs with its ByResourceArn, ByState, ByBackupVaultName,
        ByCreatedAfter and ByCreatedBefore filters, in pages of MaxResults (1 to 1000)
        with a NextToken, oldest first."""
        wanted = {
            "ResourceArn": params.get("ByResourceArn"),
            "State": params.get("ByState"),
            "BackupVaultName": params.get("ByBackupVaultName"),
        }
        after, before = params.get("ByCreatedAfter"), params.get("ByCreatedBefore")
        jobs = [
            self._visible(job)
            for job in sorted(self.jobs.values(), key=lambda job: job["CreationDate"])
            if all(value is None or job.get(key) == value for key, value in wanted.items())
            and (after is None or job["CreationDate"] > after)
            and (before is None or job["CreationDate"] < before)
        ]
        size = int(params.get("MaxResults") or 1000)
        if not 1 <= size <= 1000:
            return _error("InvalidParameterValueException", "MaxResults is 1 to 1000")
        first = int(params.get("NextToken") or 0)
        page: dict[str, Any] = {"BackupJobs": jobs[first : first + size]}
        if first + size < len(jobs):
            page["NextToken"] = str(first + size)
        return _ok(page)

    def describe_backup_job(self, params: dict[str, Any]) -> tuple[AWSResponse, dict[str, Any]]:
        job = self.jobs.get(params["BackupJobId"])
        if job is None:
            return _error("ResourceNotFoundException", "no such backup job")
        return _ok(self._visible(job))

    @staticmethod
    def _visible(job: dict[str, Any]) -> dict[str, Any]:
        hidden = ("FinalState", "IdempotencyToken", "StopRequested", "Queued", "Volumes",
                  "ImageId", "Snapshots", "FailMessage", "CapturedAt")  # fmt: skip
        return {k: v for k, v in job.items() if k not in hidden}

    def stop_backup_job(self, params: dict[str, Any]) -> tuple[AWSResponse, dict[str, Any]]:
        """StopBackupJob: a CREATED, PENDING or RUNNING job goes ABORTING now and ABORTED
        later (its scheduled states no longer happen); any other is refused."""
        job = self.jobs.get(params["BackupJobId"])
        if job is None:
            return _error("ResourceNotFoundException", "no such backup job")
        instance_id = job["ResourceArn"].rsplit("/", 1)[-1]
        if job["State"] not in STOPPABLE_JOB_STATES or instance_id in self.unstoppable:
            return _error("InvalidRequestException", f"job in state {job['State']} cannot stop")
        job["State"], job["StopRequested"], job["Queued"] = "ABORTING", True, False
        self._cloud.schedule(self.abort_seconds, self._job_event, job["BackupJobId"], "ABORTED")
        return _ok({})

    def create_tags(self, params: dict[str, Any]) -> tuple[AWSResponse, dict[str, Any]] | None:
        """EC2 CreateTags on the AMIs of recovery points (moto does not know them; any other
        resource is left to moto: None). An unknown AMI is refused, as EC2 does."""
        images = [r for r in params["Resources"] if r.startswith("ami-")]
        if not images:
            return None
        unknown = [image for image in images if image not in self.images]
        if unknown:
            return _error("InvalidAMIID.NotFound", f"The image id '[{unknown[0]}]' does not exist")
        for image in images:
            self.images[image].update({tag["Key"]: tag["Value"] for tag in params["Tags"]})
        return _ok({})

    def recovery_point_tags(self, recovery_point_arn: str) -> dict[str, str]:
        """The tags of a recovery point (for tests)."""
        return dict(self.images[recovery_point_arn.rsplit("/", 1)[-1]])

    def _job_event(
        self, job_id: str, state: str, message: str | None = None
    ) -> dict[str, Any] | None:
        job = self.jobs[job_id]
        if job["State"] not in BACKUP_ACTIVE_STATES:  # over already: nothing to announce
            return None
        if job.get("StopRequested") and state != "ABORTED":
            return None  # stopped: the states it was going through no longer happen
        if job["Queued"] and state != "CREATED":
            return None
        job["State"] = state
        message = message or (job.get("FailMessage") if state == "FAILED" else None)
        if message:
            job["StatusMessage"] = message
        if state not in BACKUP_ACTIVE_STATES:
            self._start_next(job["ResourceArn"])
        event = load_event(
            "aws-backup-job-completed" if state == "COMPLETED" else "aws-backup-job-failed"
        )
        detail = event["detail"]
        detail.update(
            backupJobId=job_id,
            state=state,
            resourceArn=job["ResourceArn"],
            backupVaultName=job["BackupVaultName"],
            backupVaultArn=job["BackupVaultArn"],
            iamRoleArn=job["IamRoleArn"],
            creationDate=_iso(job["CreationDate"]),
        )
        event["resources"] = []
        if state in BACKUP_TERMINAL and job.get("ImageId"):
            self._cloud.finish_backup_image(job["ImageId"], job["Snapshots"], state == "COMPLETED")
        if state == "COMPLETED":
            image = job.get("ImageId") or "ami-" + self._cloud.new_id().replace("-", "")[:17]
            job["RecoveryPointArn"] = f"arn:aws:ec2:{self._cloud.region}::image/{image}"
            self.images.setdefault(image, dict(job["RecoveryPointTags"]))
            event["resources"] = [job["RecoveryPointArn"]]
            detail["completionDate"] = _iso(self._cloud.clock.now())
            if job.get("BackupOptions"):
                vss_failed = (
                    job["ResourceArn"].rsplit("/", 1)[-1] in self._cloud.behaviour.vss_fails
                )
                job["BackupType"] = "" if vss_failed else "WindowsVSS"
                if vss_failed:
                    job["StatusMessage"] = (
                        "Windows VSS Backup Job Error encountered, trying for regular backup"
                    )
        elif state in ("FAILED", "ABORTED", "EXPIRED", "PARTIAL"):
            detail["statusMessage"] = f'"{message or f"Backup job {state.lower()} (simulated)"}"'
        else:
            for key in ("statusMessage", "completionDate", "retryCount"):
                detail.pop(key, None)
        return event


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


class LocalCloud:
    """The whole local account. Use as a context manager."""

    def __init__(
        self,
        behaviour: Behaviour | None = None,
        region: str = "us-east-1",
        stage: str = STAGE,
        clock: VirtualClock | None = None,
        store: str = "dynamodb",
        seed: int = 0,
    ) -> None:
        """`store`: "dynamodb" (moto's) or "memory" (the same transitions on dicts, for
        big runs)."""
        self._store_kind = store
        # Ids the emulation makes (events, jobs) come from this, so a run repeats exactly.
        self._random = random.Random(seed)
        self._seed = seed
        self.behaviour = behaviour or Behaviour()
        self.region = region
        self.stage = stage
        self.clock = clock or VirtualClock()
        self.clock.on_sleep = self._waited
        self.backup = BackupEmulator(self)
        # Every call attempted (params as sent); `refused` holds those answered with an
        # error, with its code; `succeeded` the others.
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.refused: list[tuple[str, str, dict[str, Any], str]] = []
        self._refused_ids: set[int] = set()
        self._terminated_at: dict[str, datetime] = {}  # when each instance was terminated
        self._bucket_state: dict[str, tuple[float, datetime]] = {}  # tokens, as of when
        # (handler, service, operation, params) of the calls the handlers made.
        self.handler_calls: list[tuple[str, str, str, dict[str, Any]]] = []
        self.invocations: Counter[str] = Counter()
        self.emitted: list[dict[str, Any]] = []
        # (handler, event, error) of invocations that failed after Lambda's retries.
        self.dead_letters: list[tuple[str, dict[str, Any], BaseException]] = []
        # (virtual time, what happened): AWS calls other than the state table, and events.
        self.timeline: list[tuple[datetime, str]] = []
        self._queue: list[tuple[datetime, int, Any, tuple[Any, ...]]] = []
        self._queue_lock = threading.Lock()
        self._sequence = itertools.count()
        self._saved_env: dict[str, str | None] = {}
        # Stage configuration keys a test changed (`configure_stage`), for the policy check.
        self.stage_overrides: dict[str, str] = {}
        self._ticking = False
        self._delayed: set[str] = set()
        # (command id, instance id) -> its invocation
        self.invocations_ssm: dict[tuple[str, str], Invocation] = {}
        # moto's EC2 instances by id (`_moto_instances`)
        self._instances: dict[str, Any] = {}
        # command id -> the command as SendCommand made it (ListCommands answers from it)
        self.commands: dict[str, dict[str, Any]] = {}
        # The bench's books (`prepost.local.ledger`), when it keeps them.
        self.ledger: Ledger | None = None
        self._transactions = 0  # the handlers' TransactWriteItems (Behaviour's conflicts)
        self._invocation_serial = itertools.count()

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> LocalCloud:
        from moto import mock_aws
        from moto.moto_api._internal import mock_random

        # moto's ids (instances, commands) from the seed too: the same schedule repeats.
        mock_random.seed(self._seed)

        env = FAKE_CREDENTIALS | {"AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region}
        env |= stage_environment(self.stage)
        # The capture polls' queue (the packaged template gives each stage its own).
        queue = capture_queue_name(self.stage)
        env.setdefault("PREPOST_CAPTURE_QUEUE_URL",
                       f"https://sqs.{self.region}.amazonaws.com/{ACCOUNT}/{queue}")  # fmt: skip
        for key, value in env.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        self._mock = mock_aws()
        self._mock.start()
        self._speedups = speedups()
        self._speedups.__enter__()
        self.session = _hooked_session(self.region)
        LocalCloud.active = self
        self.table_name = env["PREPOST_TABLE_NAME"]
        self._create_bus(env.get("PREPOST_EVENT_BUS_NAME", DEFAULT_BUS))
        self.opt_in_tag = env["PREPOST_OPT_IN_TAG"]  # key=value

        from chalice.test import Client

        from app import app
        from chalicelib import dependencies
        from chalicelib.gateways.state_store import create_table

        create_table(self.session.client("dynamodb"), self.table_name)
        self._memory = (
            InMemoryStateStore(after_write=self._crash_if_due)
            if self._store_kind == "memory"
            else None
        )
        dependencies.configure(session=self.session, clock=self.clock, store=self._memory)
        self.app = app
        self._chalice = Client(app, stage_name=self.stage, project_dir=str(ROOT))
        self._chalice.lambda_._patched_env_vars = _SharedEnvironment()  # type: ignore[method-assign]
        # The emulation's own look-ups go through a session without the hooks, so that
        # they are not taken for the app's calls.
        self.ec2 = _plain(self.region, "ec2")
        self.calls.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        from chalicelib import dependencies

        LocalCloud.active = None
        dependencies.configure()
        self._speedups.__exit__(None, None, None)
        self._mock.stop()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    @property
    def store(self) -> Store:
        from chalicelib.dependencies import services

        return services().store

    def new_id(self) -> str:
        """A UUID from the cloud's seed (fault decisions hash event ids)."""
        return str(uuid.UUID(int=self._random.getrandbits(128), version=4))

    def plain_client(self, service: str) -> Any:
        """A client of this cloud's region without the emulation's hooks (what a person
        inspecting the account would use: its calls are neither recorded nor faulted)."""
        return _plain(self.region, service)

    def arn(self, service: str, resource: str) -> str:
        return f"arn:aws:{service}:{self.region}:{ACCOUNT}:{resource}"

    # -- the fleet -------------------------------------------------------------------------

    def launch(
        self,
        count: int,
        tags: dict[str, str] | None = None,
        state: str = "running",
        opt_in: bool = True,
        volume_key: str | None = None,
        ids: list[str] | None = None,
    ) -> list[str]:
        """Launch `count` instances in one reservation; stop them if `state` is stopped.
        They carry the deployment's opt-in tag unless `opt_in` is false. With `volume_key`
        (a KMS key ARN, or `AWS_MANAGED_EBS_KEY`) each has an EBS volume encrypted with
        that key. With `ids` (unused EC2 instance ids, as many as `count`) the instances
        have those ids instead of moto's random ones."""
        spec: dict[str, Any] = {"ImageId": AMI, "MinCount": count, "MaxCount": count}
        if volume_key:
            ebs: dict[str, Any] = {"VolumeSize": 8, "Encrypted": True}
            if volume_key != AWS_MANAGED_EBS_KEY:  # else EBS's default key, as in AWS
                ebs["KmsKeyId"] = volume_key
            spec["BlockDeviceMappings"] = [{"DeviceName": "/dev/sdf", "Ebs": ebs}]
        tags = dict(tags or {})
        if opt_in:
            key, _, value = self.opt_in_tag.partition("=")
            tags[key] = value
        if tags:
            spec["TagSpecifications"] = [
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                }
            ]
        with _instance_ids(ids, count, self.region), _lean_launch():
            ids = [i["InstanceId"] for i in self.ec2.run_instances(**spec)["Instances"]]
        if state == "stopped":
            self.ec2.stop_instances(InstanceIds=ids)
        elif state == "terminated":
            self.ec2.terminate_instances(InstanceIds=ids)
        # The fleet is set up through the plain client, so it queued no events; the
        # run's queued events (and the reconciler's tick) stay.
        self.calls.clear()
        return ids

    def terminate(self, instance_ids: list[str], after: float = 0) -> None:
        """Terminate the instances `after` virtual seconds from now, as someone outside
        the run would: EC2 sends shutting-down, then terminated."""
        self.schedule(after, self._terminate_now, list(instance_ids))
        self._keep_ticking()

    def _terminate_now(self, instance_ids: list[str]) -> None:
        self.ec2.terminate_instances(InstanceIds=instance_ids)
        for instance_id in instance_ids:
            self._set_state(instance_id, "shutting-down")
            self.deliver(self._ec2_event(instance_id, "shutting-down"))
            self.schedule(
                self.behaviour.terminate_seconds,
                self._ec2_transition,
                instance_id,
                "shutting-down",
                "terminated",
            )

    def set_agent_online(self, instance_id: str, after: float = 0) -> None:
        """Bring the instance's SSM Agent back `after` virtual seconds from now: the
        commands waiting for it run then, unless they have expired."""
        self.schedule(after, self._agent_back, instance_id)

    def _agent_back(self, instance_id: str) -> None:
        self.behaviour.agent_offline.discard(instance_id)
        now = self.clock.now()
        for (command_id, target), invocation in self.invocations_ssm.items():
            if target == instance_id and invocation.started is None and now < invocation.expires:
                self._deliver_command(command_id, instance_id, invocation, delay=0)

    def create_kms_key(self) -> str:
        """A customer managed KMS key (moto's) for encrypting volumes; its ARN."""
        kms = _plain(self.region, "kms")
        return str(kms.create_key(Description="prepost-backup test volumes")["KeyMetadata"]["Arn"])

    def volume_keys(self, instance_id: str) -> list[str]:
        """The customer managed KMS keys of the instance's EBS volumes (not the AWS
        managed `aws/ebs`, whose key policy lets EC2 use it for any principal of the
        account)."""
        volumes = self.ec2.describe_volumes(
            Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}]
        )["Volumes"]
        keys = {v["KmsKeyId"] for v in volumes if v.get("Encrypted") and v.get("KmsKeyId")}
        if not keys:
            return []
        kms = _plain(self.region, "kms")
        aws_managed = {
            alias.get("TargetKeyId")
            for alias in kms.list_aliases()["Aliases"]
            if alias["AliasName"].startswith("alias/aws/")
        }
        return sorted(key for key in keys if key.rsplit("/", 1)[-1] not in aws_managed)

    def create_vault(self, name: str) -> None:
        self.backup.vaults.add(name)

    def create_bucket(self, name: str) -> None:
        """An S3 bucket in moto (nothing if this account has it already)."""
        s3 = _plain(self.region, "s3")
        if name in {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}:
            return
        where = {} if self.region == "us-east-1" else {"LocationConstraint": self.region}
        s3.create_bucket(Bucket=name, **({"CreateBucketConfiguration": where} if where else {}))

    def put_object(self, bucket: str, key: str, body: bytes) -> None:
        """An S3 object in moto, its bucket created if need be."""
        self.create_bucket(bucket)
        s3 = _plain(self.region, "s3")
        s3.put_object(Bucket=bucket, Key=key, Body=body)

    def create_backup_role(self, name: str, path: str = "/") -> str:
        """An IAM role AWS Backup may assume, in moto (this account's, as is); its ARN."""
        iam = _plain(self.region, "iam")
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "backup.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        try:
            return str(iam.get_role(RoleName=name)["Role"]["Arn"])
        except iam.exceptions.NoSuchEntityException:
            role = iam.create_role(
                RoleName=name, Path=path, AssumeRolePolicyDocument=json.dumps(trust)
            )
            return str(role["Role"]["Arn"])

    def configure_stage(self, **keys: str) -> None:
        """Set stage configuration keys, as `.chalice/config.json` would, for the rest of
        this cloud's life; the policy coverage check renders the policies with them too."""
        from chalicelib import dependencies

        for key, value in keys.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        self.stage_overrides.update(keys)
        dependencies.configure(session=self.session, clock=self.clock, store=self._memory)
        # Read the settings now: under an invocation, Chalice's test client would lay the
        # stage's configuration from disk over these keys.
        dependencies.services()
        if "PREPOST_EVENT_BUS_NAME" in keys:
            self._create_bus(keys["PREPOST_EVENT_BUS_NAME"])

    @property
    def app_bus(self) -> str:
        """The stage's configured bus, where the app puts its events and operators theirs."""
        from chalicelib.dependencies import services

        return services().settings.event_bus_name

    def _create_bus(self, name: str) -> None:
        """A dedicated bus, as the packaged template creates it (moto refuses PutEvents to
        a bus that does not exist, as AWS does)."""
        if name == DEFAULT_BUS:
            return
        events = _plain(self.region, "events")
        if name not in {bus["Name"] for bus in events.list_event_buses()["EventBuses"]}:
            events.create_event_bus(Name=name)

    def notify_topic(self, notify_on: str = "failures", name: str = "ops-notifications") -> str:
        """Create an SNS topic and have the app notify it (`notify_on`: failures, always)."""
        sns = _plain(self.region, "sns")
        topic_arn = str(sns.create_topic(Name=name)["TopicArn"])
        self.configure_stage(PREPOST_NOTIFY_TOPIC_ARN=topic_arn, PREPOST_NOTIFY_ON=notify_on)
        return topic_arn

    def notifications(self, topic_arn: str) -> list[tuple[str | None, str]]:
        """(subject, message) of every message published to `topic_arn`, oldest first."""
        from moto.sns.models import sns_backends

        topic = sns_backends[ACCOUNT][self.region].topics[topic_arn]
        return [(subject, message) for _, message, subject, *_ in topic.sent_notifications]

    def state_of(self, instance_id: str) -> str:
        return self.states_of([instance_id])[instance_id]

    def states_of(self, instance_ids: list[str]) -> dict[str, str]:
        """The EC2 state of each instance, read from the emulated EC2 itself (the app's
        own DescribeInstances calls go through the API as usual)."""
        instances = self._moto_instances(instance_ids)
        return {i: str(instances[i].state) for i in instance_ids}

    def _moto_instances(self, instance_ids: list[str]) -> dict[str, Any]:
        """moto's instances of these ids (KeyError for an unknown id). moto keeps each
        instance object for good, so they are indexed once, and again for a new id."""
        from moto.ec2.models import ec2_backends

        if not self._instances.keys() >= set(instance_ids):
            backend = ec2_backends[ACCOUNT][self.region]
            self._instances = {i.id: i for i in backend.all_instances()}
        return {i: self._instances[i] for i in instance_ids}

    # -- EBS volumes, snapshots and the AMIs of backup jobs (in moto's EC2) ----------------

    def attached_volumes(self, instance_id: str) -> list[str]:
        """The EBS volumes attached to the instance now (none if it is gone)."""
        try:
            instance = self._moto_instances([instance_id])[instance_id]
        except KeyError:
            return []
        return [m.volume_id for m in instance.block_device_mapping.values() if m.volume_id]

    def attach_volume(self, instance_id: str) -> str:
        """Attach a new 8 GiB EBS volume to the instance; its id."""
        from moto.ec2.models import ec2_backends

        backend = ec2_backends[ACCOUNT][self.region]
        instance = self._moto_instances([instance_id])[instance_id]
        volume = backend.create_volume(size=8, zone_name=instance.placement)
        device = f"/dev/sd{'fghijklmnop'[len(instance.block_device_mapping) % 11]}"
        backend.attach_volume(volume.id, instance_id, device)
        self.timeline.append((self.clock.now(), f"volume {volume.id} attached to {instance_id}"))
        return volume.id

    def make_backup_image(
        self, image_id: str, volume_ids: list[str], tags: dict[str, str], one_fails: bool
    ) -> list[str]:
        """An AMI listing a new snapshot of each volume, initiated now (virtual time) and
        `pending` (the first one `error` if `one_fails`); the snapshot ids."""
        from moto.ec2.models import ec2_backends

        backend = ec2_backends[ACCOUNT][self.region]
        started = self.clock.now().astimezone(UTC).replace(tzinfo=None)  # moto's naive UTC
        snapshots = []
        for n, volume_id in enumerate(volume_ids):
            if volume_id not in backend.volumes:  # deleted meanwhile (its instance terminated)
                one_fails = True
                continue
            snapshot = backend.create_snapshot(volume_id, f"AWS Backup snapshot for {image_id}")
            snapshot.start_time = started
            snapshot.status = "error" if one_fails and n == 0 else "pending"
            snapshots.append(snapshot)
        image = _BackupImage(backend, image_id, [s.id for s in snapshots], tags)
        backend.amis[image_id] = image
        made = f"{len(snapshots)} snapshot" + ("s" if len(snapshots) != 1 else "")
        self.timeline.append((self.clock.now(), f"image made by a backup job, {made} pending"))
        return [s.id for s in snapshots]

    def finish_backup_image(self, image_id: str, snapshot_ids: list[str], completed: bool) -> None:
        """The job ended: its snapshots complete (or stay failed), its AMI is available."""
        from moto.ec2.models import ec2_backends

        backend = ec2_backends[ACCOUNT][self.region]
        for snapshot_id in snapshot_ids:
            snapshot = backend.snapshots.get(snapshot_id)
            if snapshot is not None and snapshot.status == "pending":
                snapshot.status = "completed" if completed else "error"
        image = backend.amis.get(image_id)
        if image is not None:
            image.state = "available" if completed else "failed"

    def _set_state(self, instance_id: str, state: str) -> None:
        """Put the instance in `state` in moto's EC2 (moto knows no stopping or pending)."""
        _put_state(self._moto_instances([instance_id])[instance_id], state)

    def _ec2_transition(self, instance_id: str, before: str, after: str) -> dict[str, Any] | None:
        """The end of a state change, if nothing else changed the instance meanwhile."""
        if self.state_of(instance_id) != before:
            return None
        self._set_state(instance_id, after)
        if after == "terminated":
            self._terminated_at[instance_id] = self.clock.now()
        return self._ec2_event(instance_id, after)

    # -- running ---------------------------------------------------------------------------

    def start_event(self, detail: Any, event_id: str | None = None) -> dict[str, Any]:
        """The seed's start event (source prepost-backup) carrying `detail`."""
        event = load_event("start-seed-example")
        event.update(id=event_id or self.new_id(), time=_iso_s(self.clock.now()))
        event["detail"] = detail
        return event

    def run(
        self,
        detail: Any,
        event_id: str | None = None,
        max_events: int = 200_000,
        bus: str | None = None,
    ) -> str:
        """Publish a start event (on the configured bus unless `bus` says otherwise),
        deliver every event until the system is quiet; the run id."""
        from chalicelib.logic.decisions import run_id_for
        from chalicelib.models.events import AwsEvent

        event = self.start_event(detail, event_id)
        self.publish(event, bus=bus)
        self.drain(max_events)
        return run_id_for(event["id"], AwsEvent.model_validate(event).time)

    def publish(self, event: dict[str, Any], delay: float = 0, bus: str | None = None) -> None:
        """Put `event` on `bus` after `delay` virtual seconds. By default the app's events
        go on the configured bus (as operators put them), AWS service events on the
        default bus (as AWS puts them)."""
        self.schedule(delay, self.deliver, event, bus or self.bus_of(event))
        self._keep_ticking()

    def _keep_ticking(self) -> None:
        every = self.behaviour.reconcile_every
        if every is not None and not self._ticking:
            self._ticking = True
            self.schedule(every, self._tick)

    def _tick(self) -> None:
        """The scheduled reconciler; it keeps running while something is left to do."""
        # A tick with nothing due only reads the index; skipping it saves the invocation.
        if self.store.due_items(int(self.clock.now().timestamp())):
            event = load_event("aws-scheduled-event")
            event.update(id=self.new_id(), time=_iso_s(self.clock.now()))
            self.timeline.append((self.clock.now(), "tick reconcile_runs"))
            self.invoke("reconcile_runs", event)
        self._ticking = False
        far_future = int(self.clock.after(10 * 365 * 86400).timestamp())
        if self._queue or self.store.due_items(far_future):
            self._keep_ticking()

    def pass_time(self, seconds: float, max_events: int = 200_000) -> None:
        """Let `seconds` of virtual time go by with the profile scheduler ticking every few
        minutes (as its Chalice schedule does), delivering whatever follows."""
        from chalicelib.patterns import SCHEDULER_EVERY_MINUTES

        every = 60 * SCHEDULER_EVERY_MINUTES
        for n in range(1, int(seconds // every) + 1):
            self.schedule(n * every, self.scheduler_tick)
        self._keep_ticking()
        self.drain(max_events)

    def scheduler_tick(self) -> None:
        """One invocation of the profile scheduler, now."""
        event = load_event("aws-scheduled-event")
        event.update(id=self.new_id(), time=_iso_s(self.clock.now()))
        self.timeline.append((self.clock.now(), "tick start_scheduled_runs"))
        self.invoke("start_scheduled_runs", event)

    def schedule(self, delay: float, make_event: Any, *args: Any) -> None:
        """Deliver `make_event(*args)` after `delay` virtual seconds."""
        with self._queue_lock:  # handlers may run in threads
            heapq.heappush(
                self._queue, (self.clock.after(delay), next(self._sequence), make_event, args)
            )

    def drain(self, max_events: int = 200_000) -> int:
        """Deliver events in virtual-time order until none is left; how many were delivered."""
        delivered = self.step(max_events)
        if self._queue:
            raise RuntimeError(f"still busy after {max_events} events")
        return delivered

    def step(self, count: int) -> int:
        """Deliver at most `count` events in virtual-time order; how many were delivered."""
        delivered = 0
        while self._queue and delivered < count:
            due, _, make_event, args = heapq.heappop(self._queue)
            self.clock.advance_to(due)
            event = make_event(*args)
            if event is not None:  # AWS's events; a retry or a publish delivers itself
                self.deliver(event)
            delivered += 1
        return delivered

    def bus_of(self, event: dict[str, Any]) -> str:
        """Where `event` is put unless said otherwise: the app's own events on the
        configured bus, AWS service events on the default bus."""
        return self.app_bus if event.get("source") == APP_SOURCE else DEFAULT_BUS

    def deliver(self, event: dict[str, Any], bus: str | None = None) -> None:
        """Invoke every handler whose rule is on `bus` (by default `bus_of(event)`) and
        whose pattern matches `event`, as EventBridge would."""
        bus = bus or self.bus_of(event)
        delay = self.behaviour.delay(event) if self.behaviour.delay else 0
        if delay > 0 and event["id"] not in self._delayed:
            self._delayed.add(event["id"])
            self.timeline.append((self.clock.now(), f"late {event['source']} {_summary(event)}"))
            self.schedule(delay, self.deliver, event, bus)
            return
        lose = self.behaviour.lose_event
        if lose is not None and lose(event):
            self.timeline.append((self.clock.now(), f"lost {event['source']} {_summary(event)}"))
            return
        self.timeline.append((self.clock.now(), f"event {event['source']} {_summary(event)}"))
        copies = max(1, self.behaviour.copies(event) if self.behaviour.copies else 1)
        app_bus = self.app_bus
        for source in self.app.event_sources:
            pattern = getattr(source, "event_pattern", None)
            if pattern is None or listens_on(pattern, app_bus) != bus:
                continue
            if not matches(pattern, event):
                continue
            if copies > 1 and self.behaviour.concurrent_copies:
                with ThreadPoolExecutor(max_workers=copies) as pool:
                    list(pool.map(self.invoke, [source.name] * copies, [event] * copies))
            else:
                for _ in range(copies):
                    self.invoke(source.name, event)

    def invoke(self, handler: str, event: dict[str, Any], attempt: int = 0) -> None:
        """One asynchronous Lambda invocation: a failure is retried twice, a minute apart
        and then two, as Lambda does, and then kept as a dead letter."""
        self.invocations[handler] += 1
        running = _HANDLER.set(handler)
        serial = _INVOCATION.set(next(self._invocation_serial))
        try:
            self._chalice.lambda_.invoke(handler, event)
        except (Exception, SimulatedCrash) as exc:
            self.timeline.append((self.clock.now(), f"error {handler}: {exc!r}"))
            if attempt < LAMBDA_ASYNC_RETRIES:
                self.schedule(60 * (attempt + 1), self._retry, handler, event, attempt + 1)
            else:
                self.dead_letters.append((handler, event, exc))
        finally:
            _HANDLER.reset(running)
            _INVOCATION.reset(serial)

    def _retry(self, handler: str, event: dict[str, Any], attempt: int) -> None:
        self.invoke(handler, event, attempt)

    # -- the emulation's hooks ---------------------------------------------------------------

    # The hooks, on the session that the app's clients come from (see `_hooked_session`).
    HOOKS = (
        ("provide-client-params.*.*", "_record_call"),
        ("before-call.backup.StartBackupJob", "_backup_call"),
        ("before-call.backup.DescribeBackupJob", "_backup_call"),
        ("before-call.backup.ListBackupJobs", "_backup_call"),
        ("before-call.backup.StopBackupJob", "_backup_call"),
        ("before-call.ec2.CreateTags", "_backup_call"),
        ("before-call.ssm.ListCommandInvocations", "_list_command_invocations"),
        ("before-call.ssm.GetCommandInvocation", "_get_command_invocation"),
        ("before-call.ssm.ListCommands", "_list_commands"),
        ("before-call.ssm.SendCommand", "_send_command_call"),
        ("before-call.events.PutEvents", "_put_events_call"),
        ("before-call.sqs.SendMessage", "_send_message_call"),
        # On the wildcard, registered before local mode's DynamoDB (`FastDynamoDB`), whose
        # wildcard hook answers every call: botocore calls a wildcard's hooks first.
        ("before-call.dynamodb.*", "_transaction_call"),
        ("before-call.ec2.StopInstances", "_power_call"),
        ("before-call.ec2.StartInstances", "_power_call"),
        # One after-call hook, so that the emulation always reacts before a simulated crash.
        ("after-call.*.*", "_after_call"),
    )
    active: LocalCloud | None = None

    def _after_call(
        self, http_response: Any, parsed: Any, model: Any, context: Any, **_: Any
    ) -> None:
        reactions: dict[str, Callable[..., None]] = {
            "SendCommand": self._after_send_command,
            "StopInstances": self._after_stop,
            "StartInstances": self._after_start,
            "PutEvents": self._after_put_events,
            "DescribeInstances": self._after_describe_instances,
        }
        if http_response.status_code >= 300:
            self._record_refusal(parsed, model, context)
        elif self.ledger is not None and model.service_model.service_name == "dynamodb":
            self._book_dynamodb(model.name, context.get("local_params", {}), parsed)
        react = reactions.get(model.name)
        if react is not None:
            react(http_response=http_response, parsed=parsed, context=context)
        self._maybe_crash(http_response=http_response, model=model)

    def _after_describe_instances(self, parsed: Any, **_: Any) -> None:
        """An instance terminated longer ago than `Behaviour.terminated_visible_seconds`
        is no longer listed (moto lists it for good)."""
        window = timedelta(seconds=self.behaviour.terminated_visible_seconds)
        gone = {i for i, at in self._terminated_at.items() if at + window <= self.clock.now()}
        if not gone or not isinstance(parsed, dict):
            return
        for reservation in parsed.get("Reservations", []):
            instances = reservation.get("Instances", [])
            reservation["Instances"] = [i for i in instances if i["InstanceId"] not in gone]
        parsed["Reservations"] = [r for r in parsed.get("Reservations", []) if r["Instances"]]

    def _record_refusal(self, parsed: Any, model: Any, context: Any) -> None:
        record = context.get("local_record")
        if record is None:
            return
        code = str(parsed.get("Error", {}).get("Code", "")) if isinstance(parsed, dict) else ""
        self.refused.append((model.service_model.service_name, model.name, record, code))
        self._refused_ids.add(id(record))

    def _book_dynamodb(self, operation: str, params: dict[str, Any], parsed: Any) -> None:
        """Tell the ledger of a state-table call: a read's items, a write's item sizes."""
        assert self.ledger is not None
        if operation in READS:
            self.ledger.dynamodb_read(operation, parsed)
        elif operation in WRITES:
            from moto.dynamodb.models import dynamodb_backends
            from moto.dynamodb.models.dynamo_type import DynamoType

            table = dynamodb_backends[ACCOUNT][self.region].get_table(self.table_name)
            sizes = []
            for pk, sk in written_keys(operation, params):
                item = table.get_item(DynamoType({"S": pk}), DynamoType({"S": sk})) if pk else None
                sizes.append(item.size() if item is not None else 1)
            self.ledger.dynamodb_write(operation, params, sizes)

    def _book_phase(self, event: dict[str, Any]) -> None:
        """Tell the ledger that a group entered a phase (or finished: DONE)."""
        assert self.ledger is not None
        detail, kind = event["detail"], event["detail-type"]
        if kind == "PrePostBackup Phase Requested":
            self.ledger.phase_entered(detail["run_id"], detail["group_id"], detail["phase"])
        elif kind == "PrePostBackup Phase Completed" and detail.get("next_phase") == "DONE":
            self.ledger.phase_entered(detail["run_id"], detail["group_id"], "DONE")

    def succeeded(self, service: str, operation: str) -> list[dict[str, Any]]:
        """The params of the calls of `service:operation` that AWS did not refuse."""
        return [
            params
            for s, o, params in self.calls
            if (s, o) == (service, operation) and id(params) not in self._refused_ids
        ]

    def _waited(self, seconds: float) -> None:
        """A handler waited (paced): the bench books it on the invocation."""
        if self.ledger is not None:
            self.ledger.wait(_INVOCATION.get(), seconds)

    def _record_call(self, params: dict[str, Any], model: Any, context: Any, **_: Any) -> None:
        context["local_params"] = params
        service = model.service_model.service_name
        record = dict(params)
        context["local_record"] = record
        self.calls.append((service, model.name, record))
        handler = _HANDLER.get()
        if handler is not None:
            self.clock.spend(LATENCY_SECONDS.get(service, DEFAULT_LATENCY_SECONDS))
        if self.ledger is not None:
            self.ledger.call(_INVOCATION.get(), handler, service, model.name)
        if handler is not None:  # for the policy coverage test: who made which call
            self.handler_calls.append((handler, service, model.name, dict(params)))
        if service != "dynamodb":
            self.timeline.append((self.clock.now(), f"call {service}:{model.name}"))

    def _maybe_crash(self, http_response: Any, model: Any, **_: Any) -> None:
        if http_response.status_code < 300:
            self._crash_if_due(model.name)

    def _crash_if_due(self, operation: str) -> None:
        """Die right after `operation` succeeded, if `Behaviour.crash_after` says so: after
        an AWS call, or after a write of the in-memory state store (named as its DynamoDB
        call would be), so that the same faults act on both stores."""
        if _HANDLER.get() is None:
            return  # the emulation's own reads (the reconciler's tick looks for due items)
        handler_call = (_HANDLER.get() or "", operation)
        nth = self.behaviour.crash_at_call.get(handler_call)
        if nth is not None:
            if nth > 1:
                self.behaviour.crash_at_call[handler_call] = nth - 1
            else:
                del self.behaviour.crash_at_call[handler_call]
                self.timeline.append((self.clock.now(), f"crash after {operation}"))
                raise SimulatedCrash(f"the function died right after {operation}")
        left = self.behaviour.crash_after.get(operation, 0)
        if left:
            self.behaviour.crash_after[operation] = left - 1
            self.timeline.append((self.clock.now(), f"crash after {operation}"))
            raise SimulatedCrash(f"the function died right after {operation}")

    def _backup_call(self, model: Any, context: Any, **_: Any) -> Any:
        params = context["local_params"]
        if model.name == "StartBackupJob":
            return self.backup.start_backup_job(params)
        if model.name == "ListBackupJobs":
            return self.backup.list_backup_jobs(params)
        if model.name == "StopBackupJob":
            return self.backup.stop_backup_job(params)
        if model.name == "CreateTags":  # the AMIs of recovery points
            return self.backup.create_tags(params)
        return self.backup.describe_backup_job(params)

    def _send_message_call(self, context: Any, **_: Any) -> Any:
        """SQS SendMessage to the capture polls' queue: its Lambda event source invokes
        `check_capture` with the message once its DelaySeconds have passed (a lost message
        is one that `Behaviour.lose_event` loses; the event's source is `aws:sqs`)."""
        params = context["local_params"]
        message_id = self.new_id()
        self.schedule(int(params.get("DelaySeconds", 0)), self._capture_poll,
                      params["MessageBody"], message_id)  # fmt: skip
        return _ok({"MessageId": message_id, "MD5OfMessageBody": _md5(params["MessageBody"])})

    def _capture_poll(self, body: str, message_id: str) -> None:
        event = load_event("aws-sqs-capture-poll")
        record = event["Records"][0]
        record.update(messageId=message_id, body=body, md5OfBody=_md5(body), awsRegion=self.region)
        record["eventSourceARN"] = self.arn("sqs", capture_queue_name(self.stage))
        record["attributes"]["SentTimestamp"] = str(int(self.clock.now().timestamp() * 1000))
        # Delivery faults see the message as an event of source aws.sqs.
        seen = {"id": message_id, "source": "aws.sqs", "detail-type": "Capture Poll",
                "detail": json.loads(body)}  # fmt: skip
        lose = self.behaviour.lose_event
        if lose is not None and lose(seen):
            self.timeline.append((self.clock.now(), f"lost capture poll {body}"))
            return
        copies = max(1, self.behaviour.copies(seen) if self.behaviour.copies else 1)
        self.timeline.append((self.clock.now(), f"capture poll {body}"))
        for _ in range(copies):
            self.invoke("check_capture", event)

    def _transaction_call(self, model: Any, **_: Any) -> Any:
        """Cancel every n-th transaction of a handler for a conflict (nothing written)."""
        every = self.behaviour.transaction_conflict_every
        if not every or _HANDLER.get() is None or model.name != "TransactWriteItems":
            return None
        with self._queue_lock:
            self._transactions += 1
            conflict = self._transactions % every == 0
        if not conflict:
            return None
        self.timeline.append((self.clock.now(), "conflict dynamodb:TransactWriteItems"))
        response, parsed = _error(
            "TransactionCanceledException",
            "Transaction cancelled, please refer cancellation reasons for specific reasons "
            "[TransactionConflict, None]",
        )
        parsed["CancellationReasons"] = [
            {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"},
            {"Code": "None"},
        ]
        return response, parsed

    def _put_events_call(self, context: Any, **_: Any) -> Any:
        """Refuse, as a whole, a batch holding an entry of a refused detail-type."""
        entries = context["local_params"]["Entries"]
        for entry in entries:
            left = self.behaviour.refuse_events.get(entry["DetailType"], 0)
            if left:
                self.behaviour.refuse_events[entry["DetailType"]] = left - 1
                failure = {"ErrorCode": "InternalFailure", "ErrorMessage": "refused (simulated)"}
                return _ok({"FailedEntryCount": len(entries), "Entries": [failure] * len(entries)})
        return None

    def _send_command_call(self, context: Any, **_: Any) -> Any:
        """SSM refuses the whole command when one of its instances is refused."""
        instance_ids = context["local_params"].get("InstanceIds", [])
        refused = self._transient_refusal("SendCommand", instance_ids)
        if refused:
            return refused
        for instance_id in instance_ids:
            code = self.behaviour.send_command_errors.get(instance_id)
            if code:
                return _error(code, f"SendCommand refused for {instance_id} (simulated)")
        return None

    def _transient_refusal(self, operation: str, instance_ids: list[str]) -> Any:
        """The next of `Behaviour.refuse_calls` for each instance the call names (one
        popped per instance); the first as the call's answer."""
        codes = []
        for instance_id in instance_ids:
            left = self.behaviour.refuse_calls.get((instance_id, operation))
            if left and (code := left.pop(0)):  # an empty code lets that call through
                codes.append((instance_id, code))
        if not codes:
            return None
        instance_id, code = codes[0]
        return _error(code, f"{operation} refused for {instance_id} (simulated)")

    def _power_call(self, model: Any, context: Any, **_: Any) -> Any:
        """EC2 refuses the whole call when one of its instances is refused, as AWS does,
        or is in a state the change cannot start from (IncorrectInstanceState)."""
        instance_ids = context["local_params"].get("InstanceIds", [])
        refused = self._transient_refusal(model.name, instance_ids) or self._overdrawn(
            model.name, len(instance_ids)
        )
        if refused:
            return refused
        for instance_id in instance_ids:
            code = self.behaviour.power_errors.get((instance_id, model.name))
            if code:
                return _error(code, f"{model.name} refused for {instance_id} (simulated)")
        states = self._existing_states(instance_ids)
        verb = "started" if model.name == "StartInstances" else "stopped"
        for instance_id, state in states.items():
            if state in EC2_REFUSED_FROM[model.name]:
                return _error(
                    "IncorrectInstanceState",
                    f"The instance '{instance_id}' is not in a state from which it can be {verb}.",
                )
        return None

    def _overdrawn(self, operation: str, instances: int) -> Any:
        """EC2's resource bucket of `operation` (`Behaviour.ec2_buckets`) pays for the
        call's instances, or the call is throttled."""
        limit = self.behaviour.ec2_buckets.get(operation)
        if limit is None:
            return None
        burst, per_second = limit
        now = self.clock.now()
        tokens, since = self._bucket_state.get(operation, (float(burst), now))
        tokens = min(burst, tokens + per_second * (now - since).total_seconds())
        if instances > tokens:
            self._bucket_state[operation] = (tokens, now)
            return _error("RequestLimitExceeded", "Request limit exceeded. (simulated bucket)")
        self._bucket_state[operation] = (tokens - instances, now)
        return None

    def _existing_states(self, instance_ids: list[str]) -> dict[str, str]:
        """The states of the instances moto knows (moto answers the unknown ones)."""
        try:
            return self.states_of(instance_ids)
        except KeyError:
            return {}

    def _after_send_command(self, http_response: Any, parsed: Any, context: Any, **_: Any) -> None:
        if http_response.status_code >= 300:
            return
        params = context["local_params"]
        phase = params.get("Comment", "").rsplit(" ", 1)[-1]
        command_id = parsed["Command"]["CommandId"]
        self._record_command(command_id, params, parsed["Command"])
        timeout = params.get("TimeoutSeconds", SSM_DEFAULT_DELIVERY_TIMEOUT)
        execution = params.get("Parameters", {}).get("executionTimeout")
        timeout += int(execution[0]) if execution else SSM_DEFAULT_EXECUTION_TIMEOUT
        states = self.states_of(params["InstanceIds"])
        for instance_id in params["InstanceIds"]:
            # SSM cannot reach an instance that is not running.
            reachable = states.get(instance_id) == "running"
            invocation = Invocation(
                final=self.behaviour.script_status.get(
                    (instance_id, phase), "Success" if reachable else "Undeliverable"
                ),
                seconds=self.behaviour.script_seconds_by_instance.get(
                    instance_id, self.behaviour.script_seconds
                ),
                expires=self.clock.after(timeout),
            )
            self.invocations_ssm[(command_id, instance_id)] = invocation
            if reachable and instance_id in self.behaviour.agent_offline:
                invocation.delayed_from = self.clock.after(SSM_DELAYED_AFTER)
                delayed = (command_id, instance_id, "Delayed")
                self.schedule(SSM_DELAYED_AFTER, self._ssm_event, *delayed)
                self.schedule(timeout, self._delivery_timeout, command_id, instance_id)
            else:
                self._deliver_command(command_id, instance_id, invocation, delay=1)

    def _deliver_command(
        self, command_id: str, instance_id: str, invocation: Invocation, delay: float
    ) -> None:
        """The agent has the command: it runs and ends with its final status."""
        invocation.started = self.clock.now()
        self.schedule(delay, self._ssm_event, command_id, instance_id, "InProgress")
        if invocation.final != HANG:
            self.schedule(
                invocation.seconds, self._ssm_event, command_id, instance_id, invocation.final
            )

    def _delivery_timeout(self, command_id: str, instance_id: str) -> dict[str, Any] | None:
        if self.invocations_ssm[(command_id, instance_id)].started is not None:
            return None
        # The event carries the invocation's Status; StatusDetails says Delivery Timed Out.
        return self._ssm_event(command_id, instance_id, "TimedOut")

    def _record_command(self, command_id: str, params: dict[str, Any], sent: Any) -> None:
        """The command as AWS keeps it, for ListCommands (moto lists every instance of
        the account under every command)."""
        self.commands[command_id] = {
            "CommandId": command_id,
            "DocumentName": params["DocumentName"],
            "Comment": params.get("Comment", ""),
            "Parameters": params.get("Parameters", {}),
            "InstanceIds": list(params.get("InstanceIds", [])),
            "RequestedDateTime": self.clock.now(),
            "ExpiresAfter": sent.get("ExpiresAfter"),
            "TimeoutSeconds": params.get("TimeoutSeconds", SSM_DEFAULT_DELIVERY_TIMEOUT),
            "TargetCount": len(params.get("InstanceIds", [])),
        }

    def _list_commands(self, context: Any, **_: Any) -> Any:
        """ListCommands by CommandId or InstanceId, with the InvokedAfter and
        InvokedBefore filters, from the emulation's record of each SendCommand."""
        params = context["local_params"]
        command_id = params.get("CommandId")
        if command_id is not None and command_id not in self.commands:
            return _error("InvalidCommandId", "Invalid command id.")
        bounds = {f["key"]: _parse_iso(f["value"]) for f in params.get("Filters", [])}
        listed = []
        for command in self.commands.values():
            if command_id not in (None, command["CommandId"]):
                continue
            if params.get("InstanceId") not in (None, *command["InstanceIds"]):
                continue
            sent = command["RequestedDateTime"]
            if "InvokedAfter" in bounds and sent < bounds["InvokedAfter"]:
                continue
            if "InvokedBefore" in bounds and sent > bounds["InvokedBefore"]:
                continue
            listed.append(command | self._command_status(command))
        return _ok({"Commands": listed})

    def _command_status(self, command: dict[str, Any]) -> dict[str, Any]:
        """The command's own Status: in progress until each invocation is over."""
        statuses = [
            self._invocation_status(command["CommandId"], i)[0] for i in command["InstanceIds"]
        ]
        if any(s in ("Pending", "InProgress", "Delayed") for s in statuses):
            return {"Status": "InProgress", "StatusDetails": "In Progress"}
        if all(s == "Success" for s in statuses):
            return {"Status": "Success", "StatusDetails": "Success"}
        return {"Status": "Failed", "StatusDetails": "Failed"}

    def _list_command_invocations(self, context: Any, **_: Any) -> Any:
        """ListCommandInvocations (moto lacks it) by CommandId and/or InstanceId."""
        params = context["local_params"]
        invocations = []
        for command_id, instance_id in self.invocations_ssm:
            if params.get("CommandId") not in (None, command_id):
                continue
            if params.get("InstanceId") not in (None, instance_id):
                continue
            status, details = self._invocation_status(command_id, instance_id)
            invocations.append(
                {
                    "CommandId": command_id,
                    "InstanceId": instance_id,
                    "DocumentName": "AWS-RunRemoteScript",
                    "Status": status,
                    "StatusDetails": details,
                }
            )
        return _ok({"CommandInvocations": invocations})

    def _invocation_status(self, command_id: str, instance_id: str) -> tuple[str, str]:
        status = self.invocations_ssm[(command_id, instance_id)].status(self.clock.now())
        if status in SSM_STATUS_DETAILS:  # detail-only names: Status and StatusDetails differ
            return SSM_STATUS_DETAILS[status], status
        return status, {"InProgress": "In Progress"}.get(status, status)

    def _get_command_invocation(self, context: Any, **_: Any) -> Any:
        """Real statuses, which moto lacks (it always answers Success)."""
        params = context["local_params"]
        known = self.invocations_ssm.get((params["CommandId"], params["InstanceId"]))
        if known is None:
            return _error("InvocationDoesNotExist", "no such invocation")
        status, details = self._invocation_status(params["CommandId"], params["InstanceId"])
        return _ok(
            {
                "CommandId": params["CommandId"],
                "InstanceId": params["InstanceId"],
                "DocumentName": "AWS-RunRemoteScript",
                "Status": status,
                "StatusDetails": details,
            }
        )

    def _ssm_event(self, command_id: str, instance_id: str, status: str) -> dict[str, Any]:
        event = load_event("aws-ssm-invocation-success")
        event.update(id=self.new_id(), time=_iso_s(self.clock.now()))
        event["resources"] = [self.arn("ec2", f"instance/{instance_id}")]
        event["detail"].update(
            {"command-id": command_id, "instance-id": instance_id, "status": status}
        )
        return event

    def _after_stop(self, http_response: Any, parsed: Any, **_: Any) -> None:
        self._power_change(parsed.get("StoppingInstances", []), "running", "stopping", "stopped")

    def _after_start(self, http_response: Any, parsed: Any, **_: Any) -> None:
        self._power_change(parsed.get("StartingInstances", []), "stopped", "pending", "running")

    def _power_change(self, items: list[dict[str, Any]], source: str, via: str, to: str) -> None:
        """moto changed the state at once: put each instance in the state on the way
        (stopping, pending) until its state-change event, and answer with the state each
        is really in (a repeated call changes nothing)."""
        seconds = self.behaviour.stop_seconds if to == "stopped" else self.behaviour.start_seconds
        instances = self._moto_instances([item["InstanceId"] for item in items])
        for item in items:
            instance_id = item["InstanceId"]
            previous = item["PreviousState"]["Name"]
            current = via if previous in (source, via) else previous
            _put_state(instances[instance_id], current)
            item["CurrentState"] = {"Code": EC2_STATE_CODES[current], "Name": current}
            if previous == source:
                self.schedule(1, self._ec2_event_while, instance_id, via)
                self.schedule(seconds, self._ec2_transition, instance_id, via, to)

    def _ec2_event_while(self, instance_id: str, state: str) -> dict[str, Any] | None:
        return self._ec2_event(instance_id, state) if self.state_of(instance_id) == state else None

    def _ec2_event(self, instance_id: str, state: str) -> dict[str, Any]:
        event = load_event("aws-ec2-state-stopped")
        event.update(id=self.new_id(), time=_iso_s(self.clock.now()))
        event["resources"] = [self.arn("ec2", f"instance/{instance_id}")]
        event["detail"].update({"instance-id": instance_id, "state": state})
        return event

    def _after_put_events(self, http_response: Any, parsed: Any, context: Any, **_: Any) -> None:
        entries = context["local_params"]["Entries"]
        for entry, result in zip(entries, parsed.get("Entries", []), strict=False):
            if result.get("ErrorCode"):
                continue
            event = {
                "version": "0",
                "id": self.new_id(),  # from the cloud's seed, so runs repeat exactly
                "detail-type": entry["DetailType"],
                "source": entry["Source"],
                "account": ACCOUNT,
                "time": _iso_s(self.clock.now()),
                "region": self.region,
                "resources": entry.get("Resources", []),
                "detail": json.loads(entry["Detail"]),
            }
            self.emitted.append(event)
            if self.ledger is not None:
                self._book_phase(event)
            # EventBusName may be a name or an ARN (…:event-bus/NAME); absent: default.
            bus = entry.get("EventBusName", DEFAULT_BUS).rsplit("event-bus/", 1)[-1]
            self.publish(event, bus=bus)


def _iso_s(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _put_state(instance: Any, state: str) -> None:
    instance._state.name = state
    instance._state.code = EC2_STATE_CODES[state]


def _parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _summary(event: dict[str, Any]) -> str:
    detail = event.get("detail")
    if not isinstance(detail, dict):
        return str(event.get("detail-type"))
    keys = ("instance-id", "status", "state", "backupJobId", "run_id", "group_id", "phase")
    facts = " ".join(f"{k}={detail[k]}" for k in keys if k in detail)
    return f"{event.get('detail-type')} {facts}".strip()


# Building boto3 clients costs a tenth of a second each. Local clouds of one process share
# one session per region, whose hooks act for the cloud that is active, so the app's cached
# clients (`chalicelib.gateways.aws.client`) are built once.
_SESSIONS: dict[str, boto3.session.Session] = {}


def _hooked_session(region: str) -> boto3.session.Session:
    if region not in _SESSIONS:
        session = _unsigned(boto3.session.Session(region_name=region))
        for event, method in LocalCloud.HOOKS:
            session.events.register(event, _for_active_cloud(method))
        FastDynamoDB(ACCOUNT, region).register(session.events)
        _SESSIONS[region] = session
    return _SESSIONS[region]


def _for_active_cloud(method: str) -> Callable[..., Any]:
    def hook(**kwargs: Any) -> Any:
        cloud = LocalCloud.active
        return getattr(cloud, method)(**kwargs) if cloud is not None else None

    return hook


@contextlib.contextmanager
def _instance_ids(ids: list[str] | None, count: int, region: str) -> Iterator[None]:
    """moto names the instances it launches meanwhile from `ids` (None: its random ids).
    The id is set when moto builds the instance, before its tags, volumes and network
    interface refer to it, so every look-up by id agrees."""
    if ids is None:
        yield
        return
    from moto.ec2.models import ec2_backends, instances

    if len(ids) != count or len(set(ids)) != count:
        raise ValueError(f"{count} distinct instance ids needed, got {ids[:5]}...")
    taken = {i.id for i in ec2_backends[ACCOUNT][region].all_instances()} & set(ids)
    if taken:
        raise ValueError(f"instance ids already in use: {sorted(taken)[:5]}")
    # moto's Instance reads the id maker from its module's namespace (imported there).
    namespace = vars(instances)
    wanted, original = iter(ids), namespace["random_instance_id"]
    namespace["random_instance_id"] = lambda: next(wanted)
    try:
        yield
    finally:
        namespace["random_instance_id"] = original


class _SharedEnvironment:
    """Chalice's test client lays the stage's variables over `os.environ` for each
    invocation by swapping in a copy and swapping the original back after. Two concurrent
    copies of a handler (threads) interleave the swaps, and `os.environ` stays a plain
    copy for good: later writes to it no longer reach the process environment, nor
    removals (a stage setting of one test then leaked into every later subprocess of the
    worker). Here the invocations under way share one copy: the first swaps it in, the
    last swaps the original back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._original: Any = None

    @contextlib.contextmanager
    def __call__(self, environment_variables: dict[str, str]) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._original = os.environ
                patched = os.environ.copy()
                patched.update(environment_variables)
                os.environ = patched  # type: ignore[assignment]  # noqa: B003 (as Chalice does)
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    os.environ = self._original  # noqa: B003


@contextlib.contextmanager
def _lean_launch() -> Iterator[None]:
    """RunInstances answers the fleet's ids only: moto serializing every launched instance
    (a fifth of a 2,000-instance test's time) is set-up the fleet's owner would not wait
    for, and the set-up reads nothing else of the answer."""
    from moto.core.responses import ActionResult
    from moto.ec2.responses.instances import InstanceResponse

    original = InstanceResponse.run_instances

    def run_instances(self: Any) -> Any:
        reservation: Any = original(self).result
        return ActionResult(
            {
                "ReservationId": reservation.id,
                "Instances": [{"InstanceId": i.id} for i in reservation.instances],
            }
        )

    InstanceResponse.run_instances = run_instances  # type: ignore[method-assign]
    try:
        yield
    finally:
        InstanceResponse.run_instances = original  # type: ignore[method-assign]


@functools.cache
def _plain(region: str, service: str) -> Any:
    """A client without the hooks, for the emulation's own set-up and fleet operations;
    built once per process (a client costs a tenth of a second, a cloud makes several)."""
    return _unsigned(boto3.session.Session(region_name=region)).client(service)


def _unsigned(session: boto3.session.Session) -> boto3.session.Session:
    """The session's requests go unsigned: moto reads the region from the endpoint and,
    with no signature, answers as its default account (local mode's); SigV4 signing was
    a tenth of a local call's time."""
    session.events.register("choose-signer", lambda **_: botocore.UNSIGNED)
    return session


class _NoVolume:
    id = "vol-none"


def _no_volume(*_: Any, **__: Any) -> _NoVolume:
    return _NoVolume()


def _nothing(*_: Any, **__: Any) -> None:
    return None


@functools.cache
def _backup_image_class() -> type:
    from moto.ec2.models.amis import Ami

    class BackupImage(Ami):
        """An AMI whose block device mappings list the snapshots of a backup job (moto's
        own AMIs list one dummy snapshot)."""

        def __init__(
            self, backend: Any, image_id: str, snapshot_ids: list[str], tags: dict[str, str]
        ) -> None:
            # moto's AMI makes a dummy volume and snapshot of its own: not for this one.
            stand_ins = {"create_volume": _no_volume, "create_snapshot": _nothing,
                         "delete_volume": _nothing}  # fmt: skip
            for name, stand_in in stand_ins.items():
                setattr(backend, name, stand_in)  # shadows the backend's method
            try:
                super().__init__(backend, image_id, name=f"AwsBackup_{image_id}",
                                 state="pending", root_device_type="ebs", tags=tags)  # fmt: skip
            finally:
                for name in stand_ins:
                    delattr(backend, name)
            self.snapshot_ids = snapshot_ids

        @property
        def block_device_mappings(self) -> list[dict[str, Any]]:
            return [
                {"DeviceName": f"/dev/sd{'abcdefghijklmnop'[n]}", "Ebs": {"SnapshotId": sid}}
                for n, sid in enumerate(self.snapshot_ids)
            ]

    return BackupImage


def _BackupImage(  # noqa: N802 (a class, made when moto is loaded)
    backend: Any, image_id: str, snapshot_ids: list[str], tags: dict[str, str]
) -> Any:
    return _backup_image_class()(backend, image_id, snapshot_ids, tags)
