"""What a start event may name, checked against the deployment's allow lists.

Whoever can put a start event could otherwise run any script as root across the fleet,
write anywhere, pass any role to AWS Backup, or stop any instance. Defaults are deny: an
empty list allows nothing, and only instances that carry the opt-in tag may be targeted.
Pure: the fields are checked before any AWS call, the tags on what DescribeInstances
returned before anything is changed.
"""

from __future__ import annotations

from collections.abc import Iterable

from chalicelib.config import Settings
from chalicelib.models.run_input import RunInput
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
        if not any(script.source_s3_path.startswith(p) for p in settings.allowed_script_sources):
            found.append(
                f"{where}.SourceS3Path: {script.source_s3_path!r} is not under an allowed "
                "script source (PREPOST_ALLOWED_SCRIPT_SOURCES)"
            )
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
