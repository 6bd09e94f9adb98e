"""Asking a deployment's sidecars, all at once, as an authenticated client.

`Sidecars` holds the URLs and one aiohttp client session (TLS with the deployment CA, a
client certificate and/or a bearer token, as docs/security.md describes for client routes).
Each question goes to every sidecar concurrently; a sidecar that is down, slow or refuses is
reported by URL with the reason and the others still answer. `urls_of_config` reads the
URLs a sidecar's TOML names: its own listen address and its peers'.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from accompanist_py.inspect.timeline import NodeEvents, Timeline, merge
from accompanist_py.sidecar.config import load
from accompanist_py.tls import client_context

TIMEOUT_S = 10.0
MAX_LISTED = 1000  # the most sessions a sidecar lists in one answer
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


@dataclass(frozen=True)
class Credentials:
    """How the inspector proves it is a client: CA to verify sidecars, certificate, token."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token: str | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.ca is None and self.cert is None:
            return None
        return client_context(self.ca, self.cert, self.key)


def urls_of_config(path: str | Path) -> tuple[list[str], Path | None]:
    """The sidecar URLs a config names (its own first, then its peers', once each), and its
    [tls] CA (to verify them with), if any."""
    config = load(path)
    scheme = "https" if config.tls is not None else "http"
    host = WILDCARDS.get(config.host, config.host)
    own = (
        f"{scheme}://[{host}]:{config.port}" if ":" in host else f"{scheme}://{host}:{config.port}"
    )
    urls = [own]
    for url in config.peers.values():
        if url.rstrip("/") not in urls:
            urls.append(url.rstrip("/"))
    return urls, config.tls.ca if config.tls is not None else None


class SidecarError(Exception):
    """A sidecar did not answer as asked: down, refused (its status) or not understood."""


class Sidecars:
    """The sidecars of one deployment, asked concurrently. Use as an async context manager."""

    def __init__(
        self, urls: list[str], credentials: Credentials | None = None, timeout_s: float = TIMEOUT_S
    ) -> None:
        if not urls:
            raise ValueError("no sidecar URL given")
        self.urls = [u.rstrip("/") for u in urls]
        self.credentials = credentials or Credentials()
        self.timeout_s = timeout_s
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Sidecars:
        ctx = self.credentials.ssl_context()
        headers = (
            {"Authorization": f"Bearer {self.credentials.token}"} if self.credentials.token else {}
        )
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx if ctx is not None else True),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers=headers,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()

    async def ask(
        self, path: str, *, json: bool = True, missing_ok: bool = False
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """GET `path` from every sidecar: ({url: answer}, {url: why it has none}).

        With `missing_ok`, a 404 is neither an answer nor a failure (the sidecar does not
        know the thing asked about).
        """
        results = await asyncio.gather(
            *(self._get(url, path, json) for url in self.urls), return_exceptions=True
        )
        answers: dict[str, Any] = {}
        failures: dict[str, str] = {}
        for url, result in zip(self.urls, results, strict=True):
            if isinstance(result, _NotFound) and missing_ok:
                continue
            if isinstance(result, BaseException):
                failures[url] = str(result) or type(result).__name__
            else:
                answers[url] = result
        return answers, failures

    async def _get(self, url: str, path: str, as_json: bool) -> Any:
        assert self._http is not None, "use Sidecars as an async context manager"
        try:
            async with self._http.get(url + path) as resp:
                if resp.status == 404:
                    raise _NotFound(f"404 {await resp.text()}")
                if resp.status != 200:
                    raise SidecarError(f"refused: {resp.status} {(await resp.text())[:200]}")
                return await resp.json() if as_json else await resp.text()
        except aiohttp.ClientError as exc:
            raise SidecarError(f"unreachable: {exc}") from None
        except TimeoutError:
            raise SidecarError(f"no answer in {self.timeout_s:g}s") from None

    async def timeline(self, session_id: str) -> Timeline:
        """The session's events from every sidecar, merged (see `timeline.merge`)."""
        answers, failures = await self.ask(f"/sessions/{session_id}/events", missing_ok=True)
        found = [
            NodeEvents(a.get("node", url), url, a.get("roles", {})) for url, a in answers.items()
        ]
        return merge(session_id, found, failures)

    async def sessions(self, state: str | None = None, limit: int = 50) -> dict[str, Any]:
        """Recent sessions across the sidecars: {"sessions": [...], "unreachable": {...}}.

        Each session: {"session_id", "choreography", "created", "updated", "roles": {role:
        state}} with the roles of every sidecar that knows it; `state` keeps the sessions in
        that state at some role.
        """
        # A sidecar filters by the states of its own roles: ask it for candidates, and every
        # sidecar for all it holds, so that each candidate shows its state at every role.
        asks = [self.ask(f"/sessions?limit={MAX_LISTED}")]
        if state:
            asks.append(self.ask(f"/sessions?limit={limit}&state={state}"))
        (everything, failures), *filtered = await asyncio.gather(*asks)
        merged: dict[str, dict[str, Any]] = {}
        for answer in everything.values():
            for s in answer.get("sessions", []):
                entry = merged.setdefault(s["session_id"], {**s, "roles": {}})
                entry["created"] = min(entry["created"], s["created"])
                entry["updated"] = max(entry["updated"], s["updated"])
                entry["roles"].update(s.get("roles", {}))
        chosen = list(merged.values())
        if filtered:
            answers, more = filtered[0]
            failures.update(more)
            for answer in answers.values():
                for s in answer.get("sessions", []):
                    merged.setdefault(s["session_id"], s)
            chosen = [s for s in merged.values() if state in s["roles"].values()]
        newest = sorted(chosen, key=lambda s: (-s["created"], s["session_id"]))[:limit]
        return {"sessions": newest, "unreachable": failures}

    async def metrics(self) -> dict[str, Any]:
        """Each sidecar's key metrics: {"sidecars": {url: {name: value}}, "unreachable"}."""
        answers, failures = await self.ask("/metrics", json=False)
        return {
            "sidecars": {url: key_metrics(parse_prometheus(text)) for url, text in answers.items()},
            "unreachable": failures,
        }


class _NotFound(SidecarError):
    pass


KEY_METRICS = (
    "sessions_started_total",
    "sessions_completed_total",
    "sessions_compensated_total",
    "sessions_failed_total",
    "sessions_recovered_total",
    "sessions_active",
    "messages_sent_total",
    "messages_received_total",
    "messages_duplicate_total",
    "service_calls_total",
    "compensation_retries_total",
    "outbox_pending",
    "outbox_waiting",
)


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text exposition: {sample name with its labels: value}."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            samples[name] = float(value)
        except ValueError:
            continue
    return samples


def key_metrics(samples: dict[str, float]) -> dict[str, float]:
    """The samples an operator looks at first (`KEY_METRICS`, labels summed), by short name."""
    out: dict[str, float] = {}
    for name, value in samples.items():
        base = name.partition("{")[0].removeprefix("accompanist_")
        if base in KEY_METRICS:
            out[base] = out.get(base, 0.0) + value
    return {k: out[k] for k in KEY_METRICS if k in out}


__all__ = [
    "KEY_METRICS",
    "Credentials",
    "SidecarError",
    "Sidecars",
    "key_metrics",
    "parse_prometheus",
    "urls_of_config",
]
