"""Micro-benchmark of the runtime alone: per-hop latency, messages/s, recovery time.

    python -m bench.microbench [--sessions 300] [--modes default,fault-tolerant]
                               [--transports stream,http] [--tls off,on]

Starts real sidecar processes on loopback with no injected latency and no services, and prints:
- hop latency: a chain of 5 sidecars (r0 -> r1 -> r2 -> r3 -> r4 -> r0, five hops), sequential
  sessions, median and p99 end-to-end divided by the number of hops; with `--tls off,on` the
  same chain once in plaintext and once with mutual TLS between the sidecars (and to the
  client), and the per-hop cost of TLS, the difference, for each mode and transport;
- throughput: messages per second one sidecar sustains (many concurrent ping-pong sessions
  between two sidecars, counted at one of them from /metrics), with and without TLS;
- concurrency: 1,000 sessions started at once at one sidecar, all checked;
- recovery: kill -9 a sidecar with N sessions in flight, restart it, time until the last of
  those sessions completes (fault-tolerant mode only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from accompanist_py.choreography import choreography
from bench.credentials import CellCredentials
from bench.systems.accompanist import Sidecars
from launch import Supervisor

CHAIN = [f"r{i}" for i in range(5)]


@choreography(roles=CHAIN, name="chain")
async def chain(op, token):
    """Pass a token along r0 -> r1 -> r2 -> r3 -> r4 and back to r0: five hops."""
    value = token
    for src, dst in zip(CHAIN, CHAIN[1:] + CHAIN[:1], strict=True):
        value = await op.comm(src, dst, value)
    return value


@choreography(roles=["r0", "r1"], name="pingpong")
async def pingpong(op, rounds):
    """`rounds` round trips between two sidecars (two messages each)."""
    n = await op.comm("r0", "r1", rounds)  # r1 learns how many rounds
    count = n.value if n.is_here else rounds.value
    ball = rounds
    for _ in range(count):
        ball = await op.comm("r0", "r1", ball)
        ball = await op.comm("r1", "r0", ball)
    return ball


@choreography(roles=["r0", "r1"], name="hold")
async def hold(op, token):
    """r1 waits for r0's go, so sessions stay in flight while r1 is killed and restarted."""
    got = await op.comm("r0", "r1", token)
    back = await op.comm("r1", "r0", got)
    return back


@contextlib.contextmanager
def sidecars(
    roles: list[str], mode: str, workdir: Path, transport: str = "stream", tls: bool = False
):
    """Sidecars for the benchmark roles (no services), torn down on exit.

    With `tls`, each has its own certificate from a fresh CA, and `http_client()` presents one.
    """
    creds = CellCredentials(workdir / "tls") if tls else None
    with Supervisor(workdir) as sup:
        cars = Sidecars(
            sup, roles, "bench.microbench", mode=mode, transport=transport, credentials=creds
        )
        for role in roles:
            cars.start(role)
        yield cars


def http_client(cars: Sidecars) -> aiohttp.ClientSession:
    """A keep-alive HTTP(S) session to the sidecars, with no connection cap."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=cars.client_tls or True)
    )


async def start(session: aiohttp.ClientSession, url: str, chor: str, args: list, sid=None):
    body = {"args": args, "session_id": sid} if sid else {"args": args}
    async with session.post(f"{url}/sessions/{chor}", json=body) as resp:
        return await resp.json()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def hop_latency(
    mode: str, transport: str, sessions: int, workdir: Path, tls: bool = False
) -> dict[str, float]:
    with sidecars(CHAIN, mode, workdir, transport, tls) as cars:
        async with http_client(cars) as http:
            for i in range(20):  # warm-up: connections, code paths
                await start(http, cars.urls["r0"], "chain", [i])
            lat = []
            for i in range(sessions):
                t = time.perf_counter()
                res = await start(http, cars.urls["r0"], "chain", [i])
                lat.append((time.perf_counter() - t) * 1000)
                assert res["result"] == i, res
    hops = len(CHAIN)
    return {
        "e2e_p50_ms": statistics.median(lat),
        "e2e_p99_ms": pct(lat, 0.99),
        "hop_p50_ms": statistics.median(lat) / hops,
        "hop_p99_ms": pct(lat, 0.99) / hops,
    }


async def throughput(
    mode: str, transport: str, workdir: Path, seconds: float = 5.0, tls: bool = False
) -> float:
    roles = ["r0", "r1"]
    with sidecars(roles, mode, workdir, transport, tls) as cars:
        async with http_client(cars) as http:

            async def metric() -> float:
                async with http.get(cars.urls["r1"] + "/metrics") as resp:
                    text = await resp.text()
                # Summed over their role and peer labels.
                counted = ("accompanist_messages_sent_total", "accompanist_messages_received_total")
                total = 0.0
                for line in text.splitlines():
                    if line.startswith(counted):
                        total += float(line.rpartition(" ")[2])
                return total

            stop = time.monotonic() + seconds + 1.0
            done = 0

            async def client() -> None:
                nonlocal done
                while time.monotonic() < stop:
                    await start(http, cars.urls["r0"], "pingpong", [20])
                    done += 1

            workers = [asyncio.create_task(client()) for _ in range(64)]
            await asyncio.sleep(1.0)  # ramp up
            before, t0 = await metric(), time.monotonic()
            await asyncio.sleep(seconds)
            after, t1 = await metric(), time.monotonic()
            await asyncio.gather(*workers)
    return (after - before) / (t1 - t0)


async def concurrency(workdir: Path, sessions: int) -> dict[str, float]:
    """`sessions` sessions started at once at one sidecar: do they all complete correctly?"""
    roles = ["r0", "r1"]
    with sidecars(roles, "fault-tolerant", workdir) as cars:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            t0 = time.perf_counter()
            results = await asyncio.gather(
                *(start(http, cars.urls["r0"], "hold", [i], f"many-{i}") for i in range(sessions))
            )
            elapsed = time.perf_counter() - t0
    correct = sum(
        1 for i, r in enumerate(results) if r["state"] == "completed" and r["result"] == i
    )
    return {"sessions": sessions, "correct": correct, "seconds": elapsed}


async def recovery(workdir: Path, inflight: int) -> dict[str, float]:
    roles = ["r0", "r1"]
    with sidecars(roles, "fault-tolerant", workdir) as cars:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            cars.kill("r1")
            # r0 starts the sessions and durably queues its message to r1, which is down.
            tasks = [
                asyncio.create_task(start(http, cars.urls["r0"], "hold", [i], f"hold-{i}"))
                for i in range(inflight)
            ]
            await asyncio.sleep(1.0)
            assert not any(t.done() for t in tasks), "sessions finished with r1 down"
            t0 = time.perf_counter()
            restarted = asyncio.create_task(asyncio.to_thread(cars.start, "r1"))
            results = await asyncio.gather(*tasks)
            t_done = time.perf_counter() - t0
            await restarted
            t_healthy = time.perf_counter() - t0
    ok = sum(1 for r in results if r["state"] == "completed")
    return {
        "sessions": inflight,
        "completed": ok,
        "restart_to_last_done_s": t_done,
        "restart_to_healthy_s": t_healthy,
    }


TLS_CHOICES = {"off": False, "on": True}


def tls_cost(hops: dict[tuple[str, str, bool], dict[str, float]]) -> list[str]:
    """One line per (mode, transport) measured both ways: what TLS adds to a hop."""
    lines = []
    for (mode, transport, tls), on in hops.items():
        off = hops.get((mode, transport, False))
        if not tls or off is None:
            continue
        lines.append(
            f"  {mode:15s} {transport:7s} {on['hop_p50_ms'] - off['hop_p50_ms']:+.2f} ms p50  "
            f"{on['hop_p99_ms'] - off['hop_p99_ms']:+.2f} ms p99 per hop   "
            f"({off['hop_p50_ms']:.2f} -> {on['hop_p50_ms']:.2f} ms p50)"
        )
    return lines


def _label(mode: str, transport: str, tls: bool) -> str:
    return f"{mode:15s} {transport:7s} {'tls' if tls else 'plain':5s}"


async def main_async(args: argparse.Namespace) -> None:
    # TLS innermost: the two runs compared are neighbours in time, so drift hits both alike.
    setups = [
        (m, t, TLS_CHOICES[x])
        for t in args.transports.split(",")
        for m in args.modes.split(",")
        for x in args.tls.split(",")
    ]
    with tempfile.TemporaryDirectory(prefix="microbench-") as tmp:
        base = Path(tmp)
        print(f"hop latency: chain of {len(CHAIN)} sidecars, {args.sessions} sequential sessions")
        hops = {}
        for mode, transport, tls in setups:
            d = base / f"chain-{mode}-{transport}-{'tls' if tls else 'plain'}"
            d.mkdir()
            r = hops[mode, transport, tls] = await hop_latency(
                mode, transport, args.sessions, d, tls
            )
            print(
                f"  {_label(mode, transport, tls)} per hop p50 {r['hop_p50_ms']:.2f} ms  "
                f"p99 {r['hop_p99_ms']:.2f} ms   (end to end p50 {r['e2e_p50_ms']:.2f} ms, "
                f"p99 {r['e2e_p99_ms']:.2f} ms)"
            )
        cost = tls_cost(hops)
        if cost:
            print("TLS per hop: mutual TLS minus plaintext, same chain")
            print("\n".join(cost))
        print("throughput: messages/s handled by one sidecar (sent + received)")
        for mode, transport, tls in setups:
            d = base / f"tput-{mode}-{transport}-{'tls' if tls else 'plain'}"
            d.mkdir()
            rate = await throughput(mode, transport, d, args.seconds, tls)
            print(f"  {_label(mode, transport, tls)} {rate:,.0f} msg/s")
        if "fault-tolerant" in args.modes:
            d = base / "concurrency"
            d.mkdir()
            r = await concurrency(d, args.concurrent)
            print(
                f"concurrency: {r['correct']}/{r['sessions']} sessions started at once completed "
                f"correctly in {r['seconds']:.2f} s"
            )
            d = base / "recovery"
            d.mkdir()
            r = await recovery(d, args.inflight)
            print(
                f"recovery: {r['completed']}/{r['sessions']} in-flight sessions completed "
                f"{r['restart_to_last_done_s']:.2f} s after restart "
                f"(process healthy after {r['restart_to_healthy_s']:.2f} s)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.microbench")
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--inflight", type=int, default=100)
    parser.add_argument("--concurrent", type=int, default=1000)
    parser.add_argument("--modes", default="default,fault-tolerant")
    parser.add_argument("--transports", default="stream,http")
    parser.add_argument(
        "--tls", default="off,on", help="off, on, or off,on: plaintext and/or mutual TLS"
    )
    args = parser.parse_args()
    if not args.tls or set(args.tls.split(",")) - set(TLS_CHOICES):
        parser.error("--tls takes off, on or off,on")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
