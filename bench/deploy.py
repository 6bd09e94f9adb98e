"""Deployment: a supervisor for the named processes of one benchmark run.

:class:`Supervisor` starts processes (argv, env, cwd; output appended to ``logs/<name>.log``
in the run folder), waits until their health URL answers 200 (or their port accepts TCP),
kills -9 and restarts them by name for fault injection, samples their CPU time, and tears
*everything* down on exit — also on exceptions, SIGINT and SIGTERM. Each process gets its own
session (process group), and every descendant ever seen is remembered via psutil, so that no
grandchild survives even if it left the group. After teardown it checks that the ports of the
processes are free again.

CPU seconds are summed per name over every incarnation and every descendant, sampled every
``sample_interval_s`` and right before a kill, and written to ``cpu.csv`` for the analysis.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import logging
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import psutil

log = logging.getLogger(__name__)
CPU_COLUMNS = ("process", "cpu_user_s", "cpu_system_s", "cpu_s", "starts")


class DeployError(RuntimeError):
    """A process failed to start or become healthy; the message includes its log tail."""


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one named process.

    ``env`` is laid over the harness's environment. Readiness is ``health_url`` answering 200
    (an ``https://`` one through ``health_tls``, the harness's client certificate), else
    ``ready_line`` printed by this incarnation (a process with no port, such as a Temporal
    worker, says when it polls), else every one of ``ports`` accepting TCP (e.g. a latency
    proxy hosting many links), else just being alive. ``ports`` are checked to be free after
    teardown.
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


@dataclass
class _Running:
    spec: ProcessSpec
    proc: psutil.Popen | None = None
    # (pid, create_time) -> last seen (user, system) CPU seconds, across all incarnations.
    cpu: dict[tuple[int, float], tuple[float, float]] = field(default_factory=dict)
    seen: dict[tuple[int, float], psutil.Process] = field(default_factory=dict)
    starts: int = 0
    log_offset: int = 0  # where the current incarnation's output begins in the log


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener could bind ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def wait_tcp(host: str, port: int, timeout_s: float) -> bool:
    """Wait until ``host:port`` accepts a TCP connection; False on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
            return True
        time.sleep(0.05)
    return False


class Supervisor:
    """Runs the named processes of one run folder. Use as a context manager."""

    def __init__(self, run_dir: Path, sample_interval_s: float = 1.0) -> None:
        self.run_dir = Path(run_dir)
        self.log_dir = self.run_dir / "logs"
        self._procs: dict[str, _Running] = {}
        self._lock = threading.RLock()
        self._interval = sample_interval_s
        self._stop_sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        self._old_sigterm: object = None

    def __enter__(self) -> Supervisor:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop_all)
        if threading.current_thread() is threading.main_thread():
            # SIGTERM to the harness becomes SystemExit, so __exit__ runs and tears down.
            self._old_sigterm = signal.signal(signal.SIGTERM, _raise_system_exit)
        self._sampler = threading.Thread(target=self._sample_loop, name="cpu", daemon=True)
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # A Ctrl-C or SIGTERM during the teardown (make signals the whole group again) must not
        # cut it short and leave children running: it is held until everything is stopped,
        # then acted on, unless an exception is on its way out already.
        held: list[int] = []
        shielded = threading.current_thread() is threading.main_thread()
        old = (
            {sig: signal.signal(sig, lambda signum, _: held.append(signum))
             for sig in (signal.SIGINT, signal.SIGTERM)}
            if shielded
            else {}
        )  # fmt: skip
        try:
            self.stop_all()
            atexit.unregister(self.stop_all)  # kept registered if the teardown failed
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            self._stop_sampling.set()
            if self._sampler is not None:
                self._sampler.join()
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)  # type: ignore[arg-type]
        if held and exc[0] is None:
            if held[0] == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + held[0])

    def names(self) -> list[str]:
        """Names of every process started so far (running or not)."""
        with self._lock:
            return list(self._procs)

    def pid(self, name: str) -> int | None:
        """The pid of the current incarnation, or None when it is not running."""
        with self._lock:
            proc = self._procs[name].proc
            return proc.pid if proc is not None and proc.poll() is None else None

    def start(self, spec: ProcessSpec, wait: bool = True) -> None:
        """Start a process under ``spec.name`` (which must not be running)."""
        with self._lock:
            running = self._procs.get(spec.name)
            if running is not None and running.proc is not None and running.proc.poll() is None:
                raise DeployError(f"{spec.name} is already running")
            if running is None:
                running = self._procs[spec.name] = _Running(spec)
            running.spec = spec
            self._launch(running)
        if wait:
            self.wait_healthy(spec.name)

    def _launch(self, running: _Running) -> None:
        spec = running.spec
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.log_path(spec.name).open("ab")
        running.log_offset = log_file.tell()
        log_file.write(f"--- start {time.strftime('%H:%M:%S')}: {list(spec.argv)}\n".encode())
        log_file.flush()
        try:
            running.proc = psutil.Popen(
                list(spec.argv),
                env={**os.environ, "PYTHONUNBUFFERED": "1", **spec.env},
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,  # never read the harness's terminal
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
            )
        finally:
            log_file.close()
        running.starts += 1

    def log_path(self, name: str) -> Path:
        """The log file of a process (all incarnations append to it)."""
        return self.log_dir / f"{name.replace(':', '-').replace('/', '-')}.log"

    def wait_healthy(self, name: str, timeout_s: float | None = None) -> None:
        """Block until the process is ready; raise :class:`DeployError` with its log tail."""
        with self._lock:
            running = self._procs[name]
        spec, proc = running.spec, running.proc
        assert proc is not None
        deadline = time.monotonic() + (timeout_s or spec.startup_timeout_s)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DeployError(
                    f"{name} exited with {proc.returncode} while starting\n{self._tail(name)}"
                )
            if self._ready(running):
                return
            time.sleep(0.05)
        raise DeployError(f"{name} not healthy after {spec.startup_timeout_s}s\n{self._tail(name)}")

    def _ready(self, running: _Running) -> bool:
        spec = running.spec
        if spec.ready_line is not None:
            try:
                with self.log_path(spec.name).open("rb") as log_file:
                    log_file.seek(running.log_offset)
                    return spec.ready_line.encode() in log_file.read()
            except OSError:
                return False
        if spec.health_url:
            try:
                with urllib.request.urlopen(
                    spec.health_url, timeout=1.0, context=spec.health_tls
                ) as resp:
                    return resp.status == 200
            except (urllib.error.URLError, OSError):
                return False
        return all(wait_tcp("127.0.0.1", port, 0.1) for port in spec.ports)

    def _tail(self, name: str, lines: int = 30) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return "\n".join(f"    {line}" for line in text)

    def kill(self, name: str) -> None:
        """kill -9 the process, its group and every descendant, and reap it."""
        with self._lock:
            running = self._procs[name]
            self._sample(running)
            self._terminate(running, sig=signal.SIGKILL, grace_s=0.0)

    def stop(self, name: str) -> None:
        """SIGTERM the process group; SIGKILL whatever remains after the grace period."""
        with self._lock:
            running = self._procs[name]
            self._sample(running)
            self._terminate(running, sig=signal.SIGTERM, grace_s=running.spec.stop_grace_s)

    def restart(self, name: str, wait: bool = True) -> None:
        """Start a process again with its spec (killing it first if it still runs)."""
        with self._lock:
            running = self._procs[name]
            if running.proc is not None:
                # Also reaps a crashed leader and any descendant it left behind.
                self._sample(running)
                self._terminate(running, sig=signal.SIGKILL, grace_s=0.0)
            self._launch(running)
        if wait:
            self.wait_healthy(name)

    def stop_all(self) -> list[int]:
        """Stop every process (reverse start order); return ports that are still not free."""
        with self._lock:
            runnings = list(self._procs.values())[::-1]
            # Signal every group first so that they all shut down in parallel.
            for running in runnings:
                self._sample(running)
                if running.proc is not None:
                    with contextlib.suppress(OSError):
                        os.killpg(running.proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + max((r.spec.stop_grace_s for r in runnings), default=0)
            for running in runnings:
                self._terminate(
                    running, sig=signal.SIGTERM, grace_s=max(0.0, deadline - time.monotonic())
                )
        busy = [p for r in runnings for p in r.spec.ports if not _wait_port_free(p, 5.0)]
        if busy:
            log.warning("ports still bound after teardown: %s", busy)
        return busy

    def _terminate(self, running: _Running, sig: int, grace_s: float) -> None:
        proc = running.proc
        if proc is None:
            return
        victims = _family(proc) + [p for p in running.seen.values() if p.is_running()]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        for p in victims:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        for p in _wait_gone(victims, grace_s):
            with contextlib.suppress(psutil.Error):
                p.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        _wait_gone(victims, 5.0)
        with contextlib.suppress(Exception):
            proc.wait(timeout=5.0)
        running.seen.clear()
        # Forget the reaped pid: signalling its group later could hit a reused process group.
        running.proc = None

    def _sample_loop(self) -> None:
        while not self._stop_sampling.wait(self._interval):
            with self._lock:
                for running in self._procs.values():
                    self._sample(running)

    @staticmethod
    def _sample(running: _Running) -> None:
        proc = running.proc
        if proc is None or proc.poll() is not None:
            return
        for p in _family(proc) + list(running.seen.values()):
            try:
                key = (p.pid, p.create_time())
                times = p.cpu_times()
            except psutil.Error:
                continue
            running.seen[key] = p
            running.cpu[key] = (times.user, times.system)

    def cpu_seconds(self) -> dict[str, tuple[float, float]]:
        """(user, system) CPU seconds per process name, over all incarnations and descendants."""
        with self._lock:
            for running in self._procs.values():
                self._sample(running)
            return {
                name: (sum(u for u, _ in r.cpu.values()), sum(s for _, s in r.cpu.values()))
                for name, r in self._procs.items()
            }

    def write_cpu_csv(
        self,
        path: Path,
        since: Mapping[str, tuple[float, float]] | None = None,
        others: Mapping[str, tuple[float, float]] | None = None,
    ) -> Path:
        """Write ``cpu.csv``: process, cpu_user_s, cpu_system_s, cpu_s, starts.

        ``since`` is an earlier :meth:`cpu_seconds` snapshot (e.g. taken when the load started),
        so that start-up cost is not charged to the sagas. ``others`` adds (user, system) CPU
        seconds of processes run outside the supervisor (the load generator), one start each.
        """
        since = since or {}
        rows = [
            (name, user - since.get(name, (0.0, 0.0))[0], system - since.get(name, (0.0, 0.0))[1],
             self._procs[name].starts)
            for name, (user, system) in self.cpu_seconds().items()
        ]  # fmt: skip
        rows += [(name, user, system, 1) for name, (user, system) in (others or {}).items()]
        with Path(path).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CPU_COLUMNS)
            for name, user, system, starts in rows:
                writer.writerow(
                    [name, f"{user:.3f}", f"{system:.3f}", f"{user + system:.3f}", starts]
                )
        return Path(path)


def machine_busy_s() -> float:
    """CPU-seconds the whole machine has spent busy since boot, every process counted (idle and
    I/O wait not). Two readings around a cell, less what the cell's processes and the harness
    spent, are what ran beside the cell: a contended cell measured the neighbours too."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
                 + getattr(t, "steal", 0.0))  # fmt: skip


def harness_cpu_s() -> float:
    """CPU-seconds of this process (the harness, with the link probe's thread), children not."""
    t = psutil.Process().cpu_times()
    return float(t.user + t.system)


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


def _wait_port_free(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not port_is_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _raise_system_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
