"""The functions' IAM policies, filled in from a stage's configuration.

Each function has one policy file, `.chalice/policies/<function>.json`, named by
`.chalice/config.json` with `autogen_policy` off. A file holds two kinds of placeholder:

- `{{Token}}`: a value of the stage's configuration (see `CONFIG_KEYS`). A token that
  stands for a list (the allowed backup roles, say) turns the string holding it into one
  string per item. A list with no item is an error, since the policy would allow nothing
  and the deployment could not work, unless the token is *optional* (`OPTIONAL`): then
  the statement that holds it is left out (no notification topic, no KMS key), rather
  than rendered to a wildcard or to a stand-in.
- `${AWS::Partition}`, `${AWS::Region}`, `${AWS::AccountId}`: filled by CloudFormation in
  the packaged template (the string becomes an `Fn::Sub`), by the given values in tests.

The packaged template and the policy coverage test both render through `render`, so what
is tested is what is deployed.
"""

from __future__ import annotations

import json
import re
from typing import Any

from chalicelib.config import SNS_TOPIC_ARN, NotifyOn
from chalicelib.patterns import capture_queue_name
from prepost.local import ROOT
from prepost.local.cloud import stage_environment

POLICY_DIR = ROOT / ".chalice" / "policies"
TOKEN = re.compile(r"\{\{(\w+)\}\}")
PSEUDO = re.compile(r"\$\{AWS::(\w+)\}")
DEFAULT_OPT_IN_TAG = "prepost-backup:opt-in=true"
# A KMS key ARN (not an alias: IAM authorises kms:CreateGrant against the key itself).
KMS_KEY_ARN = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+")
# The stage configuration key behind each token.
CONFIG_KEYS = {
    "TableName": "PREPOST_TABLE_NAME",
    "EventBusName": "PREPOST_EVENT_BUS_NAME",
    "OptInTagKey": "PREPOST_OPT_IN_TAG",
    "OptInTagValue": "PREPOST_OPT_IN_TAG",
    "BackupRoleArns": "PREPOST_ALLOWED_BACKUP_ROLES",
    "BackupVaultNames": "PREPOST_ALLOWED_BACKUP_VAULTS",
    "NotifyTopicArns": "PREPOST_NOTIFY_TOPIC_ARN",
    "KmsKeyArns": "PREPOST_KMS_KEY_ARNS",
}
# List tokens that may be empty: a statement holding an empty one is left out.
OPTIONAL = frozenset({"NotifyTopicArns", "KmsKeyArns"})


class PolicyError(ValueError):
    """A policy cannot be rendered for this stage."""


def _listed(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def stage_values(
    stage: str, function: str, overrides: dict[str, str] | None = None
) -> dict[str, str | list[str]]:
    """What the tokens of `function`'s policy stand for in `stage` (whose configuration
    `overrides` changes, as a test that sets a key does)."""
    env = stage_environment(stage) | (overrides or {})
    key, _, value = env.get("PREPOST_OPT_IN_TAG", DEFAULT_OPT_IN_TAG).partition("=")
    return {
        "Stage": stage,
        "FunctionName": f"prepost-backup-{stage}-{function}",
        "CaptureQueueName": capture_queue_name(stage),
        "TableName": env["PREPOST_TABLE_NAME"],
        "EventBusName": env.get("PREPOST_EVENT_BUS_NAME", "default"),
        "OptInTagKey": key,
        "OptInTagValue": value,
        "BackupRoleArns": _listed(env.get("PREPOST_ALLOWED_BACKUP_ROLES", "")),
        "BackupVaultNames": _listed(env.get("PREPOST_ALLOWED_BACKUP_VAULTS", "")),
        "NotifyTopicArns": _notify_topic(env),
        "KmsKeyArns": _kms_keys(env),
    }


def _notify_topic(env: dict[str, str]) -> list[str]:
    """The configured notification topic, if any: without one nothing is published, and
    the statement that would allow it is left out. Settings the functions would refuse
    stop the rendering."""
    topic = env.get("PREPOST_NOTIFY_TOPIC_ARN", "").strip()
    if not re.fullmatch(SNS_TOPIC_ARN, topic):
        raise PolicyError(f"PREPOST_NOTIFY_TOPIC_ARN is not an SNS topic ARN: {topic!r}")
    notify_on = (env.get("PREPOST_NOTIFY_ON") or NotifyOn.FAILURES).strip().lower()
    if notify_on not in set(NotifyOn):
        raise PolicyError(f"PREPOST_NOTIFY_ON must be failures or always, not {notify_on!r}")
    return [topic] if topic else []


def _kms_keys(env: dict[str, str]) -> list[str]:
    """The customer managed KMS keys that encrypt the fleet's EBS volumes (none by
    default): starting such an instance needs kms:CreateGrant on its key."""
    keys = _listed(env.get("PREPOST_KMS_KEY_ARNS", ""))
    wrong = [key for key in keys if not KMS_KEY_ARN.fullmatch(key)]
    if wrong:
        raise PolicyError(f"PREPOST_KMS_KEY_ARNS holds what is not a KMS key ARN: {wrong}")
    return keys


def functions() -> list[str]:
    """Every function that has a policy file."""
    return sorted(path.stem for path in POLICY_DIR.glob("*.json"))


def load(function: str) -> dict[str, Any]:
    path = POLICY_DIR / f"{function}.json"
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def render(
    document: Any, values: dict[str, str | list[str]], pseudo: dict[str, str] | None = None
) -> Any:
    """`document` with its tokens filled. With `pseudo` (Partition, Region, AccountId) the
    `${AWS::...}` placeholders are filled too; without, such strings become `Fn::Sub`."""
    if isinstance(document, dict):
        if isinstance(document.get("Statement"), list):
            document = document | {
                "Statement": [s for s in document["Statement"] if not _left_out(s, values)]
            }
        return {
            _one(_fill(key, values), key): render(item, values, pseudo)
            for key, item in document.items()
        }
    if isinstance(document, list):
        out: list[Any] = []
        for item in document:
            rendered = render(item, values, pseudo)
            if isinstance(item, str) and isinstance(rendered, list):
                out += rendered  # a list token inside a list: its items join the list
            else:
                out.append(rendered)
        return out
    if isinstance(document, str):
        finished = [_pseudo(text, pseudo) for text in _fill(document, values)]
        listed = any(isinstance(values.get(name), list) for name in TOKEN.findall(document))
        return finished if listed else finished[0]
    return document


def _left_out(statement: Any, values: dict[str, str | list[str]]) -> bool:
    """Whether `statement` names an optional list token that is empty in this stage."""
    names = TOKEN.findall(json.dumps(statement))
    return any(name in OPTIONAL and values.get(name) == [] for name in names)


def _fill(text: str, values: dict[str, str | list[str]]) -> list[str]:
    """`text` with its tokens replaced: one string, or one per item of a list token."""
    results = [text]
    for name in TOKEN.findall(text):
        if name not in values:
            raise PolicyError(f"unknown token {{{{{name}}}}} in {text!r}")
        value = values[name]
        items = value if isinstance(value, list) else [value]
        if not items:
            key = CONFIG_KEYS.get(name, name)
            raise PolicyError(
                f"{key} allows nothing in this stage, so the policies could not work: "
                "set it in .chalice/config.json"
            )
        results = [r.replace(f"{{{{{name}}}}}", item) for r in results for item in items]
    return results


def _one(strings: list[str], original: str) -> str:
    if len(strings) != 1:
        raise PolicyError(f"a list token cannot be used in a key: {original!r}")
    return strings[0]


def _pseudo(text: str, pseudo: dict[str, str] | None) -> Any:
    if not PSEUDO.search(text):
        return text
    if pseudo is None:
        return {"Fn::Sub": text}
    return PSEUDO.sub(lambda match: pseudo[match.group(1)], text)


def rendered_policies(
    stage: str, pseudo: dict[str, str] | None = None, overrides: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Every function's policy, rendered for `stage`."""
    return {
        name: render(load(name), stage_values(stage, name, overrides), pseudo)
        for name in functions()
    }
