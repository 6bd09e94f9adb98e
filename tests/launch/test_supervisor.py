"""The supervisor: health waits, kill -9 and restart, pause and resume, and a teardown that leaves
nothing."""

from __future__ import annotations

import asyncio
import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from bench.proxy import measure_links
from bench.topology import load_topology, plan_links, write_links_file
from launch import DeployError, ProcessSpec, Supervisor, free_port, free_ports, port_is_free

# A parent that starts a grandchild (which leaves the process group) and then serves HTTP.
FAMILY = textwrap.dedent(
    """
    import http.server, subprocess, sys
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                     start_new_session=True)
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
    """
)


def _family_spec(tmp_path: Path, name: str = "family") -> ProcessSpec:
    script = tmp_path / "family.py"
    script.write_text(FAMILY)
    port = free_port()
    return ProcessSpec(
        name=name,
        argv=[sys.executable, str(script), str(port)],
        health_url=f"http://127.0.0.1:{port}/health",
        ports=[port],
        startup_timeout_s=20,
        stop_grace_s=2,
    )


def _descendants(pid: int) -> list[psutil.Process]:
    return [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]


def _survivors(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Processes still running; zombies are dead (init reaps orphans in its own time)."""
    deadline = time.monotonic() + 5
    while True:
        alive = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _wait_for_family(pid: int, size: int) -> list[psutil.Process]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        family = _descendants(pid)
        if len(family) >= size:
            return family
        time.sleep(0.05)
    raise AssertionError("grandchildren did not start")


def test_teardown_leaves_no_child_or_grandchild(tmp_path: Path) -> None:
    spec = _family_spec(tmp_path)
    with Supervisor(tmp_path / "run") as supervisor:
        supervisor.start(spec)
        pid = supervisor.pid("family")
        assert pid is not None
        family = _wait_for_family(pid, 3)
    assert _survivors(family) == []
    assert port_is_free(spec.ports[0])


def test_teardown_also_runs_when_the_harness_fails(tmp_path: Path) -> None:
    spec = _family_spec(tmp_path)
    family: list[psutil.Process] = []
    with pytest.raises(RuntimeError, match="boom"), Supervisor(tmp_path / "run") as supervisor:
        supervisor.start(spec)
        family = _wait_for_family(supervisor.pid("family") or 0, 3)
        raise RuntimeError("boom")
    assert _survivors(family) == []


def test_a_ctrl_c_during_the_teardown_waits_for_it_and_then_stops_the_harness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _family_spec(tmp_path)
    family: list[psutil.Process] = []
    supervisor = Supervisor(tmp_path / "run")
    stop_all = supervisor.stop_all

    def interrupted() -> list[int]:
        os.kill(os.getpid(), signal.SIGINT)  # as a second Ctrl-C would, mid-teardown
        return stop_all()

    monkeypatch.setattr(supervisor, "stop_all", interrupted)
    with pytest.raises(KeyboardInterrupt), supervisor:
        supervisor.start(spec)
        family = _wait_for_family(supervisor.pid("family") or 0, 3)
    assert _survivors(family) == []


def test_sigterm_to_the_harness_tears_everything_down(tmp_path: Path) -> None:
    spec = _family_spec(tmp_path)
    harness = tmp_path / "harness.py"
    harness.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from pathlib import Path
            from launch import ProcessSpec, Supervisor
            with Supervisor(Path({str(tmp_path / "run")!r})) as s:
                s.start(ProcessSpec({spec.name!r}, {list(spec.argv)!r},
                                    health_url={spec.health_url!r}, stop_grace_s=2))
                print(s.pid({spec.name!r}), flush=True)
                time.sleep(600)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(harness)], stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).parents[2],
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        family = _wait_for_family(int(proc.stdout.readline()), 3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
        assert _survivors(family) == []
    finally:
        proc.kill()


def test_kill_and_restart_by_name(tmp_path: Path) -> None:
    spec = _family_spec(tmp_path)
    with Supervisor(tmp_path / "run") as supervisor:
        supervisor.start(spec)
        first = supervisor.pid("family")
        supervisor.kill("family")
        assert supervisor.pid("family") is None
        assert not psutil.pid_exists(first or 0) or psutil.Process(first).status() == "zombie"
        supervisor.restart("family")
        assert supervisor.pid("family") not in (None, first)
        supervisor.write_cpu_csv(tmp_path / "cpu.csv")
    rows = list(csv.DictReader((tmp_path / "cpu.csv").open()))
    assert rows[0]["process"] == "family" and rows[0]["starts"] == "2"
    assert float(rows[0]["cpu_s"]) > 0
    assert "--- start" in (tmp_path / "run" / "logs" / "family.log").read_text()


def test_a_process_that_dies_while_starting_reports_its_log(tmp_path: Path) -> None:
    spec = ProcessSpec(
        "doomed",
        [sys.executable, "-c", "import sys; print('no config file'); sys.exit(3)"],
        health_url=f"http://127.0.0.1:{free_port()}/health",
    )
    with Supervisor(tmp_path / "run") as supervisor, pytest.raises(DeployError) as err:
        supervisor.start(spec)
    assert "exited with 3" in str(err.value) and "no config file" in str(err.value)


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(port_is_free(p) for p in ports)
    assert os.cpu_count()


def test_one_supervised_proxy_process_hosts_every_link_of_a_topology(tmp_path: Path) -> None:
    spec = _family_spec(tmp_path, "service:payment")
    topo = load_topology("three-zones")
    placement = topo.place(["warehouse", "payment", "loyalty"])
    links = plan_links(topo, placement, {"service:payment": spec.ports[0]}, iter(free_ports(2)))
    links_file = write_links_file(list(links.values()), tmp_path / "links.toml")
    proxy = ProcessSpec(
        "proxy",
        [sys.executable, "-m", "bench.proxy", "--links", str(links_file)],
        cwd=Path(__file__).parents[2],
        ports=[link.listen_port for link in links.values()],
    )
    with Supervisor(tmp_path / "run") as supervisor:
        supervisor.start(spec)
        supervisor.start(proxy)
        rows = asyncio.run(measure_links(list(links.values())))
    assert [row["link"] for row in rows] == ["a->service:payment", "c->service:payment"]
    for row in rows:
        assert "error" not in row
        assert 20.0 <= float(row["first_byte_ms"]) < 20.0 + 500.0  # 2 x 10 ms, + handshake
    assert all(port_is_free(p) for p in proxy.ports)


def test_a_process_without_a_port_is_ready_when_this_incarnation_says_so(tmp_path: Path) -> None:
    """A Temporal worker has nothing to probe: it is ready once it prints its ready line, and
    a restarted one only once the new incarnation has printed it again."""
    marker = tmp_path / "starts"
    script = tmp_path / "slow_worker.py"
    script.write_text(textwrap.dedent(f"""
        import pathlib, time
        marker = pathlib.Path({str(marker)!r})
        starts = len(marker.read_text()) if marker.exists() else 0
        marker.write_text("x" * (starts + 1))
        time.sleep(1.0)
        print("worker warehouse/payment ready", starts, flush=True)
        time.sleep(600)
    """))  # fmt: skip
    ready = "worker warehouse/payment ready"
    spec = ProcessSpec("runtime:payment", [sys.executable, str(script)], ready_line=ready)
    with Supervisor(tmp_path / "logs") as sup:
        sup.start(spec)
        log = sup.log_path(spec.name)
        assert "ready 0" in log.read_text()
        sup.restart(spec.name)
        assert "ready 1" in log.read_text()


def _answers(url: str, timeout_s: float) -> bool:
    """Whether ``url`` answers 200 within ``timeout_s`` (the client's own timeout)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status == 200
    except OSError:
        return False


def _statuses(procs: list[psutil.Process], wanted: str) -> list[str]:
    """The processes' statuses once all are ``wanted`` (signals land a moment after they are
    sent), or as they are when a few seconds have passed."""
    deadline = time.monotonic() + 5
    while True:
        statuses = [p.status() for p in procs]
        if all(s == wanted for s in statuses) or time.monotonic() > deadline:
            return statuses
        time.sleep(0.02)


def test_a_paused_process_and_all_its_descendants_are_stopped_and_silent_until_resumed(
    tmp_path: Path,
) -> None:
    spec = _family_spec(tmp_path)
    assert spec.health_url is not None
    with Supervisor(tmp_path / "run") as supervisor:
        supervisor.start(spec)
        family = _wait_for_family(supervisor.pid("family") or 0, 3)
        assert any(os.getsid(p.pid) != os.getsid(family[0].pid) for p in family[1:]), (
            "one grandchild left the process group"
        )
        supervisor.pause("family")
        assert _statuses(family, psutil.STATUS_STOPPED) == [psutil.STATUS_STOPPED] * 3
        assert not _answers(spec.health_url, timeout_s=0.5)
        assert supervisor.exit_code("family") is None, "a paused process has not ended"
        supervisor.resume("family")
        assert psutil.STATUS_STOPPED not in _statuses(family, psutil.STATUS_SLEEPING)
        assert _answers(spec.health_url, timeout_s=10)


def test_stop_all_tears_a_paused_process_down_with_no_orphan(tmp_path: Path) -> None:
    spec = _family_spec(tmp_path)
    with Supervisor(tmp_path / "run") as supervisor:
        supervisor.start(spec)
        family = _wait_for_family(supervisor.pid("family") or 0, 3)
        supervisor.pause("family")
        assert _statuses(family, psutil.STATUS_STOPPED) == [psutil.STATUS_STOPPED] * 3
    assert _survivors(family) == []
    assert port_is_free(spec.ports[0])
    # SIGTERM, held while paused and acted on once continued, ended it.
    assert supervisor.exit_code("family") == -signal.SIGTERM


def test_exit_code_after_stop_is_how_the_process_ended(tmp_path: Path) -> None:
    """A process that exits 0 on SIGTERM reports 0, stopped by name or by the teardown (which
    asks each process once: a second SIGTERM during its shutdown would kill it with -15); one
    that does not handle SIGTERM, paused or not, reports -15."""
    clean = [sys.executable, "-c", textwrap.dedent("""
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        print("up", flush=True)
        time.sleep(600)
    """)]  # fmt: skip
    names = [f"clean-{i}" for i in range(4)]
    with Supervisor(tmp_path / "run") as supervisor:
        supervisor.start_all([ProcessSpec(name, clean, ready_line="up") for name in names])
        supervisor.start(_family_spec(tmp_path))
        assert supervisor.exit_code("clean-0") is None
        supervisor.stop("clean-0")
        supervisor.pause("family")
        supervisor.stop("family")
        assert supervisor.exit_code("clean-0") == 0
        assert supervisor.exit_code("family") == -signal.SIGTERM
    assert [supervisor.exit_code(name) for name in names] == [0] * len(names)
