"""A "BERT review classifier" as a real HTTP server: SageMaker-style /invocations.

It answers `{"predicted_label": k}` for `{"features": [review text]}`, right with
the probability its accuracy profile gives for that kind of review.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

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


@contextlib.asynccontextmanager
async def serve_classifier(classifier: Classifier, port: int = 0) -> AsyncIterator[str]:
    runner = web.AppRunner(classifier_app(classifier), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{bound}"
    finally:
        await runner.cleanup()
