"""The latency proxy: delay per direction, byte order, half-close, resets, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import time

import pytest

from bench.proxy import LatencyProxy, LinkSpec, measure_round_trip

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
        assert proc.stdout is not None
        return await proc.stdout.readline()

    asyncio.run(scenario())
