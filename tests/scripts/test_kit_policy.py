"""The script kit as the README documents it (section "Script kit") passes the deployment's
checks unchanged: every command line, pre and post, Linux and Windows, is accepted by the
command policy and the `local` stage's allow lists for the kit's place in that stage's
script source; what SSM is sent is what the README says; every option a line uses is one
its script takes; and the README's example run inputs run through local mode as they are.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chalicelib.config import settings_from
from chalicelib.logic.policy import command_line, violations
from chalicelib.models.run_input import RunInput
from prepost.local.cloud import stage_environment

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SECTION = README.split("\n## Script kit\n", 1)[1].split("\n## ", 1)[0]
# Inline code, which may wrap across lines, with its whitespace made single spaces.
CODE = [" ".join(span.split()) for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", SECTION)]
# The command lines, one a list item: "- pre: `...`", "- pre, with ...: `...`", "- post: `...`".
ROLES = re.findall(r"^- (pre|post)\b[^`\n]*: `([^`]+)`$", SECTION, re.M)
LINES = sorted({line for _, line in ROLES})
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", SECTION, re.S)
EXAMPLES = [body for language, body in BLOCKS if language == "json"]
SETTINGS = settings_from(stage_environment("local"))
SOURCE = "s3://backup-status-bucket-example/scripts/prepost-freeze.{kind}"  # the stage's own
THAW = {"sh": "prepost-freeze.sh thaw", "ps1": "prepost-freeze.ps1 -Action Thaw"}
PREPOST = Path(sys.executable).parent / "prepost"


def kind_of(line: str) -> str:
    return line.split()[0].rsplit(".", 1)[1]


def is_thaw(line: str) -> bool:
    return line in THAW.values()


def run_input(pre: str, post: str) -> RunInput:
    """A run input whose pre- and post-script are the kit's, from where `make deploy` puts
    it in the local stage."""

    def script(command: str) -> dict[str, Any]:
        return {"SourceS3Path": SOURCE.format(kind=kind_of(command)), "CommandToRun": command}

    return RunInput.model_validate(
        {
            "TargetEC2TagKey": "backup-job",
            "TargetEC2TagValue": "true",
            "RemoteRunCommandDetails": {
                "PreBackupScriptDetails": script(pre),
                "PostBackupScriptDetails": script(post),
            },
            "BackupDetails": {
                "BackupVaultName": "prepost-vault",
                "IamRoleArn": "arn:aws:iam::123456789012:role/BackupJobExecutionRole",
            },
        }
    )


def with_its_thaw(line: str) -> RunInput:
    thaw = THAW[kind_of(line)]
    return run_input(thaw, line) if is_thaw(line) else run_input(line, thaw)


def test_the_readme_documents_every_mode_pre_and_post() -> None:
    assert all((role == "post") == is_thaw(line) for role, line in ROLES)
    modes = {" ".join(line.split()[:3]) for line in LINES if not is_thaw(line)}
    assert {
        "prepost-freeze.sh freeze fs",
        "prepost-freeze.sh freeze mysql",
        "prepost-freeze.sh freeze postgres",
        "prepost-freeze.ps1 -Action Freeze",
    } <= modes
    assert set(THAW.values()) <= set(LINES)


@pytest.mark.parametrize("line", LINES)
def test_each_documented_line_is_accepted_by_the_local_stage_as_written(line: str) -> None:
    found = with_its_thaw(line)
    assert violations(found, SETTINGS) == []
    script = found.post_script if is_thaw(line) else found.pre_script
    assert script is not None
    sent = command_line(script, SETTINGS)
    if kind_of(line) == "sh":
        assert sent == line  # plain words: rebuilt as they were
    else:
        name, *arguments = line.split()
        rebuilt = [w if re.fullmatch(r"-[A-Za-z]+", w) else f"'{w}'" for w in arguments]
        assert sent == " ".join(["&", f"'.\\{name}'", *rebuilt])


def test_what_the_readme_says_ssm_runs_on_windows_is_what_it_is_sent() -> None:
    [shown] = [span for span in CODE if span.startswith("& '")]
    services = "-Services W3SVC,MyAppService -MaxSeconds 600"
    [first] = [line for line in LINES if line.endswith(services)]
    script = with_its_thaw(first).pre_script
    assert script is not None
    assert command_line(script, SETTINGS) == shown


@pytest.mark.parametrize(
    "line",
    ["prepost-freeze.sh freeze fs /data; id", "prepost-freeze.ps1 -Action Freeze -Services $x"],
)
def test_a_line_the_policy_refuses_would_be_caught(line: str) -> None:
    # The test above can fail: a documented line outside the policy is named.
    assert violations(with_its_thaw(line), SETTINGS) != []


def options_of_the_shell_script() -> str:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "prepost-freeze.sh"), "--help"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return result.stdout


def parameters_of_the_powershell_script() -> set[str]:
    source = (ROOT / "scripts" / "prepost-freeze.ps1").read_text()
    param_block = source.split("\nparam(\n", 1)[1].split("\n)\n", 1)[0]
    return set(re.findall(r"\[(?:string|switch)\]\$(\w+)", param_block))


@pytest.mark.parametrize("line", LINES)
def test_each_option_a_documented_line_uses_is_one_its_script_takes(line: str) -> None:
    words = line.split()
    if kind_of(line) == "sh":
        usage = options_of_the_shell_script()
        mode = words[1:3] if words[1] == "freeze" else words[1:2]
        assert f"prepost-freeze.sh {' '.join(mode)}" in usage
        for option in (w for w in words if w.startswith("--")):
            assert re.search(rf"{option}\b", usage), option
    else:
        declared = parameters_of_the_powershell_script()
        assert {w[1:] for w in words if w.startswith("-")} <= declared
        assert words[words.index("-Action") + 1] in ("Freeze", "Thaw", "Status")


def test_the_readme_shows_a_linux_and_a_windows_run_input() -> None:
    sources = [
        details["SourceS3Path"]
        for example in EXAMPLES
        for details in json.loads(example)["RemoteRunCommandDetails"].values()
    ]
    assert {Path(s).name for s in sources} == {"prepost-freeze.sh", "prepost-freeze.ps1"}
    [windows] = [json.loads(e) for e in EXAMPLES if "prepost-freeze.ps1" in e]
    assert windows["BackupDetails"]["BackupOptions"] == {"WindowsVSS": "enabled"}


@pytest.mark.parametrize("example", EXAMPLES, ids=["linux", "windows"])
def test_each_example_run_input_runs_in_local_mode_under_the_local_stage(
    example: str, tmp_path: Path
) -> None:
    found = RunInput.model_validate(json.loads(example))
    assert violations(found, SETTINGS) == []
    path = tmp_path / "run.json"
    path.write_text(example)
    result = subprocess.run(
        [str(PREPOST), "simulate", "--input", str(path), "--stage", "local", "--output", "json"],
        capture_output=True, text=True, timeout=600, check=False, cwd=ROOT,
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "SUCCEEDED", report["errors"]
