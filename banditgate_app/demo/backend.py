"""A "BERT review classifier" as a real HTTP server: SageMaker-style /invocations.

It answers `{"predicted_label": k}` for `{"features": [review text]}`, right with
the probability its accuracy profile gives for that kind of review.
`banditgate backends` serves the two demo classifiers at the ports the example
specs (examples/*.yaml) point at.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

import orjson
from aiohttp import web

from banditgate_app.demo.reviews import Classifier


def classifier_app(classifier: Classifier) -> web.Application:
    async def invocations(request: web.Request) -> web.Response:
        try:
            payload = orjson.loads(await request.read())
            text = payload["features"][0]
            if not isinstance(text, str):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            return web.json_response({"error": 'expected {"features": [text]}'}, status=400)
        return web.Response(
            body=orjson.dumps(
                {"predicted_label": classifier.predict(text), "model": classifier.name}
            ),
            content_type="application/json",
        )

    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/invocations", invocations)
    app.router.add_get("/ping", ping)
    return app


# The ports of the arms in examples/*.yaml, in the order of the scenario's classifiers.
EXAMPLE_PORTS = (9101, 9102)


@contextlib.asynccontextmanager
async def serve_classifier(
    classifier: Classifier, port: int = 0, host: str = "127.0.0.1"
) -> AsyncIterator[str]:
    runner = web.AppRunner(classifier_app(classifier), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{bound}"
    finally:
        await runner.cleanup()


async def run_classifiers(
    classifiers: Sequence[Classifier],
    ports: Sequence[int],
    stop: asyncio.Event,
    *,
    host: str = "127.0.0.1",
    started: Callable[[dict[str, str]], None] | None = None,
) -> None:
    """Serve each classifier on its port until `stop` is set."""
    async with contextlib.AsyncExitStack() as stack:
        urls = {
            classifier.name: await stack.enter_async_context(
                serve_classifier(classifier, port, host)
            )
            for classifier, port in zip(classifiers, ports, strict=True)
        }
        if started is not None:
            started(urls)
        await stop.wait()
