"""A userspace TCP latency proxy: the stand-in for a cross-zone network link.

This kernel has no ``tc netem``, so every cross-zone link of a topology is a TCP proxy that
listens on a port, forwards to one target and holds each chunk of bytes for a one-way delay
(plus optional jitter) in each direction. Each direction is a timestamped queue: a reader task
stamps every chunk with its release time and keeps reading, a writer task releases chunks when
they are due, so the link is pipelined and its throughput does not depend on its latency.
Release times never decrease within a direction, so jitter never reorders bytes. EOF (half-close)
and resets travel through the link like data, after the same delay. One process (or one event
loop) hosts many links, because two cores cannot afford a process per link.

In process::

    async with LatencyProxy([LinkSpec("payment", target_port=8002, delay_ms=10)]) as proxy:
        port = proxy.port("payment")

As a process (prints one JSON line per bound link, then ``ready``)::

    python -m bench.proxy --listen 127.0.0.1:0 --target 127.0.0.1:8002 --delay-ms 10
    python -m bench.proxy --link 127.0.0.1:7102=127.0.0.1:7002:10 --link ...
    python -m bench.proxy --links links.toml
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import socket
import ssl
import statistics
import struct
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

_CHUNK = 64 * 1024
# Bounded so that a fast sender to a slow receiver is back-pressured instead of buffering
# without limit; 1024 chunks of at most 64 KiB is far above any bandwidth-delay product here.
_QUEUE_CHUNKS = 1024
_EOF = b""


class _Reset:
    """Queue marker: the sending side reset its connection; reset the other side too."""


_RESET = _Reset()


@dataclass(frozen=True)
class LinkSpec:
    """One proxied link: listen on ``listen_host:listen_port`` and forward to the target.

    ``delay_ms`` is the one-way latency applied to each direction; ``jitter_ms`` adds a uniform
    random extra in ``[0, jitter_ms]`` per chunk (never reordering). ``handshake`` models the
    TCP three-way handshake of a new connection: the first client bytes reach the target one
    round trip later, as they would on a real link, so that a system which opens a connection
    per call pays for it. ``listen_port = 0`` picks a free port.
    """

    name: str
    target_port: int
    delay_ms: float
    target_host: str = "127.0.0.1"
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    jitter_ms: float = 0.0
    handshake: bool = False

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError(f"link {self.name!r}: delay_ms and jitter_ms must be >= 0")


class _Link:
    """A listening socket and the connections it proxies."""

    def __init__(self, spec: LinkSpec, rng: random.Random) -> None:
        self.spec = spec
        self._rng = rng
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = spec.listen_port

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.spec.listen_host, self.spec.listen_port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _delay_s(self) -> float:
        jitter = self._rng.uniform(0.0, self.spec.jitter_ms) if self.spec.jitter_ms else 0.0
        return (self.spec.delay_ms + jitter) / 1000.0

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._proxy(client_r, client_w)
        except asyncio.CancelledError:
            # Cancelled by close(); asyncio's stream callback would report it as an error.
            client_w.transport.abort()
        finally:
            self._tasks.discard(task)

    async def _proxy(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        one_way = self.spec.delay_ms / 1000.0
        # The client's connect() returned at once (the proxy is local); the target sees the
        # connection attempt one one-way delay later, like a SYN crossing the link.
        if self.spec.handshake:
            await asyncio.sleep(one_way)
        try:
            target_r, target_w = await asyncio.open_connection(
                self.spec.target_host, self.spec.target_port
            )
        except OSError:
            # The refusal travels back over the link before the client learns of it.
            await asyncio.sleep(one_way)
            _reset(client_w)
            return
        # With a handshake, data may reach the target only after SYN, SYN-ACK, then data.
        not_before = accepted + 3 * one_way if self.spec.handshake else 0.0
        up = asyncio.create_task(self._pump(client_r, target_w, client_w, not_before))
        down = asyncio.create_task(self._pump(target_r, client_w, target_w, 0.0))
        try:
            await asyncio.gather(up, down)
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            for w in (client_w, target_w):
                w.close()
            for w in (client_w, target_w):
                with contextlib.suppress(Exception):
                    await w.wait_closed()

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        src_w: asyncio.StreamWriter,
        not_before: float,
    ) -> None:
        """Forward one direction: a reader stamps chunks, a writer releases them when due."""
        queue: asyncio.Queue[tuple[float, bytes | _Reset]] = asyncio.Queue(_QUEUE_CHUNKS)
        loop = asyncio.get_running_loop()

        async def read() -> None:
            last = not_before
            while True:
                try:
                    data: bytes | _Reset = await src.read(_CHUNK)
                except (ConnectionError, OSError):
                    data = _RESET
                # max() with the previous release keeps byte order under jitter.
                last = max(last, loop.time() + self._delay_s())
                await queue.put((last, data))
                if data == _EOF or data is _RESET:
                    return

        reader = asyncio.create_task(read())
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is _RESET:
                    _reset(dst)
                    _reset(src_w)
                    return
                if data == _EOF:
                    if dst.can_write_eof():
                        with contextlib.suppress(OSError):
                            dst.write_eof()
                    return
                assert isinstance(data, bytes)
                try:
                    dst.write(data)
                    await dst.drain()
                except (ConnectionError, OSError):
                    # The receiver is gone: the sender must learn of it as a reset.
                    _reset(src_w)
                    return
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST rather than a FIN, so a reset propagates as a reset."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class LatencyProxy:
    """Hosts many links in one event loop. Use as an async context manager.

    ``seed`` makes the jitter reproducible.
    """

    def __init__(self, links: Sequence[LinkSpec], seed: int = 0) -> None:
        names = [link.name for link in links]
        if len(set(names)) != len(names):
            raise ValueError(f"link names must be unique, got {names}")
        rng = random.Random(seed)
        self._links = {spec.name: _Link(spec, rng) for spec in links}

    async def __aenter__(self) -> LatencyProxy:
        try:
            for link in self._links.values():
                await link.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening and drop every proxied connection."""
        await asyncio.gather(*(link.close() for link in self._links.values()))

    def port(self, name: str) -> int:
        """The bound listening port of the link called ``name``."""
        return self._links[name].port

    @property
    def links(self) -> dict[str, LinkSpec]:
        """The link specs, by name, with their bound ports filled in."""
        return {
            name: replace(link.spec, listen_port=link.port) for name, link in self._links.items()
        }


@dataclass(frozen=True)
class RoundTrip:
    """Measured round trips through a link, in milliseconds (median over samples)."""

    connect_ms: float
    first_byte_ms: float
    samples: int


async def measure_round_trip(
    host: str,
    port: int,
    path: str = "/health",
    samples: int = 5,
    timeout_s: float = 10.0,
    tls: ssl.SSLContext | None = None,
) -> RoundTrip:
    """Time TCP connect and an HTTP ``GET path`` to its first response byte, through a link.

    Each sample opens a fresh connection, so ``first_byte_ms`` is the round trip a new
    connection pays (two one-way delays, plus the handshake if the link models it, plus the
    target's service time). Report the medians next to the configured delays. A TLS target
    (``tls``, the context to handshake with) answers no plaintext request: there
    ``first_byte_ms`` is the TLS handshake, which takes one round trip too (TLS 1.3).
    """
    connects: list[float] = []
    firsts: list[float] = []
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    for _ in range(samples):
        t0 = time.perf_counter()
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        t1 = time.perf_counter()
        try:
            if tls is not None:
                await asyncio.wait_for(writer.start_tls(tls), timeout_s)
                first = b"handshake"
            else:
                writer.write(request)
                await writer.drain()
                first = await asyncio.wait_for(reader.read(1), timeout_s)
            t2 = time.perf_counter()
            if not first:
                raise ConnectionError(f"{host}:{port} closed without answering GET {path}")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        connects.append((t1 - t0) * 1000)
        firsts.append((t2 - t1) * 1000)
    return RoundTrip(statistics.median(connects), statistics.median(firsts), samples)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _parse_link(text: str, index: int) -> LinkSpec:
    """``LISTEN=TARGET:DELAY_MS[:JITTER_MS]``, e.g. ``127.0.0.1:0=127.0.0.1:8002:10``."""
    try:
        listen, _, rest = text.partition("=")
        parts = rest.split(":")
        target = _host_port(":".join(parts[:2]))
        delay = float(parts[2])
        jitter = float(parts[3]) if len(parts) > 3 else 0.0
        lhost, lport = _host_port(listen)
    except (IndexError, ValueError, argparse.ArgumentTypeError) as exc:
        raise SystemExit(
            f"--link {text!r}: expected LISTEN=HOST:PORT:DELAY_MS[:JITTER_MS]"
        ) from exc
    return LinkSpec(f"link{index}", target[1], delay, target[0], lhost, lport, jitter)


def load_links(path: Path) -> list[LinkSpec]:
    """Read ``[[link]]`` tables (name, listen, target, delay_ms, jitter_ms, handshake)."""
    data = tomllib.loads(path.read_text())
    specs = []
    for i, entry in enumerate(data.get("link", [])):
        where = f"{path}: link[{i}]"
        try:
            lhost, lport = _host_port(entry.get("listen", "127.0.0.1:0"))
            thost, tport = _host_port(entry["target"])
            specs.append(
                LinkSpec(
                    name=entry.get("name", f"link{i}"),
                    target_port=tport,
                    delay_ms=float(entry["delay_ms"]),
                    target_host=thost,
                    listen_host=lhost,
                    listen_port=lport,
                    jitter_ms=float(entry.get("jitter_ms", 0.0)),
                    handshake=bool(entry.get("handshake", False)),
                )
            )
        except (KeyError, ValueError, argparse.ArgumentTypeError) as exc:
            raise SystemExit(f"{where}: {exc}") from exc
    return specs


def _cli_links(args: argparse.Namespace) -> list[LinkSpec]:
    links: list[LinkSpec] = []
    if args.links:
        links += load_links(Path(args.links))
    links += [_parse_link(text, len(links) + i) for i, text in enumerate(args.link)]
    if args.target:
        lhost, lport = args.listen
        thost, tport = args.target
        links.append(LinkSpec("link", tport, args.delay_ms, thost, lhost, lport, args.jitter_ms))
    if args.handshake:
        links = [replace(spec, handshake=True) for spec in links]
    if not links:
        raise SystemExit("no links: give --target, --link or --links")
    return links


async def _serve(links: list[LinkSpec], seed: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with LatencyProxy(links, seed) as proxy:
        for name, spec in proxy.links.items():
            print(
                json.dumps(
                    {
                        "name": name,
                        "listen": f"{spec.listen_host}:{spec.listen_port}",
                        "port": spec.listen_port,
                        "target": f"{spec.target_host}:{spec.target_port}",
                        "delay_ms": spec.delay_ms,
                        "jitter_ms": spec.jitter_ms,
                    }
                ),
                flush=True,
            )
        print("ready", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m bench.proxy``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.proxy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--listen", type=_host_port, default=("127.0.0.1", 0))
    parser.add_argument("--target", type=_host_port, help="HOST:PORT of the single link's target")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, each direction")
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument(
        "--link",
        action="append",
        default=[],
        help="LISTEN=HOST:PORT:DELAY_MS[:JITTER_MS], repeatable",
    )
    parser.add_argument("--links", help="TOML file of [[link]] tables")
    parser.add_argument("--handshake", action="store_true", help="model the TCP handshake")
    parser.add_argument("--seed", type=int, default=0, help="jitter seed")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(_cli_links(args), args.seed))
    except OSError as exc:
        sys.exit(f"bench.proxy: {exc}")


if __name__ == "__main__":
    main()


LINK_COLUMNS = (
    "link",
    "listen",
    "target",
    "configured_one_way_ms",
    "jitter_ms",
    "handshake",
    "connect_ms",
    "first_byte_ms",
    "error",
)


async def measure_links(
    links: Sequence[LinkSpec],
    path: str = "/health",
    samples: int = 3,
    timeout_s: float = 5.0,
    tls: Mapping[int, ssl.SSLContext] | None = None,
) -> list[dict[str, object]]:
    """Measure every link (one row per link, :data:`LINK_COLUMNS`) for ``links.csv``.

    A target that does not speak HTTP/1.1 still answers (or closes) after one round trip, so its
    first byte still times the link; a link that cannot be measured gets an ``error``. A link
    whose target port is in ``tls`` is timed by a TLS handshake with that context.
    """
    rows: list[dict[str, object]] = []
    for spec in links:
        row: dict[str, object] = {
            "link": spec.name,
            "listen": f"{spec.listen_host}:{spec.listen_port}",
            "target": f"{spec.target_host}:{spec.target_port}",
            "configured_one_way_ms": spec.delay_ms,
            "jitter_ms": spec.jitter_ms,
            "handshake": spec.handshake,
        }
        try:
            rt = await measure_round_trip(
                spec.listen_host,
                spec.listen_port,
                path,
                samples,
                timeout_s,
                (tls or {}).get(spec.target_port),
            )
            row |= {
                "connect_ms": round(rt.connect_ms, 3),
                "first_byte_ms": round(rt.first_byte_ms, 3),
            }
        except (OSError, TimeoutError, ConnectionError) as exc:  # ssl.SSLError is an OSError
            row["error"] = repr(exc)
        rows.append(row)
    return rows
