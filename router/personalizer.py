"""The router's part of the Personalizer REST surface: rank, multi-slot rank, activate.

Under `/loops/{experiment}/personalizer/` in the three styles its SDKs use (v1.0,
v1.1-preview.N, and the newest with `?api-version=`). Rank answers 201, activate 204, as
the SDKs expect; errors are Personalizer's `{"error": {"code", "message"}}`. Rewards,
configurations and the model are answered by the reward intake and the control plane
(the router leaves those paths to the host app).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from banditgate.errors import BanditgateError, InvalidInput, MalformedJSON
from banditgate.events import Decision, new_event_id
from banditgate.metrics import ProcessMetrics
from banditgate.personalizer import PersonalizerPath, error_body, error_status
from router.deferred import DeferredStore
from router.ranking import (
    Ranked,
    decide,
    decide_slots,
    parse_multislot_rank,
    parse_personalizer_rank,
    ranked_decision,
)
from router.routing import Router, check_context_size
from router.runtime import ExperimentState

log = logging.getLogger(__name__)

RANK_ERROR = "InvalidRankRequest"
ACTIVATE_ERROR = "InvalidEventIdToActivate"


class Answer:
    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes = b"") -> None:
        self.status = status
        self.body = body


class PersonalizerRouter:
    """Answers a Personalizer path if it is the router's; None leaves it to the host app."""

    def __init__(
        self,
        router: Router,
        deferred: DeferredStore,
        *,
        clock: Callable[[], float] = time.time,
        on_dropped: Callable[[str, int], None] | None = None,
    ) -> None:
        self.router = router
        self.deferred = deferred
        self.clock = clock
        self.on_dropped = on_dropped

    def owns(self, path: PersonalizerPath, method: str) -> bool:
        """Every POST but a reward's: rewards belong to the reward intake."""
        return method == "POST" and path.operation[-1] != "reward"

    def refuse(self, path: PersonalizerPath, error: BanditgateError) -> Answer:
        invalid = RANK_ERROR if path.operation[-1] == "rank" else ACTIVATE_ERROR
        return Answer(error_status(error), orjson.dumps(error_body(error, invalid)))

    async def answer(self, path: PersonalizerPath, body: bytes) -> Answer:
        op = path.operation
        try:
            multislot = op[:1] == ("multislot",) and path.version != "v1.0"
            tail = op[1:] if multislot else op
            if tail == ("rank",):
                if multislot:
                    return await self._multislot(path.experiment, _loads(body))
                return await self._rank(path.experiment, _loads(body))
            if len(tail) == 3 and tail[0] == "events" and tail[2] == "activate":
                return await self._activate(path.experiment, tail[1])
            raise BanditgateError(f"no route for POST {'/'.join(op)}", status=404)
        except BanditgateError as error:
            return self.refuse(path, error)

    async def _rank(self, experiment: str, payload: Any) -> Answer:
        state = self.router.runtime.get(experiment)
        request = parse_personalizer_rank(payload)
        assert request.actions is not None
        event_id = request.event_id or new_event_id()
        context = state.featurizer.from_rank(request.context)
        check_context_size(state, context)
        ranked = decide(state, context, event_id, request.actions, request.excluded)
        await self._log(state, event_id, [ranked], request.defer)
        body = {
            "ranking": [{"id": name, "probability": p} for name, p in ranked.ranking()],
            "eventId": event_id,
            "rewardActionId": ranked.chosen,
        }
        return Answer(201, orjson.dumps(body))

    async def _multislot(self, experiment: str, payload: Any) -> Answer:
        state = self.router.runtime.get(experiment)
        request = parse_multislot_rank(payload)
        assert request.actions is not None
        event_id = request.event_id or new_event_id()
        context = state.featurizer.from_rank(request.context)
        check_context_size(state, context)
        slots = decide_slots(state, context, event_id, request.actions, request.slots)
        await self._log(state, event_id, slots, request.defer)
        body = {
            "slots": [
                {"id": slot.id, "rewardActionId": ranked.chosen}
                for slot, ranked in zip(request.slots, slots, strict=True)
            ],
            "eventId": event_id,
        }
        return Answer(201, orjson.dumps(body))

    async def _log(
        self, state: ExperimentState, event_id: str, ranked: list[Ranked], defer: bool
    ) -> None:
        now_ms = int(self.clock() * 1000)
        decisions = [ranked_decision(state, r, now_ms) for r in ranked]
        if defer:
            deadline = now_ms + int(state.spec.reward.window_s * 1000)
            await self.deferred.put(state.name, event_id, decisions, deadline)
            return
        for decision in decisions:
            self.router.log.append(decision, state.index_ttl_s)

    async def _activate(self, experiment: str, event_id: str) -> Answer:
        state = self.router.runtime.get(experiment)
        now_ms = int(self.clock() * 1000)
        taken = await self.deferred.take(state.name, event_id, now_ms)
        if taken is None:
            raise InvalidInput(
                f"event {event_id!r} is not waiting for activation: it was never ranked with "
                "deferActivation, or was activated already",
                field="eventId",
            )
        live, decisions = taken
        if not live:
            if self.on_dropped is not None:
                self.on_dropped(state.name, 1)
            raise InvalidInput(
                f"event {event_id!r} was not activated within the reward window "
                f"({state.spec.reward.window_s:g} s) and was dropped",
                field="eventId",
            )
        for decision in decisions:
            activated: Decision = {**decision, "ts_ms": now_ms}
            self.router.log.append(activated, state.index_ttl_s)
        return Answer(204)

    async def sweep_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sweep()
            except Exception as exc:  # Redis away: the next round sweeps what this one missed
                log.warning("deferred-activation sweep failed: %s", exc)

    async def sweep(self) -> int:
        """Drop every served experiment's deferred events past their deadline."""
        now_ms = int(self.clock() * 1000)
        total = 0
        for name in list(self.router.runtime.experiments):
            dropped = await self.deferred.sweep(name, now_ms)
            if dropped:
                total += dropped
                if self.on_dropped is not None:
                    self.on_dropped(name, dropped)
        return total


def dropped_counter(metrics: ProcessMetrics) -> Callable[[str, int], None]:
    counter = metrics.counter(
        "banditgate_router_deferred_never_activated",
        "Deferred-activation events this router dropped: not activated within the reward window.",
        ["experiment"],
    )

    def count(experiment: str, n: int) -> None:
        counter.labels(experiment=experiment).inc(n)

    return count


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(f"request body is not valid JSON: {exc}", field="body") from None
