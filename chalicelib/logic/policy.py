"""What a start event may name, checked against the deployment's allow lists.

Whoever can put a start event could otherwise run any script as root across the fleet,
write anywhere, or pass any role to AWS Backup. Defaults are deny: an empty list allows
nothing. Pure: no AWS call is made before a run passes.
"""

from __future__ import annotations

from chalicelib.config import Settings
from chalicelib.models.run_input import RunInput

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
