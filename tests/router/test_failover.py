"""Arms that refuse, hang and die, behind a router, with real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import aiohttp

from banditgate.spec import parse_spec
from tests.router.conftest import logged_decisions
from tests.support import Backend, run_backend, wait_for


def refused_url() -> tuple[socket.socket, str]:
    """A bound port nobody listens on: connections to it are refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


class Hanging:
    """Accepts, reads, never answers; counts connections still open."""

    def __init__(self) -> None:
        self.open = 0
        self.most_open = 0
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while await reader.read(65536):
                pass
        finally:
            self.open -= 1
            writer.close()


@contextlib.asynccontextmanager
async def hanging() -> AsyncIterator[Hanging]:
    backend = Hanging()
    server = await asyncio.start_server(backend.handle, "127.0.0.1", 0)
    backend.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield backend
    finally:
        server.close()


def two_arms(name: str, dead: str, alive: str, **arm: object) -> object:
    return parse_spec(
        {
            "name": name,
            "arms": [
                {"name": "dead", "url": dead, "protocol": "sagemaker", **arm},
                {"name": "alive", "url": alive, "protocol": "sagemaker"},
            ],
            "mode": "ab",
        }
    )


async def post(http: aiohttp.ClientSession, url: str, name: str, i: int) -> tuple[int, str]:
    async with http.post(
        f"{url}/endpoints/{name}/invocations",
        json={"features": ["ok"]},
        headers={"X-Amzn-SageMaker-Inference-Id": f"req-{i}"},
    ) as response:
        await response.read()
        return response.status, response.headers.get("X-Banditgate-Variant", "")


async def test_a_refused_arm_is_retried_on_another_as_a_logged_decision_then_ejected(
    start_router, redis, name
):
    sock, dead = refused_url()
    async with run_backend(Backend()) as alive:
        url, app = await start_router(two_arms(name, dead, alive.url), arm_failures_to_eject=3)
        async with aiohttp.ClientSession() as http:
            results = [await post(http, url, name, i) for i in range(40)]
        assert app.log is not None
        await app.log.stop()
    sock.close()
    assert results == [(200, "alive")] * 40  # every client got an answer
    decisions = await logged_decisions(redis, name)
    failed = {d["event_id"]: d for d in decisions if d["chosen"] == "dead"}
    served = [d for d in decisions if d["chosen"] == "alive"]
    assert len(served) == 40 and {d["event_id"] for d in served} == {f"req-{i}" for i in range(40)}
    assert len(failed) == 3  # then ejected: no more tries within the cool-down
    assert all(d["status"] == 502 and d["event_id"].endswith("~1") for d in failed.values())
    retries = [d for d in served if "retry_of" in d]
    assert {d["retry_of"] for d in retries} == set(failed)
    # The pmf logged is the one used: the failed arm is out of a retry's, the ejected
    # arm out of every later decision's.
    assert retries and all(d["pmf"] == [0.0, 1.0] for d in retries)
    assert served[-1]["pmf"] == [0.0, 1.0] and "retry_of" not in served[-1]
    assert app.health.ejected() == [(name, "dead")]


async def test_a_hung_arm_times_out_fast_is_not_retried_and_is_ejected(start_router, redis, name):
    async with hanging() as hung, run_backend(Backend()) as alive:
        spec = two_arms(name, hung.url, alive.url, timeout_s=0.2)
        url, app = await start_router(spec, arm_failures_to_eject=2)
        async with aiohttp.ClientSession() as http:
            results = [await post(http, url, name, i) for i in range(30)]
        assert app.log is not None
        await app.log.stop()
    timeouts = [r for r in results if r[0] == 424]  # SageMaker's ModelError: not retried
    assert len(timeouts) == 2 and all(r == (200, "alive") for r in results if r[0] != 424)
    # The hung arm may have processed them: a timed-out request is never sent twice.
    assert len(await logged_decisions(redis, name)) == 30


async def test_a_client_that_gives_up_cancels_the_backend_call(start_router, redis, name):
    async with hanging() as hung:
        spec = parse_spec(
            {
                "name": name,
                "arms": [{"name": "slow", "url": hung.url, "protocol": "sagemaker"}],
                "mode": "ab",
            }
        )
        url, app = await start_router(spec, backend_timeout_s=30, disconnect_check_s=0.05)
        timeout = aiohttp.ClientTimeout(total=0.3)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for i in range(5):
                with contextlib.suppress(TimeoutError):
                    await post(http, url, name, i)

        async def all_closed() -> bool:
            return hung.open == 0

        await wait_for(all_closed)
        assert app.log is not None
        await app.log.stop()
    decisions = await logged_decisions(redis, name)
    assert [d["status"] for d in decisions] == [499] * 5


async def test_connections_per_backend_are_capped_and_excess_requests_get_503(
    start_router, redis, name
):
    async with hanging() as hung:
        spec = parse_spec(
            {
                "name": name,
                "arms": [{"name": "slow", "url": hung.url, "protocol": "sagemaker"}],
                "mode": "ab",
            }
        )
        url, _ = await start_router(
            spec, backend_max_connections=2, backend_timeout_s=0.5, max_inflight=4
        )
        async with aiohttp.ClientSession() as http:
            results = await asyncio.gather(*(post(http, url, name, i) for i in range(6)))
            async with http.post(f"{url}/endpoints/{name}/invocations", data=b"{}") as response:
                assert response.status == 424  # the worker has room again (a timeout)
        assert hung.most_open == 2
    statuses = sorted(status for status, _ in results)
    # On the SageMaker route: the two sent and timed out are ModelError 424; the two that
    # found no free connection to the only arm, and the overloaded worker's two, are
    # ServiceUnavailable 503 (botocore retries those).
    assert statuses == [424, 424, 503, 503, 503, 503]


async def test_an_arm_with_a_health_path_is_checked_in_the_background_not_with_requests(
    start_router, redis, name
):
    async with run_backend(Backend(status=503)) as sick, run_backend(Backend()) as well:
        spec = parse_spec(
            {
                "name": name,
                "mode": "ab",
                "arms": [
                    {
                        "name": "sick",
                        "url": sick.url,
                        "protocol": "sagemaker",
                        "health_path": "/ping",
                    },
                    {"name": "well", "url": well.url, "protocol": "sagemaker"},
                ],
            }
        )
        url, app = await start_router(spec, arm_failures_to_eject=2, arm_cooldown_s=0.1)
        async with aiohttp.ClientSession() as http:
            first = [await post(http, url, name, i) for i in range(20)]
            assert [s for s, _ in first].count(424) == 2  # ModelError on this route; then ejected

            async def checked() -> bool:
                return any(r["path"] == "/ping" for r in sick.requests)

            await wait_for(checked)  # a failing check keeps it out, no request probes it
            during = [await post(http, url, name, i) for i in range(20, 60)]
            assert during == [(200, "well")] * 40
            assert [r["path"] for r in sick.requests if r["path"] != "/ping"] == [
                "/invocations"
            ] * 2
            sick.status = 200

            async def readmitted() -> bool:
                return not app.health.ejected()

            await wait_for(readmitted)
            after = [await post(http, url, name, i) for i in range(60, 100)]
        assert {variant for _, variant in after} == {"sick", "well"}
        assert all(status == 200 for status, _ in after)
