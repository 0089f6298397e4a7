"""The data plane, free of HTTP: choose an arm, forward, record the decision."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson
from prometheus_client import Gauge

from banditgate.contracts import MAX_EVENT_ID_CHARS, check_event_id
from banditgate.errors import (
    BackendError,
    BadRequest,
    BanditgateError,
    InvalidInput,
    MalformedJSON,
    PayloadTooLarge,
    UnknownVariant,
)
from banditgate.events import ArmCall, Decision, new_event_id
from banditgate.featurize import ContextFeatures, text_features
from banditgate.policy import ActionSet, sample_index
from banditgate.spec import Arm
from router import oip
from router.allocation import allocate
from router.arm_credentials import ArmCredentials, needs_credentials
from router.arm_health import ArmHealth, spread
from router.backends import NOT_SENT, Backend, BackendResponse, forward_headers
from router.capture import Captured, DataCapture
from router.decision_log import DecisionLog
from router.ranking import decide, parse_rank, ranked_decision
from router.replays import Replays, replay_key
from router.runtime import ExperimentState, Runtime
from router.shadow import ShadowMirror

MAX_ARM_GAUGES = 10_000

SAGEMAKER_PASSTHROUGH = frozenset(
    {
        "content-type",
        "accept",
        "x-amzn-sagemaker-custom-attributes",
        "x-amzn-sagemaker-target-model",
        "x-amzn-sagemaker-session-id",
        "x-amzn-sagemaker-enable-explanations",
        "x-amzn-sagemaker-target-container-hostname",
        "x-amzn-sagemaker-inference-component",
    }
)
# Our own request headers are consumed here, never forwarded.
_CONTROL_HEADERS = frozenset(
    {"x-amzn-sagemaker-target-variant", "x-banditgate-variant", "x-banditgate-event-id"}
)


@dataclass
class Invocation:
    experiment: str
    protocol: str  # sagemaker | v2 | http
    body: bytes
    headers: Mapping[str, str]  # names lowercased
    method: str = "POST"
    path: str = ""  # http: the path after /proxy/{experiment}; v2: "versions/{v}/" or ""
    query: str = ""
    client: str = ""  # http: the client's address, for X-Forwarded-For
    scheme: str = "http"  # http: the scheme the client used, for X-Forwarded-Proto


@dataclass
class Choice:
    event_id: str
    index: int
    arm: str
    pmf: list[float]
    version: int
    forced: bool
    context: ContextFeatures
    actions: ActionSet
    retry_of: str | None = None


def _client_event_id(value: Any, where: str) -> str:
    """A client's event id: printable ASCII only. It goes back in a response header, and
    a header's bytes are Latin-1 to the server: UTF-8 ids would be stored garbled and
    their rewards never join, so they are refused rather than mangled."""
    event_id = check_event_id(value, where, status=400)
    if not event_id.isascii():
        raise InvalidInput(
            f"{where}: an event id is printable ASCII (no accented or non-Latin letters)",
            status=400,
            field=where,
        )
    return event_id


def _attempt_id(event_id: str) -> str:
    """The id a failed first attempt is logged under when its request went to another arm."""
    derived = f"{event_id}~1"
    return derived if len(derived) <= MAX_EVENT_ID_CHARS else new_event_id()


@dataclass
class Decided:
    """A request's decision: made now, or `replayed` from the first attempt of a retry."""

    state: ExperimentState
    choice: Choice
    replayed: bool
    context: ContextFeatures
    body: Any
    key: str | None  # its identity across client retries, if it has one


@dataclass
class Outcome:
    status: int
    body: bytes
    content_type: bytes | None
    event_id: str
    variant: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def check_context_size(state: ExperimentState, context: ContextFeatures) -> None:
    """The context is logged with every decision: its size is bounded per experiment."""
    limit = state.spec.context.max_bytes
    size = len(orjson.dumps(context))
    if size > limit:
        raise PayloadTooLarge(
            f"context: {size} bytes as logged, above this experiment's {limit} (context.max_bytes)",
            field="context",
        )


def parse_json(body: bytes, what: str = "request body") -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(f"{what} is not valid JSON: {exc}", field="body") from None


class Router:
    def __init__(
        self,
        *,
        runtime: Runtime,
        backend: Backend,
        log: DecisionLog,
        mirror: ShadowMirror | None = None,
        capture: DataCapture | None = None,
        arm_in_flight: Gauge | None = None,
        health: ArmHealth | None = None,
        retry_unreachable: bool = True,
        on_retry: Callable[[], None] | None = None,
        replays: Replays[Choice] | None = None,
    ) -> None:
        """`replays`: decisions kept per client request, so a retry is answered from its first."""
        self.runtime = runtime
        self.backend = backend
        self.log = log
        self.mirror = mirror
        self.capture = capture
        self.arm_in_flight = arm_in_flight
        self._arm_gauges: dict[tuple[str, str], Any] = {}
        self.health = health if health is not None else ArmHealth()
        self.retry_unreachable = retry_unreachable
        self.retries = 0
        self.on_retry = on_retry
        self.replays = replays
        self.credentials = ArmCredentials()

    def choose(
        self,
        state: ExperimentState,
        context: ContextFeatures,
        event_id: str,
        *,
        target: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        actions: ActionSet | None = None,
        exclude: str | None = None,
    ) -> Choice | None:
        """The arm for a request; None only when `exclude` leaves no arm to choose."""
        actions = actions or state.actions
        if target is not None:
            try:
                index = actions.names.index(target)
            except ValueError:
                raise UnknownVariant(
                    f"unknown target variant {target!r}; variants are {list(actions.names)}",
                    field="X-Amzn-SageMaker-Target-Variant",
                ) from None
            pmf = [0.0] * len(actions.names)
            pmf[index] = 1.0
            return Choice(
                event_id, index, target, pmf, state.loaded_version, True, context, actions
            )
        allocation = allocate(state, context, actions, headers or {}, body)
        pmf = allocation.pmf
        health = self.health
        if (health or exclude is not None) and actions is state.actions:
            # Ejected arms get no traffic: the pmf is spread over the others, and the
            # pmf logged is the one sampled from. With every arm ejected, all are tried.
            experiment = state.name
            usable = [
                name != exclude and health.usable((experiment, name)) for name in actions.names
            ]
            spread_pmf = spread(pmf, usable)
            if spread_pmf is None and exclude is not None:
                usable = [name != exclude for name in actions.names]
                spread_pmf = spread(pmf, usable)
                if spread_pmf is None:
                    return None
            if spread_pmf is not None:
                pmf = spread_pmf
        if allocation.seed_key is not None:
            index = sample_index(pmf, allocation.seed_key, 0)
        else:
            index = sample_index(pmf, event_id, allocation.version)
        if health:
            health.dispatched((state.name, actions.names[index]))
        return Choice(
            event_id, index, actions.names[index], pmf, allocation.version, False, context, actions
        )

    def record(
        self,
        state: ExperimentState,
        choice: Choice,
        *,
        status: int,
        latency_ms: float,
        error: str | None = None,
        retry_of: str | None = None,
        ttfb_ms: float | None = None,
    ) -> Decision:
        decision: Decision = {
            "event_id": choice.event_id,
            "experiment": state.name,
            "ts_ms": int(time.time() * 1000),
            "policy_version": choice.version,
            "mode": state.spec.mode,
            "context": choice.context,
            "arms": list(choice.actions.names),
            "pmf": [float(p) for p in choice.pmf],
            "chosen": choice.arm,
            "forced": choice.forced,
            "status": status,
            "latency_ms": round(latency_ms, 3),
        }
        if choice.actions.features is not None:
            decision["action_features"] = list(choice.actions.features)
        if error is not None:
            decision["error"] = error
        if retry_of is not None:
            decision["retry_of"] = retry_of
        if ttfb_ms is not None:
            decision["ttfb_ms"] = round(ttfb_ms, 3)
        self.log.append(decision, state.index_ttl_s)
        return decision

    def _context(self, state: ExperimentState, call: Invocation) -> tuple[ContextFeatures, Any]:
        featurizer = state.featurizer
        if not state.reads_body or not call.body:
            return featurizer.from_request(None, call.headers), None
        if call.protocol == "v2":  # JSON, or the binary tensor extension's JSON header
            body = parse_json(oip.json_part(call.body, call.headers))
            return featurizer.from_request(body, call.headers), body
        content_type = call.headers.get("content-type", "application/json")
        if "json" in content_type:
            body = parse_json(call.body)
            return featurizer.from_request(body, call.headers), body
        if content_type.startswith("text/") and featurizer.text_pointer is not None:
            text = call.body.decode("utf-8", errors="replace")
            features = featurizer.from_request(None, call.headers)
            return {**features, **text_features(text)}, None
        return featurizer.from_request(None, call.headers), None

    def _event_id(self, call: Invocation, body: Any) -> str | None:
        """The client's event id, if it sent one."""
        headers = call.headers
        if call.protocol == "sagemaker":
            given = headers.get("x-amzn-sagemaker-inference-id")
            if given is not None:
                return _client_event_id(given, "X-Amzn-SageMaker-Inference-Id")
        given = headers.get("x-banditgate-event-id")
        if given is not None:
            return _client_event_id(given, "X-Banditgate-Event-Id")
        if call.protocol == "v2" and isinstance(body, dict) and isinstance(body.get("id"), str):
            return _client_event_id(body["id"], "id")
        return None

    def decide(self, call: Invocation) -> Decided:
        """Choose the arm; a retry of a request already decided gets that decision back."""
        state = self.runtime.get(call.experiment)
        if state.spec.rank_only:
            raise BadRequest(
                f"experiment {state.name!r} has arms without a backend url: it answers the rank "
                f"routes (/v1/experiments/{state.name}/rank), not forwarded requests",
                field="arms",
            )
        headers = call.headers
        context, body = self._context(state, call)
        check_context_size(state, context)
        binary = call.protocol == "v2" and oip.header_length(call.body, headers) is not None
        if call.protocol == "v2" and body is None and call.body and not binary:
            body = parse_json(call.body)  # for its id (a binary body is forwarded unparsed)
        given = self._event_id(call, body)
        replays = self.replays
        key = replay_key(state.name, headers, given) if replays is not None else None
        choice = replays.get(key) if replays is not None and key is not None else None
        if choice is not None and choice.arm in state.arms:
            return Decided(state, choice, True, context, body, key)
        target = headers.get("x-amzn-sagemaker-target-variant") or headers.get(
            "x-banditgate-variant"
        )
        event_id = given or new_event_id()
        choice = self.choose(state, context, event_id, target=target, headers=headers, body=body)
        assert choice is not None
        if replays is not None and key is not None:
            replays.put(key, choice)
        return Decided(state, choice, False, context, body, key)

    async def invoke(self, call: Invocation) -> Outcome:
        decided = self.decide(call)
        state, choice, replayed = decided.state, decided.choice, decided.replayed
        try:
            response = await self._forward(state, call, choice, replayed=replayed)
        except BackendError as exc:
            unreachable = isinstance(exc, NOT_SENT) and not choice.forced
            if unreachable and len(choice.actions.names) == 1:
                exc.no_arm_left = True  # type: ignore[attr-defined]
            if not (unreachable and self.retry_unreachable and len(choice.actions.names) > 1):
                raise
            retry = self.choose(
                state,
                decided.context,
                choice.event_id,
                headers=call.headers,
                body=decided.body,
                exclude=choice.arm,
            )
            if retry is None:
                exc.no_arm_left = True  # type: ignore[attr-defined]
                raise
            # Nothing reached the first arm: the request goes to another one, as a new
            # decision with its own pmf. It keeps the event id the client sees and rewards;
            # the failed attempt is logged under a derived id, which `retry_of` names.
            failed_id: str = getattr(exc, "event_id", choice.event_id)
            self.retries += 1
            if self.on_retry is not None:
                self.on_retry()
            retry.retry_of = failed_id
            if self.replays is not None and decided.key is not None:
                self.replays.put(decided.key, retry)  # a client retry goes where this went
            try:
                response = await self._forward(state, call, retry, replayed=replayed)
            except BackendError as again:
                if isinstance(again, NOT_SENT) and len(choice.actions.names) == 2:
                    # Both arms were tried: none can answer.
                    setattr(again, "no_arm_left", True)  # noqa: B010
                raise
            choice = retry
        if state.shadow is not None and not replayed:
            self.after_response(state, call, choice, response)
        return self._outcome(call, choice, response)

    async def _forward(
        self, state: ExperimentState, call: Invocation, choice: Choice, *, replayed: bool = False
    ) -> BackendResponse:
        """Send the request to the chosen arm and log the decision (once), whatever happens."""
        arm = state.arms[choice.arm]
        try:
            url, out_headers = self.arm_request(call, arm, choice.event_id)
        except BanditgateError as exc:  # the arm's request cannot be built (a missing secret)
            if not replayed:
                self.record(state, choice, status=exc.status, latency_ms=0.0, error=exc.message)
            exc.event_id = choice.event_id  # type: ignore[attr-defined]
            exc.variant = choice.arm  # type: ignore[attr-defined]
            raise
        key = (state.name, choice.arm)
        in_flight = self._arm_in_flight(key)
        if in_flight is not None:
            in_flight.inc()
        started = time.perf_counter()
        try:
            response = await self.backend.send(arm, url, call.body, out_headers, method=call.method)
        except BackendError as exc:
            self.health.failure(key)
            logged = choice
            retryable = isinstance(exc, NOT_SENT) and not choice.forced and choice.retry_of is None
            if retryable and self.retry_unreachable and len(choice.actions.names) > 1:
                logged = dataclasses.replace(choice, event_id=_attempt_id(choice.event_id))
            if not replayed:
                self.record(
                    state,
                    logged,
                    status=exc.status,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    error=exc.message,
                    retry_of=choice.retry_of,
                )
                if state.capture is not None:
                    self.captured(state, call, logged, exc.status, 0.0, None, error=exc.message)
            exc.event_id = logged.event_id  # type: ignore[attr-defined]
            exc.variant = choice.arm  # type: ignore[attr-defined]
            raise
        except asyncio.CancelledError:
            # The client went away: the backend call is abandoned, the decision still logged.
            if not replayed:
                self.record(
                    state,
                    choice,
                    status=499,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    error="client disconnected",
                    retry_of=choice.retry_of,
                )
            raise
        finally:
            if in_flight is not None:
                in_flight.dec()
        if response.status >= 500:
            self.health.failure(key)
        else:
            self.health.success(key)
        if replayed:
            return response
        self.record(
            state,
            choice,
            status=response.status,
            latency_ms=response.latency_ms,
            retry_of=choice.retry_of,
        )
        if state.capture is not None:
            self.captured(state, call, choice, response.status, response.latency_ms, response)
        return response

    def _arm_in_flight(self, key: tuple[str, str]) -> Any:
        """The per-arm in-flight gauge's child for (experiment, arm), made once."""
        if self.arm_in_flight is None:
            return None
        child = self._arm_gauges.get(key)
        if child is None:
            if len(self._arm_gauges) >= MAX_ARM_GAUGES:
                return None  # bounded: arms come from specs, but specs come and go
            child = self._arm_gauges[key] = self.arm_in_flight.labels(*key)
        return child

    def captured(
        self,
        state: ExperimentState,
        call: Invocation,
        choice: Choice,
        status: int,
        latency_ms: float,
        response: BackendResponse | None,
        error: str | None = None,
    ) -> None:
        """Hand a sampled request and its answer to data capture; never waits or raises."""
        plan = state.capture
        capture = self.capture
        if plan is None or capture is None or not plan.selects(choice.event_id):
            return
        capture.submit(
            Captured(
                experiment=state.name,
                arm=choice.arm,
                event_id=choice.event_id,
                ts=time.time(),
                policy_version=choice.version,
                status=status,
                latency_ms=latency_ms,
                request=call.body if plan.request else None,
                request_type=call.headers.get("content-type", "application/octet-stream"),
                response=response.body if plan.response and response is not None else None,
                response_type=response.content_type.decode("latin-1")
                if response is not None and response.content_type
                else "application/octet-stream",
                plan=plan,
                error=error,
            )
        )

    def after_response(
        self, state: ExperimentState, call: Invocation, choice: Choice, response: BackendResponse
    ) -> None:
        """Mirror the request to the shadow arms in the background; never waits, never raises."""
        plan = state.shadow
        mirror = self.mirror
        if plan is None or mirror is None or choice.arm != plan.primary:
            return
        if not plan.selects(choice.event_id):
            return
        primary: ArmCall = {
            "arm": choice.arm,
            "status": response.status,
            "latency_ms": round(response.latency_ms, 3),
        }
        primary_body = response.body if plan.compare_bodies else None
        for name in plan.shadows:
            arm = state.arms[name]
            url, headers = self.arm_request(call, arm, choice.event_id)
            mirror.submit(
                state.name,
                choice.event_id,
                arm,
                url,
                call.body,
                headers,
                call.method,
                primary,
                primary_body,
                plan.pointer,
            )

    def arm_request(
        self, call: Invocation, arm: Arm, event_id: str, *, stream: bool = False
    ) -> tuple[str, dict[str, str]]:
        """(url, headers) of the request to `arm`, with its own headers, secrets and signature."""
        path = arm.path
        if arm.protocol == "sagemaker-runtime" and call.protocol == "sagemaker" and path is None:
            operation = "invocations-response-stream" if stream else "invocations"
            path = f"/endpoints/{quote(arm.model_name, safe='')}/{operation}"
        url, headers = self._request_for(call, arm.url or "", path, arm.model_name, event_id)
        if needs_credentials(arm):
            headers = self.credentials.apply(
                arm, call.headers, headers, method=call.method, url=url, body=call.body
            )
        return url, headers

    def _request_for(
        self, call: Invocation, base: str, path: str | None, model: str, event_id: str
    ) -> tuple[str, dict[str, str]]:
        headers = call.headers
        if call.protocol == "sagemaker":
            out = {k: v for k, v in headers.items() if k in SAGEMAKER_PASSTHROUGH}
            out["x-amzn-sagemaker-inference-id"] = event_id
            return f"{base}{path or '/invocations'}", out
        if call.protocol == "v2":
            return f"{base}/v2/models/{model}/{call.path}infer", oip.forward_headers(headers)
        out = forward_headers(headers, _CONTROL_HEADERS)
        out["x-banditgate-event-id"] = event_id
        # As reverse proxies do: who asked, how, and for which host (the arm gets its own Host).
        if call.client:
            earlier = headers.get("x-forwarded-for")
            # A server that trusts the peer (uvicorn's proxy headers) already made the
            # header's last address the client: the chain is then complete as it is.
            if earlier and earlier.rsplit(",", 1)[-1].strip() == call.client:
                out["x-forwarded-for"] = earlier
            else:
                out["x-forwarded-for"] = f"{earlier}, {call.client}" if earlier else call.client
        out.setdefault("x-forwarded-proto", call.scheme)
        if "host" in headers:
            out.setdefault("x-forwarded-host", headers["host"])
        query = f"?{call.query}" if call.query else ""
        return f"{base}/{call.path.lstrip('/')}{query}", out

    def _outcome(self, call: Invocation, choice: Choice, response: BackendResponse) -> Outcome:
        headers: list[tuple[bytes, bytes]] = []
        if call.protocol == "sagemaker":
            headers.append((b"x-amzn-invoked-production-variant", choice.arm.encode()))
            custom = response.header(b"x-amzn-sagemaker-custom-attributes")
            if custom is not None:
                headers.append((b"x-amzn-sagemaker-custom-attributes", custom))
        elif call.protocol == "http":
            headers.extend(response.passthrough_headers())
        elif call.protocol == "v2":
            for name in oip.RESPONSE_HEADERS:
                value = response.header(name)
                if value is not None:
                    headers.append((name, value))
        return Outcome(
            status=response.status,
            body=response.body,
            content_type=response.content_type,
            event_id=choice.event_id,
            variant=choice.arm,
            headers=headers,
        )

    def rank(self, experiment: str, payload: Any) -> dict[str, Any]:
        """Decision only: the caller calls the chosen backend itself (see router/ranking.py)."""
        state = self.runtime.get(experiment)
        request = parse_rank(payload, state.actions)
        if request.defer:
            raise InvalidInput(
                "defer_activation: use the Personalizer-compatible route for deferred "
                "activation (/loops/{experiment}/personalizer/v1.0/rank)",
                status=400,
                field="defer_activation",
            )
        given = request.event_id
        event_id = new_event_id() if given is None else _client_event_id(given, "event_id")
        context = state.featurizer.from_rank(request.context)
        check_context_size(state, context)
        actions = request.actions or state.actions
        ranked = decide(state, context, event_id, actions, request.excluded, request.context)
        self.log.append(ranked_decision(state, ranked, int(time.time() * 1000)), state.index_ttl_s)
        return {
            "event_id": event_id,
            "chosen": ranked.chosen,
            "ranking": [{"id": name, "probability": p} for name, p in ranked.ranking()],
            "excluded": list(ranked.excluded),
            "policy_version": ranked.version,
        }
