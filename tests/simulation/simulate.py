"""Run the deterministic simulation from the command line: one seed in detail, or many.

    python tests/simulation/simulate.py --seed 17          # one seed: its sessions, violations
    python tests/simulation/simulate.py --seed 17 -v       # ... and its whole event trace
    python tests/simulation/simulate.py --seeds 0:2000 --jobs 2   # a range, summarised

A seed is the whole run: the same seed replays the same cluster, faults and client, event for
event (the trace hash printed with each seed shows it). `--broken service|store` swaps in a
deliberately broken service (no deduplication) or store (acknowledges before durable), to see
the checker catch it. The exit status is 1 when any seed broke an invariant.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
for _p in (str(ROOT), str(HERE)):  # this folder's modules, and accompanist_py
    if _p not in sys.path:
        sys.path.insert(0, _p)

from sim_cluster import Options, RunResult, run_seed  # noqa: E402
from sim_disk import LyingStore  # noqa: E402

from accompanist_py.failpoints import POINTS  # noqa: E402

CRASH_KINDS = ("point", "hot", "timed", "failpoint", "start_failed")
SUMMED = (
    "crashes",
    *(f"crashes:{k}" for k in CRASH_KINDS),
    *(f"failpoint:{p}" for p in POINTS),
    "partitions",
    "lost-request",
    "lost-ack",
    "duplicated",
    "stalled",
    "partitioned",
    "partitioned-ack",
    "refused",
    "reset",
    "timeout",
    "service_outages",
    "service_transient",
)
NETWORK_FAULTS = (
    "lost-request",
    "lost-ack",
    "duplicated",
    "stalled",
    "partitioned",
    "partitioned-ack",
)


def options_for(broken: str | None = None, *, keep_trace: bool = False) -> Options:
    """The standard run's options, or with a deliberately broken part."""
    opts = Options(keep_trace=keep_trace)
    if broken == "service":
        opts.service_dedup = False
    elif broken == "store":
        opts.store_class = LyingStore
    elif broken is not None:
        raise ValueError(f"--broken is 'service' or 'store', not {broken!r}")
    return opts


@dataclass
class SeedSummary:
    """What the summary of a range needs from one seed (small, to cross processes)."""

    seed: int
    sessions: int
    outcomes: Counter[str]
    counters: Counter[str]
    violations: list[tuple[str, str]]  # (kind, formatted)
    trace_hash: str
    wall_s: float


def summarise(r: RunResult, wall_s: float) -> SeedSummary:
    outcomes: Counter[str] = Counter()
    for p in r.plans:
        outcomes[r.final[p.sid][p.initiator] or "none"] += 1
    return SeedSummary(
        seed=r.seed,
        sessions=len(r.plans),
        outcomes=outcomes,
        counters=Counter({k: r.counters.get(k, 0) for k in SUMMED}),
        violations=[(v.kind, v.format(r.seed)) for v in r.violations],
        trace_hash=r.trace_hash,
        wall_s=wall_s,
    )


def run_one(seed: int, broken: str | None = None) -> SeedSummary:
    """Run one seed and keep only its summary (what worker processes send back).

    A seed on which the harness itself fails (the loop stalls, the checker raises) is
    reported as a `harness_error` of that seed rather than stopping the whole range.
    """
    started = time.perf_counter()
    try:
        result = run_seed(seed, options_for(broken))
    except Exception as exc:
        text = "".join(traceback.format_exception_only(exc)).strip()
        return SeedSummary(
            seed=seed,
            sessions=0,
            outcomes=Counter(),
            counters=Counter(),
            violations=[("harness_error", f"seed {seed}: harness_error: {text}")],
            trace_hash="",
            wall_s=time.perf_counter() - started,
        )
    return summarise(result, time.perf_counter() - started)


def _run_chunk(args: tuple[list[int], str | None]) -> list[SeedSummary]:
    seeds, broken = args
    return [run_one(s, broken) for s in seeds]


def run_range(seeds: list[int], jobs: int = 1, broken: str | None = None) -> list[SeedSummary]:
    """Run `seeds` over `jobs` processes; summaries come back in seed order."""
    if jobs <= 1 or len(seeds) < 2:
        return [run_one(s, broken) for s in seeds]
    # Small interleaved chunks keep both workers busy to the end (seeds differ in cost).
    size = max(1, min(50, len(seeds) // (jobs * 8)))
    chunks = [(seeds[i : i + size], broken) for i in range(0, len(seeds), size)]
    out: list[SeedSummary] = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for part in pool.map(_run_chunk, chunks):
            out.extend(part)
    return out


def replay_command(seed: int, broken: str | None = None) -> str:
    extra = f" --broken {broken}" if broken else ""
    return f"{sys.executable} {HERE / 'simulate.py'} --seed {seed}{extra} -v"


def report(summaries: list[SeedSummary], wall_s: float, broken: str | None = None) -> str:
    """The summary of a range of seeds, as printed by --seeds."""
    outcomes: Counter[str] = Counter()
    counters: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    first: dict[str, int] = {}
    failing: list[int] = []
    for s in summaries:
        outcomes.update(s.outcomes)
        counters.update(s.counters)
        for kind, _ in s.violations:
            kinds[kind] += 1
            first.setdefault(kind, s.seed)
        if s.violations:
            failing.append(s.seed)
    network = sum(counters[k] for k in NETWORK_FAULTS)
    lines = [
        f"runs: {len(summaries)} in {wall_s:.1f}s wall "
        f"({1000 * sum(s.wall_s for s in summaries) / max(1, len(summaries)):.1f} ms/seed of CPU)",
        f"sessions: {sum(s.sessions for s in summaries)}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())),
        f"committed: {outcomes['completed']}, aborted: "
        f"{outcomes['compensated'] + outcomes['failed']} "
        f"(compensated {outcomes['compensated']}, failed {outcomes['failed']})",
        f"crashes: {counters['crashes']} ("
        + ", ".join(f"{k} {counters['crashes:' + k]}" for k in CRASH_KINDS)
        + "), at failpoints: "
        + ", ".join(f"{p} {counters['failpoint:' + p]}" for p in POINTS),
        f"partitions: {counters['partitions']}, "
        f"network faults injected: {network} ("
        + ", ".join(f"{k} {counters[k]}" for k in NETWORK_FAULTS)
        + f"), service outages: {counters['service_outages']}, "
        f"transient service failures: {counters['service_transient']}",
        f"seeds with violations: {len(failing)}",
    ]
    for kind, n in kinds.most_common():
        lines.append(f"  {kind}: {n} (first: seed {first[kind]})")
    if failing:
        lines.append("first failing seeds: " + ", ".join(str(s) for s in failing[:20]))
        lines.append(f"replay one: {replay_command(failing[0], broken)}")
    return "\n".join(lines)


def show_seed(seed: int, verbose: bool, broken: str | None = None) -> int:
    started = time.perf_counter()
    r = run_seed(seed, options_for(broken, keep_trace=verbose))
    wall = time.perf_counter() - started
    if verbose:
        print("\n".join(r.trace))
        print()
    print(f"seed {seed}: topology {r.topology}")
    for p in r.plans:
        seen = [s for _, s in r.client[p.sid].terminal]
        states = " ".join(f"{role}={st or '-'}" for role, st in r.final[p.sid].items())
        print(f"  {p.sid} @{p.start_at:.3f} {p.request.describe()}: {states}; client saw {seen}")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(r.counters.items()) if v)
    print(f"faults: {counts or 'none'}")
    print(
        f"virtual {r.end_time:.3f}s in {wall * 1000:.1f} ms wall, quiescent={r.quiescent}, "
        f"trace {r.trace_hash}"
    )
    for v in r.violations:
        print(v.format(seed))
    print(f"{len(r.violations)} violation(s)")
    return 1 if r.violations else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--seed", type=int, help="replay one seed")
    which.add_argument("--seeds", help="a range A:B of seeds (B excluded)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the event trace")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes for --seeds")
    parser.add_argument("--broken", choices=["service", "store"], help="break a part on purpose")
    parser.add_argument("--all", action="store_true", help="with --seeds: every violation")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    if args.seed is not None:
        return show_seed(args.seed, args.verbose, args.broken)
    a, _, b = args.seeds.partition(":")
    seeds = list(range(int(a), int(b)))
    started = time.perf_counter()
    summaries = run_range(seeds, args.jobs, args.broken)
    wall = time.perf_counter() - started
    if args.all:
        for s in summaries:
            for _, text in s.violations:
                print(text)
    print(report(summaries, wall, args.broken))
    return 1 if any(s.violations for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
