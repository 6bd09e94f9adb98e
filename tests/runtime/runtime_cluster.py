"""Processes for the runtime tests: sidecars and tiny services on free loopback ports.

A `Cluster` is three sidecars (roles a, b, c; tests/runtime/runtime_choreographies.py loaded
by module name) each next to its own tiny service (tests/runtime/tiny_service.py), every
process with its own SQLite file and log under the test's tmp dir. Ports are picked by binding
port 0 and stay fixed for the cluster's life, so a killed process restarts where its peers
expect it. Each process runs on `launch`'s process backend; `Cluster.stop` (and `Process.stop`)
end every process: SIGTERM, then SIGKILL after a grace period; the fixtures in conftest.py call
them whatever the test's outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from accompanist_py import certs
from accompanist_py.tls import TLSFiles
from launch import ProcessSpec, free_port
from launch.process import HostProcess, ProcessBackend

RUNTIME_TESTS = Path(__file__).resolve().parent
REPO = RUNTIME_TESTS.parents[1]
ROLES = ("a", "b", "c")
TERMINAL = frozenset({"completed", "compensated", "failed"})
STARTUP_S = 30.0


def child_env() -> dict[str, str]:
    """The environment of a child process: it can import the repo and the test modules."""
    env = dict(os.environ)
    paths = [str(RUNTIME_TESTS), str(REPO), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


class Process:
    """One child process (a :class:`launch.process.HostProcess`: its own process group, every
    descendant signalled and reaped with it) appending to its own log file."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.proc: HostProcess | None = None
        self._starts = 0

    def start(self) -> None:
        self._starts += 1
        spec = ProcessSpec(self.name, self.argv, env=child_env(), cwd=REPO)
        self.proc = ProcessBackend().launch(spec, self.log, self._starts)

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM, as a supervisor stopping the process would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.proc is not None:
            self.proc.stop(signal.SIGKILL, 0.0)

    def stop(self, grace_s: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL if it is still running after `grace_s`; returns the exit code."""
        if self.proc is None:
            return None
        self.proc.stop(signal.SIGTERM, grace_s)
        return self.proc.poll()

    async def wait_exit(self, deadline_s: float) -> int | None:
        """Wait (polling, without blocking the loop) until the process exits; its code or None."""
        end = time.monotonic() + deadline_s
        while True:
            if not self.alive() or time.monotonic() > end:
                return self.returncode
            await asyncio.sleep(0.05)

    def tail(self, chars: int = 3000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} ({self.log}) ---\n{text[-chars:]}"


def _toml(value: Any) -> str:
    """A scalar as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _healthy(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2, context=context) as resp:
            return resp.status == 200
    except OSError:
        return False


class Cluster:
    """Sidecars for roles a, b, c, each with its own tiny service."""

    def __init__(
        self,
        dirpath: Path,
        *,
        receive_s: float = 60.0,
        transport: str | None = None,
        timeouts: dict[str, float] | None = None,
        role_timeouts: dict[str, dict[str, float]] | None = None,
        modes: dict[str, str] | None = None,
        settings: dict[str, Any] | None = None,
        limits: dict[str, int] | None = None,
        tls: bool = False,
        tokens: dict[str, str] | None = None,
        events: dict[str, Any] | None = None,
    ) -> None:
        self.dir = dirpath
        self.dir.mkdir(parents=True, exist_ok=True)
        # With `tls`: one CA for the cluster, a certificate per sidecar and one for the test
        # as client "tester" (`client_files`); `tokens` go into every sidecar's [auth].
        self.tls = tls
        self.tokens = dict(tokens or {})
        self.certs = self.dir / "certs"
        if tls:
            ca, ca_key = certs.make_ca(self.certs)
            for r in ROLES:
                certs.sidecar_certificate(ca, ca_key, self.certs, r, [r])
            cert, key = certs.client_certificate(ca, ca_key, self.certs, "tester")
            self.client_files: TLSFiles | None = TLSFiles(ca, cert, key)
        else:
            self.client_files = None
        self.receive_s = receive_s
        self.transport = transport  # None: the sidecar's default
        # Optional extras, all read again by every (re)launch, so a test may change them
        # between restarts: [timeouts] keys for every role and per role, the mode per role
        # (default "fault-tolerant"), top-level keys (e.g. retention_s) and a [limits] table.
        self.timeouts = dict(timeouts or {})
        self.role_timeouts = {r: dict(t) for r, t in (role_timeouts or {}).items()}
        self.modes = dict(modes or {})
        self.settings = dict(settings or {})
        self.limits = dict(limits or {})
        self.events = dict(events or {})  # an [events] table for every sidecar
        self.sidecar_ports = {r: free_port() for r in ROLES}
        self.service_ports = {r: free_port() for r in ROLES}
        self.sidecars: dict[str, Process] = {}
        self.services: dict[str, Process] = {}

    # -- addresses ---------------------------------------------------------------------------
    def sidecar_url(self, role: str) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.sidecar_ports[role]}"

    def client_context(self) -> ssl.SSLContext | None:
        """What a test presents to the sidecars: the CA, and the "tester" client certificate."""
        return self.client_files.client_context() if self.client_files is not None else None

    def http(self) -> aiohttp.ClientSession:
        """A client session that can reach the sidecars (with TLS: as client "tester")."""
        ctx = self.client_context()
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx or True))

    def service_url(self, role: str) -> str:
        return f"http://127.0.0.1:{self.service_ports[role]}"

    # -- processes ---------------------------------------------------------------------------
    def config_text(self, role: str, failpoints: dict[str, int] | None = None) -> str:
        peers = "\n".join(f'{r} = "{self.sidecar_url(r)}"' for r in ROLES if r != role)
        timeouts: dict[str, Any] = {
            "receive_s": self.receive_s,
            "service_call_s": 5.0,
            "retry_initial_s": 0.02,
            "retry_max_s": 0.25,
            **self.timeouts,
            **self.role_timeouts.get(role, {}),
        }
        settings = "".join(f"{k} = {_toml(v)}\n" for k, v in self.settings.items())
        text = f"""
name = "{role}"
roles = ["{role}"]
listen = "127.0.0.1:{self.sidecar_ports[role]}"
service_url = "{self.service_url(role)}"
choreographies = ["runtime_choreographies"]
mode = "{self.modes.get(role, "fault-tolerant")}"
{settings}
[store]
path = "sidecar-{role}.db"

[peers]
{peers}

[timeouts]
""" + "".join(f"{k} = {_toml(v)}\n" for k, v in timeouts.items())
        if self.transport is not None:
            text = f'transport = "{self.transport}"\n' + text
        if self.limits:
            text += "\n[limits]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in self.limits.items())
        if self.events:
            text += "\n[events]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in self.events.items())
        if self.tls:
            text += (
                f'\n[tls]\nca = "{self.certs / "ca.pem"}"\n'
                f'cert = "{self.certs / f"sidecar-{role}.pem"}"\n'
                f'key = "{self.certs / f"sidecar-{role}-key.pem"}"\n'
            )
        if self.tokens:
            tokens = ", ".join(f'{k} = "{v}"' for k, v in self.tokens.items())
            text += f"\n[auth]\ntokens = {{ {tokens} }}\n"
        if failpoints:
            text += "\n[failpoints]\n" + "".join(f"{p} = {n}\n" for p, n in failpoints.items())
        return text

    def launch_sidecar(self, role: str, failpoints: dict[str, int] | None = None) -> Process:
        config = self.dir / f"sidecar-{role}.toml"
        config.write_text(self.config_text(role, failpoints))
        proc = Process(
            f"sidecar {role}",
            [sys.executable, "-m", "accompanist_py.sidecar", "--config", str(config)],
            self.dir / f"sidecar-{role}.log",
        )
        self.sidecars[role] = proc
        proc.start()
        return proc

    def launch_service(self, role: str) -> Process:
        proc = Process(
            f"service {role}",
            [
                sys.executable,
                str(RUNTIME_TESTS / "tiny_service.py"),
                "--port",
                str(self.service_ports[role]),
                "--db",
                str(self.dir / f"service-{role}.db"),
            ],
            self.dir / f"service-{role}.log",
        )
        self.services[role] = proc
        proc.start()
        return proc

    def start(self, failpoints: dict[str, dict[str, int]] | None = None) -> None:
        """Start every service and sidecar and wait until all are healthy."""
        failpoints = failpoints or {}
        for r in ROLES:
            self.launch_service(r)
        for r in ROLES:
            self.launch_sidecar(r, failpoints.get(r))
        waiting = {
            **{self.service_url(r): self.services[r] for r in ROLES},
            **{self.sidecar_url(r): self.sidecars[r] for r in ROLES},
        }
        deadline = time.monotonic() + STARTUP_S
        while waiting:
            for url, proc in list(waiting.items()):
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited with {proc.returncode}\n{proc.tail()}")
                if _healthy(url, self.client_context() if url.startswith("https") else None):
                    del waiting[url]
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(f"not healthy after {STARTUP_S}s: {sorted(waiting)}")
            if waiting:
                time.sleep(0.05)

    async def _wait_healthy(self, url: str, proc: Process) -> None:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.returncode}\n{proc.tail()}")
            ctx = self.client_context() if url.startswith("https") else None
            if await asyncio.to_thread(_healthy, url, ctx):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{proc.name} not healthy after {STARTUP_S}s\n{proc.tail()}")
            await asyncio.sleep(0.05)

    async def restart_sidecar(self, role: str, failpoints: dict[str, int] | None = None) -> None:
        """Start the sidecar of `role` again (after it died) and wait until it is healthy."""
        old = self.sidecars.get(role)
        if old is not None:
            old.stop()
        await self._wait_healthy(self.sidecar_url(role), self.launch_sidecar(role, failpoints))

    async def restart_service(self, role: str) -> None:
        old = self.services.get(role)
        if old is not None:
            old.stop()
        await self._wait_healthy(self.service_url(role), self.launch_service(role))

    def stop(self, grace_s: float = 1.5) -> None:
        """SIGTERM every process at once, SIGKILL what is left after `grace_s`; never raises."""
        procs = [p.proc for p in [*self.sidecars.values(), *self.services.values()] if p.proc]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in procs:
            proc.stop(signal.SIGTERM, max(0.0, deadline - time.monotonic()))

    def logs(self) -> str:
        return "\n".join(p.tail() for p in [*self.sidecars.values(), *self.services.values()])

    # -- the client side ---------------------------------------------------------------------
    async def run(
        self,
        http: aiohttp.ClientSession,
        chor: str,
        session_id: str,
        args: list[Any],
        *,
        at: str = "a",
        deadline_s: float = 120.0,
    ) -> dict[str, Any]:
        """POST the session start until a terminal answer comes back, as a retrying client.

        Connection errors are retried with the same session id (the sidecar may be down and
        restarting); any answer other than 200 + a terminal state fails the test.
        """
        url = f"{self.sidecar_url(at)}/sessions/{chor}"
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                async with http.post(url, json={"session_id": session_id, "args": args}) as resp:
                    body = await resp.json()
                    if resp.status != 200 or body.get("state") not in TERMINAL:
                        raise AssertionError(f"start of {session_id}: {resp.status} {body}")
                    return body
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.1)
        raise AssertionError(f"session {session_id} got no terminal answer in {deadline_s}s")

    async def status(
        self, http: aiohttp.ClientSession, role: str, session_id: str
    ) -> dict[str, Any] | None:
        """GET /sessions/{id} at the sidecar of `role`; None if it does not know the session."""
        async with http.get(f"{self.sidecar_url(role)}/sessions/{session_id}") as resp:
            if resp.status == 404:
                return None
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def wait_terminal(
        self,
        http: aiohttp.ClientSession,
        session_ids: list[str],
        *,
        roles: tuple[str, ...] = ROLES,
        deadline_s: float = 90.0,
    ) -> dict[str, dict[str, dict[str, Any]]]:
        """Poll until every session is terminal at every one of `roles`: {sid: {role: status}}."""
        end = time.monotonic() + deadline_s
        done: dict[str, dict[str, dict[str, Any]]] = {sid: {} for sid in session_ids}
        while True:
            for sid in session_ids:
                for role in roles:
                    if role in done[sid]:
                        continue
                    with contextlib.suppress(aiohttp.ClientError):
                        st = await self.status(http, role, sid)
                        if st is not None and st["state"] in TERMINAL:
                            done[sid][role] = st
            missing = {s: [r for r in roles if r not in d] for s, d in done.items()}
            missing = {s: rs for s, rs in missing.items() if rs}
            if not missing:
                return done
            if time.monotonic() > end:
                raise AssertionError(
                    f"sessions not terminal after {deadline_s}s: {missing}\n{self.logs()}"
                )
            await asyncio.sleep(0.1)

    async def effects(self, http: aiohttp.ClientSession, role: str) -> dict[str, Any]:
        """The effects (and tombstones) recorded by the service of `role`."""
        async with http.get(f"{self.service_url(role)}/effects") as resp:
            assert resp.status == 200
            return await resp.json()

    async def session_events(self, http: aiohttp.ClientSession, role: str, session_id: str) -> Any:
        """GET /sessions/{id}/events at the sidecar of `role`: its events of the session at
        `role`, as JSON dicts (None if it does not know the session)."""
        async with http.get(f"{self.sidecar_url(role)}/sessions/{session_id}/events") as resp:
            if resp.status == 404:
                return None
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        assert body["session"] == session_id and body["node"] == role, body
        return body["roles"][role]

    async def metrics(self, http: aiohttp.ClientSession, role: str) -> dict[str, float]:
        """GET /metrics of the sidecar of `role`, parsed: {sample name: value summed over its
        labels (its roles and peers)}."""
        async with http.get(f"{self.sidecar_url(role)}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
        return samples
