"""InvokeEndpointWithResponseStream: the chosen arm's streamed answer, relayed as event-stream.

The arm is called as SageMaker calls a container (POST {url}/invocations) and may answer
chunked; each chunk it sends goes to the client as one `PayloadPart` event as soon as it
arrives (nothing is buffered). Failures:

- before the first byte (refused, timed out, 4xx/5xx): a plain SageMaker error
  (`ModelError` 424, router/sagemaker.py), as for InvokeEndpoint;
- after it (the arm stops mid-stream, or goes silent past its timeout): a
  `ModelStreamError` event (ErrorCode `StreamBroken` / `ModelInvocationTimeExceeded`)
  ends the stream; a router fault sends `InternalStreamFailure`.

The decision is logged once the stream ends, with the arm's time to first byte
(`ttfb_ms`), the total time (`latency_ms`) and the failure if there was one.

The arm is called with aiohttp's client rather than router/http_client.py, which reads
whole responses: streamed answers are long (tokens over seconds), so its per-request
cost matters less than relaying each chunk at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import orjson

from banditgate.errors import BackendError, BackendTimeout, BanditgateError
from router import eventstream, sagemaker
from router.routing import Invocation, Router

log = logging.getLogger(__name__)

MAX_ERROR_BODY = 64 * 1024


class StreamRelay:
    def __init__(
        self, *, router: Router, timeout_s: float = 60.0, connect_timeout_s: float = 2.0
    ) -> None:
        self.router = router
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                auto_decompress=False, skip_auto_headers=("User-Agent",)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def relay(self, send: Any, call: Invocation) -> None:
        router = self.router
        decided = router.decide(call)
        state, choice, replayed = decided.state, decided.choice, decided.replayed
        arm = state.arms[choice.arm]
        try:
            if arm.protocol == "sagemaker-runtime":
                # Its answer is an event stream already; relaying it is not built yet.
                raise sagemaker.SageMakerError(
                    sagemaker.VALIDATION_ERROR,
                    f"streaming to arm {arm.name!r} (protocol sagemaker-runtime) is not supported",
                )
            url, headers = router.arm_request(call, arm, choice.event_id, stream=True)
        except (sagemaker.SageMakerError, BanditgateError) as exc:
            if not replayed:
                status = getattr(exc, "status", 500)
                router.record(state, choice, status=status, latency_ms=0.0, error=exc.message)
            exc.event_id = choice.event_id  # type: ignore[union-attr]
            exc.variant = choice.arm  # type: ignore[union-attr]
            raise
        accept = call.headers.get("x-amzn-sagemaker-accept")
        if accept is not None:
            headers["accept"] = accept
        seconds = arm.timeout_s or self.timeout_s
        timeout = aiohttp.ClientTimeout(
            total=None, connect=min(self.connect_timeout_s, seconds), sock_read=seconds
        )
        started = time.perf_counter()

        def record(status: int, error: str | None = None, ttfb: float | None = None) -> None:
            if not replayed:
                elapsed = (time.perf_counter() - started) * 1000
                router.record(
                    state, choice, status=status, latency_ms=elapsed, error=error, ttfb_ms=ttfb
                )

        def tag(error: Exception) -> Exception:
            error.event_id = choice.event_id  # type: ignore[attr-defined]
            error.variant = choice.arm  # type: ignore[attr-defined]
            return error

        try:
            response = await self.session().post(
                url, data=call.body, headers=headers, timeout=timeout
            )
        except TimeoutError:
            message = f"arm {arm.name!r} did not answer within {seconds:g}s"
            record(504, message)
            raise tag(BackendTimeout(message)) from None
        except aiohttp.ClientError as exc:
            message = f"arm {arm.name!r} failed: {exc}"
            record(502, message)
            raise tag(BackendError(message)) from None
        async with response:
            if response.status >= 400:
                try:
                    body = await response.content.read(MAX_ERROR_BODY)
                except (aiohttp.ClientError, TimeoutError):
                    body = b""
                record(response.status)
                raise tag(sagemaker.model_error(response.status, body, choice.arm))
            await self._stream(send, response, choice.arm, choice.event_id, record, started)

    async def _stream(
        self,
        send: Any,
        response: aiohttp.ClientResponse,
        variant: str,
        event_id: str,
        record: Any,
        started: float,
    ) -> None:
        out = [
            (b"content-type", eventstream.CONTENT_TYPE),
            (b"x-amzn-invoked-production-variant", variant.encode("latin-1")),
            (b"x-banditgate-event-id", event_id.encode("latin-1")),
            (b"x-banditgate-variant", variant.encode("latin-1")),
        ]
        content_type = response.headers.get("content-type")
        if content_type is not None:
            out.append((b"x-amzn-sagemaker-content-type", content_type.encode("latin-1")))
        custom = response.headers.get("x-amzn-sagemaker-custom-attributes")
        if custom is not None:
            out.append((b"x-amzn-sagemaker-custom-attributes", custom.encode("latin-1")))
        await send({"type": "http.response.start", "status": 200, "headers": out})
        ttfb: float | None = None
        status, error, last = 200, None, b""
        try:
            async for chunk in response.content.iter_any():
                if ttfb is None:
                    ttfb = (time.perf_counter() - started) * 1000
                frame = eventstream.event("PayloadPart", chunk)
                await send({"type": "http.response.body", "body": frame, "more_body": True})
        except TimeoutError:
            status, error = 504, f"arm {variant!r} went silent mid-stream"
            last = _stream_error("ModelStreamError", error, "ModelInvocationTimeExceeded")
        except (aiohttp.ClientError, ConnectionError) as exc:
            status, error = 502, f"arm {variant!r} broke the stream: {exc}"
            last = _stream_error("ModelStreamError", error, "StreamBroken")
        except asyncio.CancelledError:
            record(499, "the client went away mid-stream", ttfb)
            raise
        except Exception as exc:
            log.exception("relaying the stream of %s failed", variant)
            status, error = 500, f"the router failed while relaying the stream: {exc}"
            last = _stream_error("InternalStreamFailure", error, None)
        await send({"type": "http.response.body", "body": last, "more_body": False})
        record(status, error, ttfb)


def _stream_error(kind: str, message: str, code: str | None) -> bytes:
    payload: dict[str, str] = {"Message": message}
    if code is not None:
        payload["ErrorCode"] = code
    return eventstream.exception(kind, orjson.dumps(payload))
