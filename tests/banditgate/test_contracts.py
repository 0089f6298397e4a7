"""The wire contracts: the event-id rule, names given to Lua, the shared stream helpers."""

from __future__ import annotations

import re
from importlib.resources import files

import pytest

from banditgate import contracts
from banditgate.contracts import (
    AuditField,
    AuditReason,
    BatchField,
    JoinCounter,
    JoinedField,
    RewardField,
    UnroutedCounter,
    check_event_id,
    valid_event_id,
)
from banditgate.errors import InvalidInput
from banditgate.events import Joined, decode_joined, joined_fields
from banditgate.redis import Redis, ensure_group, stream_id_ms
from banditgate.scripts import lua_names, lua_source, msgpack_strings

LUA_FILES = [
    ("banditgate", "locks_hold.lua"),
    ("banditgate", "locks_release.lua"),
    ("router", "event_index.lua"),
    ("reward_ingest", "join_state.lua"),
    ("reward_ingest", "resolver.lua"),
    ("reward_ingest", "export_commit.lua"),
]


def test_the_event_id_rule() -> None:
    assert valid_event_id("e" * 256) and valid_event_id("évènement-☃-42")
    for bad in ("", "e" * 257, "two\nlines", "tab\there", None, 7, b"bytes"):
        assert not valid_event_id(bad)
    assert check_event_id("abc", "event_id") == "abc"
    with pytest.raises(InvalidInput) as caught:
        check_event_id("x" * 300, "X-Banditgate-Event-Id", status=400)
    assert caught.value.status == 400 and caught.value.field == "X-Banditgate-Event-Id"
    assert "1 to 256 printable characters" in caught.value.message
    with pytest.raises(InvalidInput) as caught:
        check_event_id(5, "rewards[3].event_id")
    assert caught.value.status == 422 and caught.value.field == "rewards[3].event_id"


def test_stream_ids_to_milliseconds() -> None:
    assert stream_id_ms(b"1700000000123-7") == 1700000000123
    assert stream_id_ms("42-0") == 42


async def test_group_creation_is_idempotent_and_starts_at_the_beginning(
    redis: Redis, name: str
) -> None:
    stream = f"test:{name}:stream"
    await redis.xadd(stream, {"k": "before"})
    await ensure_group(redis, stream, contracts.JOINER_GROUP)
    await ensure_group(redis, stream, contracts.JOINER_GROUP)
    reply = await redis.xreadgroup(contracts.JOINER_GROUP, "c", {stream: ">"}, count=10)
    assert [fields for _, fields in reply[0][1]] == [{b"k": b"before"}]
    await redis.delete(stream)


def test_joined_entries_round_trip() -> None:
    joined: Joined = {
        "decision": {  # type: ignore[typeddict-item]
            "event_id": "e1",
            "experiment": "x",
            "arms": ["a", "b"],
            "pmf": [0.5, 0.5],
            "chosen": "b",
        },
        "reward": 0.25,
        "rewarded": True,
        "n_rewards": 2,
        "joined_ts_ms": 1234,
    }
    raw: dict[bytes, bytes] = {}
    for key, value in joined_fields(joined).items():
        raw[key.encode()] = value if isinstance(value, bytes) else str(value).encode()
    assert set(raw) == {field.raw for field in JoinedField}
    assert decode_joined(raw) == joined


async def test_script_arguments_survive_the_trip_to_lua(redis: Redis) -> None:
    items = [
        b"",
        b"x" * 31,
        b"y" * 32,
        b"z" * 255,
        b"w" * 256,
        b"v" * 65_535,
        b"u" * 65_536,
        "é☃".encode(),
    ]
    back = await redis.eval(
        "local t = cmsgpack.unpack(ARGV[1]); return t", 0, msgpack_strings(items)
    )
    assert back == items


async def test_lua_reads_the_wire_names_by_role(redis: Redis) -> None:
    names = lua_names(joined=JoinedField, counter=JoinCounter)
    back = await redis.eval(
        "local n = cmsgpack.unpack(ARGV[1])"
        " return {n.joined.decision, n.joined.joined_ts_ms, n.counter.rewards_late}",
        0,
        names,
    )
    assert back == [b"d", b"jt", b"rewards_late"]


@pytest.mark.parametrize(("package", "name"), LUA_FILES)
async def test_every_script_ships_as_a_file_and_compiles(
    redis: Redis, package: str, name: str
) -> None:
    assert files(package).joinpath(name).is_file()
    sha = await redis.script_load(lua_source(package, name))
    assert (await redis.script_exists(sha)) == [True]


@pytest.mark.parametrize(("package", "name"), LUA_FILES)
def test_no_script_spells_a_wire_name(package: str, name: str) -> None:
    """Field, counter and reason names reach the scripts as arguments, never as literals."""
    wire = {
        member.value
        for enum in (
            BatchField,
            RewardField,
            JoinedField,
            AuditField,
            AuditReason,
            JoinCounter,
            UnroutedCounter,
        )
        for member in enum
    }
    literals = set(re.findall(r"'([^']*)'", lua_source(package, name)))
    assert literals & wire == set()
