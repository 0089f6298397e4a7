"""`banditgate backends`: the demo classifiers where the example specs send traffic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from banditgate.spec import load_specs
from banditgate_app.demo.backend import EXAMPLE_PORTS
from tests.support import free_socket, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _port() -> int:
    sock = free_socket()
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "banditgate_app.cli", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _stop(process: subprocess.Popen[bytes]) -> tuple[str, str]:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)
    out, err = (
        stream.read().decode() if stream else "" for stream in (process.stdout, process.stderr)
    )
    assert code == 0, err
    assert "Traceback" not in err, err
    return out, err


def test_every_example_spec_points_at_the_backends_ports() -> None:
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert len(examples) >= 5
    for path in examples:
        for spec in load_specs(path):
            places = [urlsplit(arm.url) for arm in spec.arms]
            assert [(p.hostname, p.port) for p in places] == [
                ("127.0.0.1", port) for port in EXAMPLE_PORTS
            ], path.name


async def test_serving_an_example_spec_against_the_backends(
    redis_url: str, name: str, tmp_path: Path
) -> None:
    """The README's "Serving an experiment", on free ports instead of 9101, 9102 and 8080."""
    ports = [_port(), _port()]
    spec = (ROOT / "examples" / "reviews.yaml").read_text()
    for default, port in zip(EXAMPLE_PORTS, ports, strict=True):
        spec = spec.replace(f":{default}", f":{port}")
    spec_file = tmp_path / "reviews.yaml"
    spec_file.write_text(spec.replace("name: reviews", f"name: {name}"))
    env = {
        **os.environ,
        "BANDITGATE_REDIS_URL": redis_url,
        "BANDITGATE_EXPERIMENTS": name,
        "BANDITGATE_DATA_DIR": str(tmp_path / "data"),
    }
    serve_port = _port()
    backends = _start(env, "backends", "--ports", ",".join(map(str, ports)))
    serve = _start(env, "serve", "-f", str(spec_file), "--port", str(serve_port))
    base = f"http://127.0.0.1:{serve_port}"
    answers = []
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                assert serve.poll() is None and backends.poll() is None
                try:
                    async with http.get(f"{base}/health/ready") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(ready, timeout=60, every=0.2)
            for text in ("Absolutely love it, works great.", "Terrible. It broke after a day."):
                async with http.post(
                    f"{base}/endpoints/{name}/invocations", json={"features": [text]}
                ) as response:
                    assert response.status == 200, await response.text()
                    answers.append(
                        (
                            response.headers["X-Amzn-Invoked-Production-Variant"],
                            await response.json(),
                        )
                    )
    finally:
        _stop(serve)
        out, _ = _stop(backends)
    for variant, body in answers:
        assert variant in ("bert-1", "bert-2")
        assert body["model"] == variant
        assert body["predicted_label"] in range(1, 6)
    assert f"bert-1 (seed) at http://127.0.0.1:{ports[0]}/invocations" in out
    assert f"bert-2 (seed) at http://127.0.0.1:{ports[1]}/invocations" in out


def test_backends_refuses_a_bad_port_list() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "banditgate_app.cli", "backends", "--ports", "9101"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert b"--ports: 2 port numbers" in result.stderr
