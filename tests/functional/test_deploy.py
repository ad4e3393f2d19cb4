"""`make deploy` (`python -m prepost.deploy`), up to the point where AWS would be called.

The `aws` executable is a fake on PATH that records its arguments (and fails when a test
says so); the packager is a fake too, except where the real one must refuse a stage. No
AWS call is made.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prepost import deploy
from prepost.local import ROOT

# What `chalice package` and the merge template give `sam.json`, as far as the deploy reads.
TEMPLATE = {
    "AWSTemplateFormatVersion": "2010-09-09",
    "Transform": "AWS::Serverless-2016-10-31",
    "Parameters": {"NotificationEmail": {"Type": "String"}, "LogRetentionInDays": {}},
    "Resources": {
        "StartRunHandlerRole": {"Type": "AWS::IAM::Role", "Properties": {}},
        "StartRunHandler": {
            "Type": "AWS::Serverless::Function",
            "Properties": {"Role": {"Fn::GetAtt": ["StartRunHandlerRole", "Arn"]}},
        },
    },
}
RECORDER = """#!{python}
import json, os, sys
with open({log!r}, "a") as log:
    log.write(json.dumps([{name!r}, *sys.argv[1:]]) + "\\n")
"""


class Fakes:
    """The fake `aws` and packager, and what they were called with, in order."""

    def __init__(self, root: Path) -> None:
        self.log = root / "calls.jsonl"
        self.bin = root / "bin"
        self.bin.mkdir()
        self.out = root / "package"
        # Which `aws` call fails, and how: "STEP:CODE" in a file (`fail`), not in the
        # environment, which the fake would inherit from whatever the worker did before.
        self.failing = root / "failing"
        aws = self.bin / "aws"
        aws.write_text(
            RECORDER.format(python=sys.executable, log=str(self.log), name="aws")
            + f"failing = open({str(self.failing)!r}).read().split(':') "
            + f"if os.path.exists({str(self.failing)!r}) else ['']\n"
            + "if sys.argv[2:3] == failing[:1]:\n"
            + "    sys.exit(int(failing[1]))\n"
        )
        aws.chmod(0o755)
        self.packager = root / "packager.py"
        self.packager.write_text(
            RECORDER.format(python=sys.executable, log=str(self.log), name="packager")
            + "out = sys.argv[sys.argv.index('--out') + 1]\n"
            + "os.makedirs(out, exist_ok=True)\n"
            + f"open(os.path.join(out, 'sam.json'), 'w').write({json.dumps(TEMPLATE)!r})\n"
        )

    def fail(self, step: str, code: int) -> None:
        """Make the `aws` call whose second word is `step` exit with `code`."""
        self.failing.write_text(f"{step}:{code}")

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def main(self, *args: str) -> int:
        argv = [*args, "--out", str(self.out)]
        return deploy.main(argv, packager=[sys.executable, str(self.packager)])


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fakes:
    made = Fakes(tmp_path)
    monkeypatch.setenv("PATH", f"{made.bin}{os.pathsep}{os.environ['PATH']}")
    return made


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ")
    assert re.search(r"[.!?]\s", line) is None  # one sentence
    return line


def test_packages_then_uploads_then_deploys_the_stack(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    params = "NotificationEmail=ops@example.com LogRetentionInDays=30"
    code = fakes.main("--stage", "prod", "--bucket", "my-deployment-bucket", "--params", params)

    assert code == 0
    out = str(fakes.out)
    sam, packaged = f"{out}/sam.json", f"{out}/packaged.json"
    upload = ["--s3-bucket", "my-deployment-bucket", "--s3-prefix", "prepost-backup-prod"]
    package = ["aws", "cloudformation", "package", "--template-file", sam, *upload]
    package += ["--output-template-file", packaged, "--use-json"]
    stack = ["aws", "cloudformation", "deploy", "--template-file", packaged]
    stack += ["--stack-name", "prepost-backup-prod", *upload, "--no-fail-on-empty-changeset"]
    stack += ["--capabilities", "CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"]  # SAM: a macro
    stack += ["--parameter-overrides", "NotificationEmail=ops@example.com", "LogRetentionInDays=30"]
    assert fakes.calls() == [["packager", "--stage", "prod", "--out", out], package, stack]
    printed = capsys.readouterr().out
    assert "+ " + str(fakes.bin / "aws") + " cloudformation deploy" in printed
    assert printed.rstrip().endswith("deployed stage prod as stack prepost-backup-prod")
    # prod as shipped allows scripts from nowhere: the kit has nowhere to go, and says so.
    assert (
        "stage prod lists no S3 location in PREPOST_ALLOWED_SCRIPT_SOURCES, so the script "
        "kit (scripts/) is not uploaded: list your script prefix there (s3://bucket/prefix/) "
        "to have it uploaded"
    ) in printed


def kit_uploads(prefix: str) -> list[list[str]]:
    return [
        ["aws", "s3", "cp", str(ROOT / "scripts" / name), f"{prefix}{name}"]
        for name in ("prepost-freeze.sh", "prepost-freeze.ps1")
    ]


def test_the_script_kit_goes_to_the_stages_script_source_before_the_stack(fakes: Fakes) -> None:
    # The local stage (the fake packager does not refuse it) allows scripts from the
    # example bucket's scripts/, first as an https:// URL: uploaded with its s3:// name.
    assert fakes.main("--stage", "local", "--bucket", "b") == 0

    calls = fakes.calls()
    assert [call[:3] for call in calls] == [
        ["packager", "--stage", "local"],
        *[["aws", "s3", "cp"]] * 2,
        ["aws", "cloudformation", "package"],
        ["aws", "cloudformation", "deploy"],
    ]
    assert calls[1:3] == kit_uploads("s3://backup-status-bucket-example/scripts/")


def test_the_kit_is_every_file_of_scripts() -> None:
    assert sorted(deploy.KIT) == sorted(p.name for p in (ROOT / "scripts").iterdir())


def test_scripts_chooses_another_allowed_prefix(fakes: Fakes) -> None:
    prefix = "s3://backup-status-bucket-example/scripts/db/"
    assert fakes.main("--stage", "local", "--bucket", "b", "--scripts", prefix) == 0
    assert fakes.calls()[1:3] == kit_uploads(prefix)


def test_scripts_the_stage_does_not_allow_are_refused_before_aws(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    # Runs could not use the kit from there: the command policy would refuse its path.
    code = fakes.main("--stage", "local", "--bucket", "b", "--scripts", "s3://elsewhere/x/")
    assert code == 2
    line = one_error_line(capsys)
    assert "SCRIPTS=s3://elsewhere/x is not under any of stage local's" in line
    assert [call[0] for call in fakes.calls()] == ["packager"]


def test_a_failed_upload_of_the_kit_stops_the_deploy_before_the_stack(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.fail("cp", 1)
    assert fakes.main("--stage", "local", "--bucket", "b") == 1
    assert [call[:3] for call in fakes.calls()][1:] == [["aws", "s3", "cp"]]
    assert "s3 cp failed (exit code 1)" in one_error_line(capsys)


def test_the_stack_name_can_be_chosen_and_parameters_left_out(fakes: Fakes) -> None:
    assert fakes.main("--stage", "dev", "--bucket", "b", "--stack", "backups-dev") == 0

    deploy_call = fakes.calls()[-1]
    assert deploy_call[deploy_call.index("--stack-name") + 1] == "backups-dev"
    assert "--parameter-overrides" not in deploy_call


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--bucket", "b"], "no stage to deploy"),
        (["--stage", "", "--bucket", "b"], "no stage to deploy"),  # as Make passes it
        (["--stage", "prod"], "no S3 bucket"),
        (["--stage", "prod", "--bucket", " "], "no S3 bucket"),
        (["--stage", "prod", "--bucket", "b", "--stack", "2nd_stack"], "not a stack name"),
        (["--stage", "prod", "--bucket", "b", "--params", "NotificationEmail"], "KEY=VALUE"),
        (["--stage", "prod", "--bucket", "b", "--scripts", "ftp://b/x/"], "SCRIPTS='ftp://b/x/'"),
    ],
)
def test_what_is_missing_or_wrong_is_one_sentence_before_anything_runs(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    assert fakes.main(*args) == 2
    assert says in one_error_line(capsys)
    assert fakes.calls() == []


def test_a_parameter_the_template_lacks_is_refused_before_aws(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fakes.main("--stage", "prod", "--bucket", "b", "--params", "Email=x") == 2
    line = one_error_line(capsys)
    assert "no parameter Email" in line
    assert "LogRetentionInDays, NotificationEmail" in line
    assert [call[0] for call in fakes.calls()] == ["packager"]


def test_without_the_aws_cli_the_deploy_says_so(
    fakes: Fakes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (fakes.bin / "aws").unlink()
    monkeypatch.setenv("PATH", str(fakes.bin))  # nothing else, so no real aws either
    assert fakes.main("--stage", "prod", "--bucket", "b") == 2
    assert "AWS CLI (aws) is not installed" in one_error_line(capsys)
    assert fakes.calls() == []


@pytest.mark.parametrize(("failing", "code", "calls"), [("package", 255, 2), ("deploy", 254, 3)])
def test_a_failed_aws_call_stops_the_deploy_with_its_exit_code(
    fakes: Fakes,
    capsys: pytest.CaptureFixture[str],
    failing: str,
    code: int,
    calls: int,
) -> None:
    fakes.fail(failing, code)
    assert fakes.main("--stage", "prod", "--bucket", "b") == code
    made = fakes.calls()
    assert len(made) == calls  # nothing after the failed call
    assert made[-1][:3] == ["aws", "cloudformation", failing]
    line = one_error_line(capsys)
    assert f"cloudformation {failing} failed (exit code {code})" in line


def test_a_stage_the_packager_refuses_deploys_nothing(
    fakes: Fakes, capfd: pytest.CaptureFixture[str]
) -> None:
    # The real packager (a subprocess: capfd), and `dev` as shipped still holds placeholders.
    code = deploy.main(["--stage", "dev", "--bucket", "b", "--out", str(fakes.out)])
    assert code == 2
    [line] = capfd.readouterr().err.splitlines()
    assert line.startswith("error: stage 'dev' still holds placeholders")
    assert fakes.calls() == []


def test_capabilities_follow_the_template() -> None:
    assert deploy.capabilities(TEMPLATE) == ["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"]
    named: dict[str, Any] = {
        "Resources": {"Role": {"Type": "AWS::IAM::Role", "Properties": {"RoleName": "r"}}}
    }
    assert deploy.capabilities(named) == ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"]
    function = {"Type": "AWS::Serverless::Function", "Properties": {}}
    implicit_role = {"Transform": "AWS::Serverless-2016-10-31", "Resources": {"F": function}}
    assert deploy.capabilities(implicit_role) == ["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"]
    assert deploy.capabilities({"Resources": {}}) == []


def test_make_deploy_needs_the_stage_named() -> None:
    def dry_run(*variables: str) -> str:
        env = {k: v for k, v in os.environ.items() if k not in ("STAGE", "BUCKET", "SCRIPTS")}
        command = ["make", "-n", "deploy", *variables]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert '--stage "" --bucket "b"' in dry_run("BUCKET=b")  # not the `dev` default
    named = dry_run("STAGE=prod", "BUCKET=b", "STACK=s", "PARAMS=LogRetentionInDays=7")
    assert "-m prepost.deploy" in named
    assert '--stage "prod" --bucket "b" --stack "s"' in named
    assert '--params "LogRetentionInDays=7" --scripts ""' in named
    assert '--scripts "s3://x/y/"' in dry_run("STAGE=prod", "BUCKET=b", "SCRIPTS=s3://x/y/")
