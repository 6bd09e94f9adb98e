"""The latency proxy: delay per direction, byte order, half-close, resets, the CLI, delays changed
while it runs, and the probe of what it adds under load."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from bench.proxy import (
    DIRECT,
    PROXY_CSV,
    LatencyProxy,
    Lateness,
    LinkProbe,
    LinkSpec,
    measure_round_trip,
    proxy_added,
    set_delays,
)
from bench.topology import write_links_file
from launch import ProcessSpec, Supervisor, free_ports

DELAY_MS = 40.0
SLACK_MS = 200.0  # generous: this box has two busy cores


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    await writer.drain()
    writer.close()


@pytest.fixture
async def echo_port():
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_round_trip_pays_the_delay_in_each_direction(echo_port: int) -> None:
    async with LatencyProxy([LinkSpec("echo", echo_port, DELAY_MS)]) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port("echo"))
        rtts = []
        for _ in range(3):
            t0 = time.perf_counter()
            writer.write(b"ping")
            await writer.drain()
            await reader.readexactly(4)
            rtts.append((time.perf_counter() - t0) * 1000)
        writer.close()
    assert min(rtts) >= 2 * DELAY_MS
    assert max(rtts) < 2 * DELAY_MS + SLACK_MS


async def test_pipelined_bytes_arrive_in_order_and_latency_does_not_cap_throughput(
    echo_port: int,
) -> None:
    payload = os.urandom(4_000_000)
    async with LatencyProxy([LinkSpec("echo", echo_port, DELAY_MS, jitter_ms=20.0)]) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port("echo"))

        async def send() -> None:
            # Many small writes: each chunk gets its own jittered release time.
            for i in range(0, len(payload), 4096):
                writer.write(payload[i : i + 4096])
                await writer.drain()
            writer.write_eof()

        t0 = time.perf_counter()
        sender = asyncio.create_task(send())
        received = await asyncio.wait_for(reader.read(-1), 30)
        elapsed = time.perf_counter() - t0
        await sender
        writer.close()
    assert received == payload
    # ~1000 chunks: a serial sleep-per-chunk proxy would need ~1000 x 40 ms = 40 s.
    assert elapsed < 10


async def test_half_close_reaches_the_target_and_its_answer_still_returns(echo_port: int) -> None:
    async with LatencyProxy([LinkSpec("echo", echo_port, 5.0)]) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port("echo"))
        writer.write(b"last words")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(-1), 5) == b"last words"
        writer.close()


async def test_many_concurrent_connections(echo_port: int) -> None:
    async with LatencyProxy([LinkSpec("echo", echo_port, 10.0)]) as proxy:

        async def one(i: int) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port("echo"))
            writer.write(str(i).encode() * 50)
            writer.write_eof()
            data = await reader.read(-1)
            writer.close()
            return data

        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(100))), 30)
    assert results == [str(i).encode() * 50 for i in range(100)]


async def test_a_refused_target_resets_the_client() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead_port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    async with LatencyProxy([LinkSpec("dead", dead_port, 5.0)]) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port("dead"))
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(10), 5)
        writer.close()


async def test_a_target_reset_propagates_to_the_client() -> None:
    async def reset_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await asyncio.start_server(reset_at_once, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with LatencyProxy([LinkSpec("rst", port, 5.0)]) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port("rst"))
        writer.write(b"x")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(10), 5)
        writer.close()
    server.close()


async def test_measure_round_trip_sees_the_link_delay() -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with LatencyProxy([LinkSpec("h", port, DELAY_MS)]) as proxy:
        rt = await measure_round_trip("127.0.0.1", proxy.port("h"), samples=2)
    server.close()
    assert 2 * DELAY_MS <= rt.first_byte_ms < 2 * DELAY_MS + SLACK_MS


async def test_handshake_adds_one_round_trip_to_a_new_connection(echo_port: int) -> None:
    spec = LinkSpec("echo", echo_port, DELAY_MS, handshake=True)
    async with LatencyProxy([spec]) as proxy:
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port("echo"))
        writer.write(b"hi")
        await reader.readexactly(2)
        first = (time.perf_counter() - t0) * 1000
        writer.close()
    assert 4 * DELAY_MS <= first < 4 * DELAY_MS + SLACK_MS


def test_cli_hosts_several_links_and_prints_their_bound_ports() -> None:
    async def scenario() -> None:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.proxy", "--listen", "127.0.0.1:0",
            "--target", f"127.0.0.1:{port}", "--delay-ms", "10",
            "--link", f"127.0.0.1:0=127.0.0.1:{port}:5",
            stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            lines = [json.loads(await asyncio.wait_for(proxy_line(proc), 20)) for _ in range(2)]
            assert sorted(line["delay_ms"] for line in lines) == [5, 10]
            assert {line["target"] for line in lines} == {f"127.0.0.1:{port}"}
            line = lines[0]
            reader, writer = await asyncio.open_connection("127.0.0.1", line["port"])
            writer.write(b"via process")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(-1), 5) == b"via process"
            writer.close()
        finally:
            proc.terminate()
            await proc.wait()
            server.close()

    async def proxy_line(proc: asyncio.subprocess.Process) -> bytes:
        """The next line describing a link (the process also says how it is scheduled)."""
        assert proc.stdout is not None
        while not (line := await proc.stdout.readline()).startswith(b"{"):
            assert line, "the proxy exited"
        return line

    asyncio.run(scenario())


async def _round_trip_ms(port: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.perf_counter()
    writer.write(b"ping")
    await writer.drain()
    await reader.readexactly(4)
    writer.close()
    return (time.perf_counter() - t0) * 1000


async def test_a_running_link_takes_a_new_delay_and_an_unknown_name_changes_nothing(
    echo_port: int,
) -> None:
    links = [LinkSpec("a", echo_port, 1.0), LinkSpec("b", echo_port, 1.0)]
    async with LatencyProxy(links) as proxy:
        assert proxy.set_delay(DELAY_MS, ["a"]) == ["a"]
        assert await _round_trip_ms(proxy.port("a")) >= 2 * DELAY_MS
        assert proxy.links["b"].delay_ms == 1.0
        with pytest.raises(KeyError):
            proxy.set_delay(5.0, ["a", "nowhere"])
        assert proxy.links["a"].delay_ms == DELAY_MS
        assert proxy.set_delay(0.0) == ["a", "b"]
        with pytest.raises(ValueError):
            proxy.set_delay(-1.0)


class _EchoThread:
    """An echo server on its own event loop, for tests whose main thread blocks."""

    def __init__(self) -> None:
        self.port = free_ports(1)[0]
        ready = threading.Event()

        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop = asyncio.Event()
            server = await asyncio.start_server(_echo, "127.0.0.1", self.port)
            ready.set()
            await self.stop.wait()
            server.close()

        self.thread = threading.Thread(target=asyncio.run, args=(serve(),))
        self.thread.start()
        ready.wait(10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join()


@contextlib.contextmanager
def _proxy_process(links: list[LinkSpec], folder: Path, *extra: str) -> Iterator[None]:
    """``python -m bench.proxy --links FILE`` until the block ends, as the harness runs it."""
    path = write_links_file(links, folder / "links.toml")
    spec = ProcessSpec(
        "proxy",
        [sys.executable, "-m", "bench.proxy", "--links", str(path), *extra],
        ports=[link.listen_port for link in links if link.listen_port],
        ready_line="ready",
        stop_grace_s=10.0,
    )
    with Supervisor(folder) as supervisor:
        supervisor.start(spec)
        yield


@pytest.fixture
def echo_thread() -> Iterator[_EchoThread]:
    echo = _EchoThread()
    yield echo
    echo.close()


def _two_links(echo: _EchoThread, ports: Iterator[int]) -> list[LinkSpec]:
    return [
        LinkSpec(name, echo.port, delay, listen_port=next(ports))
        for name, delay in (("slow", 20.0), ("fast", 2.0))
    ]


def test_the_control_port_sets_delays_of_a_proxy_process_and_refuses_unknown_links(
    echo_thread: _EchoThread, tmp_path: Path
) -> None:
    ports = iter(free_ports(3))
    slow, fast = links = _two_links(echo_thread, ports)
    control = ("127.0.0.1", next(ports))
    with _proxy_process(links, tmp_path, "--control", f"{control[0]}:{control[1]}"):
        assert asyncio.run(set_delays(control, 30.0, ["fast"])) == ["fast"]
        assert asyncio.run(_round_trip_ms(fast.listen_port)) >= 60.0
        assert asyncio.run(set_delays(control, 0.0)) == ["slow", "fast"]
        assert asyncio.run(_round_trip_ms(slow.listen_port)) < 2 * slow.delay_ms
        with pytest.raises(RuntimeError, match="nowhere"):
            asyncio.run(set_delays(control, 5.0, ["nowhere"]))


def test_the_probe_reports_what_the_proxy_adds_to_each_link(
    echo_thread: _EchoThread, tmp_path: Path
) -> None:
    ports = iter(free_ports(5))
    links = _two_links(echo_thread, ports)
    probe = LinkProbe(links, ports, interval_s=0.05)
    assert {t.name for t in probe.twins} == {"probe:slow", "probe:fast"}
    assert {t.target_port for t in probe.twins} == {probe.echo_port}
    assert [t.delay_ms for t in probe.twins] == [20.0, 2.0]
    with (
        _proxy_process([*links, *probe.twins], tmp_path),
        probe.running(tmp_path / PROXY_CSV, after_s=0.1),
    ):
        time.sleep(1.5)
    table = pd.read_csv(tmp_path / PROXY_CSV).set_index("link")
    assert set(table.index) == {"slow", "fast", DIRECT}
    assert (table["samples"] > 3).all() and (table["errors"] == 0).all()
    assert table.loc["slow", "configured_one_way_ms"] == 20.0
    # The proxy never delivers early, so what it adds is never negative.
    assert (table.loc[["slow", "fast"], "added_p50_ms"] >= 0).all()
    figure = proxy_added(tmp_path)
    assert figure["proxy_added_p50_ms"] == table.loc[["slow", "fast"], "added_p50_ms"].max()
    own = figure["proxy_added_p50_ms"] - table.loc[DIRECT, "added_p50_ms"]
    assert figure["proxy_own_p50_ms"] == pytest.approx(own)
    assert figure["proxy_probes"] == table.loc[["slow", "fast"], "samples"].sum()
    assert proxy_added(tmp_path / "elsewhere") == {}


def test_the_probe_records_how_late_the_proxy_released_the_traffic_of_each_link(
    echo_thread: _EchoThread, tmp_path: Path
) -> None:
    """With the proxy's control port, proxy.csv says how late the system's own chunks left,
    and the own share per round trip is twice that, on the worst link."""
    ports = iter(free_ports(6))
    links = _two_links(echo_thread, ports)
    probe = LinkProbe(links, ports, interval_s=0.05)
    control = ("127.0.0.1", next(ports))
    with (
        _proxy_process([*links, *probe.twins], tmp_path, "--control", f"{control[0]}:{control[1]}"),
        probe.running(tmp_path / PROXY_CSV, after_s=0.1, proxy=control),
    ):
        time.sleep(0.3)  # past the warm-up (after_s), which the lateness does not count
        for _ in range(5):  # the system's traffic: round trips through the real "slow" link
            asyncio.run(_round_trip_ms(links[0].listen_port))
        time.sleep(0.5)
    table = pd.read_csv(tmp_path / PROXY_CSV).set_index("link")
    assert table.loc["slow", "releases"] >= 10  # both ways of 5 round trips
    assert table.loc["fast", "releases"] == 0  # nobody used it but the probe's twin
    late = table.loc["slow", "release_late_p50_ms"]
    assert 0 < late <= table.loc["slow", "release_late_p99_ms"]
    assert proxy_added(tmp_path)["proxy_own_p50_ms"] == pytest.approx(2 * late)


def test_lateness_quantiles_come_from_a_bounded_histogram() -> None:
    lateness = Lateness()
    assert math.isnan(lateness.quantile_ms(0.5))
    for late_us in [5, 15, 15, 25, 95, 100_000]:  # the last beyond the histogram's range
        lateness.add(late_us * 1e-6)
    assert lateness.summary() == {"releases": 6, "late_p50_ms": 0.02, "late_p99_ms": 50.01}
    assert len(lateness.counts) == Lateness.BINS + 1


def test_a_probe_without_links_writes_nothing(tmp_path: Path) -> None:
    with LinkProbe([], iter(())).running(tmp_path / PROXY_CSV):
        pass
    assert not (tmp_path / PROXY_CSV).exists()


async def test_the_release_clock_calls_every_callback_and_never_early() -> None:
    from bench.proxy import _ReleaseClock

    clock, rng = _ReleaseClock(), random.Random(4)
    fired: list[tuple[float, float]] = []
    done = asyncio.get_running_loop().create_future()
    start = time.monotonic()
    whens = sorted(start + rng.uniform(0.0005, 0.05) for _ in range(300))
    for when in rng.sample(whens, len(whens)):
        clock.call_at(when, lambda w=when: fired.append((w, time.monotonic())))
    clock.call_at(whens[-1], lambda: done.set_result(None))
    await asyncio.wait_for(done, 10)
    clock.close()
    assert len(fired) == len(whens)
    # It wakes early by its measured wake-up latency, then waits out the rest.
    assert all(at >= when for when, at in fired)
