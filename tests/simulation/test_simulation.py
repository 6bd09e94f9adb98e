"""The deterministic simulation under pytest: its own guarantees first, then the seeds.

The first tests check the harness: virtual time costs no wall time, a crash cancels exactly
the dead node's tasks, a seed replays byte-identically (in this process and in another one
with another hash seed, also when a node crashes at one of the runtime's failpoints), the
failpoint handler does not outlive its run (even one that fails), and the checker does fail
a run when a part breaks its contract (a service that re-applies a repeated key; a store
that acknowledges writes before they are durable; hand-made results breaking each rule).
Then `test_seeds` runs seeds 0..SIM_SEEDS-1 (default 2000) over SIM_JOBS processes (default
2) and, if any breaks an invariant, fails listing each failing seed's violations and the
command that replays it; with 1000 seeds or more, every failpoint must have crashed a node.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import invariants
import pytest
import sim_cluster
from sim_cluster import ClientLog, Options, RunResult, SessionPlan, run_seed
from sim_disk import LyingStore
from sim_loop import Incarnation, SimLoop, owner_context, run_in
from sim_services import Effect
from sim_workload import Request
from simulate import replay_command, report, run_range

from accompanist_py import failpoints

HERE = Path(__file__).resolve().parent
SEEDS = int(os.environ.get("SIM_SEEDS", "2000"))
JOBS = int(os.environ.get("SIM_JOBS", str(min(2, os.cpu_count() or 1))))


def test_an_hour_of_virtual_sleep_costs_no_wall_time() -> None:
    loop = SimLoop()

    async def main() -> float:
        await asyncio.sleep(3600)
        await asyncio.wait_for(asyncio.sleep(7200), timeout=60)  # times out at t=3660
        return loop.time()

    started = time.perf_counter()
    with pytest.raises(TimeoutError):
        run_in(loop, main)
    assert time.perf_counter() - started < 0.5
    assert loop.time() == pytest.approx(3660)


def test_a_crash_cancels_the_tasks_of_the_dead_node_and_no_other() -> None:
    loop = SimLoop()
    dead, alive = Incarnation("x", 1), Incarnation("y", 1)
    log: list[str] = []

    async def work(name: str) -> None:
        # A child task inherits its parent's owner through the context.
        child = asyncio.get_running_loop().create_task(asyncio.sleep(10))
        try:
            await asyncio.sleep(10)
            log.append(f"{name} finished")
        except asyncio.CancelledError:
            log.append(f"{name} cancelled")
            raise
        finally:
            child.cancel()

    async def main() -> None:
        doomed = loop.create_task(work("x"), context=owner_context(dead))
        spared = loop.create_task(work("y"), context=owner_context(alive))
        await asyncio.sleep(1)
        assert len(dead.tasks) == 2 and len(alive.tasks) == 2
        dead.alive = False
        assert loop.cancel_tasks_of(dead) == 2
        late = loop.create_task(asyncio.sleep(1), context=owner_context(dead))
        await asyncio.gather(doomed, spared, late, return_exceptions=True)
        assert late.cancelled(), "a task created for a dead node must not run"

    run_in(loop, main)
    assert log == ["x cancelled", "y finished"]


def test_one_seed_run_twice_gives_the_same_trace() -> None:
    first, second = run_seed(7), run_seed(7)
    assert len(first.trace) > 100
    assert first.trace_hash == second.trace_hash
    assert first.trace == second.trace
    assert run_seed(8).trace_hash != first.trace_hash


# A seed whose run crashes a node at two of the runtime's failpoints (after_journal at a,
# then after_decision at a's next incarnation).
FAILPOINT_SEED = 9


@pytest.mark.parametrize("seed", [11, FAILPOINT_SEED])
def test_a_seed_replays_identically_in_another_process(seed: int) -> None:
    expected = run_seed(seed).trace_hash
    for hash_seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, str(HERE / "simulate.py"), "--seed", str(seed)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            timeout=120,
        )
        assert f"trace {expected}" in out.stdout, out.stdout + out.stderr


def test_a_crash_at_a_failpoint_replays_and_its_handler_ends_with_the_run() -> None:
    first = run_seed(FAILPOINT_SEED)
    assert failpoints._handler is None
    second = run_seed(FAILPOINT_SEED)
    assert failpoints._handler is None
    crashes = [line for line in first.trace if "at failpoint" in line]
    assert len(crashes) == 2, crashes
    assert first.counters["crashes:failpoint"] == 2
    assert first.trace == second.trace
    assert first.violations == []


def test_the_failpoint_handler_is_removed_when_a_run_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    installed: list[object] = []

    def heal(self: sim_cluster.Cluster) -> None:
        installed.append(failpoints._handler)
        raise RuntimeError("the harness broke mid-run")

    monkeypatch.setattr(sim_cluster.Cluster, "heal", heal)
    with pytest.raises(RuntimeError, match="mid-run"):
        run_seed(FAILPOINT_SEED, Options(keep_trace=False))
    assert installed and installed[0] is not None, "the run did not install its handler"
    assert failpoints._handler is None


def test_a_seed_without_failpoint_crashes_installs_no_handler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With a handler, the journal awaits every row before `after_journal`: the seeds that
    # plan no failpoint crash must run the runtime as it runs in production.
    seen: list[object] = []
    monkeypatch.setattr(sim_cluster.Cluster, "heal", lambda self: seen.append(failpoints._handler))
    run_seed(11, Options(keep_trace=False))
    assert seen == [None]


def _kinds(options: Options, seeds: range) -> Counter[str]:
    kinds: Counter[str] = Counter()
    for seed in seeds:
        kinds.update(v.kind for v in run_seed(seed, options).violations)
    return kinds


def test_without_faults_every_session_ends_as_its_request_asks() -> None:
    kinds = _kinds(Options.no_faults(keep_trace=False), range(60))
    assert not kinds, kinds


def test_a_service_that_applies_a_repeated_key_again_is_caught() -> None:
    kinds = _kinds(Options(service_dedup=False, keep_trace=False), range(40))
    assert kinds["duplicate_effect"] > 0, kinds


def test_a_store_that_acknowledges_writes_before_they_are_durable_is_caught() -> None:
    kinds = _kinds(Options(store_class=LyingStore, keep_trace=False), range(40))
    assert kinds["not_compensated"] + kinds["disagreement"] + kinds["partial_commit"] > 0, kinds


def _result(states: dict[str, str | None], effects: list[Effect], seen: list[str]) -> RunResult:
    """A hand-made result of one saga3 session "s0", to check the checker's rules."""
    plan = SessionPlan("s0", Request("saga3", {"n": 0}), 0.0, "a")
    log = ClientLog(terminal=[(1.0, s) for s in seen])
    return RunResult(
        seed=0,
        topology={r: [r] for r in "abc"},
        plans=[plan],
        client={"s0": log},
        final={"s0": states},
        results={"s0": {}},
        effects=effects,
        mismatches=[],
        restart_failures=[],
        task_errors=[],
        client_errors=[],
        quiescent=True,
        leftovers=[],
        counters=Counter(),
        trace_hash="",
        trace=[],
        end_time=0.0,
    )


def _commit(service: str, key: str, t: float = 0.0) -> Effect:
    return Effect(t, service, key, key.split(":")[1], "commit", None, "{}")


def _undo(service: str, key: str) -> Effect:
    return Effect(1.0, service, f"{key}:undo", "undo", "undo", key, "{}")


ALL_COMMITTED = [
    _commit("a", "s0:reserve"),
    _commit("b", "s0:charge"),
    _commit("c", "s0:ship"),
    _commit("a", "s0:confirm"),
]


def test_the_checker_passes_a_clean_commit_and_a_clean_abort() -> None:
    done = dict.fromkeys("abc", "completed")
    assert invariants.check(_result(done, ALL_COMMITTED, ["completed"])) == []
    aborted = dict.fromkeys("abc", "compensated")
    effects = [_commit("a", "s0:reserve"), _undo("a", "s0:reserve")]
    assert invariants.check(_result(aborted, effects, ["compensated"])) == []


@pytest.mark.parametrize(
    ("states", "effects", "seen", "kind"),
    [
        ({"a": "awaiting", "b": "completed", "c": None}, [], [], "stuck"),
        (
            {"a": "completed", "b": "compensated", "c": "completed"},
            ALL_COMMITTED,
            [],
            "disagreement",
        ),
        (dict.fromkeys("abc", "completed"), ALL_COMMITTED[:3], [], "partial_commit"),
        (dict.fromkeys("abc", "failed"), [_commit("b", "s0:charge")], [], "not_compensated"),
        (
            dict.fromkeys("abc", "completed"),
            [*ALL_COMMITTED, _commit("c", "s0:ship", 2.0)],
            [],
            "duplicate_effect",
        ),
        (
            dict.fromkeys("abc", "compensated"),
            [_commit("a", "s0:reserve"), _undo("a", "s0:reserve"), _undo("a", "s0:reserve")],
            [],
            "duplicate_compensation",
        ),
        (
            dict.fromkeys("abc", "compensated"),
            [_commit("a", "s9:reserve"), _undo("a", "s9:reserve")],
            [],
            "orphan_effect",
        ),
        (dict.fromkeys("abc", "completed"), ALL_COMMITTED, ["compensated"], "client_mismatch"),
    ],
)
def test_the_checker_reports_each_broken_rule(
    states: dict[str, str | None], effects: list[Effect], seen: list[str], kind: str
) -> None:
    found = invariants.check(_result(states, effects, seen))
    assert kind in {v.kind for v in found}, found


def _crashes_at(summaries: list, point: str) -> int:
    return sum(s.counters[f"failpoint:{point}"] for s in summaries)


@pytest.mark.timeout(1800)
def test_seeds() -> None:
    """Seeds 0..SIM_SEEDS-1 keep every invariant, or each failing seed is listed."""
    started = time.perf_counter()
    summaries = run_range(list(range(SEEDS)), JOBS)
    wall = time.perf_counter() - started
    summary = report(summaries, wall)
    print(summary)
    if SEEDS >= 100:
        crashed = sum(1 for s in summaries if s.counters["crashes"] > 0)
        assert crashed >= 0.7 * SEEDS, f"only {crashed} of {SEEDS} seeds crashed a node"
    if SEEDS >= 1000:
        missed = [p for p in failpoints.POINTS if summaries and not _crashes_at(summaries, p)]
        assert not missed, f"no crash at failpoint(s) {missed} in {SEEDS} seeds"
    failing = [s for s in summaries if s.violations]
    lines: list[str] = []
    for s in failing[:50]:
        lines.append(f"seed {s.seed}: replay with  {replay_command(s.seed)}")
        lines += [f"    {text}" for _, text in s.violations[:5]]
        if len(s.violations) > 5:
            lines.append(f"    ... and {len(s.violations) - 5} more")
    if len(failing) > 50:
        lines.append(f"... and {len(failing) - 50} more failing seeds")
    if failing:
        head = f"{len(failing)} of {SEEDS} seeds broke invariants"
        pytest.fail("\n".join([head, *lines, "", summary]), pytrace=False)
