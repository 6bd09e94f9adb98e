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

MODES = ("fault-tolerant", "default")
TRANSPORTS = ("stream", "http")


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
    failpoints: dict[str, int] = field(default_factory=dict)


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

    name = need("name", str)
    roles = need("roles", list)
    if not roles or not all(isinstance(r, str) for r in roles):
        raise ConfigError(f"{where}: 'roles' must be a non-empty list of role names")
    listen = need("listen", str)
    host, _, port_text = listen.rpartition(":")
    if not host or not port_text.isdigit():
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
    peers = raw.get("peers", {})
    if not isinstance(peers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.startswith("http") for k, v in peers.items()
    ):
        raise ConfigError(f"{where}: [peers] must map role names to http:// URLs")
    for table in ("peers", "store", "timeouts", "limits", "failpoints"):
        if not isinstance(raw.get(table, {}), dict):
            raise ConfigError(f"{where}: [{table}] must be a table")
    store = raw.get("store", {})
    store_path = store.get("path")
    if mode == "fault-tolerant" and not store_path:
        raise ConfigError(f"{where}: fault-tolerant mode needs [store] path")
    path = Path(store_path) if store_path else None
    if path is not None and not path.is_absolute() and base is not None:
        path = base / path
    sync = str(store.get("synchronous", "NORMAL")).upper()
    if sync not in ("NORMAL", "FULL", "EXTRA"):
        raise ConfigError(f"{where}: [store] synchronous must be NORMAL or FULL, not {sync!r}")
    t = raw.get("timeouts", {})
    limits = raw.get("limits", {})
    known = {
        "receive_s",
        "decision_s",
        "query_s",
        "client_wait_s",
        "service_call_s",
        "service_deadline_s",
        "retry_initial_s",
        "retry_max_s",
    }
    if set(t) - known:
        raise ConfigError(f"{where}: unknown [timeouts] keys {sorted(set(t) - known)}")
    if set(limits) - {"max_payload_bytes"}:
        raise ConfigError(f"{where}: unknown [limits] keys {sorted(set(limits))}")
    try:
        backoff = Backoff(
            initial_s=float(t.get("retry_initial_s", 0.05)), max_s=float(t.get("retry_max_s", 1.0))
        )
        node = NodeConfig(
            receive_timeout_s=float(t.get("receive_s", 60.0)),
            decision_timeout_s=float(t.get("decision_s", 300.0)),
            query_interval_s=float(t.get("query_s", 2.0)),
            client_wait_s=float(t.get("client_wait_s", 330.0)),
            max_payload_bytes=int(limits.get("max_payload_bytes", 1024 * 1024)),
            backoff=backoff,
            retention_s=float(raw.get("retention_s", 600.0)),
            record_retention_s=float(raw.get("record_retention_s", 3600.0)),
        )
        call_s = float(t.get("service_call_s", 5.0))
        deadline_s = float(t.get("service_deadline_s", 300.0))
        numbers = [
            backoff.initial_s,
            backoff.max_s,
            node.receive_timeout_s,
            node.retention_s,
            node.record_retention_s,
            call_s,
            deadline_s,
        ]
        if min(numbers) <= 0:
            raise ValueError("timeouts and retentions must be positive")
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: [timeouts] and retentions: {exc}") from None
    fail = raw.get("failpoints", {})
    if not isinstance(fail, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and v > 0 for k, v in fail.items()
    ):
        raise ConfigError(f"{where}: [failpoints] must map point names to positive integers")
    unknown = sorted(set(fail) - set(failpoints.POINTS))
    if unknown:
        raise ConfigError(f"{where}: unknown failpoints {unknown}")
    service_url = raw.get("service_url")
    if service_url is not None and not (
        isinstance(service_url, str) and service_url.startswith("http")
    ):
        raise ConfigError(f"{where}: 'service_url' must be an http:// URL")
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
        failpoints=dict(fail),
    )
