"""Local mode's quick writes (`prepost.local.fast_writes`) against moto's own: the same
random sequences of the state store's writes, applied to one table through the quick
path and to another through moto alone, leave the same items and get the same answers
(done, or refused with the same error code)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.gateways.state_store import create_table, request_of
from chalicelib.models import state_machine as sm
from prepost.local import fast_writes
from prepost.local.fast_dynamodb import FastDynamoDB

REGION = "eu-west-1"
ACCOUNT = "123456789012"
EXAMPLES = int(os.environ.get("PREPOST_FAST_WRITE_EXAMPLES", "300"))

keys = st.sampled_from([("R#1", "G#a"), ("R#1", "G#b"), ("R#2", "G#a")]).map(
    lambda k: {"pk": k[0], "sk": k[1]}
)
# Top-level and nested paths, the due index's keys (typed and never empty), and a table key
paths = st.sampled_from(["status", "n", "m", "m.a", "m.b", "m.a.x", "due_at", "due_pk", "sk"])
scalars = st.one_of(
    st.text(alphabet="ab", max_size=2),
    st.integers(-2, 3),
    st.booleans(),
    st.sampled_from([0.5, -1.25, 10**20]),
)
values = st.one_of(
    scalars,
    st.dictionaries(st.sampled_from(["a", "b", "x"]), scalars, max_size=2),
    st.lists(scalars, max_size=2),
)
leaves = st.one_of(
    st.builds(sm.Exists, paths),
    st.builds(sm.Missing, paths),
    st.builds(sm.Compare, paths, st.sampled_from(["=", "<>", "<", "<="]), scalars),
)
conditions = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda p: sm.All(tuple(p))),
        st.lists(inner, min_size=1, max_size=3).map(lambda p: sm.AnyOf(tuple(p))),
    ),
    max_leaves=4,
)
updates = st.builds(
    sm.Update,
    key=keys,
    set=st.dictionaries(paths, values, max_size=3),
    add=st.dictionaries(paths, st.integers(-2, 2), max_size=2),
    remove=st.lists(paths, max_size=2, unique=True).map(tuple),
    when=st.none() | conditions,
    returns_new=st.booleans(),
).filter(lambda u: bool(u.set or u.add or u.remove))
puts = st.builds(
    lambda key, attributes, when: sm.Put(key | attributes, when),
    keys,
    st.dictionaries(st.sampled_from(["status", "n", "m", "due_at", "due_pk"]), values, max_size=3),
    st.none() | conditions,
)
transactions = st.lists(updates | puts, min_size=1, max_size=3).map(
    lambda w: sm.Transaction(tuple(w))
)
sequences = st.lists(updates | puts | transactions, min_size=1, max_size=6)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from moto import mock_aws

    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    with pytest.MonkeyPatch.context() as patch, mock_aws():
        for name, value in env.items():
            patch.setenv(name, value)
        session = boto3.session.Session(region_name=REGION)
        FastDynamoDB(ACCOUNT, REGION).register(session.events)
        yield session.client("dynamodb")


def _apply(client: Any, table: str, write: sm.Write) -> Any:
    """The answer to `write`: the new item, {} for done, or the refusal's error code."""
    try:
        if isinstance(write, sm.Transaction):
            kinds = {sm.Put: "Put", sm.Update: "Update"}
            items = [{kinds[type(w)]: request_of(table, w)} for w in write.writes]
            client.transact_write_items(TransactItems=items)
            return {}
        request = request_of(table, write)
        if isinstance(write, sm.Put):
            client.put_item(**request)
            return {}
        assert isinstance(write, sm.Update)
        if write.returns_new:
            return client.update_item(**request, ReturnValues="ALL_NEW")["Attributes"]
        client.update_item(**request)
        return {}
    except ClientError as exc:
        return exc.response["Error"]["Code"]


def _items(client: Any, table: str) -> list[dict[str, Any]]:
    return sorted(client.scan(TableName=table)["Items"], key=lambda i: (i["pk"]["S"], i["sk"]["S"]))


_tables = iter(range(10**6))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(writes=sequences)
def test_quick_writes_do_what_moto_does(client: Any, writes: list[sm.Write]) -> None:
    n = next(_tables)
    quick, moto = f"quick-{n}", f"moto-{n}"
    create_table(client, quick)
    create_table(client, moto)
    try:
        for write in writes:
            fast_writes.ENABLED = True
            answered = _apply(client, quick, write)
            fast_writes.ENABLED = False
            expected = _apply(client, moto, write)
            assert answered == expected, write
            assert _items(client, quick) == _items(client, moto), write
    finally:
        fast_writes.ENABLED = True
        client.delete_table(TableName=quick)
        client.delete_table(TableName=moto)


def test_the_quick_path_answers_the_store_s_usual_writes(client: Any) -> None:
    """The comparison above means something only if the quick path answers: a usual
    transaction of the store (an instance's result and its group's count) is answered by
    it, not handed to moto."""
    create_table(client, "usual")
    try:
        group = sm.Update({"pk": "R#1", "sk": "G#a"}, set={"phase": "STOP"}, add={"pending": 2})
        client.transact_write_items(TransactItems=[{"Update": request_of("usual", group)}])
        finish = sm.Transaction((
            sm.Update({"pk": "R#1", "sk": "I#i-1"}, set={"phases": {"STOP": {"status": "OK"}}}),
            sm.Update({"pk": "R#1", "sk": "G#a"}, add={"pending": -1},
                      when=sm.all_of(sm.eq("phase", "STOP"), sm.eq("pending", 2))),
        ))  # fmt: skip
        items = [{"Update": request_of("usual", w)} for w in finish.writes]
        params = {"TransactItems": items}
        backend = _backend()
        assert fast_writes.transact_write_items(backend, params) == {}
        key = {"pk": {"S": "R#1"}, "sk": {"S": "G#a"}}
        assert client.get_item(TableName="usual", Key=key)["Item"]["pending"] == {"N": "1"}
        # A precondition that does not hold: moto answers (and refuses)
        assert fast_writes.transact_write_items(backend, params) is None
    finally:
        client.delete_table(TableName="usual")


def _backend() -> Any:
    from moto.dynamodb.models import dynamodb_backends

    return dynamodb_backends[ACCOUNT][REGION]
