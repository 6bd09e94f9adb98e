"""Topologies: zones, which process runs in which zone, latency between zones, network floors.

A topology is a TOML file in ``bench/topologies/`` (see ``three-zones.toml`` for every key).
Processes are named by what they are, independent of the system under test:

- ``loadgen``, ``gateway``, ``temporal-server``, ``workflow-worker`` (Temporal's workflow worker)
- ``restate-server`` and ``restate-handler`` (the process serving the Restate handlers)
- ``service:<service>`` — a workload service
- ``runtime:<service>`` — that service's runtime process: its sidecar (accompanist_py) or its
  Temporal activity worker

Placement rules, most specific first: ``[placement.process]`` names a process; ``gateway``,
``loadgen``, ``temporal-server`` are required keys; ``services`` lists zones in the workload's
service order (initiator first, repeating if shorter); ``runtime:<s>`` follows ``service:<s>``;
``workflow-worker`` follows the initiator's service; ``restate-server`` follows the gateway (the
issue's placement: the server where the client is) and ``restate-handler`` follows the server
(each step's journal entry is a round trip between them, so apart they would pay a cross-zone
round trip per step that nothing forces on Restate).

The *network floor* of a (system, workload, topology) is the latency no runtime can beat: the sum
of the one-way latencies of the sequential hops on the saga's critical path. Each system has a
path model (``choreography``, ``orchestrator``, ``orchestrator-local``, ``journal``,
``embedded``) that turns a workload's
declared shape (its role-to-role messages and its service steps) into a list of one-way
(from_process, to_process) hops; see :func:`critical_path`.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.matrix import SYSTEMS
from bench.proxy import LinkSpec

TOPOLOGY_DIR = Path(__file__).parent / "topologies"
FIXED_PROCESSES = ("gateway", "loadgen", "temporal-server")
PATH_MODELS = ("choreography", "orchestrator", "orchestrator-local", "journal", "embedded")
# Processes placed by rule rather than by a [placement] key; `[placement.process]` may move them.
RULED_PROCESSES = ("workflow-worker", "restate-server", "restate-handler")

Hop = tuple[str, str]


class TopologyError(ValueError):
    """A topology file is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class Topology:
    """A validated topology. Build it with :func:`load_topology`."""

    name: str
    path: Path
    description: str
    zones: Mapping[str, str]
    inter_zone_ms: float
    jitter_ms: float
    handshake: bool
    pairs: Mapping[frozenset[str], tuple[float, float]]
    fixed: Mapping[str, str]
    service_zones: Sequence[str]
    process_zones: Mapping[str, str] = field(default_factory=dict)

    def one_way_ms(self, zone_a: str, zone_b: str) -> float:
        """One-way latency between two zones (0 within a zone)."""
        return self._latency(zone_a, zone_b)[0]

    def jitter_between_ms(self, zone_a: str, zone_b: str) -> float:
        """Jitter bound between two zones (0 within a zone)."""
        return self._latency(zone_a, zone_b)[1]

    def _latency(self, zone_a: str, zone_b: str) -> tuple[float, float]:
        for zone in (zone_a, zone_b):
            if zone not in self.zones:
                raise TopologyError(f"{self.path}: unknown zone {zone!r}")
        if zone_a == zone_b:
            return 0.0, 0.0
        return self.pairs.get(frozenset((zone_a, zone_b)), (self.inter_zone_ms, self.jitter_ms))

    def place(self, services: Sequence[str], initiator: str | None = None) -> dict[str, str]:
        """Zone of every process of a deployment of ``services`` (initiator first by default)."""
        if not services:
            raise TopologyError(f"{self.path}: a deployment needs at least one service")
        initiator = initiator or services[0]
        if initiator not in services:
            raise TopologyError(f"initiator service {initiator!r} is not among {list(services)}")
        ordered = [initiator, *(s for s in services if s != initiator)]
        placement = dict(self.fixed)
        for service, zone in zip(ordered, itertools.cycle(self.service_zones), strict=False):
            placement[f"service:{service}"] = zone
        for service in services:
            placement[f"runtime:{service}"] = placement[f"service:{service}"]
        placement["workflow-worker"] = placement[f"service:{initiator}"]
        placement["restate-server"] = placement["gateway"]
        placement["restate-handler"] = self.process_zones.get(
            "restate-server", placement["restate-server"]
        )
        for process, zone in self.process_zones.items():
            placement[process] = zone
        return placement

    def hop_ms(self, placement: Mapping[str, str], hop: Hop) -> float:
        """One-way latency of a hop between two placed processes."""
        zones = []
        for process in hop:
            if process not in placement:
                raise TopologyError(
                    f"{self.path}: no placement for process {process!r} "
                    f"(placed: {', '.join(sorted(placement))})"
                )
            zones.append(placement[process])
        return self.one_way_ms(zones[0], zones[1])


def available_topologies() -> dict[str, Path]:
    """Topology files shipped in ``bench/topologies``, by name."""
    return {p.stem: p for p in sorted(TOPOLOGY_DIR.glob("*.toml"))}


def load_topology(name_or_path: str | Path) -> Topology:
    """Load and validate a topology by name (``three-zones``) or by file path."""
    path = Path(name_or_path)
    if not path.suffix:
        known = available_topologies()
        if str(name_or_path) not in known:
            raise TopologyError(
                f"unknown topology {str(name_or_path)!r} (known: {', '.join(known)})"
            )
        path = known[str(name_or_path)]
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TopologyError(f"{path}: {exc}") from exc
    return parse_topology(data, path)


def parse_topology(data: Mapping[str, Any], path: Path) -> Topology:
    """Validate a parsed topology document; ``path`` is only used in error messages."""

    def fail(key: str, problem: str) -> TopologyError:
        return TopologyError(f"{path}: {key}: {problem}")

    _no_unknown_keys(data, {"name", "description", "zones", "network", "placement"}, "", fail)
    zones_raw = data.get("zones")
    if not isinstance(zones_raw, Mapping) or not zones_raw:
        raise fail("zones", "at least one [zones.<name>] table is required")
    zones = {
        str(z): str(v.get("description", "")) if isinstance(v, Mapping) else ""
        for z, v in zones_raw.items()
    }

    def zone(key: str, value: object) -> str:
        if value not in zones:
            raise fail(key, f"unknown zone {value!r} (zones: {', '.join(zones)})")
        return str(value)

    def latency(key: str, value: object) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise fail(key, f"expected a number of milliseconds, got {value!r}")
        if value < 0:
            raise fail(key, f"latency must be >= 0 ms, got {value}")
        return float(value)

    network = data.get("network", {})
    _no_unknown_keys(network, {"inter_zone_ms", "jitter_ms", "handshake", "pair"}, "network", fail)
    inter = latency("network.inter_zone_ms", network.get("inter_zone_ms", 0.0))
    jitter = latency("network.jitter_ms", network.get("jitter_ms", 0.0))
    pairs: dict[frozenset[str], tuple[float, float]] = {}
    for i, pair in enumerate(network.get("pair", [])):
        key = f"network.pair[{i}]"
        _no_unknown_keys(pair, {"zones", "one_way_ms", "jitter_ms"}, key, fail)
        names = pair.get("zones")
        if not isinstance(names, list) or len(names) != 2 or names[0] == names[1]:
            raise fail(f"{key}.zones", f"expected two different zones, got {names!r}")
        if "one_way_ms" not in pair:
            raise fail(f"{key}.one_way_ms", "missing")
        pairs[frozenset(zone(f"{key}.zones", z) for z in names)] = (
            latency(f"{key}.one_way_ms", pair["one_way_ms"]),
            latency(f"{key}.jitter_ms", pair.get("jitter_ms", jitter)),
        )

    placement = data.get("placement")
    if not isinstance(placement, Mapping):
        raise fail("placement", "a [placement] table is required")
    _no_unknown_keys(placement, {*FIXED_PROCESSES, "services", "process"}, "placement", fail)
    fixed = {}
    for process in FIXED_PROCESSES:
        if process not in placement:
            raise fail(f"placement.{process}", "missing placement")
        fixed[process] = zone(f"placement.{process}", placement[process])
    services = placement.get("services")
    if not isinstance(services, list) or not services:
        raise fail("placement.services", "missing placement (a non-empty list of zones)")
    service_zones = [zone(f"placement.services[{i}]", z) for i, z in enumerate(services)]
    process_zones = {}
    for process, z in placement.get("process", {}).items():
        key = f"placement.process.{process!r}"
        if not (process in (*FIXED_PROCESSES, *RULED_PROCESSES) or _is_service_process(process)):
            raise fail(
                key,
                f"unknown process name (expected {', '.join((*FIXED_PROCESSES, *RULED_PROCESSES))}"
                ", service:<name> or runtime:<name>)",
            )
        process_zones[process] = zone(key, z)
    return Topology(
        name=str(data.get("name", path.stem)),
        path=path,
        description=str(data.get("description", "")),
        zones=zones,
        inter_zone_ms=inter,
        jitter_ms=jitter,
        handshake=bool(network.get("handshake", False)),
        pairs=pairs,
        fixed=fixed,
        service_zones=service_zones,
        process_zones=process_zones,
    )


def _is_service_process(name: str) -> bool:
    kind, _, service = name.partition(":")
    return kind in ("service", "runtime") and bool(service)


def _no_unknown_keys(table: object, allowed: set[str], where: str, fail: Any) -> None:
    if not isinstance(table, Mapping):
        raise fail(where or "(top level)", "expected a table")
    for key in table:
        if key not in allowed:
            name = f"{where}.{key}" if where else key
            raise fail(name, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def plan_links(
    topology: Topology,
    placement: Mapping[str, str],
    ports: Mapping[str, int],
    listen_ports: Iterator[int],
    host: str = "127.0.0.1",
) -> dict[tuple[str, str], LinkSpec]:
    """One latency link per (caller zone, listening process in another zone).

    ``ports`` maps each listening process to its real port; ``listen_ports`` supplies free ports
    for the links (e.g. from :func:`launch.free_ports`). A caller in zone Z reaches process
    P directly if P is in Z, else through ``links[(Z, P)]``. Latency-free pairs get no link.
    """
    links: dict[tuple[str, str], LinkSpec] = {}
    used_zones = sorted(set(placement.values()))
    for process, port in sorted(ports.items()):
        if process not in placement:
            raise TopologyError(f"{topology.path}: no placement for process {process!r}")
        target_zone = placement[process]
        for zone in used_zones:
            delay = topology.one_way_ms(zone, target_zone)
            if zone == target_zone or (
                delay == 0 and not topology.jitter_between_ms(zone, target_zone)
            ):
                continue
            links[(zone, process)] = LinkSpec(
                name=f"{zone}->{process}",
                target_port=port,
                delay_ms=delay,
                target_host=host,
                listen_host=host,
                listen_port=next(listen_ports),
                jitter_ms=topology.jitter_between_ms(zone, target_zone),
                handshake=topology.handshake,
            )
    return links


def write_links_file(links: Sequence[LinkSpec], path: Path) -> Path:
    """Write links as ``[[link]]`` tables for ``python -m bench.proxy --links FILE``."""
    lines = []
    for spec in links:
        lines += [
            "[[link]]",
            f'name = "{spec.name}"',
            f'listen = "{spec.listen_host}:{spec.listen_port}"',
            f'target = "{spec.target_host}:{spec.target_port}"',
            f"delay_ms = {spec.delay_ms}",
            f"jitter_ms = {spec.jitter_ms}",
            f"handshake = {'true' if spec.handshake else 'false'}",
            "",
        ]
    path.write_text("\n".join(lines))
    return path


@dataclass(frozen=True)
class SagaShape:
    """What a network floor needs to know about a workload's saga (its happy path).

    ``hops``: the choreography's sequential role-to-role messages, e.g. for the warehouse saga
    ``[("warehouse", "payment"), ("payment", "loyalty"), ("loyalty", "warehouse")]``.
    ``steps``: the roles whose service is called, in order, one call per saga step.
    ``services``: role -> service name, in the workload's service order (roles and services are
    named alike in ``workloads``).
    """

    initiator: str
    hops: Sequence[tuple[str, str]]
    steps: Sequence[str]
    services: Mapping[str, str] = field(default_factory=dict)

    def service(self, role: str) -> str:
        """The service hosting ``role``."""
        return self.services.get(role, role)

    @classmethod
    def of(cls, workload: object) -> SagaShape:
        """The shape of a ``workloads.Workload`` (or anything with the same attributes).

        ``steps`` are ``Step`` values (their ``role``) or role names. ``hops`` is taken from the
        workload if it declares them; otherwise control is assumed to follow the steps: one
        message whenever consecutive steps sit at different roles, and one back to the
        initiator if the last step is elsewhere. For warehouse (reserve@warehouse,
        charge@payment, award@loyalty, ship@warehouse) that gives warehouse->payment->loyalty->
        warehouse. A choreography that runs steps in parallel has a lower floor than this.
        """
        if isinstance(workload, SagaShape):
            return workload
        name = getattr(workload, "name", repr(workload))
        if not hasattr(workload, "initiator") or not hasattr(workload, "steps"):
            raise TypeError(f"workload {name!r} declares no initiator or steps")
        initiator: str = workload.initiator  # type: ignore[attr-defined]
        steps = [getattr(s, "role", s) for s in workload.steps]  # type: ignore[attr-defined]
        hops = getattr(workload, "hops", None)
        if hops is None:
            hops = []
            at = initiator
            for role in [*steps, initiator]:
                if role != at:
                    hops.append((at, role))
                    at = role
        services = {
            getattr(s, "role", s): getattr(s, "name", s) for s in getattr(workload, "services", ())
        }
        return cls(initiator, [tuple(h) for h in hops], steps, services)


def critical_path(path_model: str, shape: SagaShape) -> list[Hop]:
    """The one-way (from_process, to_process) hops a saga waits for, in order.

    - ``choreography``: client -> gateway -> initiator's sidecar; each step is a call from the
      role's sidecar to its service and back; each role-to-role message is one hop between
      sidecars; the result goes back from the initiator's sidecar.
    - ``orchestrator`` (Temporal, activities on per-service workers): the gateway starts the
      workflow at the server; each step is a workflow task (server -> workflow worker -> server)
      that schedules it, then an activity task server -> runtime:<s> -> service:<s> ->
      runtime:<s> -> server; a last workflow task completes the workflow.
    - ``orchestrator-local`` (local activities): one workflow task whose worker calls each
      service directly.
    - ``journal`` (Restate): the gateway calls the server's ingress, which invokes the handler;
      each step is a call from the handler to the service and back, then the step's journal
      entry to the server and its acknowledgement back (ctx.run returns only once the entry is
      durable); the handler's result goes to the server, which answers the gateway.
    - ``embedded`` (DBOS, a library in the gateway process): the gateway calls each service
      directly; its checkpoints are local writes.

    Hops between co-located processes cost nothing, so listing them keeps the model honest
    without changing the local floor.
    """
    init = shape.service(shape.initiator)
    entry: list[Hop] = [("loadgen", "gateway")]
    exit_: list[Hop] = [("gateway", "loadgen")]
    hops: list[Hop]
    if path_model == "choreography":
        hops = [*entry, ("gateway", f"runtime:{init}")]
        for role in shape.steps:
            s = shape.service(role)
            hops += [(f"runtime:{s}", f"service:{s}"), (f"service:{s}", f"runtime:{s}")]
        for src, dst in shape.hops:
            hops.append((f"runtime:{shape.service(src)}", f"runtime:{shape.service(dst)}"))
        return [*hops, (f"runtime:{init}", "gateway"), *exit_]
    workflow_task: list[Hop] = [
        ("temporal-server", "workflow-worker"),
        ("workflow-worker", "temporal-server"),
    ]
    if path_model == "orchestrator":
        hops = [*entry, ("gateway", "temporal-server"), *workflow_task]
        for role in shape.steps:
            s = shape.service(role)
            hops += [
                ("temporal-server", f"runtime:{s}"),
                (f"runtime:{s}", f"service:{s}"),
                (f"service:{s}", f"runtime:{s}"),
                (f"runtime:{s}", "temporal-server"),
                *workflow_task,
            ]
        return [*hops, ("temporal-server", "gateway"), *exit_]
    if path_model == "orchestrator-local":
        hops = [*entry, ("gateway", "temporal-server"), ("temporal-server", "workflow-worker")]
        for role in shape.steps:
            s = shape.service(role)
            hops += [("workflow-worker", f"service:{s}"), (f"service:{s}", "workflow-worker")]
        return [
            *hops,
            ("workflow-worker", "temporal-server"),
            ("temporal-server", "gateway"),
            *exit_,
        ]
    if path_model == "journal":
        server, handler = "restate-server", "restate-handler"
        hops = [*entry, ("gateway", server), (server, handler)]
        for role in shape.steps:
            s = shape.service(role)
            hops += [(handler, f"service:{s}"), (f"service:{s}", handler)]
            hops += [(handler, server), (server, handler)]
        return [*hops, (handler, server), (server, "gateway"), *exit_]
    if path_model == "embedded":
        hops = list(entry)
        for role in shape.steps:
            s = shape.service(role)
            hops += [("gateway", f"service:{s}"), (f"service:{s}", "gateway")]
        return [*hops, *exit_]
    raise ValueError(f"unknown path model {path_model!r} (known: {', '.join(PATH_MODELS)})")


def network_floor(system: str, workload: object, topology: Topology) -> float:
    """Milliseconds of injected latency on the critical path of one saga.

    ``system`` is a system name from :data:`bench.matrix.SYSTEMS` or a path model name;
    ``workload`` is a workload descriptor (declaring ``initiator``, ``hops``, ``steps``) or a
    :class:`SagaShape`.
    """
    model = SYSTEMS[system].path_model if system in SYSTEMS else system
    shape = SagaShape.of(workload)
    # The workload's declared service order decides placement; roles only seen in the path
    # come after it.
    roles = [shape.initiator, *shape.steps, *(r for hop in shape.hops for r in hop)]
    services = list(dict.fromkeys([*shape.services.values(), *map(shape.service, roles)]))
    placement = topology.place(services, shape.service(shape.initiator))
    return sum(topology.hop_ms(placement, hop) for hop in critical_path(model, shape))
