"""Deploying sidecars: one per role, wired peer to peer, under a `launch.Supervisor`.

`sidecar_config` writes the TOML of one sidecar (docs/contracts.md). `Sidecars` starts, kills
(-9) and restarts sidecar processes by role; `running_sidecars` deploys one per service of a
workload next to already running services and stops them all on exit, even on errors. Peer
addresses can be overridden so that the harness can route cross-zone links through its
latency proxies. With `credentials` (bench.credentials) every sidecar gets its own certificate,
listens and calls its peers over mutual TLS, takes clients with a certificate of the cell's CA
(or one of `tokens`), and calls an `https://` service with its certificate. The
micro-benchmark and the tests use the same code.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from accompanist_py.backoff import Backoff
from accompanist_py.sidecar.config import SidecarConfig
from accompanist_py.tls import TLSFiles
from bench.credentials import CellCredentials
from launch import ProcessSpec, Supervisor, free_port
from workloads import Workload, discover

SIDECAR = [sys.executable, "-m", "accompanist_py.sidecar"]


def sidecar_config(
    role: str,
    port: int,
    service_url: str | None,
    peers: Mapping[str, str],
    modules: str | Sequence[str],
    *,
    mode: str = "fault-tolerant",
    transport: str = "stream",
    store: str | None = None,
    failpoints: Mapping[str, int] | None = None,
    receive_s: float = 60.0,
    tls: TLSFiles | None = None,
    tokens: Mapping[str, str] | None = None,
    service_tls: TLSFiles | None = None,
) -> str:
    """The TOML text of the sidecar hosting `role`.

    `tls`: its certificate (peers then use https:// URLs); `tokens`: client name -> bearer
    token of the clients that may start sessions without a certificate; `service_tls`: the
    certificate it calls an https:// service with.
    """
    modules = [modules] if isinstance(modules, str) else list(modules)
    lines = [
        f'name = "{role}"',
        f'roles = ["{role}"]',
        f'listen = "127.0.0.1:{port}"',
        *([f'service_url = "{service_url}"'] if service_url else []),
        "choreographies = [" + ", ".join(f'"{m}"' for m in modules) + "]",
        f'mode = "{mode}"',
        f'transport = "{transport}"',
        "[store]",
        f'path = "{store or role + ".db"}"',
        'synchronous = "NORMAL"',
        "[timeouts]",
        f"receive_s = {receive_s}",
        # The sidecar's own defaults, which the Temporal baseline's CALL_POLICY also reads.
        f"service_call_s = {SidecarConfig.service_call_s}",
        f"retry_initial_s = {Backoff.initial_s}",
        f"retry_max_s = {Backoff.max_s}",
        "[peers]",
        *(f'{r} = "{url}"' for r, url in sorted(peers.items()) if r != role),
    ]
    if tls is not None:
        lines += ["[tls]", *_files_lines(tls), f"trust_domain = {_toml(tls.trust_domain)}"]
    if tokens:
        pairs = ", ".join(f"{_toml(name)} = {_toml(token)}" for name, token in tokens.items())
        lines += ["[auth]", f"tokens = {{ {pairs} }}"]
    if service_tls is not None:
        lines += ["[service]", *_files_lines(service_tls)]
    if failpoints:
        lines += ["[failpoints]", *(f"{k} = {v}" for k, v in failpoints.items())]
    return "\n".join(lines) + "\n"


def _toml(text: str) -> str:
    # A JSON string is a valid TOML basic string.
    return json.dumps(text)


def _files_lines(files: TLSFiles) -> list[str]:
    return [f"{k} = {_toml(str(getattr(files, k)))}" for k in ("ca", "cert", "key")]


class Sidecars:
    """The sidecar processes of one deployment, by role."""

    def __init__(
        self,
        supervisor: Supervisor,
        roles: Sequence[str],
        modules: str | Sequence[str],
        *,
        service_urls: Mapping[str, str] | None = None,
        mode: str = "fault-tolerant",
        transport: str = "stream",
        ports: Mapping[str, int] | None = None,
        peer_urls: Mapping[str, Mapping[str, str]] | None = None,
        credentials: CellCredentials | None = None,
        tokens: Mapping[str, str] | None = None,
    ) -> None:
        self.sup = supervisor
        self.dir = supervisor.run_dir
        self.roles = list(roles)
        self.modules = modules
        self.service_urls = dict(service_urls or {})
        self.mode, self.transport = mode, transport
        self.ports = {r: (ports or {}).get(r) or free_port() for r in self.roles}
        self.credentials = credentials
        self.tokens = dict(tokens or {})
        scheme = "https" if credentials is not None else "http"
        self.urls = {r: f"{scheme}://127.0.0.1:{p}" for r, p in self.ports.items()}
        # Health checks (and callers that need no identity of their own) use the harness's.
        self.client_tls: ssl.SSLContext | None = (
            credentials.harness_context() if credentials is not None else None
        )
        # peer_urls[role][peer] overrides how `role` reaches `peer` (e.g. through a proxy).
        self.peer_urls = {r: dict((peer_urls or {}).get(r, {})) for r in self.roles}

    def start(self, role: str, failpoints: Mapping[str, int] | None = None) -> None:
        """Start (or restart with new failpoints) the sidecar of `role`; waits for health."""
        peers = {r: self.peer_urls[role].get(r, self.urls[r]) for r in self.roles}
        config = self.dir / f"sidecar-{role}.toml"
        service_url = self.service_urls.get(role)
        tls = self.credentials.sidecar(role) if self.credentials is not None else None
        config.write_text(
            sidecar_config(
                role,
                self.ports[role],
                service_url,
                peers,
                self.modules,
                mode=self.mode,
                transport=self.transport,
                store=str(self.dir / f"sidecar-{role}.db"),
                failpoints=failpoints,
                tls=tls,
                tokens=self.tokens,
                service_tls=tls if (service_url or "").startswith("https://") else None,
            )
        )
        self.sup.start(
            ProcessSpec(
                f"runtime:{role}",
                [*SIDECAR, "--config", str(config)],
                health_url=f"{self.urls[role]}/health",
                health_tls=self.client_tls,
            )
        )

    def kill(self, role: str) -> None:
        """kill -9 the sidecar of `role`."""
        self.sup.kill(f"runtime:{role}")


@contextlib.contextmanager
def running_sidecars(
    workload: Workload | str,
    service_urls: Mapping[str, str],
    dirpath: str | Path,
    **options: object,
) -> Iterator[Sidecars]:
    """Start a sidecar per service of `workload`; stop them all on exit."""
    wl = discover()[workload] if isinstance(workload, str) else workload
    with Supervisor(Path(dirpath)) as sup:
        cars = Sidecars(
            sup,
            wl.services,
            wl.choreography.partition(":")[0],
            service_urls=service_urls,
            **options,
        )  # type: ignore[arg-type]
        cars.choreography = wl.choreography.rpartition(":")[2]  # type: ignore[attr-defined]
        for role in wl.services:
            cars.start(role)
        yield cars
