"""Topologies: shipped files validate, errors name file and key, floors add up the hops."""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.topology import (
    SagaShape,
    TopologyError,
    available_topologies,
    critical_path,
    load_topology,
    network_floor,
    plan_links,
)

THREE_ZONES = Path(__file__).parents[2] / "bench" / "topologies" / "three-zones.toml"
WAREHOUSE = SagaShape(
    initiator="warehouse",
    hops=[("warehouse", "payment"), ("payment", "loyalty"), ("loyalty", "warehouse")],
    steps=["warehouse", "payment", "loyalty", "warehouse"],
    services={"warehouse": "warehouse", "payment": "payment", "loyalty": "loyalty"},
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broken.toml"
    path.write_text(text)
    return path


def _three_zones_with(tmp_path: Path, old: str, new: str) -> Path:
    text = THREE_ZONES.read_text()
    assert old in text
    return _write(tmp_path, text.replace(old, new, 1))


def test_shipped_topologies_are_valid() -> None:
    names = available_topologies()
    assert {"local", "three-zones"} <= set(names)
    for path in names.values():
        load_topology(path)


def test_three_zones_places_each_service_in_its_own_zone_and_the_entry_with_the_initiator() -> None:
    placement = load_topology("three-zones").place(["warehouse", "payment", "loyalty"])
    assert placement["service:warehouse"] == placement["gateway"] == placement["loadgen"] == "a"
    assert placement["service:payment"] == placement["runtime:payment"] == "b"
    assert placement["service:loyalty"] == "c"
    assert placement["temporal-server"] == "a"


def test_unknown_zone_is_named_with_file_and_key(tmp_path: Path) -> None:
    path = _three_zones_with(tmp_path, 'gateway = "a"', 'gateway = "d"')
    with pytest.raises(TopologyError, match=r"broken\.toml: placement\.gateway: unknown zone 'd'"):
        load_topology(path)


def test_missing_placement_is_named(tmp_path: Path) -> None:
    path = _three_zones_with(tmp_path, 'temporal-server = "a"\n', "")
    with pytest.raises(TopologyError, match=r"broken\.toml: placement\.temporal-server: missing"):
        load_topology(path)


def test_negative_latency_is_rejected(tmp_path: Path) -> None:
    path = _three_zones_with(tmp_path, "inter_zone_ms = 10.0", "inter_zone_ms = -1")
    with pytest.raises(TopologyError, match=r"broken\.toml: network\.inter_zone_ms: .*>= 0"):
        load_topology(path)


def test_a_misspelt_key_is_rejected(tmp_path: Path) -> None:
    path = _three_zones_with(tmp_path, "jitter_ms = 0.5", "jiter_ms = 0.5")
    with pytest.raises(TopologyError, match=r"network\.jiter_ms: unknown key"):
        load_topology(path)


def test_unknown_topology_name_lists_the_known_ones() -> None:
    with pytest.raises(TopologyError, match=r"known: .*three-zones"):
        load_topology("five-zones")


def test_choreography_floor_is_one_hop_per_message() -> None:
    topo = load_topology("three-zones")
    assert network_floor("accompanist", WAREHOUSE, topo) == pytest.approx(3 * 10.0)
    assert network_floor("accompanist", WAREHOUSE, load_topology("local")) == 0.0


def test_orchestrator_floor_is_a_round_trip_per_remote_step() -> None:
    topo = load_topology("three-zones")
    # charge (zone b) and award (zone c) each cost server -> worker and back; the warehouse
    # steps are local to the server's zone.
    assert network_floor("temporal-distributed", WAREHOUSE, topo) == pytest.approx(4 * 10.0)
    assert network_floor("orchestrator-local", WAREHOUSE, topo) == pytest.approx(4 * 10.0)


def test_restate_and_dbos_pay_a_round_trip_per_remote_step_and_nothing_for_their_journal() -> None:
    topo = load_topology("three-zones")
    # Server and handler sit with the gateway: each step's journal round trip crosses no link.
    assert topo.place(list(WAREHOUSE.services))["restate-handler"] == "a"
    assert network_floor("restate", WAREHOUSE, topo) == pytest.approx(4 * 10.0)
    path = critical_path("journal", WAREHOUSE)
    assert path.count(("restate-handler", "restate-server")) == len(WAREHOUSE.steps) + 1
    # DBOS runs in the gateway: its service calls are the whole path.
    assert network_floor("dbos", WAREHOUSE, topo) == pytest.approx(4 * 10.0)
    assert ("gateway", "service:payment") in critical_path("embedded", WAREHOUSE)


def test_a_restate_handler_can_be_placed_apart_from_its_server(tmp_path: Path) -> None:
    text = load_topology("three-zones").path.read_text()
    moved = tmp_path / "apart.toml"
    moved.write_text(text + '\n[placement.process]\n"restate-handler" = "b"\n')
    topo = load_topology(moved)
    # From zone b: the service round trips cost 20 (warehouse) + 0 + 20 (loyalty) + 20
    # (warehouse); every one of the 4 steps' journal entries crosses b->a and back (80); the
    # invocation and its result cross once each (20).
    assert network_floor("restate", WAREHOUSE, topo) == pytest.approx(60 + 80 + 20)


def test_hops_are_derived_from_the_steps_when_a_workload_declares_none() -> None:
    @dataclass
    class Step:
        role: str

    @dataclass
    class Workload:
        name = "warehouse"
        initiator = "warehouse"
        services = ("warehouse", "payment", "loyalty")
        steps = tuple(Step(r) for r in ("warehouse", "payment", "loyalty", "warehouse"))

    shape = SagaShape.of(Workload())
    assert list(shape.hops) == list(WAREHOUSE.hops)
    assert list(shape.steps) == list(WAREHOUSE.steps)


def test_critical_path_lists_one_way_hops_between_named_processes() -> None:
    hops = critical_path("choreography", WAREHOUSE)
    assert hops[0] == ("loadgen", "gateway") and hops[-1] == ("gateway", "loadgen")
    assert ("runtime:payment", "runtime:loyalty") in hops


def test_links_exist_only_across_zones() -> None:
    topo = load_topology("three-zones")
    placement = topo.place(["warehouse", "payment", "loyalty"])
    ports = {"runtime:payment": 7002, "runtime:warehouse": 7001}
    links = plan_links(topo, placement, ports, itertools.count(20000))
    assert set(links) == {
        ("a", "runtime:payment"), ("c", "runtime:payment"),
        ("b", "runtime:warehouse"), ("c", "runtime:warehouse"),
    }  # fmt: skip
    link = links[("a", "runtime:payment")]
    assert (link.target_port, link.delay_ms, link.handshake) == (7002, 10.0, True)


def test_shipped_topology_files_parse_as_plain_toml() -> None:
    for path in available_topologies().values():
        assert "placement" in tomllib.loads(path.read_text())
