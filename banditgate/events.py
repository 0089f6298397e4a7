"""Event schemas and their Redis stream encodings (field names from `banditgate.contracts`).

The decisions stream holds batches: one entry per router flush, `n` decisions
as one orjson array (the shadow-results stream is batched the same way). One XADD
per batch instead of per decision keeps the router's logging cost at a few
microseconds a request (see BENCHMARKS.md). Reward and joined streams hold one
event per entry; joined entries are written by the join script, in Lua.
"""

from __future__ import annotations

import os
from typing import Any, NotRequired, TypedDict

import orjson

from banditgate.contracts import BatchField, JoinedField, RewardField


class Decision(TypedDict):
    event_id: str
    experiment: str
    ts_ms: int
    policy_version: int
    mode: str
    context: dict[str, Any]
    arms: list[str]
    pmf: list[float]
    chosen: str
    forced: bool
    status: int
    latency_ms: float
    action_features: NotRequired[list[dict[str, Any]]]
    error: NotRequired[str]
    shadow: NotRequired[list[dict[str, Any]]]
    # Actions the request excluded: logged with probability 0, never chosen.
    excluded: NotRequired[list[str]]
    retry_of: NotRequired[str]  # the failed attempt (nothing sent) this request retried
    ttfb_ms: NotRequired[float]  # streamed responses: time to the arm's first byte


class ArmCall(TypedDict):
    arm: str
    status: int
    latency_ms: float
    error: NotRequired[str]


class ShadowResult(TypedDict):
    """A mirrored request: the primary's answer (the one the client got) beside a shadow's."""

    event_id: str
    experiment: str
    ts_ms: int
    primary: ArmCall
    shadow: ArmCall
    same_body: NotRequired[bool]


class Reward(TypedDict):
    event_id: str
    value: float
    ts_ms: int


class Joined(TypedDict):
    decision: Decision
    reward: float
    rewarded: bool
    n_rewards: int
    joined_ts_ms: int


def new_event_id() -> str:
    """A random uuid4 string (RFC 4122 layout, without the uuid module's overhead)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_COUNT, _RECORDS = BatchField.COUNT.value, BatchField.RECORDS.value
_RECORDS_RAW = BatchField.RECORDS.raw


def decision_batch_fields(decisions: list[Decision]) -> dict[str, bytes | int]:
    return {_COUNT: len(decisions), _RECORDS: orjson.dumps(decisions)}


def decode_decision_batch(fields: dict[bytes, bytes]) -> list[Decision]:
    decisions: list[Decision] = orjson.loads(fields[_RECORDS_RAW])
    return decisions


def shadow_batch_fields(results: list[ShadowResult]) -> dict[str, bytes | int]:
    return {_COUNT: len(results), _RECORDS: orjson.dumps(results)}


def decode_shadow_batch(fields: dict[bytes, bytes]) -> list[ShadowResult]:
    results: list[ShadowResult] = orjson.loads(fields[_RECORDS_RAW])
    return results


EVENT_INDEX_BUCKET_MS = 300_000


def event_index_bucket(ts_ms: int) -> int:
    return ts_ms // EVENT_INDEX_BUCKET_MS


_ID, _VALUE, _TS = RewardField.EVENT_ID.value, RewardField.VALUE.value, RewardField.TS_MS.value
_ID_RAW, _VALUE_RAW, _TS_RAW = (
    RewardField.EVENT_ID.raw,
    RewardField.VALUE.raw,
    RewardField.TS_MS.raw,
)


def reward_fields(reward: Reward) -> dict[str, bytes | str | int | float]:
    return {_ID: reward["event_id"], _VALUE: repr(float(reward["value"])), _TS: reward["ts_ms"]}


def decode_reward(fields: dict[bytes, bytes]) -> Reward:
    return {
        "event_id": fields[_ID_RAW].decode(),
        "value": float(fields[_VALUE_RAW]),
        "ts_ms": int(fields[_TS_RAW]),
    }


_D, _R, _RW, _N, _JT = (field.value for field in JoinedField)
_D_RAW, _R_RAW, _RW_RAW, _N_RAW, _JT_RAW = (field.raw for field in JoinedField)


def joined_fields(joined: Joined) -> dict[str, bytes | str | int]:
    """A joined entry as the join script writes it (for tools and tests that write one)."""
    return {
        _D: orjson.dumps(joined["decision"]),
        _R: repr(float(joined["reward"])),
        _RW: "1" if joined["rewarded"] else "0",
        _N: joined["n_rewards"],
        _JT: joined["joined_ts_ms"],
    }


def decode_joined(fields: dict[bytes, bytes]) -> Joined:
    return {
        "decision": orjson.loads(fields[_D_RAW]),
        "reward": float(fields[_R_RAW]),
        "rewarded": fields[_RW_RAW] == b"1",
        "n_rewards": int(fields[_N_RAW]),
        "joined_ts_ms": int(fields[_JT_RAW]),
    }


def chosen_probability(decision: Decision) -> float:
    return decision["pmf"][decision["arms"].index(decision["chosen"])]
