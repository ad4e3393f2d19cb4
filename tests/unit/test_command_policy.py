"""The command policy and the script source parser, without AWS."""

from __future__ import annotations

import pytest

from chalicelib.logic.decisions import run_id_for, script_output_prefix
from chalicelib.models.run_input import OUTPUT_KEY_SUFFIX_MAX, SSM_OUTPUT_KEY_PREFIX_MAX
from chalicelib.models.s3 import S3Location, S3LocationError
from chalicelib.models.script_command import CommandRejectedError, ScriptCommand, Shell
from chalicelib.models.state import Phase


@pytest.mark.parametrize(
    ("url", "bucket", "key"),
    [
        ("s3://my-bucket/scripts/a.sh", "my-bucket", "scripts/a.sh"),
        ("https://my-bucket.s3.amazonaws.com/scripts/a.sh", "my-bucket", "scripts/a.sh"),
        ("https://my.bucket.s3.eu-west-1.amazonaws.com/a.sh", "my.bucket", "a.sh"),
        ("https://my-bucket.s3-us-west-2.amazonaws.com/x/a.sh", "my-bucket", "x/a.sh"),
        ("https://my-bucket.s3.dualstack.us-east-1.amazonaws.com/a.sh", "my-bucket", "a.sh"),
        ("https://my-bucket.s3.cn-north-1.amazonaws.com.cn/a.sh", "my-bucket", "a.sh"),
        ("https://s3.amazonaws.com/my-bucket/scripts/a.sh", "my-bucket", "scripts/a.sh"),
        ("https://s3.us-gov-west-1.amazonaws.com/my-bucket/a.sh", "my-bucket", "a.sh"),
    ],
)
def test_the_forms_aws_documents_are_read_alike(url: str, bucket: str, key: str) -> None:
    assert S3Location.parse(url) == S3Location(bucket, key)


@pytest.mark.parametrize(
    "url",
    [
        "s3://my-bucket/scripts/../a.sh",
        "s3://my-bucket/scripts/./a.sh",
        "s3://my-bucket/scripts/%2e%2e/a.sh",
        "s3://my-bucket/a.sh?x=1",
        "s3://my-bucket/a.sh#x",
        "s3://u@my-bucket/a.sh",
        "https://my-bucket.s3.amazonaws.com:443/a.sh",
        "https://my-bucket.s3.amazonaws.com.example.com/a.sh",
        "https://s3.amazonaws.com/",
        "s3://my-bucket/",
        "s3://My_Bucket/a.sh",
        "s3://192.168.1.1/a.sh",
        "s3://my-bucket/a b.sh",
        "s3://my-bucket/a\u00e9.sh",
        "ftp://my-bucket/a.sh",
    ],
)
def test_anything_a_parser_could_read_otherwise_is_refused(url: str) -> None:
    with pytest.raises(S3LocationError):
        S3Location.parse(url)


def test_a_prefix_matches_at_a_slash_boundary_only() -> None:
    allowed = S3Location.parse("s3://b-1/scripts/", prefix=True)
    assert allowed == S3Location.parse("https://b-1.s3.amazonaws.com/scripts", prefix=True)
    assert S3Location.parse("s3://b-1/scripts/a.sh").is_under(allowed)
    assert S3Location.parse("s3://b-1/scripts/db/a.sh").is_under(allowed)
    assert not S3Location.parse("s3://b-1/scripts-old/a.sh").is_under(allowed)
    assert not S3Location.parse("s3://b-2/scripts/a.sh").is_under(allowed)
    whole_bucket = S3Location.parse("s3://b-1", prefix=True)
    assert S3Location.parse("s3://b-1/anything.sh").is_under(whole_bucket)


def test_posix_words_are_rebuilt_quoted() -> None:
    parsed = ScriptCommand.parse("bash -e ./freeze.sh 'db1' \"--all\"", "freeze.sh")
    assert parsed.shell is Shell.POSIX
    assert parsed.program == ["bash", "-e", "./freeze.sh"]
    assert parsed.arguments == ["db1", "--all"]
    assert parsed.render() == "bash -e ./freeze.sh db1 --all"


def test_powershell_values_are_verbatim_strings_and_parameter_names_stay_bare() -> None:
    parsed = ScriptCommand.parse(".\\freeze.ps1 -Names a,b @all -Force:", "freeze.ps1")
    assert parsed.shell is Shell.POWERSHELL
    assert parsed.render() == "& '.\\freeze.ps1' -Names 'a,b' '@all' -Force:"


@pytest.mark.parametrize(
    ("text", "script", "rendered"),
    [
        (
            "prepost-freeze.ps1 -Action Freeze",
            "prepost-freeze.ps1",
            "& '.\\prepost-freeze.ps1' -Action 'Freeze'",
        ),
        ("./freeze.ps1 -Action Thaw", "freeze.ps1", "& '.\\freeze.ps1' -Action 'Thaw'"),
        ("freeze.cmd db1", "freeze.cmd", "& '.\\freeze.cmd' 'db1'"),
        # -File resolves a relative path against the current folder: left as given.
        ("powershell -File freeze.ps1", "freeze.ps1", "powershell -File 'freeze.ps1'"),
    ],
)
def test_a_windows_script_alone_is_run_by_its_path_in_the_download_folder(
    text: str, script: str, rendered: str
) -> None:
    # PowerShell runs a script of the current folder only when named by a path
    # (about_Command_Precedence); a bare name would be looked up on PATH.
    assert ScriptCommand.parse(text, script).render() == rendered


@pytest.mark.parametrize(
    ("text", "script", "rule"),
    [
        ("freeze.sh; id", "freeze.sh", "';' is a command separator"),
        ("freeze.sh $(id)", "freeze.sh", "a substitution or variable"),
        ("python3 freeze.sh", "freeze.sh", "cannot run the script"),
        ("bash freeze.py", "freeze.py", "cannot run the script"),
        ("powershell freeze.ps1", "freeze.ps1", "must run the script with -File"),
        ("powershell -ExecutionPolicy Evil -File freeze.ps1", "freeze.ps1", "must be followed"),
        ("freeze.sh\x1b[2J", "freeze.sh", "control or non-ASCII"),
        ("", "freeze.sh", "is empty"),
        ("freeze.sh ''", "freeze.sh", "argument 1 is empty"),
        ("other.sh", "freeze.sh", "not 'other.sh'"),
    ],
)
def test_each_rule_is_named_when_broken(text: str, script: str, rule: str) -> None:
    with pytest.raises(CommandRejectedError, match=rule.replace("$", r"\$")):
        ScriptCommand.parse(text, script)


def test_the_longest_output_prefix_allowed_still_fits_ssm_with_the_runs_suffix() -> None:
    from datetime import UTC, datetime

    run_id = run_id_for("some-event-id", datetime(2026, 11, 26, tzinfo=UTC))
    longest = "p" * (SSM_OUTPUT_KEY_PREFIX_MAX - OUTPUT_KEY_SUFFIX_MAX)
    for phase in (Phase.PRE_SCRIPT, Phase.POST_SCRIPT):
        assert len(script_output_prefix(longest, run_id, phase)) <= SSM_OUTPUT_KEY_PREFIX_MAX
    assert len(script_output_prefix(longest, run_id, Phase.POST_SCRIPT)) == 500
