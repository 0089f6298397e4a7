"""Reward intake, free of HTTP: validate each reward on its own, find its experiment, append it.

Where a reward goes:
- its experiment is named (the item's `experiment`, else the request's): the value is checked
  against that experiment's `[reward.min, reward.max]` now, and the reward is appended to
  the experiment's reward stream;
- not named, but the router's event index knows the event id: the same, for that experiment;
- not named and not indexed yet (the router may not have flushed the decision): only
  finiteness is checked now; the reward goes to the unrouted stream, where the joiner's
  resolver looks it up again until the longest backward window has passed, checks its
  range then (counting `rewards_invalid` on the experiment), or counts it as an orphan.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from banditgate import keys
from banditgate.contracts import JoinCounter, RewardField, UnroutedCounter, check_event_id
from banditgate.errors import BanditgateError, Forbidden, InvalidInput, NotReady, UnknownExperiment
from banditgate.event_index import lookup
from banditgate.events import Reward, reward_fields
from banditgate.http import EVERYTHING, Grant
from banditgate.redis import Redis, RedisHandle
from banditgate.spec import ExperimentSpec
from banditgate.tasks import TaskGroup
from banditgate.watcher import ExperimentWatcher
from reward_ingest.settings import IngestSettings

log = logging.getLogger(__name__)

# A decision's index entry lives window + backward window + 10 minutes; look no further back.
_INDEX_SLACK_MS = 600_000
# A router clock slightly ahead of ours may have indexed a decision in the next bucket.
_CLOCK_AHEAD_MS = 60_000


@dataclass
class Problem:
    index: int
    error: BanditgateError

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, **self.error.to_dict()["error"]}


@dataclass
class IntakeResult:
    accepted: int = 0
    unrouted: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.problems)


@dataclass
class _Item:
    index: int
    event_id: str
    value: float
    experiment: str | None
    key: str = ""


MAX_IDEMPOTENCY_KEY_CHARS = 128


def check_idempotency_key(value: Any, where: str) -> str:
    """An optional client key: a retry of a reward with the same event id and key counts once."""
    if value is None:
        return ""
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_IDEMPOTENCY_KEY_CHARS
        or not value.isascii()
        or not value.isprintable()
    ):
        raise InvalidInput(
            f"{where}: an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable "
            "ASCII characters",
            field=where,
        )
    return value


def check_value(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{where}: must be a number", field=where)
    number = float(value)
    if not math.isfinite(number):
        raise InvalidInput(f"{where}: must be finite", field=where)
    return number


def check_range(value: float, spec: ExperimentSpec, where: str) -> None:
    low, high = spec.reward.min, spec.reward.max
    if not low <= value <= high:
        raise InvalidInput(
            f"{where}: {value!r} is outside [{low:g}, {high:g}], "
            f"the reward range of experiment {spec.name!r}",
            field=where,
        )


class RewardIntake:
    """The reward webhook's component: owns its Redis client unless one is injected."""

    def __init__(
        self,
        settings: IngestSettings,
        *,
        redis: Redis | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._redis = RedisHandle(settings.redis_url, redis, owner="RewardIntake")
        # Every experiment: the webhook takes rewards for all of them.
        self._watcher = ExperimentWatcher(redis) if redis is not None else None
        self._tasks = TaskGroup("reward-intake")
        self._started = False

    @property
    def redis(self) -> Redis:
        return self._redis.client

    @property
    def specs(self) -> ExperimentWatcher:
        if self._watcher is None:
            self._watcher = ExperimentWatcher(self.redis)
        return self._watcher

    @property
    def started(self) -> bool:
        return self._started

    async def startup(self) -> None:
        self._redis.open()
        self._tasks.spawn(self.specs.watch(), "announcements")
        self._started = True

    async def shutdown(self) -> None:
        self._started = False
        await self._tasks.cancel_all()
        await self._redis.close()
        self._watcher = None

    async def submit(
        self,
        items: Sequence[Any],
        *,
        experiment: str | None = None,
        where: Callable[[int], str] = lambda index: f"rewards[{index}]",
        problems: Sequence[Problem] = (),
        grant: Grant = EVERYTHING,
    ) -> IntakeResult:
        """Validate, route and append; each item stands alone. `problems`: found while parsing;
        `grant`: the experiments the caller's key may send rewards for."""
        result = IntakeResult(problems=list(problems))
        parsed: list[_Item] = []
        for index, raw in enumerate(items):
            if raw is None:  # a slot already reported in `problems`
                continue
            try:
                parsed.append(self._parse(index, raw, experiment, where(index)))
            except BanditgateError as error:
                result.problems.append(Problem(index, error))
        now_ms = int(self.clock() * 1000)
        unnamed = [item.event_id for item in parsed if item.experiment is None]
        if unnamed:
            found = await self._lookup(unnamed, now_ms)
            for item in parsed:
                if item.experiment is None:
                    item.experiment = found.get(item.event_id)
        routed: dict[str, list[dict[Any, Any]]] = {}
        invalid: dict[str, int] = {}
        unrouted: list[dict[Any, Any]] = []
        for item in parsed:
            reward = _fields(
                {"event_id": item.event_id, "value": item.value, "ts_ms": now_ms}, item.key
            )
            if item.experiment is None:
                if grant.scope is not None:
                    result.problems.append(Problem(item.index, _unnamed(grant, where(item.index))))
                    continue
                unrouted.append(reward)
                continue
            if not grant.allows(item.experiment):
                refused = Forbidden(
                    f"{path(where(item.index), 'experiment')}: this key may not send rewards "
                    f"for experiment {item.experiment!r}",
                    field=path(where(item.index), "experiment"),
                )
                result.problems.append(Problem(item.index, refused))
                continue
            spec = await self.specs.get(item.experiment)
            if spec is None:
                result.problems.append(
                    Problem(item.index, _unknown(item.experiment, where(item.index)))
                )
                continue
            try:
                check_range(item.value, spec, path(where(item.index), "value"))
            except InvalidInput as error:
                invalid[spec.name] = invalid.get(spec.name, 0) + 1
                result.problems.append(Problem(item.index, error))
                continue
            routed.setdefault(spec.name, []).append(reward)
        await self._append(routed, unrouted, invalid)
        result.accepted = sum(len(rewards) for rewards in routed.values()) + len(unrouted)
        result.unrouted = len(unrouted)
        result.problems.sort(key=lambda problem: problem.index)
        return result

    def _parse(self, index: int, raw: Any, experiment: str | None, where: str) -> _Item:
        if not isinstance(raw, dict):
            raise InvalidInput(
                f"{where or 'body'}: a reward is an object with event_id and value",
                field=where or "body",
            )
        event_id = check_event_id(raw.get("event_id"), path(where, "event_id"))
        if "value" not in raw:
            raise InvalidInput(f"{path(where, 'value')}: required", field=path(where, "value"))
        value = check_value(raw["value"], path(where, "value"))
        named = raw.get("experiment", experiment)
        if named is not None and not isinstance(named, str):
            raise InvalidInput(
                f"{path(where, 'experiment')}: must be a string", field=path(where, "experiment")
            )
        key = check_idempotency_key(raw.get("idempotency_key"), path(where, "idempotency_key"))
        return _Item(index, event_id, value, named or None, key)

    async def lookback_ms(self) -> int:
        """How far back an event index entry can still exist: the longest window, plus slack."""
        longest = max(
            (
                int((spec.reward.window_s + spec.reward.backward_window_s) * 1000)
                for spec in (await self.specs.current()).values()
            ),
            default=0,
        )
        return longest + _INDEX_SLACK_MS

    async def _lookup(self, event_ids: list[str], now_ms: int) -> dict[str, str]:
        try:
            lookback = await self.lookback_ms()
            return await lookup(
                self.redis,
                event_ids,
                newest_ms=now_ms + _CLOCK_AHEAD_MS,
                oldest_ms=now_ms - lookback,
            )
        except (RedisError, OSError) as exc:
            raise NotReady(f"rewards not stored, Redis is unavailable ({exc}); retry") from None

    async def _append(
        self,
        routed: dict[str, list[dict[Any, Any]]],
        unrouted: list[dict[Any, Any]],
        invalid: dict[str, int],
    ) -> None:
        if not routed and not unrouted and not invalid:
            return
        maxlen = self.settings.stream_maxlen
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name, rewards in routed.items():
                    stream = keys.rewards(name)
                    for reward in rewards:
                        pipe.xadd(stream, reward, maxlen=maxlen, approximate=True)
                for reward in unrouted:
                    pipe.xadd(keys.UNROUTED_REWARDS, reward, maxlen=maxlen, approximate=True)
                if unrouted:
                    pipe.hincrby(
                        keys.UNROUTED_COUNTERS, UnroutedCounter.REWARDS_RECEIVED, len(unrouted)
                    )
                for name, count in invalid.items():
                    pipe.hincrby(keys.join_counters(name), JoinCounter.REWARDS_INVALID, count)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("reward append failed: %s", exc)
            raise NotReady(f"rewards not stored, Redis is unavailable ({exc}); retry") from None


def _fields(reward: Reward, key: str) -> dict[Any, Any]:
    fields: dict[Any, Any] = dict(reward_fields(reward))
    if key:
        fields[RewardField.IDEMPOTENCY_KEY] = key
    return fields


def path(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _unnamed(grant: Grant, where: str) -> Forbidden:
    scope = "+".join(grant.scope or ())
    return Forbidden(
        f"{path(where, 'experiment')}: this key is limited to experiments {scope}; name the "
        "experiment (its decision is not routed yet)",
        field=path(where, "experiment"),
    )


def _unknown(name: str, where: str) -> UnknownExperiment:
    error = UnknownExperiment(name)
    error.field = path(where, "experiment")
    return error
