"""The `prepost` command's contracts, through the installed entry point in a subprocess:
documents on stdout, one sentence on stderr for what cannot be used, and the documented
exit codes (0 done, 1 not succeeded, 2 usage, 3 AWS, 70 a bug; README "Exit codes")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prepost import cli
from prepost.documents import MAX_BYTES, MAX_DEPTH
from prepost.operator import NO_CREDENTIALS, NO_REGION
from tests.conftest import seed_input

PREPOST = Path(sys.executable).parent / "prepost"
AWS_VARIABLES = (
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
)  # fmt: skip


def prepost(
    *args: str, env: dict[str, str] | None = None, home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed command with an AWS environment of nothing but `env` (config
    files pointed at `home`, which holds none unless the test writes them)."""
    clean = {k: v for k, v in os.environ.items() if k not in AWS_VARIABLES}
    if home is not None:
        clean |= {
            "AWS_CONFIG_FILE": str(home / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
        }
    clean |= {"AWS_EC2_METADATA_DISABLED": "true"} | (env or {})  # no instance role look-up
    return subprocess.run(
        [str(PREPOST), *args], capture_output=True, text=True, env=clean, timeout=300, check=False
    )


def one_sentence(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The command failed with `code`, printed nothing on stdout and one line on stderr."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("prepost")
    return lines[0]


# -- inputs that cannot be read --------------------------------------------------------------

UNREADABLE = {
    "null": ("null", "holds a JSON null, not a run input"),
    "a list": ("[1, 2]", "holds a JSON array"),
    "a string": ('"x"', "holds a JSON string"),
    "not JSON": ("{nope", "is not JSON"),
    "too deep": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "deep but parsable": (
        '{"a": ' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1),
        f"nested more than {MAX_DEPTH} levels",
    ),
    "too big": (json.dumps({"pad": "x" * MAX_BYTES}), "more than the 256 KB"),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_an_input_that_cannot_be_read_is_one_sentence_and_exit_2(case: str, tmp_path: Path) -> None:
    text, said = UNREADABLE[case]
    path = tmp_path / "input.json"
    path.write_text(text)
    assert said in one_sentence(prepost("simulate", "--input", str(path)), 2)
    # The same reading for the command that sends it to AWS, before AWS is asked.
    assert said.replace("a run input", "a run input or a profile reference") in one_sentence(
        prepost("start", "--input", str(path), "--region", "eu-west-1"), 2
    )


def test_a_missing_input_file_is_one_sentence(tmp_path: Path) -> None:
    said = one_sentence(prepost("simulate", "--input", str(tmp_path / "absent.json")), 2)
    assert "cannot read" in said
    assert "No such file" in said


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "--sizes", "abc"],
        ["bench", "--sizes", "0"],
        ["bench", "--sizes", "99999999"],
        ["bench", "no-such-scenario", "--sizes", "1"],
        ["simulate", "--output", "xml"],
        ["simulate", "--store", "paper"],
        ["simulate", "--instances", "0"],
        ["simulate", "no-such-scenario"],
        ["simulate", "--stage", "no-such-stage"],
        ["runs", "--since", "7w", "--region", "eu-west-1"],
        ["status"],
        ["frobnicate"],
    ],
    ids=" ".join,
)
def test_a_bad_option_value_is_one_sentence_and_exit_2(args: list[str]) -> None:
    one_sentence(prepost(*args), 2)


def test_a_scheduled_scenario_refuses_an_invalid_input_instead_of_running_its_own(
    tmp_path: Path,
) -> None:
    path = tmp_path / "input.json"
    path.write_text(json.dumps({"TargetEC2TagKey": "backup-job"}))
    result = prepost("simulate", "nightly-schedule", "--input", str(path))
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    assert "invalid run input" in result.stderr
    assert "Traceback" not in result.stderr


# -- AWS conventions -------------------------------------------------------------------------


def test_no_region_is_the_one_sentence(tmp_path: Path) -> None:
    for args in (["runs", "--table", "t"], ["status", "r", "--table", "t"],
                 ["profile", "list", "--table", "t"], ["cancel", "r"]):  # fmt: skip
        said = one_sentence(prepost(*args, home=tmp_path), 3)
        assert said == f"prepost: {NO_REGION}"


@pytest.mark.parametrize(
    "where",
    [
        {"env": {"AWS_REGION": "eu-west-1"}},
        {"env": {"AWS_DEFAULT_REGION": "eu-west-1"}},
        {"args": ["--region", "eu-west-1"]},
    ],
    ids=["AWS_REGION", "AWS_DEFAULT_REGION", "--region"],
)
def test_a_region_from_anywhere_the_aws_cli_takes_it(where: dict[str, Any], tmp_path: Path) -> None:
    """With a region and no credentials, the command gets as far as the credentials."""
    result = prepost("runs", "--table", "t", *where.get("args", []),
                     env=where.get("env"), home=tmp_path)  # fmt: skip
    assert one_sentence(result, 3) == f"prepost: {NO_CREDENTIALS}"


def aws_config(home: Path) -> None:
    (home / "config").write_text("[profile ops]\nregion = eu-west-1\n")
    (home / "credentials").write_text(
        "[ops]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = secret\n"
    )


# Nothing listens there: the call fails as an unreachable AWS does, at once, without retries.
UNREACHABLE = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_MAX_ATTEMPTS": "1",
    "AWS_RETRY_MODE": "standard",
}


@pytest.mark.parametrize("how", ["--profile", "AWS_PROFILE"])
def test_a_credentials_profile_as_in_the_aws_cli(how: str, tmp_path: Path) -> None:
    aws_config(tmp_path)
    args, env = (["--profile", "ops"], {}) if how == "--profile" else ([], {"AWS_PROFILE": "ops"})
    result = prepost("runs", "--table", "t", *args, env=UNREACHABLE | env, home=tmp_path)
    # Region and credentials came from the profile: the call was made, and failed.
    said = one_sentence(result, 3)
    assert "Could not connect to the endpoint URL" in said


def test_an_unknown_credentials_profile_is_a_usage_error(tmp_path: Path) -> None:
    aws_config(tmp_path)
    said = one_sentence(prepost("runs", "--table", "t", "--profile", "nobody", home=tmp_path), 2)
    assert "no AWS profile 'nobody'" in said


def test_every_command_that_talks_to_aws_takes_region_profile_and_output() -> None:
    for command in (["start"], ["status"], ["runs"], ["cancel"], ["profile", "put"],
                    ["profile", "list"], ["profile", "show"], ["profile", "delete"]):  # fmt: skip
        shown = prepost(*command, "--help", env={"COLUMNS": "200"})
        assert shown.returncode == 0, shown.stderr
        for option in ("--region", "--profile", "--output", "--json"):
            assert option in shown.stdout, (command, option)
    runs = prepost("runs", "--help", env={"COLUMNS": "200"}).stdout
    assert "--run-profile" in runs  # the stored run definitions' option clashes with nothing


def test_start_checks_a_profile_reference_like_the_app(tmp_path: Path) -> None:
    path = tmp_path / "start.json"
    path.write_text(json.dumps({"Profile": "no spaces allowed"}))
    result = prepost("start", "--input", str(path), "--region", "eu-west-1")
    assert result.returncode == 2, result.stderr
    assert "invalid profile reference" in result.stderr
    path.write_text(json.dumps(seed_input() | {"StartStopEC2Required": "maybe"}))
    result = prepost("start", "--input", str(path), "--region", "eu-west-1")
    assert result.returncode == 2
    assert "invalid run input" in result.stderr


# -- runs, documents, no tracebacks ----------------------------------------------------------


def test_a_run_that_logs_errors_still_prints_one_json_document() -> None:
    result = prepost("simulate", "start-capacity", "--output", "json")
    assert result.returncode == 1  # an instance is stuck stopped: not SUCCEEDED
    report = json.loads(result.stdout)  # the whole of stdout is the document
    assert report["status"] == "COMPLETED_WITH_ERRORS"
    assert "STUCK_STOPPED" in {i["status"] for i in report["instances"]}


def test_a_scenario_whose_expectations_miss_says_each_and_exits_1(tmp_path: Path) -> None:
    scenario = tmp_path / "wrong.json"
    scenario.write_text(json.dumps({
        "description": "expects what does not happen",
        "fleet": {"count": 2},
        "expect": {"run": "FAILED", "instances": {"1": "FAILED"}},
    }))  # fmt: skip
    result = prepost("simulate", str(scenario))
    assert result.returncode == 1
    assert "run status: SUCCEEDED" in result.stdout
    assert result.stdout.count("expectation missed") == 2
    document = prepost("simulate", str(scenario), "--json")
    assert document.returncode == 1
    assert len(json.loads(document.stdout)["expect_misses"]) == 2


def test_a_bug_is_one_sentence_and_exit_70(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise KeyError("oops")

    monkeypatch.setattr(cli, "_simulate", broken)
    assert cli.run(["simulate"]) == 70
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "internal error (KeyError: 'oops')" in captured.err
    assert "PREPOST_DEBUG=1" in captured.err
    assert "Traceback" not in captured.err
