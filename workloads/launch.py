"""Start and stop a workload's service processes, for the tests and the harness.

`running_services` (async) and `running_services_sync` start one process per service on a free
loopback port, each with its own SQLite file in `dirpath` and its output in
`dirpath/logs/<service>.log`, under a `launch.Supervisor`: they wait until every `GET /health`
answers, yield {service: base URL}, and on exit, exception or not, stop every child (SIGTERM,
then SIGKILL after a grace period). A service that dies or stays unhealthy while starting is a
`launch.DeployError` (a RuntimeError) carrying its log tail.

Given `tls` (a `ServiceTLS` per service) the services serve HTTPS to callers with a
certificate from the CA, the URLs are https://, and the health probe presents the service's
own certificate (which the CA signed, and which `GET /health` accepts whatever URIs it
carries); given `tokens`, each service demands its bearer token on every other route.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

from accompanist_py.tls import client_context
from launch import ProcessSpec, Supervisor, free_port
from workloads import Workload, discover
from workloads.service_kit import ServiceTLS


def write_token(path: Path, token: str) -> Path:
    """Write `token` to `path`, readable by its owner only, for a service's `--token-file`."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(token)
    return path


def service_command(
    workload: Workload,
    service: str,
    port: int,
    db: str | Path,
    seed: int,
    size: int,
    abort_rate: float,
    host: str = "127.0.0.1",
    *,
    tls: ServiceTLS | None = None,
    token_file: Path | None = None,
) -> list[str]:
    """The argv that runs one service of `workload` (over HTTPS with `tls`, and demanding the
    bearer token in `token_file` if given: a file, so that the process list does not show it;
    :func:`write_token` makes one)."""
    guard: list[str] = []
    if tls is not None:
        guard += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--tls-ca", str(tls.ca)]
        for uri in tls.allow_uris:
            guard += ["--allow-uri", uri]
    if token_file is not None:
        guard += ["--token-file", str(token_file)]
    return [
        sys.executable,
        "-m",
        workload.services_module,
        "--service",
        service,
        "--host",
        host,
        "--port",
        str(port),
        "--db",
        str(db),
        "--seed",
        str(seed),
        "--size",
        str(size),
        "--abort-rate",
        str(abort_rate),
        *guard,
    ]


def _covering(workload: Workload, what: str, given: Mapping[str, object] | None) -> None:
    """Refuse a `tls` or `tokens` map that leaves a service unguarded or names a stranger."""
    if given is None:
        return
    missing = sorted(set(workload.services) - set(given))
    unknown = sorted(set(given) - set(workload.services))
    if missing or unknown:
        raise ValueError(
            f"{what} must name every service of {workload.name} and no other: "
            f"missing {missing}, unknown {unknown}"
        )


class _Services:
    """What one launch runs: a spec per service (port, database, log, health probe) and URL."""

    def __init__(
        self,
        workload: Workload | str,
        dirpath: str | Path,
        seed: int,
        size: int,
        abort_rate: float,
        host: str,
        ports: Mapping[str, int] | None,
        startup_s: float,
        tls: Mapping[str, ServiceTLS] | None = None,
        tokens: Mapping[str, str] | None = None,
    ) -> None:
        self.workload = discover()[workload] if isinstance(workload, str) else workload
        _covering(self.workload, "tls", tls)
        _covering(self.workload, "tokens", tokens)
        tls, tokens, ports = dict(tls or {}), dict(tokens or {}), dict(ports or {})
        self.dirpath = Path(dirpath)
        self.specs: list[ProcessSpec] = []
        self.urls: dict[str, str] = {}
        for service in self.workload.services:
            port = ports.get(service) or free_port(host)
            guard = tls.get(service)
            command = service_command(
                self.workload,
                service,
                port,
                self.dirpath / f"{service}.db",
                seed,
                size,
                abort_rate,
                host,
                tls=guard,
                token_file=self.dirpath / f"{service}.token" if service in tokens else None,
            )
            self.urls[service] = f"{'https' if guard else 'http'}://{host}:{port}"
            self.specs.append(
                ProcessSpec(
                    service,
                    command,
                    health_url=f"{self.urls[service]}/health",
                    health_tls=client_context(guard.ca, guard.cert, guard.key) if guard else None,
                    ports=[port],
                    startup_timeout_s=startup_s,
                )
            )
        self.tokens = tokens

    def start(self, supervisor: Supervisor) -> None:
        """Start every service and wait until each `GET /health` answers 200 (DeployError,
        with the service's log tail, if one dies or time runs out)."""
        self.dirpath.mkdir(parents=True, exist_ok=True)
        for service, token in self.tokens.items():
            write_token(self.dirpath / f"{service}.token", token)
        supervisor.start_all(self.specs)


@contextlib.asynccontextmanager
async def running_services(
    workload: Workload | str,
    dirpath: str | Path,
    seed: int = 1,
    size: int = 10_000,
    abort_rate: float = 0.1,
    *,
    host: str = "127.0.0.1",
    ports: Mapping[str, int] | None = None,
    startup_s: float = 30.0,
    tls: Mapping[str, ServiceTLS] | None = None,
    tokens: Mapping[str, str] | None = None,
) -> AsyncIterator[dict[str, str]]:
    """Run every service of `workload`; yield {service: base URL} once all are healthy.

    `ports` pins some services' ports (the others get free ones). `tls` and `tokens`, if
    given, must name every service: a half-guarded workload is refused (ValueError).
    """
    services = _Services(
        workload, dirpath, seed, size, abort_rate, host, ports, startup_s, tls, tokens
    )
    # Entered and left in a worker thread, as every blocking call: the loop keeps running (and
    # the supervisor, off the main thread, leaves this process's SIGTERM handler alone).
    supervisor = Supervisor(services.dirpath)
    await asyncio.to_thread(supervisor.__enter__)
    try:
        await asyncio.to_thread(services.start, supervisor)
        yield dict(services.urls)
    finally:
        await asyncio.to_thread(supervisor.__exit__, None, None, None)


@contextlib.contextmanager
def running_services_sync(
    workload: Workload | str,
    dirpath: str | Path,
    seed: int = 1,
    size: int = 10_000,
    abort_rate: float = 0.1,
    *,
    host: str = "127.0.0.1",
    ports: Mapping[str, int] | None = None,
    startup_s: float = 30.0,
    tls: Mapping[str, ServiceTLS] | None = None,
    tokens: Mapping[str, str] | None = None,
) -> Iterator[dict[str, str]]:
    """The same as `running_services`, for callers without an event loop."""
    services = _Services(
        workload, dirpath, seed, size, abort_rate, host, ports, startup_s, tls, tokens
    )
    with Supervisor(services.dirpath) as supervisor:
        services.start(supervisor)
        yield dict(services.urls)
