"""The control plane against its own OpenAPI: generated requests over real HTTP, a private Redis.

A small example budget keeps it quick; what it checks: no 5xx, every status documented,
content types and bodies as documented.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from pydantic import SecretStr
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from experiments.app import create_control_app
from experiments.settings import ControlSettings
from tests.faults import redis_server
from tests.support import ADMIN_KEY, free_socket

AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}
EXAMPLES = 4  # per operation: the run stays well under a minute


@pytest.fixture(scope="module")
def control_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("schema-redis")) as redis:
        settings = ControlSettings(
            redis_url=redis.url,
            admin_keys=[SecretStr(ADMIN_KEY)],
            rate_limit_control_per_s=0,  # generated requests come fast, from one client
            rate_limit_auth_failures_per_s=0,
        )
        config = uvicorn.Config(
            create_control_app(settings),
            log_level="warning",
            lifespan="on",
            loop="asyncio",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        sock = free_socket()
        thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
        thread.start()
        try:
            while not server.started:
                assert thread.is_alive(), "the control plane did not start"
                threading.Event().wait(0.02)
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
            thread.join(timeout=30)


def test_control_plane_matches_its_openapi(control_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{control_url}/openapi.json")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    calls = 0
    statuses: dict[int, int] = {}

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            nonlocal calls
            calls += 1
            response = case.call_and_validate(headers=AUTH, checks=checks)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        run()
    assert calls >= len(operations)
    print(
        f"{calls} generated requests over {len(operations)} operations: {sorted(statuses.items())}"
    )
    assert not [status for status in statuses if status >= 500]
