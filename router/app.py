"""HTTP for the data plane, as a plain ASGI app: the hot path skips framework validation.

Routes: SageMaker InvokeEndpoint, Open Inference Protocol v2, a pass-through
proxy, decision-only rank, health. `handle()` answers a request if it is one of
these and says whether it did, so a host app (`banditgate serve`) can pass the
rest on; called as an ASGI app on its own (`banditgate router`) it also answers
`GET /metrics` with the process's own metrics, and anything else is a 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST

from banditgate.errors import (
    BanditgateError,
    MalformedJSON,
    NotReady,
    Overloaded,
    PayloadTooLarge,
)
from banditgate.metrics import ProcessMetrics
from banditgate.personalizer import LOOPS_PREFIX, parse_path
from banditgate.redis import Redis, connect
from banditgate.tasks import TaskGroup
from router import oip, sagemaker
from router.arm_health import ArmHealth
from router.backends import HttpBackend
from router.capture import DataCapture
from router.decision_log import DecisionLog
from router.deferred import DeferredStore
from router.disconnect import DisconnectWatch
from router.health_checks import HealthChecker
from router.metrics import RouterMetrics
from router.personalizer import PersonalizerRouter, dropped_counter
from router.proxy_path import proxy_tail
from router.replays import Replays
from router.routing import Invocation, Outcome, Router
from router.runtime import Runtime
from router.sagemaker_stream import StreamRelay
from router.settings import RouterSettings
from router.shadow import ShadowMirror

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON = b"application/json"
# /endpoints/{experiment}/<route>: SageMaker Runtime's InvokeEndpoint family.
SAGEMAKER_ROUTES = frozenset({"invocations", "invocations-response-stream", "async-invocations"})


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes | None = JSON,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    out = headers or []
    if content_type is not None:
        out.append((b"content-type", content_type))
    out.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send, error: BanditgateError, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = error.to_dict()
    headers = headers or []
    event_id = getattr(error, "event_id", None)
    if event_id is not None:
        headers.append((b"x-banditgate-event-id", event_id.encode()))
    variant = getattr(error, "variant", None)
    if variant is not None:
        headers.append((b"x-banditgate-variant", variant.encode()))
    await send_response(send, error.status, orjson.dumps(body), JSON, headers)


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise MalformedJSON("Content-Length is not a number", status=400) from None
            if declared > limit:
                raise PayloadTooLarge(f"request body of {declared} bytes exceeds {limit} bytes")
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError("client disconnected")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


WEBSOCKET_REFUSED = (
    "connection upgrades (WebSocket, h2c) are not proxied by banditgate; call the arm directly"
)


def _upgrade(scope: Scope) -> bool:
    return any(name == b"upgrade" for name, _ in scope["headers"])


async def refuse_websocket(scope: Scope, send: Send) -> None:
    """WebSocket upgrades are not proxied: a 400 that says so, where the server lets us."""
    message = WEBSOCKET_REFUSED
    if "websocket.http.response" in scope.get("extensions", {}):
        body = orjson.dumps({"error": {"type": "BadRequest", "message": message}})
        headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode())]
        await send({"type": "websocket.http.response.start", "status": 400, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "websocket.close", "code": 1008, "reason": message})


def header_dict(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


class RouterApp:
    def __init__(
        self,
        settings: RouterSettings,
        *,
        redis: Redis | None = None,
        metrics: ProcessMetrics | None = None,
    ) -> None:
        """`metrics`: the process's registry, when a host serves /metrics (else the router's own)."""
        self.settings = settings
        self.process_metrics = metrics or ProcessMetrics()
        self.metrics = RouterMetrics(self.process_metrics)
        self._owns_redis = redis is None
        self.redis: Redis | None = redis
        self.backend = HttpBackend(
            timeout_s=settings.backend_timeout_s,
            connect_timeout_s=settings.backend_connect_timeout_s,
            max_connections=settings.backend_max_connections,
        )
        self.health = ArmHealth(
            failures_to_eject=settings.arm_failures_to_eject,
            cooldown_s=settings.arm_cooldown_s,
            max_cooldown_s=settings.arm_max_cooldown_s,
            on_change=self._arm_changed,
        )
        self.inflight = 0
        self.runtime: Runtime | None = None
        self.log: DecisionLog | None = None
        self.router: Router | None = None
        self.mirror: ShadowMirror | None = None
        self.streams: StreamRelay | None = None
        self.capture = DataCapture(
            settings.data_dir,
            max_buffer=settings.capture_buffer_max,
            max_buffer_bytes=settings.capture_buffer_max_bytes,
            max_file_bytes=settings.capture_file_max_bytes,
            s3_endpoint_url=settings.capture_s3_endpoint_url,
            s3_region=settings.capture_s3_region,
            metrics=self.process_metrics,
        )
        self.tasks = TaskGroup("router")
        self.started = False
        # The Personalizer-compatible routes (router/personalizer.py).
        self.personalizer: PersonalizerRouter | None = None
        self._deferred_dropped = dropped_counter(self.process_metrics)

    async def startup(self) -> None:
        if self.redis is None:
            if not self.settings.redis_url:
                raise RuntimeError("BANDITGATE_REDIS_URL is not set")
            self.redis = connect(self.settings.redis_url)
        self.runtime = Runtime(self.redis, only=self.settings.experiments, swaps=self.metrics.swaps)
        self.log = DecisionLog(
            self.redis,
            max_batch=self.settings.flush_max_batch,
            flush_interval_s=self.settings.flush_interval_s,
            max_buffer=self.settings.log_buffer_max,
            max_batch_bytes=self.settings.log_batch_max_bytes,
            max_buffer_bytes=self.settings.log_buffer_max_bytes,
            spill_dir=self.settings.spill_dir,
            spill_max_bytes=self.settings.log_spill_max_bytes,
            stream_maxlen=self.settings.stream_maxlen,
            index_events=self.settings.event_index,
            metrics=self.metrics.decisions,
        )
        await self.backend.start()
        self.mirror = ShadowMirror(
            backend=self.backend,
            redis=self.redis,
            max_inflight=self.settings.shadow_max_inflight,
            timeout_s=self.settings.shadow_timeout_s,
            stream_maxlen=self.settings.stream_maxlen,
            metrics=self.metrics,
        )
        self.router = Router(
            runtime=self.runtime,
            backend=self.backend,
            log=self.log,
            mirror=self.mirror,
            capture=self.capture,
            arm_in_flight=self.metrics.arm_in_flight,
            health=self.health,
            retry_unreachable=self.settings.retry_unreachable,
            on_retry=self.metrics.retries.inc,
            replays=Replays(window_s=self.settings.replay_window_s)
            if self.settings.replay_window_s > 0
            else None,
        )
        self.streams = StreamRelay(
            router=self.router,
            timeout_s=self.settings.backend_timeout_s,
            connect_timeout_s=self.settings.backend_connect_timeout_s,
        )
        self.log.start()
        self.mirror.start()
        self.capture.start()
        try:
            await self.runtime.mark()
        except Exception as exc:  # Redis away at start-up: routing waits for the resync
            log.warning("cannot reach Redis at start-up (%s)", exc)
        self.tasks.spawn(self.runtime.watcher.watch(), "announcements")
        self.personalizer = PersonalizerRouter(
            self.router, DeferredStore(self.redis), on_dropped=self._deferred_dropped
        )
        self.tasks.spawn(
            self.personalizer.sweep_forever(self.settings.deferred_sweep_s), "deferred-sweep"
        )
        self.checker = HealthChecker(health=self.health, runtime=self.runtime, backend=self.backend)
        self.tasks.spawn(self.checker.run(), "arm-health-checks")
        # Serve only once every experiment's policy is loaded; a later resync is in the background.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.runtime.watcher.watching.wait(), timeout=30)
        self.checker.refresh()
        self.started = True

    async def shutdown(self) -> None:
        await self.tasks.cancel_all()
        if self.log is not None:
            await self.log.stop()
        if self.mirror is not None:
            await self.mirror.stop()
        await self.capture.stop()
        await self.backend.close()
        if self.streams is not None:
            await self.streams.close()
        if self.redis is not None and self._owns_redis:
            await self.redis.aclose()
        self.process_metrics.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind == "websocket":
            await refuse_websocket(scope, send)
            return
        if kind != "http":
            return
        if await self.handle(scope, receive, send):
            return
        if scope["path"] == "/metrics" and scope["method"] == "GET":
            # On its own (`banditgate router`); under `serve` the control plane answers it.
            body = self.process_metrics.render()
            await send_response(send, 200, body, CONTENT_TYPE_LATEST.encode())
            return
        await send_error(send, BanditgateError(f"no route for {scope['path']}", status=404))

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer an HTTP request if it is a data-plane route; False leaves it untouched."""
        try:
            return await self._dispatch(scope["path"], scope, receive, send)
        except BanditgateError as error:
            await send_error(send, error)
            return True

    async def _dispatch(self, path: str, scope: Scope, receive: Receive, send: Send) -> bool:
        parts = path.split("/")
        method: str = scope["method"]
        # /endpoints/{experiment}/invocations (and -response-stream, async-)
        if len(parts) == 4 and parts[1] == "endpoints" and parts[3] in SAGEMAKER_ROUTES:
            if method != "POST":
                raise BanditgateError("use POST", status=405)
            await self._invoke_sagemaker(scope, receive, send, parts[2], parts[3])
            return True
        if parts[1] == "v2":
            await self._v2(parts, method, scope, receive, send)
            return True
        if len(parts) >= 3 and parts[1] == "proxy":
            if _upgrade(scope):  # no WebSocket library: the upgrade arrives as plain HTTP
                raise BanditgateError(WEBSOCKET_REFUSED, status=400, field="Upgrade")
            tail, query = proxy_tail(
                scope.get("raw_path") or path.encode(), scope.get("query_string", b"")
            )
            call = Invocation(
                parts[2],
                "http",
                b"",
                {},
                method=method,
                path=tail,
                query=query,
                client=(scope.get("client") or ("",))[0] or "",
                scheme=scope.get("scheme", "http"),
            )
            await self._invoke(scope, receive, send, call)
            return True
        if len(parts) == 5 and parts[1:3] == ["v1", "experiments"] and parts[4] == "rank":
            if method != "POST":
                raise BanditgateError("use POST", status=405)
            await self._rank(parts[3], scope, receive, send)
            return True
        if path.startswith(LOOPS_PREFIX):
            return await self._personalizer(path, method, scope, receive, send)
        if path == "/health/live":
            await send_response(send, 200, b'{"status":"live"}')
            return True
        if path == "/health/ready":
            await self._ready(send)
            return True
        return False

    async def _v2(
        self, parts: list[str], method: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Open Inference Protocol: every answer, errors included, in its shape (router/oip.py)."""
        try:
            await self._v2_route(parts, method, scope, receive, send)
        except BanditgateError as error:
            headers: list[tuple[bytes, bytes]] = []
            event_id = getattr(error, "event_id", None)
            if event_id is not None:
                headers.append((b"x-banditgate-event-id", event_id.encode("latin-1")))
            variant = getattr(error, "variant", None)
            if variant is not None:
                headers.append((b"x-banditgate-variant", variant.encode("latin-1")))
            body = oip.error_body(oip.error_message(error))
            await send_response(send, error.status, body, JSON, headers)

    async def _v2_route(
        self, parts: list[str], method: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        assert self.runtime is not None
        if len(parts) == 2 or parts[2:] == [""]:
            _require(method, "GET")
            await send_response(send, 200, orjson.dumps(oip.server_metadata()))
            return
        if parts[2:] == ["health", "live"]:
            _require(method, "GET")
            await send_response(send, 200, b'{"live":true}')
            return
        if parts[2:] == ["health", "ready"]:
            _require(method, "GET")
            try:
                await self._readiness()
            except NotReady as error:
                body = {"ready": False, "error": error.message}
                await send_response(send, 400, orjson.dumps(body))
                return
            await send_response(send, 200, b'{"ready":true}')
            return
        if parts[2] != "models" or len(parts) < 4:
            raise BanditgateError(f"no route for {scope['path']}", status=404)
        experiment = parts[3]
        tail = parts[4:]
        version: str | None = None
        if tail[:1] == ["versions"] and len(tail) >= 2:
            version, tail = tail[1], tail[2:]
        if tail == ["infer"]:
            _require(method, "POST")
            path = f"versions/{version}/" if version else ""
            await self._invoke(
                scope, receive, send, Invocation(experiment, "v2", b"", {}, path=path)
            )
            return
        if tail == ["ready"]:
            _require(method, "GET")
            state = self.runtime.get(experiment)
            ready = await oip.ready_arms(self.backend, list(state.arms.values()), version)
            if not ready:
                body = {
                    "name": experiment,
                    "ready": False,
                    "error": f"no arm of {experiment!r} is ready",
                }
                await send_response(send, 400, orjson.dumps(body))
                return
            await send_response(send, 200, orjson.dumps({"name": experiment, "ready": True}))
            return
        if not tail:
            _require(method, "GET")
            state = self.runtime.get(experiment)
            metadata = await oip.model_metadata(
                self.backend, experiment, list(state.arms.values()), version
            )
            if metadata is None:
                raise BanditgateError(
                    f"no arm of {experiment!r} answered its model metadata (only v2 arms have it)",
                    status=503,
                )
            await send_response(send, 200, orjson.dumps(metadata))
            return
        raise BanditgateError(f"no route for {scope['path']}", status=404)

    async def _invoke(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        call: Invocation,
        *,
        stream: bool = False,
    ) -> None:
        """Route one request; SageMaker and OIP errors are raised, for their callers' shapes."""
        assert self.router is not None
        if self.inflight >= self.settings.max_inflight:
            if call.protocol in ("sagemaker", "v2"):
                self.metrics.overloaded.inc()
                raise Overloaded(
                    f"this worker has {self.settings.max_inflight} requests in flight; retry later"
                )
            await self._overloaded(send)
            return
        self.inflight += 1
        self.metrics.in_flight.inc()  # the same count, summed over workers for autoscalers
        try:
            call.body = await read_body(scope, receive, self.settings.max_body_bytes)
            call.headers = header_dict(scope)
            watch = DisconnectWatch(
                receive, after_s=self.settings.disconnect_check_s, tasks=self.tasks
            )
            try:
                if stream:
                    assert self.streams is not None
                    await self.streams.relay(send, call)
                    return
                outcome = await self.router.invoke(call)
            except asyncio.CancelledError:
                if not watch.absorb():
                    raise
                self.metrics.client_disconnects.inc()
                return
            except BanditgateError as error:
                if call.protocol in ("sagemaker", "v2"):
                    raise  # rendered in the protocol's own shape by the caller
                await send_error(send, error)
                return
            finally:
                watch.close()
            if call.protocol == "sagemaker" and outcome.status >= 400:
                failure = sagemaker.model_error(outcome.status, outcome.body, outcome.variant)
                failure.event_id = outcome.event_id  # type: ignore[attr-defined]
                failure.variant = outcome.variant  # type: ignore[attr-defined]
                raise failure
            await self._send_outcome(send, outcome)
        finally:
            self.inflight -= 1
            self.metrics.in_flight.dec()

    async def _invoke_sagemaker(
        self, scope: Scope, receive: Receive, send: Send, experiment: str, route: str
    ) -> None:
        """InvokeEndpoint(WithResponseStream): failures in botocore's shapes (router/sagemaker.py)."""
        call = Invocation(experiment, "sagemaker", b"", {})
        try:
            if route == "async-invocations":
                raise sagemaker.SageMakerError(
                    sagemaker.VALIDATION_ERROR,
                    "InvokeEndpointAsync is not supported: banditgate answers requests as they "
                    "come (use InvokeEndpoint or InvokeEndpointWithResponseStream)",
                )
            stream = route == "invocations-response-stream"
            await self._invoke(scope, receive, send, call, stream=stream)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if not isinstance(error, BanditgateError | sagemaker.SageMakerError):
                log.exception("InvokeEndpoint on %r failed", experiment)
            await sagemaker.send_error(
                send,
                sagemaker.from_error(error, loading=self._loading(experiment)),
                event_id=getattr(error, "event_id", None),
                variant=getattr(error, "variant", None),
            )

    def _loading(self, experiment: str) -> bool:
        """Known to this router but not (yet) served: starting, or its policy failed to load."""
        runtime = self.runtime
        if runtime is None or not runtime.serves(experiment):
            return False
        return not runtime.ready or experiment in runtime.watcher.specs

    async def _overloaded(self, send: Send) -> None:
        self.metrics.overloaded.inc()
        error = Overloaded(
            f"this worker has {self.settings.max_inflight} requests in flight; retry later"
        )
        retry_after = str(self.settings.retry_after_s).encode()
        await send_error(send, error, [(b"retry-after", retry_after)])

    def _arm_changed(self, arm: tuple[str, str], ejected: bool) -> None:
        if ejected:
            self.metrics.arm_ejections.inc()
        self.metrics.arms_ejected.set(len(self.health.ejected()))

    async def _send_outcome(self, send: Send, outcome: Outcome) -> None:
        headers = [
            (b"x-banditgate-event-id", outcome.event_id.encode("latin-1")),
            (b"x-banditgate-variant", outcome.variant.encode("latin-1")),
            *outcome.headers,
        ]
        await send_response(send, outcome.status, outcome.body, outcome.content_type, headers)

    async def _rank(self, experiment: str, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.router is not None
        body = await read_body(scope, receive, self.settings.max_body_bytes)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MalformedJSON(f"request body is not valid JSON: {exc}", field="body") from None
        result = self.router.rank(experiment, payload)
        headers = [
            (b"x-banditgate-event-id", result["event_id"].encode("latin-1")),
            (b"x-banditgate-variant", result["chosen"].encode("latin-1")),
        ]
        await send_response(send, 200, orjson.dumps(result), JSON, headers)

    async def _personalizer(
        self, path: str, method: str, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        parsed = parse_path(path)
        if (
            parsed is None
            or self.personalizer is None
            or not self.personalizer.owns(parsed, method)
        ):
            return False
        try:
            body = await read_body(scope, receive, self.settings.max_body_bytes)
        except PayloadTooLarge as error:
            answer = self.personalizer.refuse(parsed, error)
        else:
            answer = await self.personalizer.answer(parsed, body)
        await send_response(send, answer.status, answer.body, JSON if answer.body else None)
        return True

    async def _ready(self, send: Send) -> None:
        await send_response(send, 200, orjson.dumps(await self._readiness()))

    async def _readiness(self) -> dict[str, Any]:
        """Ready = can route: experiments synced, policies loaded, an arm to send to.

        Redis being away does not stop routing (decisions wait in the log): it is
        reported as `degraded`, with 200, and in banditgate_router_redis_up.
        """
        runtime = self.runtime
        if self.redis is None or runtime is None or not self.started:
            raise NotReady("starting")
        problems: list[str] = []
        redis_error: str | None = None
        names: list[str] = []
        try:
            await asyncio.wait_for(self.redis.ping(), timeout=0.5)
            names = await asyncio.wait_for(runtime.store.names(), timeout=0.5)
        except Exception as exc:
            redis_error = str(exc) or type(exc).__name__
        self.metrics.redis_up.set(0 if redis_error else 1)
        if not runtime.ready:
            problems.append("experiments not synced")
        missing = [n for n in names if runtime.serves(n) and n not in runtime.experiments]
        if missing:
            problems.append(f"no policy loaded for {missing}")
        experiments: dict[str, Any] = {}
        usable = 0
        for name, state in runtime.experiments.items():
            ejected = [arm for arm in state.arms if not self.health.usable((name, arm))]
            usable += len(state.arms) - len(ejected)
            experiments[name] = {"policy_version": state.loaded_version, "mode": state.spec.mode}
            if ejected:
                experiments[name]["ejected_arms"] = ejected
        if experiments and not usable:
            problems.append("every arm is ejected")
        if problems:
            if redis_error is not None:
                problems.append(f"redis unreachable: {redis_error}")
            raise NotReady("; ".join(problems))
        body: dict[str, Any] = {"status": "ready", "experiments": experiments}
        if redis_error is not None:
            body["status"] = "degraded"
            body["redis"] = f"unreachable: {redis_error}"
        return body


def _require(method: str, expected: str) -> None:
    if method != expected:
        raise BanditgateError(f"use {expected}", status=405)


def create_app(
    settings: RouterSettings | None = None,
    *,
    redis: Redis | None = None,
    metrics: ProcessMetrics | None = None,
) -> RouterApp:
    return RouterApp(settings or RouterSettings(), redis=redis, metrics=metrics)
