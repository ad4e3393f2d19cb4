"""Local mode's speed-ups of moto (`prepost.local.moto_speedups`) answer what moto answers.

The XML writer is held to xmltodict's output on random documents of the shapes moto
builds and on every answer of a whole run; the remembered attribute names and the literal
filter matching, to moto's own answers for the same calls.
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest
import xmltodict
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st
from moto import mock_aws

from chalicelib.models.state import RunStatus
from prepost.local import moto_speedups
from prepost.local.cloud import LocalCloud
from tests.conftest import VAULT, seed_input
from tests.functional.helpers import outcome

names = st.sampled_from(["item", "instanceId", "a", "B-c", "x.y", "ns:tag"])
texts = st.text(alphabet=st.sampled_from(list("ab &<>\"'\n\t\r]]>é")), max_size=6)
scalars = st.one_of(
    texts, st.integers(-5, 5), st.booleans(), st.none(), st.binary(max_size=3),
    st.sampled_from([0.5, 10**20]),
)  # fmt: skip
attributes = st.dictionaries(
    st.sampled_from(["@xmlns", "@id", "@type"]),
    st.one_of(texts, st.none(), st.dictionaries(st.sampled_from(["", "p"]), texts, max_size=2)),
    max_size=2,
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.builds(
            lambda attrs, text, children: attrs | text | children,
            attributes,
            st.one_of(st.just({}), st.fixed_dictionaries({"#text": st.one_of(texts, st.none())})),
            st.dictionaries(names, inner, max_size=3),
        ),
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(root=names, body=documents, full=st.booleans(), short=st.booleans())
def test_the_xml_writer_writes_what_xmltodict_writes(
    root: str, body: Any, full: bool, short: bool
) -> None:
    if full and isinstance(body, list) and len(body) != 1:
        body = [body]  # one root: xmltodict refuses more (so does the writer: checked below)
    document = {root: body}
    try:
        expected = xmltodict.unparse(
            document, full_document=full, short_empty_elements=short, pretty=False
        )
    except ValueError:
        return  # a document xmltodict refuses: moto never builds one
    assert (
        moto_speedups.unparse(
            document, full_document=full, short_empty_elements=short, pretty=False
        )
        == expected
    )


def test_a_document_of_two_roots_is_refused_as_xmltodict_refuses_it() -> None:
    with pytest.raises(ValueError, match="exactly one root"):
        moto_speedups.unparse({"a": "1", "b": "2"}, full_document=True)
    with pytest.raises(ValueError, match="exactly one root"):
        moto_speedups.unparse({}, full_document=True)


def test_every_answer_of_a_run_is_the_xml_xmltodict_would_write(monkeypatch: Any) -> None:
    """A whole scenario run (every service the functions call, errors included): each
    answer moto writes with the fast writer is compared with xmltodict's."""
    compared: list[str] = []

    def checked(document: Any, *args: Any, **kwargs: Any) -> Any:
        written = unparse(document, *args, **kwargs)
        assert written == xmltodict.unparse(document, *args, **kwargs)
        compared.append(next(iter(document)))
        return written

    unparse = moto_speedups.unparse
    monkeypatch.setattr(moto_speedups, "unparse", checked)
    with LocalCloud(store="dynamodb", seed=3) as cloud:
        cloud.create_vault(VAULT)
        cloud.launch(4, tags={"backup-job": "true"})
        run_id = cloud.run(seed_input())
        assert outcome(cloud, run_id)[0].status is RunStatus.SUCCEEDED
        with pytest.raises(ClientError, match="InvalidInstanceID"):
            cloud.ec2.describe_instances(InstanceIds=["i-0000000000000dead"])
    assert {"DescribeInstancesResponse", "StopInstancesResponse", "Response"} <= set(compared)


@mock_aws
def test_describe_answers_with_and_without_the_speedups_are_the_same() -> None:
    ec2 = boto3.client("ec2", region_name="eu-west-1")
    reservation = ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=30, MaxCount=30,
        TagSpecifications=[{"ResourceType": "instance",
                            "Tags": [{"Key": "backup-job", "Value": "nightly"}]}],
    )  # fmt: skip
    ids = [i["InstanceId"] for i in reservation["Instances"]]
    asks: list[dict[str, Any]] = [
        {"Filters": [{"Name": "tag:backup-job", "Values": ["nightly"]}]},
        {"Filters": [{"Name": "instance-id", "Values": ids[3:9]}]},
        {"Filters": [{"Name": "instance-id", "Values": [ids[0][:-2] + "*", ids[1]]}]},
        {"InstanceIds": ids[:5]},
    ]
    plain = [_without_metadata(ec2.describe_instances(**ask)) for ask in asks]
    with moto_speedups.speedups():
        fast = [_without_metadata(ec2.describe_instances(**ask)) for ask in asks]
    assert fast == plain
    # (moto matches instance ids exactly, the pattern included: the fallback agrees)
    assert [len(r["Reservations"][0]["Instances"]) for r in plain] == [30, 6, 1, 5]


def _without_metadata(answer: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in answer.items() if key != "ResponseMetadata"}
