"""Deploying a workload on accompanist_py: one sidecar per service, wired peer to peer.

`sidecar_config` writes the TOML of one sidecar (docs/contracts.md); `running_sidecars` starts
one sidecar process per role of a workload next to already running services, waits for health
and stops them all on exit, even on errors. Peer and service addresses can be overridden so
that the harness can route cross-zone links through its latency proxies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from workloads import Workload, discover
from workloads.launch import free_port

SIDECAR = [sys.executable, "-m", "accompanist_py.sidecar"]


def sidecar_config(
    role: str,
    port: int,
    service_url: str,
    peers: Mapping[str, str],
    choreography_module: str,
    *,
    mode: str = "fault-tolerant",
    store: str | None = None,
    failpoints: Mapping[str, int] | None = None,
    receive_s: float = 60.0,
) -> str:
    """The TOML text of the sidecar hosting `role`."""
    lines = [
        f'name = "{role}"',
        f'roles = ["{role}"]',
        f'listen = "127.0.0.1:{port}"',
        f'service_url = "{service_url}"',
        f'choreographies = ["{choreography_module}"]',
        f'mode = "{mode}"',
        "[store]",
        f'path = "{store or role + ".db"}"',
        'synchronous = "NORMAL"',
        "[timeouts]",
        f"receive_s = {receive_s}",
        "service_call_s = 5.0",
        "retry_initial_s = 0.05",
        "retry_max_s = 1.0",
        "[peers]",
        *(f'{r} = "{url}"' for r, url in sorted(peers.items()) if r != role),
    ]
    if failpoints:
        lines += ["[failpoints]", *(f"{k} = {v}" for k, v in failpoints.items())]
    return "\n".join(lines) + "\n"


class Sidecars:
    """Sidecar processes of one workload deployment."""

    def __init__(
        self,
        workload: Workload | str,
        service_urls: Mapping[str, str],
        dirpath: str | Path,
        *,
        mode: str = "fault-tolerant",
        ports: Mapping[str, int] | None = None,
        peer_urls: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.workload = discover()[workload] if isinstance(workload, str) else workload
        self.service_urls = dict(service_urls)
        self.dir = Path(dirpath)
        self.mode = mode
        self.ports = {r: (ports or {}).get(r) or free_port() for r in self.workload.services}
        self.urls = {r: f"http://127.0.0.1:{p}" for r, p in self.ports.items()}
        # peer_urls[role][peer] overrides how `role` reaches `peer` (e.g. through a proxy).
        self.peer_urls = {r: dict((peer_urls or {}).get(r, {})) for r in self.workload.services}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def choreography(self) -> str:
        """Name of the workload's choreography (its function name)."""
        return self.workload.choreography.rpartition(":")[2]

    def write_config(self, role: str, failpoints: Mapping[str, int] | None = None) -> Path:
        peers = {r: self.peer_urls[role].get(r, self.urls[r]) for r in self.workload.services}
        path = self.dir / f"sidecar-{role}.toml"
        path.write_text(
            sidecar_config(
                role,
                self.ports[role],
                self.service_urls[role],
                peers,
                self.workload.choreography.partition(":")[0],
                mode=self.mode,
                store=f"sidecar-{role}.db",
                failpoints=failpoints,
            )
        )
        return path

    def start(self, role: str, failpoints: Mapping[str, int] | None = None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.write_config(role, failpoints)
        with (self.dir / f"sidecar-{role}.log").open("ab") as log:
            self.procs[role] = subprocess.Popen(
                [*SIDECAR, "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self, role: str) -> None:
        """kill -9 the sidecar of `role`."""
        proc = self.procs.pop(role, None)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def wait_healthy(self, roles: list[str] | None = None, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        for role in roles or list(self.procs):
            while True:
                proc = self.procs[role]
                if proc.poll() is not None:
                    log = (self.dir / f"sidecar-{role}.log").read_text(errors="replace")
                    raise RuntimeError(f"sidecar {role} exited {proc.returncode}:\n{log[-2000:]}")
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(self.urls[role] + "/health", timeout=2),
                ):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"sidecar {role} not healthy after {timeout_s}s")
                time.sleep(0.05)

    def stop(self, grace_s: float = 5.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


@contextlib.contextmanager
def running_sidecars(
    workload: Workload | str,
    service_urls: Mapping[str, str],
    dirpath: str | Path,
    **options: object,
) -> Iterator[Sidecars]:
    """Start a sidecar per role of `workload`; stop them all on exit."""
    cars = Sidecars(workload, service_urls, dirpath, **options)  # type: ignore[arg-type]
    try:
        for role in cars.workload.services:
            cars.start(role)
        cars.wait_healthy()
        yield cars
    finally:
        cars.stop()
