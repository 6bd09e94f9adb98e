"""The certificates of a cell that runs with TLS on every link, and what each link is protected by.

`CellCredentials` makes a fresh CA in the cell's `tls/` folder (with `accompanist_py.certs`) and
one identity per process that listens or calls, issued on first use and reused on restarts:

- `sidecar-<role>`: the sidecar of a role (`spiffe://accompanist/sidecar/<role>` and
  `.../role/<role>`); it listens to its peers and calls them, and calls its service with it;
- `service-<name>`: a workload service's server certificate;
- `client-gateway`: the gateway, calling the initiator sidecar or (temporal-tuned, whose worker
  it hosts, and DBOS, which runs in it) the services;
- `client-restate-handler`: the process serving the Restate handlers, calling the services;
- `client-temporal-worker-<service>`: a temporal-distributed worker calling its service;
- `client-harness`: the harness's own health checks and `GET /state` reads.

A service admits only callers whose certificate names the runtime next to it
(`service_callers`), and the harness. `link_security` lists every link of a system's
deployment and what protects it, for cell.json and the report: the Temporal dev server's
frontend cannot serve TLS (see baselines/temporal/README.md), so those links stay plaintext
and the report says so.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path

from accompanist_py.certs import (
    client_certificate,
    make_ca,
    service_certificate,
    sidecar_certificate,
)
from accompanist_py.tls import TLSFiles, client_uri, sidecar_uri
from workloads.service_kit import ServiceTLS

GATEWAY = "gateway"
HARNESS = "harness"
LOADGEN_LINK = "plaintext: the harness's measuring boundary, the same for every system"
RESTATE_HANDLER = "restate-handler"
RESTATE_PLAINTEXT = (
    "plaintext: restate-server has no TLS setting for its ingress or for its calls to a "
    "deployment (evidence in baselines/restate/README.md); the shipped topologies put both ends "
    "in the gateway's zone"
)
FRONTEND_PLAINTEXT = (
    "plaintext: the Temporal dev server cannot serve TLS (no TLS flag or config file; "
    "evidence in baselines/temporal/README.md)"
)


def temporal_worker(service: str) -> str:
    """The client name of the temporal-distributed worker next to `service`."""
    return f"temporal-worker-{service}"


class CellCredentials:
    """A CA and the certificates of one cell, in `directory` (made fresh: one CA per cell)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.ca, self._ca_key = make_ca(self.dir, days=7)
        self._issued: dict[str, TLSFiles] = {}

    def _files(self, name: str, issue: Callable[[], tuple[Path, Path]]) -> TLSFiles:
        if name not in self._issued:
            cert, key = issue()
            self._issued[name] = TLSFiles(self.ca, cert, key)
        return self._issued[name]

    def sidecar(self, role: str) -> TLSFiles:
        """The certificate of the sidecar hosting `role` (named after it)."""
        return self._files(
            f"sidecar-{role}",
            lambda: sidecar_certificate(self.ca, self._ca_key, self.dir, role, [role]),
        )

    def service(self, name: str) -> TLSFiles:
        """The server certificate of workload service `name`."""
        return self._files(
            f"service-{name}",
            lambda: service_certificate(self.ca, self._ca_key, self.dir, name),
        )

    def client(self, name: str) -> TLSFiles:
        """The certificate of client `name` (`spiffe://<trust domain>/client/<name>`)."""
        return self._files(
            f"client-{name}",
            lambda: client_certificate(self.ca, self._ca_key, self.dir, name),
        )

    def harness_context(self) -> ssl.SSLContext:
        """What the harness's own health checks and state reads connect with."""
        return self.client(HARNESS).client_context()

    def service_tls(self, name: str, callers: Sequence[str]) -> ServiceTLS:
        """How service `name` serves HTTPS to `callers` (certificate URIs) and the harness."""
        files = self.service(name)
        allowed = tuple(dict.fromkeys([*callers, client_uri(HARNESS)]))
        return ServiceTLS(files.cert, files.key, files.ca, allowed)

    def token_file(self, client: str) -> tuple[str, Path]:
        """A fresh bearer token for `client`, and the file (mode 0600) that holds it."""
        token = secrets.token_urlsafe(32)
        path = self.dir / f"token-{client}"
        path.touch(mode=0o600, exist_ok=False)
        path.write_text(token)
        return token, path


def files_args(files: TLSFiles) -> list[str]:
    """`--tls-ca CA --tls-cert CERT --tls-key KEY`: how a gateway or worker is told its files."""
    return ["--tls-ca", str(files.ca), "--tls-cert", str(files.cert), "--tls-key", str(files.key)]


def service_callers(system: str, service: str) -> list[str]:
    """Who calls `service` in a deployment of `system`: the URIs its certificate check admits."""
    if system == "accompanist":
        return [sidecar_uri(service)]
    if system in ("temporal-tuned", "dbos"):
        return [client_uri(GATEWAY)]
    if system == "restate":
        return [client_uri(RESTATE_HANDLER)]
    return [client_uri(temporal_worker(service))]


def link_security(system: str, tls: bool) -> dict[str, str]:
    """Every link of a deployment of `system` and what protects it, with or without TLS."""
    if not tls:
        return {"every link": "plaintext (this scenario runs without TLS)"}
    links = {"loadgen -> gateway": LOADGEN_LINK}
    if system == "accompanist":
        return links | {
            "gateway -> initiator sidecar": "mutual TLS (client certificate client/gateway)",
            "sidecar -> sidecar": "mutual TLS (each certificate names the roles its holder "
            "sends as)",
            "sidecar -> its service": "mutual TLS (the service admits only its own sidecar)",
        }
    if system == "dbos":
        return links | {
            "gateway (hosting DBOS) -> services": "mutual TLS (client certificate "
            "client/gateway; each service admits only it)",
            "DBOS -> its system database": "a local SQLite file (no network link)",
        }
    if system == "restate":
        return links | {
            "gateway -> Restate ingress": RESTATE_PLAINTEXT,
            "Restate server -> handler process": RESTATE_PLAINTEXT,
            "handler process -> services": "mutual TLS (client certificate "
            "client/restate-handler; each service admits only it)",
        }
    if system == "temporal-tuned":
        links |= {
            "gateway (hosting the worker) -> Temporal frontend": FRONTEND_PLAINTEXT,
            "gateway (hosting the worker) -> services": "mutual TLS (client certificate "
            "client/gateway; each service admits only it)",
        }
    else:
        links |= {
            "gateway -> Temporal frontend": FRONTEND_PLAINTEXT,
            "workers -> Temporal frontend": FRONTEND_PLAINTEXT,
            "worker -> its service": "mutual TLS (client certificate "
            "client/temporal-worker-<service>; the service admits only its own worker)",
        }
    links["inside the dev server"] = (
        "plaintext gRPC on loopback between its frontend, history and matching services, in "
        "one process and one zone (no network link)"
    )
    return links
