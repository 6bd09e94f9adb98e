"""A userspace TCP latency proxy: the stand-in for a cross-zone network link.

This kernel has no ``tc netem``, so every cross-zone link of a topology is a TCP proxy that
listens on a port, forwards to one target and holds each chunk of bytes for a one-way delay
(plus optional jitter) in each direction. Each direction is a timestamped queue: a chunk is
stamped with its release time as it is read, and written on when due, so the link is pipelined
and its throughput does not depend on its latency. Release times never decrease within a
direction, so jitter never reorders bytes. EOF (half-close) and resets travel through the link
like data, after the same delay. One process (or one event loop) hosts many links.

The proxy must add as little as it can of its own, or every hop costs more than configured and
a system that makes more hops is charged more for it. What keeps it close (measured by
:class:`LinkProbe`, see ``proxy.csv``): chunks are released by a Linux timerfd, not by the
event loop's timers, which asyncio rounds up to the next millisecond (twice: a 9 ms link held
each chunk 1.2 ms too long), armed early by its own measured wake-up latency; a chunk is held
from the moment the kernel received it (its receive timestamp, ``SO_TIMESTAMPNS``), not from
when the proxy woke up to read it (:class:`_Stream`); forwarding is readiness callbacks on the
sockets, with no task or future per chunk, on uvloop; and the process runs at real-time
priority, since a network does not slow down when the hosts are busy (:func:`_prioritise`).
A link's delay can be changed while it runs (``LatencyProxy.set_delay``, or the ``--control``
port of the process and :func:`set_delays`), so a sweep of delays needs no redeployment.

In process::

    async with LatencyProxy([LinkSpec("payment", target_port=8002, delay_ms=10)]) as proxy:
        port = proxy.port("payment")

As a process (prints one JSON line per bound link, then ``ready``)::

    python -m bench.proxy --listen 127.0.0.1:0 --target 127.0.0.1:8002 --delay-ms 10
    python -m bench.proxy --link 127.0.0.1:7102=127.0.0.1:7002:10 --link ...
    python -m bench.proxy --links links.toml [--control 127.0.0.1:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import csv
import ctypes
import heapq
import itertools
import json
import math
import os
import random
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from accompanist_py import eventloop

_CHUNK = 64 * 1024
# A direction stops reading from its sender while this much is held for its receiver, and reads
# again below a quarter of it: far above any bandwidth-delay product here, yet bounded.
_HELD_HIGH = 16 * 2**20
_HELD_LOW = _HELD_HIGH // 4
# Markers in a direction's queue besides the bytes: the sender half-closed, or reset.
_EOF, _RESET = "eof", "reset"
# A socket stops taking writes (its sender's direction waits) above this many unsent bytes.
_WRITE_HIGH, _WRITE_LOW = 256 * 1024, 64 * 1024
# The kernel's receive timestamp of each read (Linux; SCM_TIMESTAMPNS has the same number).
_SO_TIMESTAMPNS = 35
_ANCILLARY = socket.CMSG_SPACE(16)


def _arrival(ancillary: list[tuple[int, int, bytes]]) -> float:
    """When the bytes of a read reached the socket, on ``time.monotonic``'s clock: the kernel's
    receive timestamp (of the last segment read), else now."""
    now = time.monotonic()
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack("ll", data[:16])
            age = time.time() - (seconds + nanoseconds * 1e-9)  # the stamp is CLOCK_REALTIME
            return now - min(max(age, 0.0), 1.0)
    return now


class _Stream:
    """One socket of a proxied connection, driven straight by the loop's readiness callbacks.

    A transport would hide when the bytes arrived: the proxy would stamp a chunk when its loop
    woke up to read it, and every hop would be charged the proxy's wake-up latency (about a
    tenth of a millisecond here, twice per round trip). Reading with ``recvmsg`` gives the
    kernel's receive time of each read, so a chunk is held for the link's delay from the
    moment it reached the proxy. Offers what the directions need of a transport: reading
    paused and resumed, buffered writes that block the writing direction above
    ``_WRITE_HIGH``, half-close, close after the buffer drains, abort and reset.
    """

    def __init__(self, sock: socket.socket, side: _Side) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._fd = sock.fileno()
        self._side = side
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._unsent = bytearray()
        self._reading = self._writing = self._closed = self._full = False
        self._eof_after_flush = self._close_after_flush = False

    def resume_reading(self) -> None:
        if not (self._reading or self._closed):
            self._reading = True
            self._loop.add_reader(self._fd, self._readable)

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def is_closing(self) -> bool:
        return self._closed or self._close_after_flush

    def can_write_eof(self) -> bool:
        return True

    def write(self, data: bytes) -> None:
        if self.is_closing() or self._eof_after_flush:
            return
        if not self._unsent:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                self._lost(error)
                return
            data = data[sent:]
        if data:
            self._unsent += data
            if not self._writing:
                self._writing = True
                self._loop.add_writer(self._fd, self._writable)
            if len(self._unsent) > _WRITE_HIGH and not self._full:
                self._full = True
                self._side.pause_writing()

    def write_eof(self) -> None:
        if self._unsent:
            self._eof_after_flush = True
        elif not self._closed:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Close once what is buffered has been sent (a FIN, as a transport's close)."""
        self.pause_reading()
        if self._unsent:
            self._close_after_flush = True
        else:
            self._finish()

    def abort(self) -> None:
        self._finish()

    def reset(self) -> None:
        """Close with an RST rather than a FIN, so that a reset propagates as a reset."""
        if not self._closed:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._finish()

    def _readable(self) -> None:
        try:
            data, ancillary, _, _ = self._sock.recvmsg(_CHUNK, _ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._lost(error)
            return
        if not data:
            self.pause_reading()
            self._side.eof_received()
            return
        self._side.data_received(data, _arrival(ancillary))

    def _writable(self) -> None:
        try:
            sent = self._sock.send(self._unsent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._lost(error)
            return
        del self._unsent[:sent]
        if self._full and len(self._unsent) <= _WRITE_LOW:
            self._full = False
            self._side.resume_writing()
        if self._unsent:
            return
        self._writing = False
        self._loop.remove_writer(self._fd)
        if self._close_after_flush:
            self._finish()
        elif self._eof_after_flush:
            self._eof_after_flush = False
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)

    def _lost(self, error: OSError) -> None:
        self._finish()
        self._side.connection_lost(error)

    def _finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.pause_reading()
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        self._unsent.clear()
        self._sock.close()


class _timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _timespec), ("it_value", _timespec)]


_CLOCK_MONOTONIC, _TFD_TIMER_ABSTIME = 1, 1


def _timerfd() -> tuple[int, ctypes.CDLL] | None:
    """A non-blocking timerfd on CLOCK_MONOTONIC (the clock of ``time.monotonic``), if any."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, AttributeError):
        return None
    return (fd, libc) if fd >= 0 else None


class _ReleaseClock:
    """Calls back at a release time, to tens of microseconds, in one event loop.

    Callbacks sit in a heap; one timerfd, armed for the earliest, wakes the loop through
    ``add_reader``. Waking takes the kernel, the scheduler and (in a VM) the host a tenth of a
    millisecond or more, paid on every release (twice per round trip): so the timer is armed
    that much early (``_lead``, the ``_LEAD_QUANTILE`` of the wake-up latencies seen so far, at
    most ``_MAX_LEAD_S``) and the last stretch is waited out on the CPU. A median lead left
    half the releases late by the spread of the wake-ups (0.15-0.3 ms p50 per release on this
    VM); the 90th percentile costs a spin of about that spread per wake-up instead. Nothing is
    ever released before its time. Without a timerfd (not Linux) it falls back on the loop's
    timers.
    """

    _MAX_LEAD_S = 1e-3
    _LEAD_QUANTILE = 0.9
    _LEAD_STEP_S = 2e-6

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._armed_at = math.inf
        self._lead = 0.0
        self._timer = _timerfd()
        if self._timer is not None:
            self._loop.add_reader(self._timer[0], self._fire)

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` once ``time.monotonic()`` has reached ``when``."""
        wait = when - time.monotonic()
        if wait <= 0:
            self._loop.call_soon(callback)
        elif self._timer is None:
            self._loop.call_later(wait, callback)
        else:
            heapq.heappush(self._heap, (when, next(self._order), callback))
            if when - self._lead < self._armed_at:
                self._arm(when - self._lead)

    def _arm(self, at: float) -> None:
        assert self._timer is not None
        fd, libc = self._timer
        seconds = math.floor(at)
        # A zero it_value would disarm the timer: a time in the past fires at once instead.
        value = _timespec(seconds, max(1, int((at - seconds) * 1e9)))
        spec = _itimerspec(_timespec(0, 0), value)
        if libc.timerfd_settime(fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        self._armed_at = at

    def _fire(self) -> None:
        assert self._timer is not None
        with contextlib.suppress(BlockingIOError):
            os.read(self._timer[0], 8)
        now = time.monotonic()
        if self._armed_at < now:
            # A running quantile of the wake-up latency: up by q/(1-q) steps when a wake-up
            # came later than the lead, down by one when it did not.
            late = now - self._armed_at
            q = self._LEAD_QUANTILE
            step = self._LEAD_STEP_S * (q / (1 - q) if late > self._lead else -1.0)
            self._lead = min(self._MAX_LEAD_S, max(0.0, self._lead + step))
        due = []
        while self._heap and self._heap[0][0] <= now + self._lead:
            when, _, callback = heapq.heappop(self._heap)
            while time.monotonic() < when:  # early by at most the lead: wait it out
                pass
            due.append(callback)
        self._armed_at = math.inf
        if self._heap:
            self._arm(self._heap[0][0] - self._lead)
        for callback in due:
            try:
                callback()
            except Exception as exc:  # one broken connection must not stall the others
                self._loop.call_exception_handler({"message": "release failed", "exception": exc})

    def close(self) -> None:
        if self._timer is not None:
            self._loop.remove_reader(self._timer[0])
            os.close(self._timer[0])
            self._timer = None


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


class Lateness:
    """How late a link wrote its chunks on: the time from when a chunk was due (its kernel
    receive time plus the link's delay) to when the proxy had written it to the receiver's
    socket. That is what the proxy itself adds to each one-way trip; whatever the receiver
    then takes to wake up after waiting out the delay, a real network charges too.

    A histogram of 10 µs bins up to 50 ms (and one beyond), so that a cell of any length
    costs the same memory."""

    BIN_S = 10e-6
    BINS = 5000

    def __init__(self) -> None:
        self.counts = [0] * (self.BINS + 1)
        self.releases = 0

    def add(self, late_s: float) -> None:
        self.counts[min(self.BINS, max(0, int(late_s / self.BIN_S)))] += 1
        self.releases += 1

    def quantile_ms(self, q: float) -> float:
        """The `q` quantile (0..1) in ms, to a bin's width (its upper edge); NaN if empty."""
        if not self.releases:
            return math.nan
        rank, seen = q * self.releases, 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= rank and count:
                return round((i + 1) * self.BIN_S * 1000, 3)
        return round((self.BINS + 1) * self.BIN_S * 1000, 3)

    def summary(self) -> dict[str, float]:
        return {
            "releases": self.releases,
            "late_p50_ms": self.quantile_ms(0.5),
            "late_p99_ms": self.quantile_ms(0.99),
        }


class _Link:
    """A listening socket and the connections it proxies."""

    def __init__(self, spec: LinkSpec, rng: random.Random) -> None:
        self.spec = spec
        self._rng = rng
        self.lateness = Lateness()
        self.clock: _ReleaseClock
        self._listener: socket.socket | None = None
        self.connections: set[_Connection] = set()
        self.port = spec.listen_port

    async def start(self, clock: _ReleaseClock) -> None:
        self.clock = clock
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit the timestamping, so that even the first read is stamped.
        listener.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        listener.bind((self.spec.listen_host, self.spec.listen_port))
        listener.listen(1024)  # a connect burst must not overflow into 1 s SYN retransmissions
        listener.setblocking(False)
        self._listener = listener
        self.port = listener.getsockname()[1]
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept)

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. out of descriptors: the client sees its connect fail
                return
            _Side(self, None).attach(sock)

    async def close(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        for connection in list(self.connections):
            connection.abort()

    def delay_s(self) -> float:
        jitter = self._rng.uniform(0.0, self.spec.jitter_ms) if self.spec.jitter_ms else 0.0
        return (self.spec.delay_ms + jitter) / 1000.0


class _Direction:
    """One direction of a proxied connection: what the sender wrote, held, then written on.

    Each chunk is stamped with its release time when it is read (never before the previous
    one's, so jitter never reorders bytes) and written to the receiver by a clock callback when
    due. It waits while there is no receiver yet (the target is still being connected) or the
    receiver's buffer is full; the sender is paused while too much is held. A direction ends
    when it delivers an EOF or a reset, or when its receiver turns out to be gone (the sender
    then learns of it as a reset, at once).
    """

    def __init__(self, connection: _Connection, not_before: float) -> None:
        self._connection = connection
        self.sender: _Stream | None = None
        self.receiver: _Stream | None = None
        self._held: collections.deque[tuple[float, bytes | str]] = collections.deque()
        self._bytes = 0
        self._last = not_before
        self._scheduled = self._blocked = self.done = False

    def push(self, item: bytes | str, arrived: float | None = None) -> None:
        """Hold `item` for the link's delay from `arrived` (when the kernel received it; now
        if unknown)."""
        if self.done:
            return
        start = time.monotonic() if arrived is None else arrived
        self._last = max(self._last, start + self._connection.link.delay_s())
        self._held.append((self._last, item))
        if isinstance(item, bytes):
            self._bytes += len(item)
            if self._bytes > _HELD_HIGH and self.sender is not None:
                self.sender.pause_reading()
        self._schedule()

    def attach(self, receiver: _Stream) -> None:
        self.receiver = receiver
        self._schedule()

    def block(self) -> None:
        self._blocked = True

    def unblock(self) -> None:
        self._blocked = False
        self._schedule()

    def _schedule(self) -> None:
        if self._held and self.receiver is not None and not (self._scheduled or self._blocked):
            self._scheduled = True
            self._connection.link.clock.call_at(self._held[0][0], self._release)

    def _release(self) -> None:
        self._scheduled = False
        receiver = self.receiver
        if self.done or receiver is None:
            return
        now = time.monotonic()
        lateness = self._connection.link.lateness
        while self._held and self._held[0][0] <= now and not self._blocked:
            due, item = self._held.popleft()
            if item is _RESET:
                self._connection.reset()
                return
            if receiver.is_closing():
                self._connection.reset()  # the receiver is gone: the sender learns of it so
                return
            if item is _EOF:
                if receiver.can_write_eof():
                    receiver.write_eof()
                self.done = True
                self._connection.finished()
                return
            assert isinstance(item, bytes)
            receiver.write(item)  # may pause_writing() at once: then the loop stops here
            lateness.add(time.monotonic() - due)
            self._bytes -= len(item)
        if self.sender is not None and self._bytes < _HELD_LOW:
            self.sender.resume_reading()
        self._schedule()


class _Connection:
    """A client's connection through a link and the one the proxy opens to the target.

    The target sees the connection attempt one one-way delay after the client's ``connect()``
    returned (at once: the proxy is local), like a SYN crossing the link; with a modelled
    handshake the client's first bytes reach it only after SYN, SYN-ACK and the data have
    crossed. A refused connection travels back as a reset, after the same delay.
    """

    def __init__(self, link: _Link, client: _Stream) -> None:
        self.link = link
        self.client = client
        self.target: _Stream | None = None
        accepted, one_way = time.monotonic(), link.spec.delay_ms / 1000.0
        self.up = _Direction(self, accepted + 3 * one_way if link.spec.handshake else 0.0)
        self.down = _Direction(self, 0.0)
        self.up.sender = client
        self.down.attach(client)
        self._connecting: asyncio.Task[None] | None = None
        link.connections.add(self)
        link.clock.call_at(accepted + one_way if link.spec.handshake else 0.0, self._connect)

    def _connect(self) -> None:
        if not self.client.is_closing():
            self._connecting = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        spec = self.link.spec
        sock: socket.socket | None = None
        try:
            (family, kind, proto, _, address), *_ = await loop.getaddrinfo(
                spec.target_host, spec.target_port, type=socket.SOCK_STREAM
            )
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError:
            if sock is not None:
                sock.close()
            self.link.clock.call_at(time.monotonic() + spec.delay_ms / 1000, self.reset)
            return
        except asyncio.CancelledError:
            if sock is not None:
                sock.close()
            raise
        _Side(self.link, self).attach(sock)

    def target_made(self, target: _Stream) -> None:
        self.target = target
        if self.up.done and self.down.done:  # the client went away while this connected
            target.abort()
            return
        self.down.sender = target
        self.up.attach(target)

    def finished(self) -> None:
        """A direction delivered its EOF; once both have, the connection is over."""
        if self.up.done and self.down.done:
            self.close(abort=False)

    def reset(self) -> None:
        """Reset both sides (a reset arrived, or the target refused the connection)."""
        self.up.done = self.down.done = True
        for stream in (self.client, self.target):
            if stream is not None:
                stream.reset()
        self.link.connections.discard(self)

    def abort(self) -> None:
        self.close(abort=True)
        if self._connecting is not None:
            self._connecting.cancel()

    def close(self, abort: bool) -> None:
        self.up.done = self.down.done = True
        for stream in (self.client, self.target):
            if stream is not None:
                stream.abort() if abort else stream.close()
        self.link.connections.discard(self)


class _Side:
    """One socket of a proxied connection: the client's (``connection`` None until accepted)
    or the target's. What it reads goes one way; its write buffer throttles the other."""

    def __init__(self, link: _Link, connection: _Connection | None) -> None:
        self._link = link
        self._connection = connection
        self._client = connection is None

    def attach(self, sock: socket.socket) -> None:
        """Take over the connected socket `sock` and start reading it."""
        stream = _Stream(sock, self)
        if self._connection is None:
            self._connection = _Connection(self._link, stream)
        else:
            self._connection.target_made(stream)
        stream.resume_reading()

    @property
    def _out(self) -> _Direction:
        assert self._connection is not None
        return self._connection.up if self._client else self._connection.down

    @property
    def _in(self) -> _Direction:
        assert self._connection is not None
        return self._connection.down if self._client else self._connection.up

    def data_received(self, data: bytes, arrived: float) -> None:
        self._out.push(data, arrived)

    def eof_received(self) -> None:
        self._out.push(_EOF)  # the socket stays open: the other direction may still be flowing

    def connection_lost(self, exc: Exception) -> None:
        if self._connection is not None:
            self._out.push(_RESET)  # the peer reset its connection: reset the other side too

    def pause_writing(self) -> None:
        self._in.block()

    def resume_writing(self) -> None:
        self._in.unblock()


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
        self._clock: _ReleaseClock | None = None

    async def __aenter__(self) -> LatencyProxy:
        self._clock = _ReleaseClock()
        try:
            for link in self._links.values():
                await link.start(self._clock)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening and drop every proxied connection."""
        await asyncio.gather(*(link.close() for link in self._links.values()))
        if self._clock is not None:
            self._clock.close()
            self._clock = None

    def set_delay(self, delay_ms: float, names: Sequence[str] | None = None) -> list[str]:
        """Give the links called ``names`` (default: all) a new one-way delay; their names.

        Chunks already in flight keep their release times; later ones get the new delay. An
        unknown name changes nothing and raises ``KeyError``.
        """
        chosen = list(self._links) if names is None else list(names)
        unknown = [name for name in chosen if name not in self._links]
        if unknown:
            raise KeyError(f"no links called {unknown}")
        for name in chosen:
            link = self._links[name]
            link.spec = replace(link.spec, delay_ms=delay_ms)
        return chosen

    def port(self, name: str) -> int:
        """The bound listening port of the link called ``name``."""
        return self._links[name].port

    def lateness(self, reset: bool = False) -> dict[str, dict[str, float]]:
        """Each link's :class:`Lateness` so far, by name; with ``reset``, start counting anew
        (e.g. once the warm-up is over)."""
        summaries = {name: link.lateness.summary() for name, link in self._links.items()}
        if reset:
            for link in self._links.values():
                link.lateness = Lateness()
        return summaries

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


async def _control(
    proxy: LatencyProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One control connection: JSON lines ``{"delay_ms": D, "links": [names]?}``, answered
    ``{"links": [names changed]}``, or ``{"lateness": "read" | "reset"}``, answered
    ``{"lateness": {name: summary}}`` (:meth:`LatencyProxy.lateness`); ``{"error": why}`` for
    anything else."""
    try:
        while line := await reader.readline():
            try:
                command = json.loads(line)
                answer: dict[str, object]
                if "lateness" in command:
                    if command["lateness"] not in ("read", "reset"):
                        raise ValueError(f"lateness must be read or reset: {command}")
                    answer = {"lateness": proxy.lateness(reset=command["lateness"] == "reset")}
                else:
                    changed = proxy.set_delay(float(command["delay_ms"]), command.get("links"))
                    answer = {"links": changed}
            except (ValueError, KeyError, TypeError) as exc:
                answer = {"error": repr(exc)}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _command(
    control: tuple[str, int], command: Mapping[str, object], key: str, timeout_s: float = 10.0
) -> Any:
    """Send one command to a running proxy process's ``--control`` port; its answer's `key`."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*control), timeout_s)
    try:
        writer.write(json.dumps(dict(command)).encode() + b"\n")
        await writer.drain()
        answer = json.loads(await asyncio.wait_for(reader.readline(), timeout_s) or b"{}")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    if key not in answer:
        raise RuntimeError(f"proxy at {control[0]}:{control[1]} refused: {answer}")
    return answer[key]


async def set_delays(
    control: tuple[str, int],
    delay_ms: float,
    links: Sequence[str] | None = None,
    timeout_s: float = 10.0,
) -> list[str]:
    """Set the one-way delay of a running proxy process's links through its ``--control``
    port; returns the names of the links changed. The change is in effect when this returns."""
    command: dict[str, object] = {"delay_ms": delay_ms}
    if links is not None:
        command["links"] = list(links)
    return list(await _command(control, command, "links", timeout_s))


async def read_lateness(
    control: tuple[str, int], reset: bool = False, timeout_s: float = 10.0
) -> dict[str, dict[str, float]]:
    """Each link's :class:`Lateness` summary from a running proxy process (and, with
    ``reset``, start counting anew)."""
    command = {"lateness": "reset" if reset else "read"}
    return dict(await _command(control, command, "lateness", timeout_s))


async def _serve_echo(host: str, port: int) -> None:
    """The probe's echo target: every byte straight back, until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(_echo, host, port)
    print("ready", flush=True)
    await stop.wait()
    server.close()


async def _serve(links: list[LinkSpec], seed: int, control: tuple[str, int] | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with LatencyProxy(links, seed) as proxy:
        controller = (
            await asyncio.start_server(lambda r, w: _control(proxy, r, w), *control)
            if control is not None
            else None
        )
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
        eventloop.announce()
        print("ready", flush=True)
        await stop.wait()
        if controller is not None:
            controller.close()


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
    parser.add_argument(
        "--control",
        type=_host_port,
        help="HOST:PORT taking JSON lines that change link delays (see set_delays)",
    )
    parser.add_argument(
        "--priority",
        choices=("realtime", "normal"),
        default="realtime",
        help="realtime (default): run ahead of the processes whose traffic it carries",
    )
    parser.add_argument(
        "--echo", type=_host_port, help="instead: serve a TCP echo on HOST:PORT (LinkProbe's)"
    )
    args = parser.parse_args(argv)
    serve = (
        _serve_echo(*args.echo) if args.echo else _serve(_cli_links(args), args.seed, args.control)
    )
    print(f"scheduling: {_prioritise() if args.priority == 'realtime' else 'normal'}", flush=True)
    try:
        eventloop.run(serve)
    except OSError as exc:
        sys.exit(f"bench.proxy: {exc}")


_RT_PRIORITY = 10  # low among real-time priorities; the kernel's RT throttling still applies


def _prioritise() -> str:
    """Give this process a real-time scheduling class, if the OS lets it; what it got.

    The proxy stands for the network, and a network does not slow down when the hosts are busy.
    At normal priority, on two cores shared with the systems under test (and whatever else
    runs), a due chunk waited for the CPU: measured here at a load of 6, timer wake-ups came
    0.1 ms late at the median but 2.3 ms at p90 and 14 ms at p99; under SCHED_RR, 0.08, 0.11
    and 0.17 ms. The proxy uses a few percent of a core, so the systems lose next to nothing.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(_RT_PRIORITY))
    except (OSError, AttributeError) as exc:  # no CAP_SYS_NICE, or not Linux
        return f"normal (real-time refused: {exc})"
    return f"SCHED_RR {_RT_PRIORITY}"


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


PROXY_CSV = "proxy.csv"
PROBE_COLUMNS = (
    "link",
    "configured_one_way_ms",
    "samples",
    "errors",
    "added_p50_ms",
    "added_p99_ms",
    "added_max_ms",
    "releases",
    "release_late_p50_ms",
    "release_late_p99_ms",
)
PROBE_PREFIX = "probe:"
# A cell's figures from its probe (:func:`proxy_added`), as summary.csv names them.
PROXY_FIGURES = ("proxy_added_p50_ms", "proxy_added_p99_ms", "proxy_own_p50_ms")
# What the proxy may add to a round trip, p50, beyond what the probe pays without it: above it,
# the proxy rather than the system would move a cell's latency noticeably.
OWN_LIMIT_MS = 0.5
# The row of probes sent straight to the echo target: what the probe itself costs.
DIRECT = "(direct)"


class LinkProbe:
    """What the proxy itself adds to each link while a cell runs.

    Every link gets a probe twin in the same proxy process: the same one-way delay, no jitter
    and no handshake, forwarding to an echo target in a process of its own (``python -m
    bench.proxy --echo``), as a service would be. While :meth:`running` is active (from
    ``after_s`` on, e.g. after warm-up), a one-byte ping goes through each twin every
    ``interval_s`` over a kept-alive connection, the links' pings spread evenly over the
    interval; each round trip minus twice the configured delay is what the proxy added, under
    the load the cell puts on its event loop. The ``(direct)`` row pings the echo target without
    the proxy: what two processes pay to wake each other on loopback, included in every other
    row. The probe runs in a thread of the harness with its own event loop, and it and the echo
    run at real-time priority like the proxy, so that the cell's load does not delay them.

        probe = LinkProbe(links, iter(free_ports(len(links) + 1)))
        write_links_file([*links, *probe.twins], path)   # then start the proxy
        with probe.running(cell_dir / PROXY_CSV, after_s=warmup_s):
            ...                                          # the load
    """

    def __init__(
        self, links: Sequence[LinkSpec], ports: Iterator[int], interval_s: float = 0.5
    ) -> None:
        self.interval_s = interval_s
        self.echo_port = next(ports) if links else 0
        self.twins = [
            replace(
                spec,
                name=PROBE_PREFIX + spec.name,
                target_host="127.0.0.1",
                target_port=self.echo_port,
                listen_port=next(ports),
                jitter_ms=0.0,
                handshake=False,
            )
            for spec in links
        ]
        self._added: dict[str, list[float]] = {}
        self._errors: dict[str, int] = {}

    @contextlib.contextmanager
    def running(
        self, csv_path: Path, after_s: float = 0.0, proxy: tuple[str, int] | None = None
    ) -> Iterator[None]:
        """Probe from ``after_s`` seconds on until the block ends, then write ``csv_path``
        (:data:`PROBE_COLUMNS`). With the proxy process's ``--control`` address, each row also
        says how late the proxy released the system's own traffic on that link over the same
        time (:class:`Lateness`). Without links there is nothing to probe and no file."""
        if not self.twins:
            yield
            return
        started = threading.Event()
        control: dict[str, Any] = {}

        async def main() -> None:
            _prioritise()  # this thread only
            control["loop"], control["stop"] = asyncio.get_running_loop(), asyncio.Event()
            started.set()

            async def reset_after_warmup() -> None:
                if proxy is not None and not await _stopped(control["stop"], after_s):
                    with contextlib.suppress(OSError, RuntimeError, TimeoutError):
                        await read_lateness(proxy, reset=True)  # the warm-up does not count

            targets = [(DIRECT, self.echo_port, 0.0)]
            targets += [(t.name, t.listen_port, t.delay_ms) for t in self.twins]
            await asyncio.gather(
                reset_after_warmup(),
                *(
                    self._ping(
                        name,
                        port,
                        delay,
                        after_s + i * self.interval_s / len(targets),
                        control["stop"],
                    )
                    for i, (name, port, delay) in enumerate(targets)
                ),
            )

        echo = subprocess.Popen(
            [sys.executable, "-m", "bench.proxy", "--echo", f"127.0.0.1:{self.echo_port}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        thread = threading.Thread(target=asyncio.run, args=(main(),), name="link-probe")
        try:
            assert echo.stdout is not None
            while (line := echo.stdout.readline()) and line.strip() != b"ready":
                pass
            thread.start()
            started.wait(10.0)
            yield
        finally:
            if "loop" in control:
                control["loop"].call_soon_threadsafe(control["stop"].set)
            if thread.is_alive():
                thread.join()
            echo.terminate()
            try:
                echo.wait(5.0)
            except subprocess.TimeoutExpired:
                echo.kill()
                echo.wait()
            late: dict[str, dict[str, float]] = {}
            if proxy is not None:
                with contextlib.suppress(OSError, RuntimeError, TimeoutError):
                    late = asyncio.run(read_lateness(proxy))
            self._write(csv_path, late)

    async def _ping(
        self, name: str, port: int, delay_ms: float, start_s: float, stop: asyncio.Event
    ) -> None:
        added, errors = self._added.setdefault(name, []), 0
        timeout_s = 5.0 + 2 * delay_ms / 1000
        if await _stopped(stop, start_s):
            return
        reader = writer = None
        while not stop.is_set():
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", port), timeout_s
                    )
                assert reader is not None
                sent = time.perf_counter()
                writer.write(b"p")
                await writer.drain()
                await asyncio.wait_for(reader.readexactly(1), timeout_s)
                added.append((time.perf_counter() - sent) * 1000 - 2 * delay_ms)
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                errors += 1
                if writer is not None:
                    writer.transport.abort()
                reader = writer = None
            if await _stopped(stop, self.interval_s):
                break
        if writer is not None:
            writer.close()
        self._errors[name] = errors

    def _write(self, path: Path, late: Mapping[str, Mapping[str, float]]) -> None:
        from bench.analysis import percentile_ms  # numpy: only in the harness, not the proxy

        delays = {t.name: t.delay_ms for t in self.twins}
        nothing = {"releases": 0, "late_p50_ms": math.nan, "late_p99_ms": math.nan}
        with Path(path).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=PROBE_COLUMNS)
            writer.writeheader()
            for name, added in self._added.items():
                link = name.removeprefix(PROBE_PREFIX)
                mine = late.get(link, nothing)  # the system's own traffic on the link
                writer.writerow(
                    {
                        "link": link,
                        "releases": mine["releases"],
                        "release_late_p50_ms": mine["late_p50_ms"],
                        "release_late_p99_ms": mine["late_p99_ms"],
                        "configured_one_way_ms": delays.get(name, 0.0),
                        "samples": len(added),
                        "errors": self._errors.get(name, 0),
                        "added_p50_ms": round(percentile_ms(added, 50), 3),
                        "added_p99_ms": round(percentile_ms(added, 99), 3),
                        "added_max_ms": round(max(added), 3) if added else float("nan"),
                    }
                )


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        # Cancelled when the probe stops; asyncio's stream callback would report it as an error.
        writer.transport.abort()
        return
    writer.close()


async def _stopped(stop: asyncio.Event, within_s: float) -> bool:
    """Wait up to ``within_s`` for ``stop``; whether it was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), within_s)
    return stop.is_set()


def proxy_added(cell_path: Path) -> dict[str, float]:
    """A cell's figures from its proxy.csv, per round trip (ms), on its worst link: what the
    probe measured the proxy to add (p50, p99), and the proxy's own share (p50), the time by
    which it released the system's own traffic after it was due, both ways; {} if the cell
    has no proxy.csv.

    The probe's round trip also holds what its two ends take to wake up after waiting out the
    delay, which any network charges and which its straight ``(direct)`` ping, answered at
    once, does not show: so the own share comes from the proxy's release lateness where the
    cell recorded it, else (older runs) from the probe less the direct ping. For summary.csv
    (:data:`PROXY_FIGURES`): ``proxy_own_p50_ms`` above :data:`OWN_LIMIT_MS` means the proxy,
    not the system, moved the cell's latency noticeably."""
    path = Path(cell_path) / PROXY_CSV
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["samples"])]
    links = [r for r in rows if r["link"] != DIRECT]
    if not links:
        return {}
    direct = [float(r["added_p50_ms"]) for r in rows if r["link"] == DIRECT]
    worst = max(float(r["added_p50_ms"]) for r in links)
    late = [2 * float(r["release_late_p50_ms"]) for r in links
            if int(r.get("releases") or 0)]  # fmt: skip
    probe_own = worst - direct[0] if direct else float("nan")
    return {
        "proxy_added_p50_ms": worst,
        "proxy_added_p99_ms": max(float(r["added_p99_ms"]) for r in links),
        "proxy_own_p50_ms": max(late) if late else probe_own,
        "proxy_probes": sum(int(r["samples"]) for r in links),
    }


if __name__ == "__main__":
    main()
