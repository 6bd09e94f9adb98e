"""The container backend: the supervisor's verbs on real containers.

Skipped, with one line saying why, where there is no Docker daemon or no image (`make image`).
"""

from __future__ import annotations

import contextlib
import sys
import textwrap
import urllib.request
from pathlib import Path

import docker
import psutil
import pytest

from launch import DeployError, ProcessSpec, Supervisor, free_port, port_is_free
from launch.container import DEFAULT_IMAGE, LABEL_HARNESS, image_available, remove_orphans

pytestmark = [pytest.mark.docker]
_missing = image_available()
if _missing is not None:
    pytest.skip(f"docker tests skipped: {_missing}", allow_module_level=True)

# Serves GET / with the contents of the file named by argv[2], and writes argv[3] on start.
SERVER = textwrap.dedent(
    """
    import http.server, pathlib, sys
    pathlib.Path(sys.argv[3]).write_text("written from the container")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = pathlib.Path(sys.argv[2]).read_bytes()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)


def _get(port: int, timeout_s: float = 5.0) -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout_s) as resp:
            return resp.read()
    except OSError:
        return None


@pytest.fixture
def server_spec(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> ProcessSpec:
    # The script and the file it serves live outside the run folder: mounted read-only.
    outside = tmp_path_factory.mktemp("outside")
    (outside / "server.py").write_text(SERVER)
    (outside / "page.txt").write_text("hello from the host")
    port = free_port()
    run_dir = tmp_path / "run"
    argv = [sys.executable, str(outside / "server.py"), str(port), str(outside / "page.txt"),
            str(run_dir / "written.txt")]  # fmt: skip
    return ProcessSpec("web", argv, health_url=f"http://127.0.0.1:{port}/", ports=[port],
                       startup_timeout_s=60, stop_grace_s=2)  # fmt: skip


def _port(spec: ProcessSpec) -> int:
    return spec.ports[0]


def test_a_container_serves_on_the_host_network_reads_the_host_and_writes_the_run_folder(
    server_spec: ProcessSpec, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    with Supervisor(run_dir, backend="docker", cpus=0.5) as sup:
        sup.start(server_spec)
        assert _get(_port(server_spec)) == b"hello from the host"
        written = run_dir / "written.txt"
        assert written.read_text() == "written from the container"
        assert written.stat().st_uid == psutil.Process().uids().real  # the harness's own uid
        pid = sup.pid("web")
        assert pid is not None and pid != psutil.Process().pid
        container = _only_container()
        assert container.attrs["HostConfig"]["NetworkMode"] == "host"
        assert container.attrs["HostConfig"]["NanoCpus"] == 500_000_000
        assert container.attrs["Config"]["Image"] == DEFAULT_IMAGE
    assert port_is_free(_port(server_spec))
    assert _containers() == []
    assert "--- start" in (run_dir / "logs" / "web.log").read_text()


def test_pause_freezes_the_container_and_resume_thaws_it(
    server_spec: ProcessSpec, tmp_path: Path
) -> None:
    with Supervisor(tmp_path / "run", backend="docker") as sup:
        sup.start(server_spec)
        sup.pause("web")
        assert _only_container().attrs["State"]["Paused"] is True
        assert _get(_port(server_spec), timeout_s=1.0) is None  # alive but silent
        assert sup.exit_code("web") is None
        sup.resume("web")
        assert _get(_port(server_spec)) == b"hello from the host"
        sup.pause("web")  # a paused container is still torn down
    assert _containers() == []
    assert port_is_free(_port(server_spec))


def test_kill_is_a_sigkill_of_the_container_and_restart_makes_a_new_one(
    server_spec: ProcessSpec, tmp_path: Path
) -> None:
    with Supervisor(tmp_path / "run", backend="docker") as sup:
        sup.start(server_spec)
        first = _only_container().name
        sup.kill("web")
        assert sup.exit_code("web") == -9  # as a host process killed by SIGKILL reports it
        assert _only_container().status == "exited"  # removed at teardown, not on the crash path
        assert _get(_port(server_spec), timeout_s=1.0) is None
        sup.restart("web")
        assert _get(_port(server_spec)) == b"hello from the host"
        assert [c.name for c in _containers() if c.status == "running"] != [first]
        cpu = sup.cpu_seconds()["web"]
        assert sum(cpu) > 0
    assert _containers() == []


def test_a_container_that_dies_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "print('about to fail'); raise SystemExit(3)"]
    with Supervisor(tmp_path / "run", backend="docker") as sup, pytest.raises(DeployError) as err:
        sup.start(ProcessSpec("dies", argv, ports=[free_port()], startup_timeout_s=30))
    assert "exited with 3" in str(err.value) and "about to fail" in str(err.value)
    assert _containers() == []


def test_containers_of_a_dead_harness_are_removed() -> None:
    client = docker.from_env()
    # pid 1 runs, but not since this create time: the harness that labelled it is gone.
    orphan = client.containers.run(
        DEFAULT_IMAGE, ["sleep", "600"], entrypoint=[], detach=True, network_mode="host",
        labels={LABEL_HARNESS: "1:12.000"}, healthcheck={"test": ["NONE"]},
    )  # fmt: skip
    try:
        assert orphan.name in remove_orphans(client)
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(orphan.id)
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            orphan.remove(force=True)


def _containers() -> list[docker.models.containers.Container]:
    me = psutil.Process()
    label = f"{LABEL_HARNESS}={me.pid}:{me.create_time():.3f}"
    return docker.from_env().containers.list(all=True, filters={"label": label})


def _only_container() -> docker.models.containers.Container:
    (container,) = _containers()
    return container
