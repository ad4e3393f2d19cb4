"""What a start event may name and make an instance do, checked against the deployment.

Whoever can put a start event could otherwise run any command as root across the fleet,
write anywhere, pass any role to AWS Backup, or stop any instance. Defaults are deny: an
empty list allows nothing, and only instances that carry the opt-in tag may be targeted.
A script's command line is confined by the command policy
(`chalicelib.models.script_command`): the downloaded script, plain arguments, rebuilt
for the shell; a stage may list exact command lines it also accepts. Pure: the fields
are checked before any AWS call, the tags on what DescribeInstances returned before
anything is changed.
"""

from __future__ import annotations

from collections.abc import Iterable

from chalicelib.config import Settings
from chalicelib.models.run_input import RunInput, ScriptDetails
from chalicelib.models.s3 import S3Location, S3LocationError
from chalicelib.models.script_command import CommandRejectedError, RemoteScript, ScriptCommand
from chalicelib.models.targets import TargetInstance

MAX_NAMED = 20  # instances named in one refusal; the rest are counted

SCRIPTS = {
    "PreBackupScriptDetails": "pre_script",
    "PostBackupScriptDetails": "post_script",
}


def violations(run_input: RunInput, settings: Settings) -> list[str]:
    """Every field that names something this deployment does not allow, with the reason."""
    found = []
    for name, attribute in SCRIPTS.items():
        script = getattr(run_input, attribute)
        if script is None:
            continue
        where = f"RemoteRunCommandDetails.{name}"
        if not any(script.source.is_under(prefix) for prefix in script_sources(settings)):
            found.append(
                f"{where}.SourceS3Path: {script.source_s3_path!r} is not under an allowed "
                "script source (PREPOST_ALLOWED_SCRIPT_SOURCES)"
            )
        try:
            command_line(script, settings)
        except CommandRejectedError as exc:
            found.append(f"{where}.CommandToRun: {exc} (command policy)")
        bucket = script.output_s3_bucket_name
        if bucket is not None and bucket not in settings.allowed_output_buckets:
            found.append(
                f"{where}.OutputS3BucketName: {bucket!r} is not an allowed output bucket "
                "(PREPOST_ALLOWED_OUTPUT_BUCKETS)"
            )
    backup = run_input.backup_details
    if backup.backup_vault_name not in settings.allowed_backup_vaults:
        found.append(
            f"BackupDetails.BackupVaultName: {backup.backup_vault_name!r} is not an allowed "
            "backup vault (PREPOST_ALLOWED_BACKUP_VAULTS)"
        )
    if backup.iam_role_arn not in settings.allowed_backup_roles:
        found.append(
            f"BackupDetails.IamRoleArn: {backup.iam_role_arn!r} is not an allowed backup role "
            "(PREPOST_ALLOWED_BACKUP_ROLES)"
        )
    return found


def script_sources(settings: Settings) -> list[S3Location]:
    """The allowed script source prefixes. An entry that is not an S3 location allows
    nothing (`make package` refuses such a stage before it is deployed)."""
    prefixes = []
    for source in settings.allowed_script_sources:
        try:
            prefixes.append(S3Location.parse(source, prefix=True))
        except S3LocationError:
            continue
    return prefixes


def command_line(script: ScriptDetails, settings: Settings) -> str:
    """The command line sent to SSM for `script`: rebuilt from its words, or, for a
    command line the stage lists exactly (PREPOST_ALLOWED_COMMANDS), that line.
    Raises CommandRejectedError when neither holds."""
    try:
        return ScriptCommand.parse(script.command_to_run, script.source.file_name).render()
    except CommandRejectedError:
        if script.command_to_run in settings.allowed_commands:
            return script.command_to_run
        raise


def remote_script(script: ScriptDetails, settings: Settings, output_prefix: str) -> RemoteScript:
    """What AWS-RunRemoteScript is asked to run for `script` (CommandRejectedError if the
    deployment no longer allows its command line)."""
    return RemoteScript(
        source_s3_path=script.source_s3_path,
        command_line=command_line(script, settings),
        working_directory=script.working_directory,
        execution_timeout_seconds=script.execution_timeout_in_seconds,
        delivery_timeout_seconds=script.timeout_in_seconds,
        output_bucket=script.output_s3_bucket_name,
        output_prefix=output_prefix,
    )


def too_many_targets(requested: list[str], settings: Settings) -> list[str]:
    """The refusal, if the run resolves to more instances than a run may have."""
    limit = settings.max_instances_per_run
    if len(requested) <= limit:
        return []
    return [
        f"targets: the run resolves to {len(requested)} instances, more than the {limit} a "
        "run may have (PREPOST_MAX_INSTANCES_PER_RUN); narrow the tag or split the fleet"
    ]


def not_opted_in(targets: Iterable[TargetInstance], settings: Settings) -> list[str]:
    """The refusal, if any target lacks the opt-in tag (the IAM policies would refuse
    stopping it or running a script on it anyway, half-way through the run)."""
    key, value = settings.opt_in_tag_key, settings.opt_in_tag_value
    missing = sorted(t.instance_id for t in targets if t.tags.get(key) != value)
    if not missing:
        return []
    named = ", ".join(missing[:MAX_NAMED])
    more = f" and {len(missing) - MAX_NAMED} more" if len(missing) > MAX_NAMED else ""
    return [
        f"targets: {named}{more} do not carry the opt-in tag {key}={value} (PREPOST_OPT_IN_TAG)"
    ]
