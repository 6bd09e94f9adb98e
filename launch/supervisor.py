"""A supervisor for the named processes of one run folder, on either backend.

:class:`Supervisor` starts processes (argv, env, cwd; output appended to ``logs/<name>.log``
in the run folder), waits until their health URL answers 200 (or their port accepts TCP, or
they print a line), kills -9 and restarts them by name for fault injection, pauses and resumes
them (a gray failure), samples their CPU time, and tears *everything* down on exit — also on
exceptions, SIGINT and SIGTERM. After teardown it checks that the ports of the processes are
free again. Where they run is the backend's: host processes (:mod:`launch.process`, the
default) or one container each (:mod:`launch.container`, ``backend="docker"``).

CPU seconds are summed per name over every incarnation and every descendant, sampled every
``sample_interval_s`` and right before a kill, and written to ``cpu.csv`` for the analysis.
"""

from __future__ import annotations

import atexit
import csv
import logging
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import psutil

from launch.ports import wait_port_free, wait_tcp
from launch.process import ProcessBackend
from launch.spec import Backend, DeployError, Incarnation, ProcessSpec

log = logging.getLogger(__name__)
CPU_COLUMNS = ("process", "cpu_user_s", "cpu_system_s", "cpu_s", "starts")
BACKENDS = ("process", "docker")


@dataclass
class _Running:
    spec: ProcessSpec
    run: Incarnation | None = None
    # (pid, create_time) -> last seen (user, system) CPU seconds, across all incarnations.
    cpu: dict[tuple[int, float], tuple[float, float]] = field(default_factory=dict)
    starts: int = 0
    exit_code: int | None = None  # of the last incarnation that ended
    paused: bool = False
    log_offset: int = 0  # where the current incarnation's output begins in the log

    def alive(self) -> bool:
        return self.run is not None and self.run.poll() is None


def make_backend(
    name: str, run_dir: Path, cpus: float | None = None, image: str | None = None
) -> Backend:
    """The backend called ``name`` (one of :data:`BACKENDS`) for a run folder; ``image`` and
    ``cpus`` are the docker backend's."""
    if name == "process":
        if cpus is not None:
            raise ValueError("a CPU limit per process needs the docker backend")
        return ProcessBackend()
    if name == "docker":
        from launch.container import ContainerBackend

        return ContainerBackend(run_dir, image=image, cpus=cpus)
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")


class Supervisor:
    """Runs the named processes of one run folder. Use as a context manager.

    ``backend`` is ``"process"`` (host processes) or ``"docker"`` (a container each of
    ``image``, with ``cpus`` of CPU quota if given).
    """

    def __init__(
        self,
        run_dir: Path,
        sample_interval_s: float = 1.0,
        backend: str = "process",
        cpus: float | None = None,
        image: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.image = image
        self.log_dir = self.run_dir / "logs"
        self.backend_name, self.cpus = backend, cpus
        self._backend: Backend | None = None
        self._procs: dict[str, _Running] = {}
        self._lock = threading.RLock()
        self._interval = sample_interval_s
        self._stop_sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        self._old_sigterm: object = None

    def __enter__(self) -> Supervisor:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._backend = make_backend(self.backend_name, self.run_dir, self.cpus, self.image)
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

    def backend_facts(self) -> dict[str, object]:
        """Where the processes run (:meth:`launch.spec.Backend.facts`), for the results."""
        if self._backend is None:
            raise DeployError("the supervisor is not running: use it as a context manager")
        return self._backend.facts()

    def names(self) -> list[str]:
        """Names of every process started so far (running or not)."""
        with self._lock:
            return list(self._procs)

    def pid(self, name: str) -> int | None:
        """The host pid of the current incarnation's main process (a container's init), or
        None when it is not running."""
        with self._lock:
            running = self._procs[name]
            if not running.alive():
                return None
            assert running.run is not None
            family = running.run.processes()
            return family[0].pid if family else None

    def exit_code(self, name: str) -> int | None:
        """How the process ended: the exit code of its last incarnation once that was stopped,
        killed or reaped (negative: the signal that ended it), None while it runs."""
        with self._lock:
            running = self._procs[name]
            if running.run is not None:
                return running.run.poll()
            return running.exit_code

    def start(self, spec: ProcessSpec, wait: bool = True) -> None:
        """Start a process under ``spec.name`` (which must not be running)."""
        with self._lock:
            running = self._procs.get(spec.name)
            if running is not None and running.alive():
                raise DeployError(f"{spec.name} is already running")
            if running is None:
                running = self._procs[spec.name] = _Running(spec)
            running.spec = spec
            self._launch(running)
        if wait:
            self.wait_healthy(spec.name)

    def start_all(self, specs: Iterable[ProcessSpec]) -> None:
        """Start every spec, then wait until each is ready: they start in parallel."""
        specs = list(specs)
        for spec in specs:
            self.start(spec, wait=False)
        for spec in specs:
            self.wait_healthy(spec.name)

    def _launch(self, running: _Running) -> None:
        if self._backend is None:
            raise DeployError("the supervisor is not running: use it as a context manager")
        spec = running.spec
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_path(spec.name)
        with path.open("ab") as log_file:
            log_file.write(f"--- start {time.strftime('%H:%M:%S')}: {list(spec.argv)}\n".encode())
            # After the header: a ready line that appears in the argv must not count as said.
            running.log_offset = log_file.tell()
        running.run = self._backend.launch(spec, path, running.starts + 1)
        running.paused = False
        running.starts += 1

    def log_path(self, name: str) -> Path:
        """The log file of a process (all incarnations append to it)."""
        return self.log_dir / f"{name.replace(':', '-').replace('/', '-')}.log"

    def wait_healthy(self, name: str, timeout_s: float | None = None) -> None:
        """Block until the process is ready; raise :class:`DeployError` with its log tail."""
        with self._lock:
            running = self._procs[name]
        spec, run = running.spec, running.run
        assert run is not None
        deadline = time.monotonic() + (timeout_s or spec.startup_timeout_s)
        while time.monotonic() < deadline:
            code = run.poll()
            if code is not None:
                raise DeployError(f"{name} exited with {code} while starting\n{self._tail(name)}")
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
        """kill -9 the process and everything it started, and reap it (a crash)."""
        with self._lock:
            running = self._procs[name]
            self._sample(running)
            self._end(running, sig=signal.SIGKILL, grace_s=0.0)

    def stop(self, name: str) -> None:
        """SIGTERM the process; SIGKILL whatever remains after the grace period."""
        with self._lock:
            running = self._procs[name]
            self._sample(running)
            self._end(running, sig=signal.SIGTERM, grace_s=running.spec.stop_grace_s)

    def pause(self, name: str) -> None:
        """Freeze the process and everything it started: alive, ports held, silent."""
        with self._lock:
            running = self._procs[name]
            if not running.alive():
                raise DeployError(f"{name} is not running: nothing to pause")
            self._sample(running)
            assert running.run is not None
            running.run.pause()
            running.paused = True

    def resume(self, name: str) -> None:
        """Let a paused process run again."""
        with self._lock:
            running = self._procs[name]
            if running.run is not None and running.paused:
                running.run.resume()
            running.paused = False

    def restart(self, name: str, wait: bool = True) -> None:
        """Start a process again with its spec (killing it first if it still runs)."""
        with self._lock:
            running = self._procs[name]
            # Also reaps a crashed leader and any descendant it left behind.
            self._sample(running)
            self._end(running, sig=signal.SIGKILL, grace_s=0.0)
            self._launch(running)
        if wait:
            self.wait_healthy(name)

    def stop_all(self) -> list[int]:
        """Stop every process (reverse start order); return ports that are still not free."""
        with self._lock:
            runnings = list(self._procs.values())[::-1]
            # Signal every process first so that they all shut down in parallel.
            for running in runnings:
                self._sample(running)
                if running.run is not None:
                    running.run.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + max((r.spec.stop_grace_s for r in runnings), default=0)
            for running in runnings:
                self._end(
                    running, sig=signal.SIGTERM, grace_s=max(0.0, deadline - time.monotonic())
                )
            if self._backend is not None:
                self._backend.close()
        busy = [p for r in runnings for p in r.spec.ports if not wait_port_free(p, 5.0)]
        if busy:
            log.warning("ports still bound after teardown: %s", busy)
        return busy

    @staticmethod
    def _end(running: _Running, sig: int, grace_s: float) -> None:
        if running.run is not None:
            running.run.stop(sig, grace_s)
            running.exit_code = running.run.poll()
        running.run, running.paused = None, False

    def _sample_loop(self) -> None:
        while not self._stop_sampling.wait(self._interval):
            with self._lock:
                for running in self._procs.values():
                    self._sample(running)

    @staticmethod
    def _sample(running: _Running) -> None:
        if running.run is None:
            return
        for p in running.run.processes():
            try:
                key = (p.pid, p.create_time())
                times = p.cpu_times()
            except psutil.Error:
                continue
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


def _raise_system_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
