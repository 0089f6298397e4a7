"""A real local Redis Cluster (redis-server --cluster-enabled yes) for tests and benchmarks."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis as redis_sync

from banditgate.redis import cluster_nodes, is_cluster_url

PORTS = range(7100, 7200)


def available() -> bool:
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    # The cluster bus listens on port + 10000.
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port + 10000))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    ports = [port for port in PORTS if _free(port)][:count]
    if len(ports) < count:
        raise RuntimeError(f"fewer than {count} free ports in {PORTS}")
    return ports


def flush(url: str) -> None:
    """Empty the database at `url` (every master of a `redis+cluster://` URL)."""
    if is_cluster_url(url):
        _, nodes = cluster_nodes(url)
        client = redis_sync.RedisCluster(host=nodes[0][0], port=nodes[0][1])
        client.flushdb(target_nodes=redis_sync.RedisCluster.PRIMARIES)
    else:
        client = redis_sync.Redis.from_url(url)
        client.flushdb()
    client.close()


def cli(port: int, *args: str, timeout: float = 10.0) -> str:
    done = subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.stdout


def wait_ping(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cli(port, "ping").strip() == "PONG":
            return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server on {port} did not start")


class LocalCluster:
    """`masters` masters with `replicas` replicas each, on loopback, in a temporary directory.

    Nothing is persisted; `stop()` (or leaving the `with` block) kills every server.
    """

    def __init__(self, *, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 1000) -> None:
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.ports: list[int] = []
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.dir = Path(tempfile.mkdtemp(prefix="banditgate-cluster-"))

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{port}" for port in self.ports[: self.masters])
        return f"redis+cluster://{nodes}"

    def start(self) -> LocalCluster:
        self.ports = free_ports(self.masters * (1 + self.replicas))
        try:
            for port in self.ports:
                self._spawn(port)
            for port in self.ports:
                self._wait_ping(port)
            create = subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if create.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout[-2000:]}")
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, port: int) -> None:
        self.processes[port] = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(self.dir / f"nodes-{port}.conf"),
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",
                "0",
                "--loglevel",
                "warning",
                "--logfile",
                str(self.dir / f"redis-{port}.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _wait_ping(self, port: int) -> None:
        wait_ping(port)

    def alive(self) -> list[int]:
        return [port for port, process in self.processes.items() if process.poll() is None]

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says the cluster is ok and agrees on `masters` masters."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = True
            for port in self.alive():
                info = cli(port, "cluster", "info")
                if "cluster_state:ok" not in info or f"cluster_size:{self.masters}" not in info:
                    ready = False
                    break
                # A replica that has not finished its first sync cannot take over.
                replication = cli(port, "info", "replication")
                if "role:slave" in replication and "master_link_status:up" not in replication:
                    ready = False
                    break
            if ready:
                return
            time.sleep(0.1)
        raise RuntimeError("the cluster did not become ok")

    def role(self, port: int) -> str:
        return cli(port, "role").split("\n", 1)[0].strip()

    def master_of_slot(self, slot: int) -> int:
        for port in self.alive():
            if self.role(port) != "master":
                continue
            nodes = cli(port, "cluster", "nodes")
            for row in nodes.splitlines():
                fields = row.split()
                if "myself" not in fields[2] or "master" not in fields[2]:
                    continue
                for spec in fields[8:]:
                    if spec.startswith("["):
                        continue
                    low, _, high = spec.partition("-")
                    if int(low) <= slot <= int(high or low):
                        return port
        raise RuntimeError(f"no live master serves slot {slot}")

    def kill(self, port: int) -> None:
        process = self.processes[port]
        process.kill()
        process.wait()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            process.wait()
        self.processes.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
