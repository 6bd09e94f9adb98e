"""Start and stop a workload's service processes, for the tests and the harness.

`running_services` (async) and `running_services_sync` start one process per service on a free
loopback port, each with its own SQLite file in `dirpath` and its output in
`dirpath/<service>.log`, wait until every `GET /health` answers, yield {service: base URL},
and on exit, exception or not, stop every child: SIGTERM, then SIGKILL after a grace period.

Given `tls` (a `ServiceTLS` per service) the services serve HTTPS to callers with a
certificate from the CA, the URLs are https://, and the health probe presents the service's
own certificate (which the CA signed, and which `GET /health` accepts whatever URIs it
carries); given `tokens`, each service demands its bearer token on every other route.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

from accompanist_py.tls import client_context
from launch import free_port
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


class _Children:
    """The service processes of one launch, with their URLs and logs."""

    def __init__(
        self,
        workload: Workload | str,
        dirpath: str | Path,
        seed: int,
        size: int,
        abort_rate: float,
        host: str,
        ports: Mapping[str, int] | None,
        tls: Mapping[str, ServiceTLS] | None = None,
        tokens: Mapping[str, str] | None = None,
    ) -> None:
        self.workload = discover()[workload] if isinstance(workload, str) else workload
        _covering(self.workload, "tls", tls)
        _covering(self.workload, "tokens", tokens)
        self.dirpath = Path(dirpath)
        self.args = (seed, size, abort_rate, host)
        self.ports = dict(ports or {})
        self.tls = dict(tls or {})
        self.tokens = dict(tokens or {})
        self.probes = {
            service: client_context(t.ca, t.cert, t.key) for service, t in self.tls.items()
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.urls: dict[str, str] = {}

    def start(self) -> None:
        seed, size, abort_rate, host = self.args
        self.dirpath.mkdir(parents=True, exist_ok=True)
        for service in self.workload.services:
            port = self.ports.get(service) or free_port(host)
            db = self.dirpath / f"{service}.db"
            command = service_command(
                self.workload,
                service,
                port,
                db,
                seed,
                size,
                abort_rate,
                host,
                tls=self.tls.get(service),
                token_file=(
                    write_token(self.dirpath / f"{service}.token", self.tokens[service])
                    if service in self.tokens
                    else None
                ),
            )
            with (self.dirpath / f"{service}.log").open("ab") as log:
                self.procs[service] = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
            scheme = "https" if service in self.tls else "http"
            self.urls[service] = f"{scheme}://{host}:{port}"

    def wait_healthy(self, startup_s: float) -> None:
        """Poll every `GET /health` until all answer 200; raise if a child dies or time runs out."""
        deadline = time.monotonic() + startup_s
        waiting = set(self.procs)
        while waiting:
            for service in sorted(waiting):
                proc = self.procs[service]
                if proc.poll() is not None:
                    log = (self.dirpath / f"{service}.log").read_text(errors="replace")
                    raise RuntimeError(
                        f"service {service} exited with {proc.returncode}:\n{log[-2000:]}"
                    )
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(
                        f"{self.urls[service]}/health", timeout=2, context=self.probes.get(service)
                    ),
                ):
                    waiting.discard(service)
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(f"services not healthy after {startup_s}s: {sorted(waiting)}")
            if waiting:
                time.sleep(0.05)

    def stop(self, grace: float = 5.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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
    children = _Children(workload, dirpath, seed, size, abort_rate, host, ports, tls, tokens)
    try:
        children.start()
        await asyncio.to_thread(children.wait_healthy, startup_s)
        yield dict(children.urls)
    finally:
        await asyncio.to_thread(children.stop)


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
    children = _Children(workload, dirpath, seed, size, abort_rate, host, ports, tls, tokens)
    try:
        children.start()
        children.wait_healthy(startup_s)
        yield dict(children.urls)
    finally:
        children.stop()
