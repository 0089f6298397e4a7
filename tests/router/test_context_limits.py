"""A context is logged with every decision, so its size is bounded per experiment."""

from __future__ import annotations

import aiohttp

from banditgate.spec import parse_spec
from tests.router.conftest import logged_decisions
from tests.support import Backend, run_backend


async def test_an_oversized_context_gets_413_naming_the_field_and_logs_nothing(
    start_router, redis, name
):
    async with run_backend(Backend(label=1)) as backend:
        spec = parse_spec(
            {
                "name": name,
                "arms": [{"name": "a", "url": backend.url, "protocol": "sagemaker"}],
                "context": {"body": ["a", "b", "c", "note"], "max_bytes": 300},
            }
        )
        url, app = await start_router(spec)
        async with aiohttp.ClientSession() as http:
            big = {"context": {f"k{i}": "z" * 60 for i in range(100)}}
            async with http.post(f"{url}/v1/experiments/{name}/rank", json=big) as response:
                assert response.status == 413
                error = (await response.json())["error"]
                assert "context.max_bytes" in error["message"]
            async with http.post(
                f"{url}/endpoints/{name}/invocations",
                json={key: "v" * 100 for key in ("a", "b", "c")},
            ) as response:
                assert response.status == 400  # SageMaker's ValidationError
                assert response.headers["x-amzn-errortype"] == "ValidationError"
                assert "context.max_bytes" in (await response.json())["Message"]
            small = {"context": {"note": "fine"}, "event_id": "small-1"}
            async with http.post(f"{url}/v1/experiments/{name}/rank", json=small) as response:
                assert response.status == 200
        assert app.log is not None
        await app.log.stop()
    assert [d["event_id"] for d in await logged_decisions(redis, name)] == ["small-1"]
    assert backend.requests == []
