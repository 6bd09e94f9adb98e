"""The sidecar's HTTP API around one node.

POST /sessions/{choreography}   start (or join, by session_id) a session; waits by default
GET  /sessions/{session_id}     state, result and restart count
POST /messages                  peer messages (msgpack batch); 200 = durably received
GET  /stream                    the same over one WebSocket per peer (stream transport)
POST /ready                     a peer (re)started: resend to it now
GET  /health, GET /metrics      liveness, Prometheus text
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
from aiohttp import web

from accompanist_py import failpoints
from accompanist_py.choreography import Registry
from accompanist_py.errors import ChoreographyError
from accompanist_py.message import decode_batch
from accompanist_py.node import Node, NodeStopping
from accompanist_py.service import HttpServiceClient
from accompanist_py.sidecar.config import SidecarConfig
from accompanist_py.store import MemoryStore, SQLiteStore
from accompanist_py.transport.http import HttpTransport
from accompanist_py.transport.stream import STREAM_PATH, StreamTransport, serve_stream

NODE = web.AppKey("node", Node)
STREAMS = web.AppKey("streams", set)  # open peer streams, closed at shutdown


def build_node(config: SidecarConfig) -> Node:
    """Assemble the node a config describes (not started)."""
    failpoints.arm(config.failpoints)
    registry = Registry()
    for module in config.choreographies:
        registry.load_module(module)
    store = (
        SQLiteStore(config.store_path, config.synchronous)
        if config.mode == "fault-tolerant" and config.store_path is not None
        else MemoryStore()
    )
    service = (
        HttpServiceClient(
            config.service_url,
            attempt_timeout_s=config.service_call_s,
            deadline_s=config.service_deadline_s,
            backoff=config.node.backoff,
        )
        if config.service_url
        else None
    )
    transport = (
        StreamTransport(config.name, config.peers)
        if config.transport == "stream"
        else HttpTransport(config.name, config.peers)
    )
    return Node(
        config.name,
        config.roles,
        registry,
        transport,
        store=store,
        service=service,
        config=config.node,
    )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def start_session(request: web.Request) -> web.Response:
    node = request.app[NODE]
    try:
        body: dict[str, Any] = await request.json() if request.can_read_body else {}
    except json.JSONDecodeError as exc:
        return _error(400, f"request body is not JSON: {exc}")
    if not isinstance(body, dict):
        return _error(400, "request body must be a JSON object")
    args, kwargs = body.get("args", []), body.get("kwargs", {})
    sid = body.get("session_id")
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return _error(400, "'args' must be a list and 'kwargs' an object")
    if sid is not None and (not isinstance(sid, str) or not sid):
        return _error(400, "'session_id' must be a non-empty string")
    try:
        status = await node.start_session(
            request.match_info["choreography"],
            args,
            kwargs,
            session_id=sid,
            wait=bool(body.get("wait", True)),
        )
    except ChoreographyError as exc:
        return _error(404 if "unknown choreography" in str(exc) else 400, str(exc))
    except NodeStopping as exc:
        return _error(503, f"{exc}; the session resumes after the restart: start it again")
    return web.json_response(status.to_json(), status=200 if status.finished else 202)


async def session_status(request: web.Request) -> web.Response:
    try:
        status = request.app[NODE].status(request.match_info["session_id"])
    except KeyError:
        return _error(404, f"unknown session {request.match_info['session_id']!r}")
    return web.json_response(status.to_json())


async def messages(request: web.Request) -> web.Response:
    try:
        batch = decode_batch(await request.read())
    except ValueError as exc:
        return _error(400, str(exc))
    refused = await request.app[NODE].deliver(batch)
    return web.Response(body=msgpack.packb(refused), content_type="application/msgpack")


async def stream(request: web.Request) -> web.StreamResponse:
    streams = request.app[STREAMS]
    task = asyncio.current_task()
    assert task is not None
    streams.add(task)
    try:
        return await serve_stream(request, request.app[NODE].deliver)
    finally:
        streams.discard(task)


async def ready(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        roles = [str(r) for r in body["roles"]]
    except (ValueError, KeyError, TypeError):
        return _error(400, "expected {'sidecar': name, 'roles': [...]}")
    request.app[NODE].on_peer_ready(roles)
    return web.Response(status=200)


async def health(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return web.json_response(
        {
            "status": "ok",
            "name": node.name,
            "roles": node.roles,
            "active_sessions": len(node.sessions),
            "quarantined": [
                {"session_id": sid, "role": role, "reason": reason}
                for (sid, role), reason in sorted(node.store.quarantined.items())
            ],
        }
    )


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=request.app[NODE].metrics.render(), content_type="text/plain")


def make_app(node: Node) -> web.Application:
    """The aiohttp application serving `node` (started and closed with the app)."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[NODE] = node
    app[STREAMS] = set()

    async def stop(app: web.Application) -> None:
        # Before aiohttp waits for open requests: long-lived streams, and clients waiting for
        # a session's end, would otherwise hold the shutdown for its full timeout.
        for task in list(app[STREAMS]):
            task.cancel()
        await node.close()

    app.on_shutdown.append(stop)
    app.router.add_post("/sessions/{choreography}", start_session)
    app.router.add_get("/sessions/{session_id}", session_status)
    app.router.add_post("/messages", messages)
    app.router.add_post("/ready", ready)
    app.router.add_get(STREAM_PATH, stream)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        await node.start()
        yield
        await node.close()

    app.cleanup_ctx.append(lifecycle)
    return app
