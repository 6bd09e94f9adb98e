"""The process backend: each spec a host process in its own session (process group).

Every descendant ever seen is remembered, so that a grandchild which left the group is still
signalled, counted and reaped. A pause is SIGSTOP to all of them, a resume SIGCONT.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from launch.spec import ProcessSpec


class HostProcess:
    """One incarnation of a spec as a host process group (an :class:`~launch.spec.Incarnation`)."""

    def __init__(self, proc: psutil.Popen) -> None:
        self._proc = proc
        # (pid, create_time) -> process, for every descendant seen so far.
        self._seen: dict[tuple[int, float], psutil.Process] = {}
        self._reaped = False
        self._last_signal: int | None = None

    @property
    def pid(self) -> int:
        return int(self._proc.pid)

    def poll(self) -> int | None:
        return self._proc.poll()

    def processes(self) -> list[psutil.Process]:
        if self._reaped:
            return []
        family = _family(self._proc)
        for p in family:
            with contextlib.suppress(psutil.Error):
                self._seen[(p.pid, p.create_time())] = p
        alive = {p.pid for p in family}
        return family + [p for p in self._seen.values() if p.pid not in alive and p.is_running()]

    def send_signal(self, sig: int) -> None:
        if self._reaped:
            return
        victims = self.processes()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)
        # Only those that left the group: a second SIGTERM that lands while a process is
        # already shutting down (its handlers reset) kills it with -15 instead of its exit code.
        for p in victims:
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(p.pid) != self._proc.pid:
                    p.send_signal(sig)
        self._last_signal = sig

    def pause(self) -> None:
        self.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.send_signal(signal.SIGCONT)

    def stop(self, sig: int, grace_s: float) -> None:
        if self._reaped:
            return
        victims = self.processes()
        if sig != self._last_signal:  # not asked already (stop_all signals everyone first)
            self.send_signal(sig)
        if sig != signal.SIGKILL:
            self.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        for p in _wait_gone(victims, grace_s):
            with contextlib.suppress(psutil.Error):
                p.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        _wait_gone(victims, 5.0)
        with contextlib.suppress(Exception):
            self._proc.wait(timeout=5.0)
        # Forget the reaped pid: signalling its group later could hit a reused process group.
        self._reaped = True
        self._seen.clear()


class ProcessBackend:
    """Runs each spec as a host process (a :class:`~launch.spec.Backend`)."""

    name = "process"

    def launch(self, spec: ProcessSpec, log_path: Path, incarnation: int) -> HostProcess:
        with log_path.open("ab") as log_file:
            proc = psutil.Popen(
                list(spec.argv),
                env={**os.environ, "PYTHONUNBUFFERED": "1", **spec.env},
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,  # never read the harness's terminal
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
            )
        return HostProcess(proc)

    def facts(self) -> dict[str, object]:
        """What the results must say about where their processes ran."""
        return {"backend": self.name}

    def close(self) -> None:
        """Nothing outlives :meth:`HostProcess.stop`."""


def _family(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until every process has exited; return those still alive.

    A zombie counts as gone: an orphaned grandchild is reaped by init, whenever init gets to it.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for p in procs:
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)
