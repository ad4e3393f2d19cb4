"""Deploy a stage as a CloudFormation stack with the AWS CLI (operator tooling, not deployed).

    python -m prepost.deploy --stage prod --bucket my-deployment-bucket \\
        [--stack prepost-backup-prod] [--params "NotificationEmail=ops@example.com"] \\
        [--scripts s3://my-script-bucket/prepost/]

`make deploy STAGE=prod BUCKET=...` runs this (README, Deploy). `chalice deploy` cannot
deploy this app: the functions' policies (`.chalice/policies/`) hold `{{Token}}`
placeholders that only the packager fills for a stage, and the state table, the queues,
the alarms and the dashboard come from the packager's merge template, not from Chalice.

0. Refuse, with one line and exit code 2, before anything runs: no stage, no bucket, a
   stack name CloudFormation would refuse, a parameter that is not KEY=VALUE, a
   `--scripts` that is not an S3 location, no `aws`.
1. Package the stage (`python -m prepost.package`): `OUT/sam.json` and
   `OUT/deployment.zip`. A stage the packager refuses, or a package that misses its
   figures, stops here with the packager's exit code. A parameter the template does not
   declare, or a `--scripts` location the stage does not allow scripts from, is refused
   next (exit 2).
1b. `aws s3 cp` each file of the script kit (`scripts/`, README "Script kit") to
   `--scripts`, else to the stage's first S3 location in PREPOST_ALLOWED_SCRIPT_SOURCES;
   a stage with none is said in one sentence and skipped. Before the stack: the kit
   depends on nothing in it, and a script prefix the deployer cannot write then stops the
   deploy before the stack changes, so a stack that can start runs never names a kit
   that is not there.
2. `aws cloudformation package`: upload `deployment.zip` to the bucket and write
   `OUT/packaged.json`, the same template naming the zip's S3 location.
3. `aws cloudformation deploy`: create and execute a change set of the stack, the template
   uploaded to the bucket too (CloudFormation takes at most 51,200 bytes inline), with the
   capabilities the template needs (`capabilities`) and the parameter overrides; no
   change is not an error.

A step that fails stops the deploy with its exit code. Only the `aws` CLI calls AWS, with
the credentials, profile and region it is configured with (AWS_PROFILE, AWS_REGION, ...).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chalicelib.config import settings_from
from chalicelib.logic.policy import script_sources
from chalicelib.models.s3 import S3Location, S3LocationError
from prepost.local import ROOT
from prepost.package import APP_NAME, stage_settings

PACKAGER = (sys.executable, "-m", "prepost.package")
EXAMPLE = "make deploy STAGE=prod BUCKET=my-deployment-bucket"
# CloudFormation's rule for a stack name.
STACK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,127}")
PARAMETER = re.compile(r"([A-Za-z0-9]+)=(.*)", re.DOTALL)
# The script kit (README, "Script kit"): uploaded where the stage allows scripts from.
SCRIPTS = ROOT / "scripts"
KIT = ("prepost-freeze.sh", "prepost-freeze.ps1")
# The IAM resources whose name property, when set, makes CloudFormation ask for
# CAPABILITY_NAMED_IAM rather than CAPABILITY_IAM.
IAM_NAME_PROPERTIES = {
    "AWS::IAM::Role": "RoleName",
    "AWS::IAM::User": "UserName",
    "AWS::IAM::Group": "GroupName",
    "AWS::IAM::ManagedPolicy": "ManagedPolicyName",
    "AWS::IAM::InstanceProfile": "InstanceProfileName",
}


class DeployError(Exception):
    """The deploy cannot go on; the message says why, in one sentence."""


@dataclass(frozen=True)
class Deployment:
    """What to deploy where: a stage, as a stack, through a bucket."""

    stage: str
    bucket: str
    stack: str
    parameters: tuple[str, ...]  # KEY=VALUE, as `aws cloudformation deploy` takes them
    out: Path  # where the packager writes
    scripts: S3Location | None = None  # where the kit goes; None: the stage's first source

    @property
    def template(self) -> Path:
        return self.out / "sam.json"

    @property
    def packaged(self) -> Path:
        return self.out / "packaged.json"


def deployment(
    stage: str, bucket: str, stack: str, params: str, out: Path, scripts: str = ""
) -> Deployment:
    """The deployment asked for, or a DeployError saying what is missing or wrong; empty
    values count as not given (Make passes its unset variables as empty strings)."""
    stage, bucket, stack, scripts = stage.strip(), bucket.strip(), stack.strip(), scripts.strip()
    if not stage:
        raise DeployError(f"no stage to deploy: name one, as in {EXAMPLE}")
    if not bucket:
        raise DeployError(
            "no S3 bucket to upload the deployment package to: name one in the stack's "
            f"region, as in {EXAMPLE} (--bucket here)"
        )
    stack = stack or f"{APP_NAME}-{stage}"
    if not STACK_NAME.fullmatch(stack):
        raise DeployError(
            f"{stack!r} is not a stack name CloudFormation accepts (a letter, then letters, "
            "digits and hyphens, at most 128): set STACK (--stack here)"
        )
    parameters = tuple(shlex.split(params))
    malformed = [p for p in parameters if not PARAMETER.fullmatch(p)]
    if malformed:
        raise DeployError(
            f"stack parameters are KEY=VALUE, not {', '.join(map(repr, malformed))}, as in "
            "PARAMS='NotificationEmail=ops@example.com LogRetentionInDays=30'"
        )
    kit = None
    if scripts:
        try:
            kit = S3Location.parse(scripts, prefix=True)
        except S3LocationError as exc:
            raise DeployError(
                f"SCRIPTS={scripts!r} {exc}, as in SCRIPTS=s3://my-script-bucket/prepost/ "
                "(--scripts here)"
            ) from exc
    return Deployment(stage, bucket, stack, parameters, out.resolve(), kit)


def check_parameters(target: Deployment, template: dict[str, Any]) -> None:
    """Refuse a parameter the template does not declare (CloudFormation would, after the
    upload)."""
    declared = sorted(template.get("Parameters", {}))
    unknown = [p.partition("=")[0] for p in target.parameters]
    unknown = [key for key in unknown if key not in declared]
    if unknown:
        raise DeployError(
            f"the template has no parameter {', '.join(unknown)}: it takes "
            f"{', '.join(declared) or 'none'}"
        )


def kit_objects(prefix: S3Location) -> list[S3Location]:
    """Where each file of the kit goes under `prefix`."""
    return [S3Location(prefix.bucket, f"{prefix.key}/{name}".lstrip("/")) for name in KIT]


def kit_destination(target: Deployment) -> S3Location | None:
    """Where the script kit goes: `--scripts`, else the first S3 location of the stage's
    PREPOST_ALLOWED_SCRIPT_SOURCES; None when the stage has none. A `--scripts` the stage
    does not allow scripts from is refused: no run could use the kit there."""
    allowed = script_sources(settings_from(stage_settings(target.stage)))
    if target.scripts is None:
        return allowed[0] if allowed else None
    if not all(
        any(kit.is_under(source) for source in allowed) for kit in kit_objects(target.scripts)
    ):
        raise DeployError(
            f"SCRIPTS=s3://{target.scripts.bucket}/{target.scripts.key} is not under any of "
            f"stage {target.stage}'s PREPOST_ALLOWED_SCRIPT_SOURCES, so no run could use the "
            "script kit from there: add it to the stage, or leave SCRIPTS out"
        )
    return target.scripts


def kit_commands(aws: str, prefix: S3Location) -> list[list[str]]:
    """One `aws s3 cp` per file of the kit, in the order of KIT."""
    return [
        [aws, "s3", "cp", str(SCRIPTS / name), f"s3://{kit.bucket}/{kit.key}"]
        for name, kit in zip(KIT, kit_objects(prefix), strict=True)
    ]


def capabilities(template: dict[str, Any]) -> list[str]:
    """What the stack's template makes CloudFormation ask the deployer to acknowledge:
    IAM resources (CAPABILITY_IAM; CAPABILITY_NAMED_IAM too when one has a fixed name),
    and macros such as the SAM transform (CAPABILITY_AUTO_EXPAND)."""
    resources = list(template.get("Resources", {}).values())
    iam = [r for r in resources if str(r.get("Type", "")).startswith("AWS::IAM::")]
    # A SAM function without a Role gets one from the transform.
    iam += [
        r
        for r in resources
        if r.get("Type") == "AWS::Serverless::Function" and "Role" not in r.get("Properties", {})
    ]
    needed = []
    if iam:
        needed.append("CAPABILITY_IAM")
    if any(IAM_NAME_PROPERTIES.get(r["Type"]) in r.get("Properties", {}) for r in iam):
        needed.append("CAPABILITY_NAMED_IAM")
    if template.get("Transform"):
        needed.append("CAPABILITY_AUTO_EXPAND")
    return needed


def aws_commands(target: Deployment, aws: str, template: dict[str, Any]) -> list[list[str]]:
    """The two AWS CLI commands that upload the package and deploy the stack, in order."""
    upload = ["--s3-bucket", target.bucket, "--s3-prefix", target.stack]
    acknowledged = capabilities(template)
    package = [aws, "cloudformation", "package", "--template-file", str(target.template)]
    package += [*upload, "--output-template-file", str(target.packaged), "--use-json"]
    stack = [aws, "cloudformation", "deploy", "--template-file", str(target.packaged)]
    stack += ["--stack-name", target.stack, *upload, "--no-fail-on-empty-changeset"]
    stack += ["--capabilities", *acknowledged] if acknowledged else []
    stack += ["--parameter-overrides", *target.parameters] if target.parameters else []
    return [package, stack]


def run(command: Sequence[str]) -> int:
    """Run one step, shown first as a shell would run it; its exit code."""
    print(f"+ {shlex.join(command)}", flush=True)
    return subprocess.run(list(command), cwd=ROOT, check=False).returncode


def deploy(target: Deployment, aws: str, packager: Sequence[str] = PACKAGER) -> int:
    """Package, upload and deploy (steps 1 to 3 of the module docstring); the exit code."""
    code = run([*packager, "--stage", target.stage, "--out", str(target.out)])
    if code:
        return code  # the packager said why
    template: dict[str, Any] = json.loads(target.template.read_text())
    check_parameters(target, template)
    kit = kit_destination(target)
    commands = aws_commands(target, aws, template)
    if kit is None:
        print(
            f"stage {target.stage} lists no S3 location in PREPOST_ALLOWED_SCRIPT_SOURCES, so "
            "the script kit (scripts/) is not uploaded: list your script prefix there "
            "(s3://bucket/prefix/) to have it uploaded",
            flush=True,
        )
    else:
        commands = kit_commands(aws, kit) + commands
    for command in commands:
        code = run(command)
        if code:
            step = " ".join(command[1:3])
            print(
                f"error: {step} failed (exit code {code}); the deploy stopped there",
                file=sys.stderr,
            )
            return code
    print(f"deployed stage {target.stage} as stack {target.stack}")
    return 0


def main(argv: list[str] | None = None, packager: Sequence[str] = PACKAGER) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prepost.deploy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stage", default="", help="the stage of .chalice/config.json")
    parser.add_argument("--bucket", default="", help="the S3 bucket for the package")
    parser.add_argument("--stack", default="", help=f"default: {APP_NAME}-<stage>")
    parser.add_argument("--params", default="", help="stack parameters: 'KEY=VALUE ...'")
    parser.add_argument(
        "--scripts",
        default="",
        help="where the script kit goes (s3://bucket/prefix/); default: the stage's first "
        "S3 location in PREPOST_ALLOWED_SCRIPT_SOURCES",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "package")
    args = parser.parse_args(argv)
    try:
        target = deployment(
            args.stage, args.bucket, args.stack, args.params, args.out, args.scripts
        )
        aws = shutil.which("aws")
        if aws is None:
            raise DeployError(
                "the AWS CLI (aws) is not installed or not on PATH, and the deploy runs it: "
                "install AWS CLI v2"
            )
        return deploy(target, aws, packager)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
