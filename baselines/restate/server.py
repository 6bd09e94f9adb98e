"""Run the real Restate server (the binary of the npm package `@restatedev/restate-server`).

`make` installs the pinned package into `baselines/restate/node_modules` (never globally); the
package carries the Linux x64 binary. `RestateServer` writes a config file, starts the binary as
a single node on loopback with free ports and a data folder that survives a restart of the
server itself (the harness kills it with SIGKILL in crash scenarios), waits until the admin API
answers, registers the deployment that hosts the handlers, and stops with SIGTERM then SIGKILL:

    async with RestateServer(Path("restate-data")) as server:
        await server.register("http://127.0.0.1:9080")
        ...  # POST {server.ingress_url}/warehouse/run, header idempotency-key: <saga id>

The settings it writes are `SETTINGS`, each with the reason it is fair to every system.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import aiohttp

from baselines.contract import CALL_POLICY
from baselines.server_process import ServerProcess
from launch import free_port

PACKAGE = "@restatedev/restate-server"
VERSION = "1.7.12"
NODE_MODULES = Path(__file__).resolve().parent / "node_modules"
_BACKOFF = CALL_POLICY.backoff


def restate_binary() -> Path:
    """The server binary inside the project's node_modules (the package for this machine's
    OS and CPU, which npm picked); FileNotFoundError if absent."""
    system = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system(), platform.system())
    cpu = {"x86_64": "x64", "AMD64": "x64", "aarch64": "arm64"}.get(
        platform.machine(), platform.machine()
    )
    binary = NODE_MODULES / "@restatedev" / f"restate-server-{system}-{cpu}" / "bin"
    binary = binary / "restate-server"
    if not binary.exists():
        raise FileNotFoundError(
            f"{binary} is missing: `make .venv/.installed` installs {PACKAGE}@{VERSION} there"
        )
    return binary


# Written into the server's config file (TOML), beside the ports.
SETTINGS: dict[str, Any] = {
    # Offline machines, and nobody to report to.
    "disable-telemetry": True,
    "log-filter": "warn",
    "log-disable-ansi-codes": True,
    # One node on two cores: a partition processor per core instead of 24, so that the node
    # does not spread one saga stream over two dozen tasks (it scales out across nodes).
    "default-num-partitions": 2,
    # An invocation whose handler failed is retried with the sidecars' backoff (50 ms doubling
    # to 1 s), not from 500 ms up to a minute, and never paused: the harness kills and restarts
    # the handler process, and the server must go back to it as fast as a sidecar resends.
    "default-retry-policy": {
        "initial-interval": f"{int(_BACKOFF.initial_s * 1000)}ms",
        "exponentiation-factor": _BACKOFF.multiplier,
        "max-interval": f"{int(_BACKOFF.max_s * 1000)}ms",
        "max-attempts": 1_000_000,
        "on-max-attempts": "kill",
    },
    # The log is written to the OS before an append is acknowledged, but not fsynced: durable
    # against a killed process (the fault the benchmark injects), not against a power cut,
    # exactly what the sidecars' store (SQLite WAL, synchronous=NORMAL) and the Temporal
    # server's are given.
    "log-server": {"rocksdb-disable-wal-fsync": True},
    "bifrost": {"local": {"rocksdb-disable-wal-fsync": True}},
}


class RestateServer(ServerProcess):
    """One single-node `restate-server` with a persistent data folder."""

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        ingress_port: int | None = None,
        admin_port: int | None = None,
        log_file: str | os.PathLike[str] | None = None,
        ready_timeout_s: float = 60.0,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.settings = SETTINGS if settings is None else settings  # tuning.py varies them
        self.host = host
        # Ports are chosen once, so that a restart comes back where clients expect it.
        self.ingress_port = ingress_port or free_port(host)
        self.admin_port = admin_port or free_port(host)
        self.fabric_port = free_port(host)
        self.pgsql_port = free_port(host)
        super().__init__(log_file or self.base_dir.with_suffix(".log"))
        self.ready_timeout_s = ready_timeout_s

    @property
    def ingress_url(self) -> str:
        return f"http://{self.host}:{self.ingress_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    @property
    def config_file(self) -> Path:
        """The server's config file (settings and ports), beside its data folder."""
        return self.base_dir.with_suffix(".toml")

    def prepare(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        config = {
            **self.settings,
            "node-name": "bench",
            "listen-mode": "tcp",
            "bind-address": f"{self.host}:{self.fabric_port}",
            "advertised-address": f"http://{self.host}:{self.fabric_port}",
            "ingress": {"bind-address": f"{self.host}:{self.ingress_port}"},
            "admin": {
                "bind-address": f"{self.host}:{self.admin_port}",
                "disable-web-ui": True,
                "query-engine": {"pgsql-bind-address": f"{self.host}:{self.pgsql_port}"},
            },
        }
        self.config_file.write_text(_toml(config))

    def command(self) -> list[str]:
        """The exact command line, for logs and reports."""
        return [
            str(restate_binary()),
            "--config-file",
            str(self.config_file),
            "--base-dir",
            str(self.base_dir),
            "--no-logo",
        ]

    async def wait_ready(self) -> None:
        """Return once the admin API and the ingress answer."""
        deadline = time.monotonic() + self.ready_timeout_s
        last: object = None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if (why := self.exited()) is not None:
                    raise RuntimeError(f"restate-server {why}")
                try:
                    async with (
                        http.get(f"{self.admin_url}/health") as admin,
                        http.get(f"{self.ingress_url}/restate/health") as ingress,
                    ):
                        if admin.status == 200 and ingress.status == 200:
                            return
                        last = (admin.status, ingress.status)
                except aiohttp.ClientError as error:
                    last = error
                await asyncio.sleep(0.1)
        await self.stop()
        raise TimeoutError(f"restate-server not ready after {self.ready_timeout_s}s: {last}")

    async def register(self, deployment_url: str) -> dict[str, Any]:
        """Register (or refresh) the deployment serving the handlers; the admin API's answer."""
        body = {"uri": deployment_url, "force": True}
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.post(f"{self.admin_url}/deployments", json=body) as resp,
        ):
            answer = await resp.json(content_type=None)
            if resp.status not in (200, 201):
                raise RuntimeError(f"registering {deployment_url}: {resp.status} {answer}")
            return answer


def _toml(table: dict[str, Any], prefix: str = "") -> str:
    """A TOML document of scalars and nested tables (all the config needs)."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for key, value in table.items():
        if isinstance(value, dict):
            name = f"{prefix}{key}"
            lines.append(f"\n[{name}]\n" + _toml(value, f"{name}.").strip())
    return "\n".join(lines) + "\n"


__all__ = ["SETTINGS", "RestateServer", "restate_binary"]
