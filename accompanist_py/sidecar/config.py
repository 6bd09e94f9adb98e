"""The sidecar's configuration: one TOML file, read once, validated with one-line errors."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accompanist_py import failpoints
from accompanist_py.backoff import Backoff
from accompanist_py.errors import ConfigError
from accompanist_py.node import NodeConfig
from accompanist_py.tls import DEFAULT_TRUST_DOMAIN, TLSFiles

MODES = ("fault-tolerant", "default")
TRANSPORTS = ("stream", "http")
LOOPBACK = ("127.0.0.1", "::1", "localhost")

# Every key a config may hold, by table: anything else is a typo, refused with its name.
TOP_KEYS = {
    "name",
    "roles",
    "listen",
    "choreographies",
    "peers",
    "service_url",
    "mode",
    "transport",
    "retention_s",
    "record_retention_s",
    "insecure",
    "store",
    "timeouts",
    "limits",
    "tls",
    "auth",
    "service",
    "failpoints",
    "events",
}
TABLE_KEYS = {
    "store": {"path", "synchronous"},
    "timeouts": {
        "receive_s",
        "decision_s",
        "query_s",
        "client_wait_s",
        "service_call_s",
        "service_deadline_s",
        "retry_initial_s",
        "retry_max_s",
        "header_s",
        "idle_s",
    },
    "limits": {
        "max_payload_bytes",
        "max_body_bytes",
        "max_batch",
        "max_frame_bytes",
        "max_frames_in_flight",
        "max_sessions",
        "max_connections",
        "max_connections_per_peer",
        "max_store_backlog",
        "max_outbox_per_peer",
    },
    "tls": {"ca", "cert", "key", "trust_domain"},
    "auth": {"tokens"},
    "service": {"ca", "cert", "key", "token"},
    "events": {"enabled", "max_per_session"},
}


@dataclass(frozen=True)
class Limits:
    """What the sidecar's listener takes from anyone before the node sees a byte."""

    max_body_bytes: int = 8 * 1024 * 1024  # one HTTP request body (413 beyond)
    max_frame_bytes: int = 8 * 1024 * 1024  # one WebSocket frame (the stream closes beyond)
    max_frames_in_flight: int = 64  # per stream: reading pauses until acknowledgements leave
    max_connections: int = 1024  # open at once, all callers
    max_connections_per_peer: int = 64  # by certified identity, else by remote address
    header_s: float = 10.0  # TLS handshake and a request's headers must arrive within this
    idle_s: float = 60.0  # a keep-alive connection with no request is closed after this


@dataclass(frozen=True)
class ServiceCredentials:
    """How the sidecar calls its service over HTTPS: the CA that signed the service's
    certificate, our client certificate, and/or a bearer token."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token: str | None = None


@dataclass(frozen=True)
class SidecarConfig:
    """Everything one sidecar process needs (see docs/contracts.md for the file format)."""

    name: str
    roles: list[str]
    host: str
    port: int
    choreographies: list[str]
    peers: dict[str, str] = field(default_factory=dict)
    service_url: str | None = None
    mode: str = "fault-tolerant"
    transport: str = "stream"
    store_path: Path | None = None
    synchronous: str = "NORMAL"
    service_call_s: float = 5.0
    service_deadline_s: float = 300.0
    node: NodeConfig = field(default_factory=NodeConfig)
    limits: Limits = field(default_factory=Limits)
    tls: TLSFiles | None = None
    tokens: dict[str, str] = field(default_factory=dict)  # client name -> bearer token
    service: ServiceCredentials = field(default_factory=ServiceCredentials)
    insecure: bool = False  # plaintext on a non-loopback address, explicitly
    failpoints: dict[str, int] = field(default_factory=dict)

    @property
    def authenticates_clients(self) -> bool:
        """Whether starting and reading sessions needs a client certificate or a token."""
        return self.tls is not None or bool(self.tokens)


def load(path: str | Path) -> SidecarConfig:
    """Read and validate a sidecar TOML file; raises `ConfigError` with one clear line."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse(raw, str(p), base=p.parent)


def parse(raw: dict[str, Any], where: str = "config", base: Path | None = None) -> SidecarConfig:
    """Validate a config already read into a dict."""

    def need(key: str, kind: type) -> Any:
        if key not in raw:
            raise ConfigError(f"{where}: missing required key {key!r}")
        value = raw[key]
        if not isinstance(value, kind):
            raise ConfigError(f"{where}: {key!r} must be a {kind.__name__}")
        return value

    def path_of(table: str, key: str, value: Any) -> Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: [{table}] {key} must be a file path")
        p = Path(value)
        return base / p if not p.is_absolute() and base is not None else p

    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
    for table, known in TABLE_KEYS.items():
        if not isinstance(raw.get(table, {}), dict):
            raise ConfigError(f"{where}: [{table}] must be a table")
        extra = sorted(set(raw.get(table, {})) - known)
        if extra:
            raise ConfigError(f"{where}: unknown [{table}] key(s) {', '.join(map(repr, extra))}")
    for table in ("peers", "failpoints"):
        if not isinstance(raw.get(table, {}), dict):
            raise ConfigError(f"{where}: [{table}] must be a table")

    name = need("name", str)
    roles = need("roles", list)
    if not roles or not all(isinstance(r, str) and r for r in roles):
        raise ConfigError(f"{where}: 'roles' must be a non-empty list of role names")
    listen = need("listen", str)
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"{where}: 'listen' must be host:port, not {listen!r}")
    chors = need("choreographies", list)
    if not chors or not all(isinstance(c, str) for c in chors):
        raise ConfigError(f"{where}: 'choreographies' must list module names")
    mode = raw.get("mode", "fault-tolerant")
    if mode not in MODES:
        raise ConfigError(f"{where}: 'mode' must be one of {', '.join(MODES)}, not {mode!r}")
    transport = raw.get("transport", "stream")
    if transport not in TRANSPORTS:
        raise ConfigError(f"{where}: 'transport' must be one of {', '.join(TRANSPORTS)}")
    insecure = raw.get("insecure", False)
    if not isinstance(insecure, bool):
        raise ConfigError(f"{where}: 'insecure' must be true or false")

    tls_table = raw.get("tls", {})
    tls = None
    if tls_table:
        missing = sorted({"ca", "cert", "key"} - set(tls_table))
        if missing:
            raise ConfigError(f"{where}: [tls] needs {', '.join(missing)}")
        domain = tls_table.get("trust_domain", DEFAULT_TRUST_DOMAIN)
        if not isinstance(domain, str) or not domain or "/" in domain:
            raise ConfigError(f"{where}: [tls] trust_domain must be a name without '/'")
        tls = TLSFiles(
            *(path_of("tls", k, tls_table[k]) for k in ("ca", "cert", "key")), trust_domain=domain
        )
    scheme = "https://" if tls is not None else "http://"
    peers = raw.get("peers", {})
    if not all(
        isinstance(k, str) and isinstance(v, str) and v.startswith(scheme) for k, v in peers.items()
    ):
        raise ConfigError(
            f"{where}: [peers] must map role names to {scheme} URLs"
            + (" (TLS is on)" if tls is not None else " (or set [tls] for https://)")
        )
    if host not in LOOPBACK and tls is None and not insecure:
        raise ConfigError(
            f"{where}: listening on {host!r}, not loopback, needs [tls] (or insecure = true "
            "to accept plaintext and unauthenticated callers on purpose)"
        )
    tokens = raw.get("auth", {}).get("tokens", {})
    if not isinstance(tokens, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and len(v) >= 16 for k, v in tokens.items()
    ):
        raise ConfigError(
            f"{where}: [auth] tokens must map client names to tokens of 16 characters or more"
        )
    svc = raw.get("service", {})
    token = svc.get("token")
    if token is not None and not (isinstance(token, str) and len(token) >= 16):
        raise ConfigError(f"{where}: [service] token must be a string of 16 characters or more")
    if ("cert" in svc) != ("key" in svc):
        raise ConfigError(f"{where}: [service] needs both cert and key, or neither")
    service = ServiceCredentials(
        *(path_of("service", k, svc[k]) if k in svc else None for k in ("ca", "cert", "key")),
        token=token,
    )

    store = raw.get("store", {})
    store_path = store.get("path")
    if mode == "fault-tolerant" and not store_path:
        raise ConfigError(f"{where}: fault-tolerant mode needs [store] path")
    path = path_of("store", "path", store_path) if store_path else None
    sync = str(store.get("synchronous", "NORMAL")).upper()
    if sync not in ("NORMAL", "FULL", "EXTRA"):
        raise ConfigError(f"{where}: [store] synchronous must be NORMAL or FULL, not {sync!r}")
    t = raw.get("timeouts", {})
    lim = raw.get("limits", {})
    ev = raw.get("events", {})
    events_enabled = ev.get("enabled", True)
    if not isinstance(events_enabled, bool):
        raise ConfigError(f"{where}: [events] enabled must be true or false")
    try:
        backoff = Backoff(
            initial_s=_number(t, "retry_initial_s", Backoff.initial_s),
            max_s=_number(t, "retry_max_s", Backoff.max_s),
        )
        node_defaults = NodeConfig()
        node = NodeConfig(
            receive_timeout_s=_number(t, "receive_s", 60.0),
            decision_timeout_s=_number(t, "decision_s", 300.0),
            query_interval_s=_number(t, "query_s", 2.0),
            client_wait_s=_number(t, "client_wait_s", 330.0),
            max_payload_bytes=_count(lim, "max_payload_bytes", node_defaults.max_payload_bytes),
            max_batch_received=_count(lim, "max_batch", node_defaults.max_batch_received),
            max_sessions=_count(lim, "max_sessions", node_defaults.max_sessions),
            max_store_backlog=_count(lim, "max_store_backlog", node_defaults.max_store_backlog),
            max_outbox_per_peer=_count(
                lim, "max_outbox_per_peer", node_defaults.max_outbox_per_peer
            ),
            backoff=backoff,
            retention_s=_number(raw, "retention_s", 600.0),
            record_retention_s=_number(raw, "record_retention_s", 3600.0),
            events_enabled=events_enabled,
            max_events_per_session=_count(
                ev, "max_per_session", node_defaults.max_events_per_session, "events"
            ),
        )
        d = Limits()
        limits = Limits(
            max_body_bytes=_count(lim, "max_body_bytes", d.max_body_bytes),
            max_frame_bytes=_count(lim, "max_frame_bytes", d.max_frame_bytes),
            max_frames_in_flight=_count(lim, "max_frames_in_flight", d.max_frames_in_flight),
            max_connections=_count(lim, "max_connections", d.max_connections),
            max_connections_per_peer=_count(
                lim, "max_connections_per_peer", d.max_connections_per_peer
            ),
            header_s=_number(t, "header_s", d.header_s),
            idle_s=_number(t, "idle_s", d.idle_s),
        )
        call_s = _number(t, "service_call_s", SidecarConfig.service_call_s)
        deadline_s = _number(t, "service_deadline_s", SidecarConfig.service_deadline_s)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if node.max_batch_received < node.max_batch:
        raise ConfigError(
            f"{where}: [limits] max_batch must be at least {node.max_batch}, the batch a "
            "sidecar sends: a peer's full batch would be refused for good"
        )
    if limits.max_body_bytes < node.max_payload_bytes or (
        limits.max_frame_bytes < node.max_payload_bytes
    ):
        raise ConfigError(
            f"{where}: [limits] max_body_bytes and max_frame_bytes must be at least "
            "max_payload_bytes, or no message of the allowed size could arrive"
        )
    fail = raw.get("failpoints", {})
    if not all(isinstance(k, str) and isinstance(v, int) and v > 0 for k, v in fail.items()):
        raise ConfigError(f"{where}: [failpoints] must map point names to positive integers")
    unknown = sorted(set(fail) - set(failpoints.POINTS))
    if unknown:
        raise ConfigError(f"{where}: unknown failpoints {unknown}")
    service_url = raw.get("service_url")
    if service_url is not None and not (
        isinstance(service_url, str) and service_url.startswith(("http://", "https://"))
    ):
        raise ConfigError(f"{where}: 'service_url' must be an http:// or https:// URL")
    if (service.ca or service.cert) and not (service_url or "").startswith("https://"):
        raise ConfigError(f"{where}: [service] certificates need an https:// service_url")
    return SidecarConfig(
        name=name,
        roles=list(roles),
        host=host,
        port=int(port_text),
        choreographies=list(chors),
        peers=dict(peers),
        service_url=service_url,
        mode=mode,
        transport=transport,
        store_path=path,
        synchronous=sync,
        service_call_s=call_s,
        service_deadline_s=deadline_s,
        node=node,
        limits=limits,
        tls=tls,
        tokens=dict(tokens),
        service=service,
        insecure=insecure,
        failpoints=dict(fail),
    )


def _number(table: dict[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{key} must be a positive number, not {value!r}")
    return float(value)


def _count(table: dict[str, Any], key: str, default: int, name: str = "limits") -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"[{name}] {key} must be a positive integer, not {value!r}")
    return value
