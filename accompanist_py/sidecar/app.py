"""The sidecar's HTTP API around one node, and who may call what.

POST /sessions/{choreography}   client: start (or join, by session_id) a session
GET  /sessions/{session_id}     client: state, result and restart count
GET  /sessions/{session_id}/events  client: the session's timeline at each role hosted here
GET  /sessions?state=&limit=    client: the newest sessions it may see, state per role
POST /messages                  peer: messages (msgpack batch); 200 = durably received
GET  /stream                    peer: the same over one WebSocket (stream transport)
POST /ready                     peer: it (re)started, resend to it now
GET  /health                    anyone: liveness; a client or peer: the node's details too
GET  /metrics                   a client or peer: Prometheus text

With TLS, a peer route needs a sidecar certificate of the deployment CA, and each message is
taken only if its sender is a role the certificate names. A client route needs a client
certificate or a bearer token from [auth] (compared in constant time) whenever TLS is on or
tokens are configured: 401 otherwise, and nothing stored. A session belongs to the client
that started it: to any other it does not exist (404). Where callers are authenticated, the
node's details (roles, session counts, quarantined session ids, metrics) are for authenticated
clients and certified peers only; anyone else learns only that it is alive.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import ssl
from dataclasses import dataclass, field
from typing import Any

import msgpack
from aiohttp import web

from accompanist_py import failpoints
from accompanist_py.choreography import Registry
from accompanist_py.errors import ChoreographyError, Overloaded
from accompanist_py.message import decode_batch
from accompanist_py.metrics import CONTENT_TYPE
from accompanist_py.node import Node, NodeStopping
from accompanist_py.service import HttpServiceClient
from accompanist_py.sidecar.config import Limits, ServiceCredentials, SidecarConfig
from accompanist_py.store import MemoryStore, SQLiteStore
from accompanist_py.tls import DEFAULT_TRUST_DOMAIN, client_context, identity_of_transport
from accompanist_py.transport.http import HttpTransport
from accompanist_py.transport.stream import STREAM_PATH, StreamTransport, serve_stream


@dataclass(frozen=True)
class Access:
    """Who may call the sidecar: see the module docstring.

    `peers_certified`: peer routes need a sidecar certificate (TLS is on). `clients`: client
    routes need a client certificate or one of `tokens` (client name -> token).
    """

    peers_certified: bool = False
    clients: bool = False
    tokens: dict[str, str] = field(default_factory=dict)
    trust_domain: str = DEFAULT_TRUST_DOMAIN

    @classmethod
    def of(cls, config: SidecarConfig) -> Access:
        tls = config.tls
        return cls(
            peers_certified=tls is not None,
            clients=config.authenticates_clients,
            tokens=dict(config.tokens),
            trust_domain=tls.trust_domain if tls is not None else DEFAULT_TRUST_DOMAIN,
        )

    def peer(self, request: web.Request) -> frozenset[str] | None:
        """The roles the calling sidecar is certified for (None: not checked, plaintext)."""
        if not self.peers_certified:
            return None
        identity = identity_of_transport(request.transport, self.trust_domain)
        if identity is None or not identity.is_peer:
            raise web.HTTPUnauthorized(
                text=json.dumps({"error": "peer routes need a sidecar certificate naming roles"}),
                content_type="application/json",
            )
        return identity.roles

    def client(self, request: web.Request) -> str | None:
        """The authenticated client's name (None when clients are not authenticated)."""
        if not self.clients:
            return None
        name = self._client_name(request)
        if name is None:
            raise web.HTTPUnauthorized(
                text=json.dumps({"error": "a client certificate or a bearer token is required"}),
                content_type="application/json",
                headers={"WWW-Authenticate": 'Bearer realm="accompanist"'},
            )
        return name

    def observer(self, request: web.Request) -> bool:
        """Whether the caller may see the node's details (`/health` in full, `/metrics`): an
        authenticated client or a certified peer, or anyone when nobody is authenticated."""
        if not (self.clients or self.peers_certified):
            return True
        identity = identity_of_transport(request.transport, self.trust_domain)
        if identity is not None and identity.is_peer:
            return True
        return self.clients and self._client_name(request) is not None

    def _client_name(self, request: web.Request) -> str | None:
        identity = identity_of_transport(request.transport, self.trust_domain)
        if identity is not None and identity.client is not None:
            return identity.client
        scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
        found = None
        if scheme.lower() == "bearer" and offered:
            for name, token in self.tokens.items():  # every one compared: constant time
                if hmac.compare_digest(offered.encode(), token.encode()):
                    found = name
        return found


NODE = web.AppKey("node", Node)
ACCESS = web.AppKey("access", Access)
LIMITS = web.AppKey("limits", Limits)
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
            ssl_context=_service_context(config.service),
            token=config.service.token,
        )
        if config.service_url
        else None
    )
    kind = StreamTransport if config.transport == "stream" else HttpTransport
    transport = kind(config.name, config.peers, tls=config.tls)
    return Node(
        config.name,
        config.roles,
        registry,
        transport,
        store=store,
        service=service,
        config=config.node,
    )


def _service_context(creds: ServiceCredentials) -> ssl.SSLContext | None:
    """Verifies the service against its CA (host names as usual) and presents our cert."""
    if creds.ca is None and creds.cert is None:
        return None
    return client_context(creds.ca, creds.cert, creds.key)


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _busy(exc: Overloaded) -> web.Response:
    return _error(503, f"busy, retry later: {exc}", **{"Retry-After": str(exc.retry_after_s)})


async def start_session(request: web.Request) -> web.Response:
    node = request.app[NODE]
    owner = request.app[ACCESS].client(request)
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
            owner=owner,
        )
    except ChoreographyError as exc:
        text = str(exc)
        if "belongs to another client" in text:
            return _error(404, f"unknown session {sid!r}")
        return _error(404 if "unknown choreography" in text else 400, text)
    except Overloaded as exc:
        return _busy(exc)
    except NodeStopping as exc:
        return _error(503, f"{exc}; the session resumes after the restart: start it again")
    return web.json_response(status.to_json(), status=200 if status.finished else 202)


async def session_status(request: web.Request) -> web.Response:
    owner = request.app[ACCESS].client(request)
    try:
        status = request.app[NODE].status(request.match_info["session_id"], owner=owner)
    except KeyError:
        return _error(404, f"unknown session {request.match_info['session_id']!r}")
    return web.json_response(status.to_json())


async def session_events(request: web.Request) -> web.Response:
    """The session's events at every role hosted here (`accompanist_py.events`)."""
    owner = request.app[ACCESS].client(request)
    node, sid = request.app[NODE], request.match_info["session_id"]
    try:
        found = await node.session_events(sid, owner=owner)
    except KeyError:
        return _error(404, f"unknown session {sid!r}")
    roles = {role: [e.to_json() for e in events] for role, events in found.items()}
    return web.json_response({"session": sid, "node": node.name, "roles": roles})


MAX_LISTED = 1000  # sessions in one GET /sessions answer


async def list_sessions(request: web.Request) -> web.Response:
    """The newest sessions the caller may see: ?state= filters, ?limit= (1..MAX_LISTED)."""
    owner = request.app[ACCESS].client(request)
    state = request.query.get("state") or None
    text = request.query.get("limit", "50")
    if not text.isdigit() or not 1 <= int(text) <= MAX_LISTED:
        return _error(400, f"'limit' must be an integer from 1 to {MAX_LISTED}")
    node = request.app[NODE]
    listed = node.recent_sessions(owner=owner, state=state, limit=int(text))
    return web.json_response({"node": node.name, "sessions": listed})


async def messages(request: web.Request) -> web.Response:
    peer = request.app[ACCESS].peer(request)
    try:
        batch = decode_batch(await request.read())
        refused = await request.app[NODE].deliver(batch, peer)
    except ValueError as exc:
        return _error(400, str(exc))
    except Overloaded as exc:
        return _busy(exc)
    return web.Response(body=msgpack.packb(refused), content_type="application/msgpack")


async def stream(request: web.Request) -> web.StreamResponse:
    peer = request.app[ACCESS].peer(request)
    node, limits = request.app[NODE], request.app[LIMITS]
    streams = request.app[STREAMS]
    task = asyncio.current_task()
    assert task is not None
    streams.add(task)
    try:
        return await serve_stream(
            request,
            lambda batch: node.deliver(batch, peer),
            max_frame_bytes=limits.max_frame_bytes,
            max_frames_in_flight=limits.max_frames_in_flight,
        )
    finally:
        streams.discard(task)


async def ready(request: web.Request) -> web.Response:
    peer = request.app[ACCESS].peer(request)
    try:
        body = await request.json()
        roles = body["roles"]
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return _error(400, "expected {'sidecar': name, 'roles': [...]}")
    if peer is not None and not set(roles) <= peer:
        return _error(403, f"the certificate names role(s) {sorted(peer)}, not all of {roles}")
    request.app[NODE].on_peer_ready(roles)
    return web.Response(status=200)


async def health(request: web.Request) -> web.Response:
    """Liveness for anyone (a load balancer, a container's health check); the node's details
    (its roles, its sessions, the ids of quarantined ones) only for `Access.observer`s."""
    node = request.app[NODE]
    if not request.app[ACCESS].observer(request):
        return web.json_response({"status": "ok"})
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
    if not request.app[ACCESS].observer(request):
        return _error(401, "metrics need a client certificate, a bearer token or a peer's")
    return web.Response(
        body=request.app[NODE].metrics.render(), headers={"Content-Type": CONTENT_TYPE}
    )


def make_app(
    node: Node, access: Access | None = None, limits: Limits | None = None
) -> web.Application:
    """The aiohttp application serving `node` (started and closed with the app).

    Without `access`, nobody is authenticated: for tests and development on loopback only
    (the sidecar's entry point always passes its config's).
    """
    limits = limits or Limits()
    app = web.Application(client_max_size=limits.max_body_bytes)
    app[NODE] = node
    app[ACCESS] = access or Access()
    app[LIMITS] = limits
    app[STREAMS] = set()

    async def stop(app: web.Application) -> None:
        # Before aiohttp waits for open requests: long-lived streams, and clients waiting for
        # a session's end, would otherwise hold the shutdown for its full timeout.
        for task in list(app[STREAMS]):
            task.cancel()
        await node.close()

    app.on_shutdown.append(stop)
    app.router.add_post("/sessions/{choreography}", start_session)
    app.router.add_get("/sessions", list_sessions)
    app.router.add_get("/sessions/{session_id}", session_status)
    app.router.add_get("/sessions/{session_id}/events", session_events)
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
