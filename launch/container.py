"""The container backend: each spec in a container of its own, through the Docker SDK.

Every container runs on the host network, so that the latency proxy's links and every port a
cell planned stay on loopback exactly as with host processes (the daemon should run with
``--bridge=none --iptables=false``: no private addresses are made). The image
(``accompanist`` by default, built by ``make image``) brings Python and every dependency; the
project's source tree is mounted read-only at its own path and put first on ``PYTHONPATH``, so
a container runs the code of the working tree, not a stale copy baked into the image. The run
folder is mounted read-write at its own path (logs, databases, certificates land where the
harness reads them), and any other absolute path a spec names that exists on the host (a
server binary, a certificate) read-only. A spec's ``sys.executable`` becomes the image's
``python``. The container runs as the harness's own uid and gid, so that what it writes in the
run folder belongs to the harness.

A crash is ``docker kill`` with SIGKILL (the container's init dies, and the kernel kills
everything else in its PID namespace); a pause is ``docker pause`` (the cgroup freezer: alive,
ports held, silent); ``--cpus`` becomes the container's CPU quota. CPU time is read from the
host's view of the container's processes, as for host processes. Every container carries the
labels of its supervisor and of the harness process; teardown removes the supervisor's, and a
new backend first removes those whose harness died without cleaning up.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

from launch.spec import DeployError, ProcessSpec

# The image a container runs unless told otherwise (bench run --image, Supervisor(image=...));
# ACCOMPANIST_IMAGE sets it for a whole test session.
DEFAULT_IMAGE = os.environ.get("ACCOMPANIST_IMAGE", "accompanist")
SOURCE = Path(__file__).resolve().parents[1]  # the project's source tree
LABEL_SUPERVISOR = "accompanist.supervisor"
LABEL_HARNESS = "accompanist.harness"  # "<pid>:<create_time>" of the harness process
# The container's output goes to the spec's log file in the mounted run folder, appended, as a
# host process's does; exec keeps the program the init's only child.
_LOG_TO_FILE = 'exec "$0" "$@" >>"$ACCOMPANIST_LOG" 2>&1'


def docker_available() -> str | None:
    """None if a Docker daemon answers through the SDK, else why not (one line)."""
    try:
        import docker
    except ImportError:
        return "the Python package 'docker' is not installed"
    try:
        docker.from_env(timeout=5).ping()
    except Exception as exc:
        return f"no Docker daemon answers ({type(exc).__name__}: {exc})"
    return None


def image_available(image: str = DEFAULT_IMAGE) -> str | None:
    """None if ``image`` exists locally, else why not (one line)."""
    problem = docker_available()
    if problem is not None:
        return problem
    import docker

    try:
        docker.from_env(timeout=5).images.get(image)
    except docker.errors.ImageNotFound:
        return f"no image {image!r} (build it with `make image`)"
    return None


class Container:
    """One incarnation of a spec as a container (an :class:`~launch.spec.Incarnation`)."""

    def __init__(self, container: Any) -> None:
        self._container = container
        self._exit: int | None = None
        self._sent: set[int] = set()  # signals delivered to this run
        self._last_signal: int | None = None
        container.reload()
        pid = int(container.attrs["State"].get("Pid") or 0)
        self._init: psutil.Process | None = None
        with contextlib.suppress(psutil.Error):
            self._init = psutil.Process(pid) if pid else None

    @property
    def name(self) -> str:
        return str(self._container.name)

    def poll(self) -> int | None:
        if self._exit is not None:
            return self._exit
        # The host's view of the container's init is enough while it lives: no API call per
        # poll, which health waits make every 50 ms.
        with contextlib.suppress(psutil.Error):
            if (
                self._init is not None
                and self._init.is_running()  # also: not a reused pid
                and self._init.status() != psutil.STATUS_ZOMBIE
            ):
                return None
        try:
            code = int(self._container.wait(timeout=10)["StatusCode"])
        except Exception:
            code = -1
        # As a host process reports it: a run ended by a signal we sent is -signal, so that
        # exit codes mean the same on both backends (the container says 128 + signal).
        if code - 128 in self._sent:
            code = -(code - 128)
        self._exit = code
        return self._exit

    def processes(self) -> list[psutil.Process]:
        if self._init is None or self.poll() is not None:
            return []
        try:
            return [self._init, *self._init.children(recursive=True)]
        except psutil.Error:
            return []

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None:
            return
        if sig != signal.SIGKILL:
            with contextlib.suppress(Exception):
                self.resume()  # a frozen process cannot act on a signal
        with contextlib.suppress(Exception):
            self._container.kill(signal=signal.Signals(sig).name)
            self._sent.add(sig)
        self._last_signal = sig

    def pause(self) -> None:
        if self.poll() is None:
            self._container.pause()

    def resume(self) -> None:
        self._container.reload()
        if self._container.attrs["State"].get("Paused"):
            self._container.unpause()

    def stop(self, sig: int, grace_s: float) -> None:
        """As for a host process; the stopped container stays until the backend closes, so
        that a crash costs a SIGKILL and nothing else (no removal on the restart's path)."""
        if self._exit is not None:
            return
        with contextlib.suppress(Exception):
            self.resume()  # docker refuses to signal a paused container
        if sig != signal.SIGKILL:
            if sig != self._last_signal:  # not asked already (stop_all signals everyone first)
                self.send_signal(sig)
            deadline = time.monotonic() + grace_s
            while self.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.poll() is None:
            with contextlib.suppress(Exception):
                self._container.kill(signal="SIGKILL")
                self._sent.add(signal.SIGKILL)
            self.poll()


class ContainerBackend:
    """Runs each spec in a container of ``image`` on the host network (a
    :class:`~launch.spec.Backend`); ``cpus`` caps each container's CPU (``docker --cpus``)."""

    name = "docker"

    def __init__(self, run_dir: Path, image: str | None = None, cpus: float | None = None) -> None:
        image = image or DEFAULT_IMAGE
        problem = image_available(image)
        if problem is not None:
            raise DeployError(f"the docker backend cannot run: {problem}")
        import docker

        self._client = docker.from_env(timeout=60)
        self.image, self.cpus = image, cpus
        self.run_dir = Path(run_dir).resolve()
        self.supervisor_id = uuid.uuid4().hex[:10]
        me = psutil.Process()
        self._harness = f"{me.pid}:{me.create_time():.3f}"
        remove_orphans(self._client)

    def facts(self) -> dict[str, object]:
        """What the results must say about where their processes ran."""
        image = self._client.images.get(self.image)
        return {
            "backend": self.name,
            "image": self.image,
            "image_id": image.id,
            "docker_version": self._client.version().get("Version"),
            "cpus_per_process": self.cpus,
        }

    def launch(self, spec: ProcessSpec, log_path: Path, incarnation: int) -> Container:
        argv = ["python" if arg == sys.executable else str(arg) for arg in spec.argv]
        env = {
            **spec.env,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(SOURCE), spec.env.get("PYTHONPATH", "")) if p
            ),
            "ACCOMPANIST_LOG": str(log_path.resolve()),
            # The harness's uid has no entry in the image's /etc/passwd: programs that look up
            # their user or home (Temporal's dev server does) find these instead.
            "USER": spec.env.get("USER", "accompanist"),
            "HOME": spec.env.get("HOME", "/tmp"),
        }
        cwd = Path(spec.cwd or Path.cwd()).resolve()
        # Docker mounts a parent before the paths inside it, so a run folder inside the source
        # tree (results/) is writable within the read-only tree.
        volumes = {
            str(SOURCE): {"bind": str(SOURCE), "mode": "ro"},
            str(self.run_dir): {"bind": str(self.run_dir), "mode": "rw"},
        }
        volumes |= {
            str(path): {"bind": str(path), "mode": "ro"}
            for path in _host_paths([*spec.argv, *spec.env.values(), str(cwd)], [self.run_dir])
        }
        try:
            container = self._client.containers.run(
                self.image,
                argv,
                entrypoint=["/bin/sh", "-c", _LOG_TO_FILE],
                name=f"acc-{self.supervisor_id}-{_slug(spec.name)}-{incarnation}",
                detach=True,
                init=True,  # signals reach the program, orphans are reaped
                network_mode="host",
                user=f"{os.getuid()}:{os.getgid()}",
                environment=env,
                volumes=volumes,
                working_dir=str(cwd),  # relative paths mean what they mean on the host
                labels={LABEL_SUPERVISOR: self.supervisor_id, LABEL_HARNESS: self._harness},
                nano_cpus=int(self.cpus * 1e9) if self.cpus and not spec.harness else None,
                # The image's health check asks a sidecar on its configured port: a container
                # of the harness is watched by the supervisor instead, and a probe process
                # every few seconds would only add noise to the measurements.
                healthcheck={"test": ["NONE"]},
                stdin_open=False,
            )
        except Exception as exc:
            raise DeployError(f"{spec.name}: docker could not start its container: {exc}") from exc
        return Container(container)

    def close(self) -> None:
        """Remove every container of this supervisor that is still there."""
        with contextlib.suppress(Exception):
            for container in self._client.containers.list(
                all=True, filters={"label": f"{LABEL_SUPERVISOR}={self.supervisor_id}"}
            ):
                with contextlib.suppress(Exception):
                    container.remove(force=True)
        self._client.close()


def remove_orphans(client: Any) -> list[str]:
    """Remove the containers of harness processes that are gone (killed with no teardown);
    return their names."""
    removed = []
    for container in client.containers.list(all=True, filters={"label": LABEL_HARNESS}):
        pid, _, created = container.labels.get(LABEL_HARNESS, "").partition(":")
        with contextlib.suppress(psutil.Error, ValueError):
            if abs(psutil.Process(int(pid)).create_time() - float(created)) < 0.01:
                continue  # its harness still runs
        with contextlib.suppress(Exception):
            container.remove(force=True)
            removed.append(container.name)
    return removed


def _host_paths(words: Iterable[str], mounted: list[Path]) -> list[Path]:
    """Absolute paths named in ``words`` (alone or after ``=``) that exist on the host and are
    not inside ``mounted`` or the source tree: the extra read-only mounts a container needs."""
    roots = [*mounted, SOURCE, Path(sys.executable).parent]
    found: set[Path] = set()
    for word in words:
        for part in str(word).split("="):
            if not part.startswith("/"):
                continue
            path = Path(part)
            if path.exists() and not any(path.is_relative_to(root) for root in roots):
                found.add(path)
    # A path inside another one is mounted with it.
    return sorted(p for p in found if not any(p != q and p.is_relative_to(q) for q in found))


def _slug(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", name).strip("-") or "process"
