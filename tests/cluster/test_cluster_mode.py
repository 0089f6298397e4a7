"""`redis+cluster://` URLs: parsing, and the refusal of a URL that does not match the server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from banditgate import keys
from banditgate.redis import (
    RedisModeError,
    check_server_mode,
    cluster_nodes,
    connect,
    is_cluster,
    redacted,
    verify_server_mode,
)
from tests.redis_cluster import LocalCluster, free_ports, wait_ping


@pytest.fixture(scope="module")
def plain_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A plain (non-cluster) redis-server of our own, on a free port."""
    port = free_ports(1)[0]
    directory = tmp_path_factory.mktemp("plain")
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    process = subprocess.Popen(
        [*command, "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ping(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()


def test_cluster_urls_name_every_start_node_and_keep_auth_and_options() -> None:
    base, nodes = cluster_nodes("redis+cluster://u:secret@h1:7000,h2:7001,[::1]:7002/0?x=1")
    assert nodes == [("h1", 7000), ("h2", 7001), ("::1", 7002)]
    assert base == "redis://u:secret@h1:7000/0?x=1"
    assert cluster_nodes("rediss+cluster://h1")[0] == "rediss://h1:6379/0"
    assert (
        redacted("redis+cluster://u:secret@h1:7000,h2:7001")
        == "redis+cluster://u:***@h1:7000,h2:7001"
    )
    with pytest.raises(RedisModeError, match="only database 0"):
        cluster_nodes("redis+cluster://h1:7000/3")
    with pytest.raises(RedisModeError, match="bad node 'h2:x'"):
        cluster_nodes("redis+cluster://h1:7000,h2:x")


async def test_a_cluster_url_opens_a_cluster_client_that_spreads_experiments(redis, redis_url):
    assert is_cluster(redis)
    await verify_server_mode(redis, redis_url)
    check_server_mode(redis_url)
    # Experiments spread over the masters: one experiment's keys share one slot.
    slots = {redis.keyslot(keys.decisions(f"e{i}")) for i in range(30)}
    assert len(slots) == 30
    assert redis.keyslot(keys.decisions("e1")) == redis.keyslot(keys.join_pending("e1"))
    owners = {redis.nodes_manager.get_node_from_slot(slot).port for slot in slots}
    assert len(owners) == 3


async def test_a_cluster_url_at_a_plain_server_is_refused(plain_url: str) -> None:
    url = plain_url.replace("redis://", "redis+cluster://")
    with pytest.raises(RedisModeError, match="cluster mode disabled"):
        check_server_mode(url)
    client = connect(url)
    try:
        with pytest.raises(RedisModeError, match="cluster mode disabled"):
            await verify_server_mode(client, url)
    finally:
        await client.aclose()


async def test_a_plain_url_at_a_cluster_node_is_refused(cluster: LocalCluster) -> None:
    url = f"redis://127.0.0.1:{cluster.ports[0]}/0"
    with pytest.raises(RedisModeError, match=r"use redis\+cluster://"):
        check_server_mode(url)
    client = connect(url)
    try:
        with pytest.raises(RedisModeError, match=r"use redis\+cluster://"):
            await verify_server_mode(client, url)
    finally:
        await client.aclose()


def test_a_command_started_on_the_wrong_url_exits_with_the_reason(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    url = f"redis://127.0.0.1:{cluster.ports[0]}/0"
    env = {**os.environ, "BANDITGATE_REDIS_URL": url, "BANDITGATE_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "banditgate_app.cli", "router", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert done.stderr.startswith("error: BANDITGATE_REDIS_URL=redis://127.0.0.1:")
    assert "points at a Redis Cluster node" in done.stderr
    assert "Traceback" not in done.stderr
