"""Loopback ports for the processes a test or a benchmark starts.

Every listener of a run gets a port drawn at random *outside* the kernel's ephemeral range, so
that concurrent tests rarely draw the same one and no outgoing connection can take a port
chosen for a server before that server binds it.
"""

from __future__ import annotations

import contextlib
import random
import socket
import time
from pathlib import Path


def _listen_range() -> tuple[int, int]:
    """Ports for listeners: outside the range the kernel hands out to outgoing connections.

    A port the kernel picks for `bind(("", 0))` comes from that ephemeral range, and so does the
    local port of every `connect()`: a port chosen free a moment ago can be taken by a client's
    connection before its server binds it (a benchmark cell's gateway once failed to start that
    way, while the Temporal server and its workers opened connections). Below the range (above
    it if it starts low) no connection ever takes it.
    """
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return (10000, low - 1) if low > 12000 else (high + 1, 65535)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports that no listener held a moment ago, drawn at random outside the
    ephemeral range (`_listen_range`); all are held until all are chosen."""
    low, high = _listen_range()
    draw = random.SystemRandom()
    held: list[socket.socket] = []
    try:
        while len(held) < n:
            probe = socket.socket()
            try:
                probe.bind((host, draw.randint(low, high)))
            except OSError:  # taken: draw again
                probe.close()
                continue
            held.append(probe)
        return [probe.getsockname()[1] for probe in held]
    finally:
        for probe in held:
            probe.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that no listener held a moment ago (:func:`free_ports`)."""
    return free_ports(1, host)[0]


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


def wait_port_free(port: int, timeout_s: float) -> bool:
    """Wait until ``port`` can be bound again; False on timeout."""
    deadline = time.monotonic() + timeout_s
    while not port_is_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
