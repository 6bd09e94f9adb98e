"""What to run (:class:`ProcessSpec`) and what a backend gives back (:class:`Incarnation`).

A backend turns a spec into an incarnation: a host process (:mod:`launch.process`) or a
container (:mod:`launch.container`). The supervisor drives both through the same few verbs, so
that health waits, crashes, pauses, CPU accounting and teardown are written once.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil


class DeployError(RuntimeError):
    """A process failed to start or become healthy; the message includes its log tail."""


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one named process.

    ``env`` is laid over the harness's environment (a container gets ``env`` alone). Readiness
    is ``health_url`` answering 200 (an ``https://`` one through ``health_tls``, the harness's
    client certificate), else ``ready_line`` printed by this incarnation (a process with no
    port, such as a Temporal worker, says when it polls), else every one of ``ports`` accepting
    TCP (e.g. a latency proxy hosting many links), else just being alive. ``ports`` are checked
    to be free after teardown. A ``harness`` process is part of the measuring apparatus (the
    latency proxy), not of the system measured: a CPU limit on the system's containers does not
    apply to it.
    """

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    health_url: str | None = None
    health_tls: ssl.SSLContext | None = None
    ports: Sequence[int] = ()
    ready_line: str | None = None
    startup_timeout_s: float = 60.0
    stop_grace_s: float = 5.0
    harness: bool = False


class Incarnation(Protocol):
    """One run of a spec. Every verb is safe to repeat and safe after the run has ended."""

    def poll(self) -> int | None:
        """The exit code once it has ended, else None (a paused run has not ended)."""
        ...

    def processes(self) -> list[psutil.Process]:
        """Its host processes now, the main one first (for CPU accounting)."""
        ...

    def send_signal(self, sig: int) -> None:
        """Deliver ``sig`` to every process of the run."""
        ...

    def pause(self) -> None:
        """Freeze every process: alive, holding its sockets, silent (a gray failure)."""
        ...

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        ...

    def stop(self, sig: int, grace_s: float) -> None:
        """Send ``sig``, give the run ``grace_s`` seconds to end, SIGKILL what is left, reap."""
        ...


class Backend(Protocol):
    """Where specs run: ``process`` (host processes) or ``docker`` (one container each)."""

    name: str

    def launch(self, spec: ProcessSpec, log_path: Path, incarnation: int) -> Incarnation:
        """Start ``spec``, its output appended to ``log_path``; ``incarnation`` counts from 1."""
        ...

    def facts(self) -> dict[str, object]:
        """Where the processes run, for the results: ``backend`` and what else identifies it
        (the image and its id, the Docker version, the CPU limit)."""
        ...

    def close(self) -> None:
        """Remove whatever this backend may have left behind (called at teardown)."""
        ...
