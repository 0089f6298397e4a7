"""A small Triton-compatible model server: KServe v2 HTTP with the binary tensor extension.

Model `doubler` (FP32 input INPUT0 [-1]) answers OUTPUT0 = 2 * INPUT0, in binary when the
request asks for it (tritonclient's default), else as JSON. Inputs arrive as JSON data or
binary (`binary_data_size`), as Triton accepts them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from aiohttp import web

HEADER = "Inference-Header-Content-Length"


@dataclass
class TritonBackend:
    model: str = "doubler"
    ready: bool = True
    factor: float = 2.0
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.model,
            "versions": ["1"],
            "platform": "triton-compatible-test",
            "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1]}],
            "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1]}],
        }

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            {
                "path": request.path,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body,
            }
        )
        parts = request.path.strip("/").split("/")
        if parts == ["v2", "health", "ready"] or parts == ["v2", "health", "live"]:
            return web.json_response({"ready": True})
        if len(parts) < 3 or parts[:2] != ["v2", "models"] or parts[2] != self.model:
            return web.json_response({"error": f"Request for unknown model: {parts}"}, status=400)
        tail = parts[3:]
        if tail[:1] == ["versions"]:
            tail = tail[2:]
        if tail == ["ready"]:
            return web.Response(status=200 if self.ready else 400)
        if not tail:
            return web.json_response(self.metadata())
        if tail == ["infer"]:
            return self.infer(request, body)
        return web.json_response({"error": "not found"}, status=404)

    def infer(self, request: web.Request, body: bytes) -> web.Response:
        length = request.headers.get(HEADER)
        header_bytes = body[: int(length)] if length is not None else body
        raw = body[int(length) :] if length is not None else b""
        try:
            header = orjson.loads(header_bytes)
        except orjson.JSONDecodeError as exc:
            return web.json_response({"error": f"malformed inference header: {exc}"}, status=400)
        (tensor,) = header["inputs"]
        size = tensor.get("parameters", {}).get("binary_data_size")
        if size is not None:
            values = np.frombuffer(raw[:size], dtype=np.float32)
        else:
            values = np.asarray(tensor["data"], dtype=np.float32)
        result = (values * self.factor).astype(np.float32)
        wants_binary = header.get("parameters", {}).get("binary_data_output", False) or any(
            o.get("parameters", {}).get("binary_data") for o in header.get("outputs", [])
        )
        output: dict[str, Any] = {"name": "OUTPUT0", "datatype": "FP32", "shape": [len(result)]}
        reply: dict[str, Any] = {"model_name": self.model, "outputs": [output]}
        if "id" in header:
            reply["id"] = header["id"]
        if not wants_binary:
            output["data"] = result.tolist()
            return web.json_response(reply)
        blob = result.tobytes()
        output["parameters"] = {"binary_data_size": len(blob)}
        json_bytes = orjson.dumps(reply)
        return web.Response(
            body=json_bytes + blob,
            headers={HEADER: str(len(json_bytes)), "Content-Type": "application/octet-stream"},
        )


@contextlib.asynccontextmanager
async def run_triton(backend: TritonBackend | None = None) -> AsyncIterator[TritonBackend]:
    backend = backend or TritonBackend()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", backend.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    backend.url = f"http://127.0.0.1:{port}"
    try:
        yield backend
    finally:
        await runner.cleanup()
