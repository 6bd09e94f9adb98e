"""One simulated run: a whole cluster, its client, and the faults of one seed, on virtual time.

`run_seed(seed)` builds everything from the seed: the topology (one node per role, or two
roles sharing a node), the nodes' clock skews, the client's sessions (bursts of concurrent
ones) and the fault plan: node crashes (at the N-th crash point of a node, at a time near a
burst, sometimes two nodes at once, and "hot" crashes around control messages), with
downtimes sometimes longer than the receive or even the decision timeout; partitions of a
link or a node; lost, duplicated (sometimes seconds late), stalled and reordered messages;
service outages, slow service requests and lost service responses. It then runs three
phases on a `SimLoop`:

1. fault phase: the client starts its sessions at the initiator's node and polls them,
   retrying with the SAME session id whenever the node is down or the call fails;
2. heal: every dead node restarts, partitions end, no more faults; run until quiescent (every
   session the client started is terminal for it, no node runs a session or holds an
   unacknowledged message, no write is pending) or until a virtual deadline;
3. reboot: crash every node at once and restart them all, then wait for quiescence again, so
   that only what is durable counts as the final state.

A crash (see `Cluster.crash`) marks the incarnation dead (its disk, network attachment and
service client then raise `NodeCrashed`), drops its store's uncommitted writes, and cancels
every task it owns; a restart builds a new `Node` over the same `SimDisk`. In some seeds a
node also crashes at one of the runtime's own named failpoints (`accompanist_py.failpoints`:
the N-th time its code reaches, say, `after_vote`), through the handler that module calls at
every point; the handler is installed for the run only. The result carries
what the invariant checker needs (`invariants.check`), the counters the runner summarises,
and the event trace with its hash.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import inspect
import logging
import random
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import invariants
from sim_disk import SimDisk, SimStore
from sim_loop import (
    OWNER,
    Incarnation,
    NodeCrashed,
    SimLoop,
    SimTask,
    Trace,
    owner_context,
    run_in,
    virtual_clock,
)
from sim_network import NetworkFaults, Partition, SimNetwork, SimTransport
from sim_services import Effect, ServiceModel, SimServiceClient
from sim_workload import CHOREOGRAPHIES, ROLES, Request, make_request

from accompanist_py import failpoints
from accompanist_py.backoff import Backoff
from accompanist_py.choreography import Registry
from accompanist_py.message import decode_value
from accompanist_py.node import Node, NodeConfig
from accompanist_py.store import SessionState

RECEIVE_TIMEOUT_S = 5.0
DECISION_TIMEOUT_S = 20.0
BACKOFF = Backoff(initial_s=0.01, max_s=0.5)


def node_config() -> NodeConfig:
    """The nodes' config: short timeouts (virtual seconds), only fields NodeConfig has."""
    wanted: dict[str, Any] = {
        "receive_timeout_s": RECEIVE_TIMEOUT_S,
        "backoff": BACKOFF,
        "decision_timeout_s": DECISION_TIMEOUT_S,
        "query_interval_s": 1.0,
        # Finished sessions' working state (inbox, journal) goes soon, their records stay.
        "retention_s": 15.0,
        "prune_interval_s": 5.0,
    }
    names = {f.name for f in dataclasses.fields(NodeConfig)}
    return NodeConfig(**{k: v for k, v in wanted.items() if k in names})


@dataclass
class Options:
    """Knobs of a run; the defaults are the standard run, tests override some."""

    sessions: tuple[int, int] = (6, 10)  # how many sessions the client starts (inclusive)
    fault_phase_s: float = 30.0
    settle_s: float = 100.0  # virtual deadline for quiescence after heal, and after reboot
    crashes: bool = True
    failpoint_crashes: bool = True  # with `crashes`: some seeds crash at runtime failpoints
    network_faults: bool = True
    partitions: bool = True
    service_faults: bool = True
    final_reboot: bool = True
    clock_skew: bool = True
    store_class: type[SimStore] = SimStore
    service_dedup: bool = True
    keep_trace: bool = True

    @property
    def fault_free(self) -> bool:
        return not (self.crashes or self.network_faults or self.partitions or self.service_faults)

    @classmethod
    def no_faults(cls, **overrides: Any) -> Options:
        """A run without any fault (the final reboot stays: it loses nothing durable)."""
        base: dict[str, Any] = {
            "crashes": False,
            "network_faults": False,
            "partitions": False,
            "service_faults": False,
        }
        return cls(**{**base, **overrides})


@dataclass
class SessionPlan:
    """One session the client starts."""

    sid: str
    request: Request
    start_at: float
    initiator: str

    @property
    def roles(self) -> tuple[str, ...]:
        return next(c.roles for c in CHOREOGRAPHIES if c.name == self.request.choreography)


@dataclass
class ClientLog:
    """What the client saw of one session."""

    statuses: list[tuple[float, str]] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)
    terminal: list[tuple[float, str]] = field(default_factory=list)  # terminal states seen


@dataclass
class CrashTrigger:
    """Crash `node` at its `countdown`-th crash point (counted while faults are injected)."""

    node: str
    countdown: int
    sync: bool = False  # crash inside the operation (it fails) rather than just after it


@dataclass
class FailpointTrigger:
    """Crash `node` the `hit`-th time its code reaches the runtime's failpoint `point`."""

    node: str
    point: str
    hit: int
    fired: bool = False


# Which roles' code reaches a failpoint, for points that not every role reaches: the
# decision is the initiator's (role a in both choreographies), votes and vetoes are the
# other participants'. Nodes are drawn by how busy their roles are (d takes part only in
# fan4's route cd), and hit numbers up to about how often a node reaches the point in a
# run's fault phase, so that most triggers fire.
_FAILPOINT_ROLES: dict[str, set[str]] = {
    "after_decision": {"a"},
    "after_vote": {"b", "c", "d"},
    "after_veto": {"b", "c", "d"},
}
_ROLE_WEIGHT = {"a": 4, "b": 4, "c": 3, "d": 1}
_FAILPOINT_MAX_HIT: dict[str, int] = {
    "before_call": 6,
    "after_call": 6,
    "after_journal": 8,
    "before_send": 4,
    "after_send": 6,
    "during_compensation": 2,
    "after_vote": 4,
    "after_veto": 1,
    "after_decision": 6,
}


@dataclass
class RunResult:
    """Everything a run produced."""

    seed: int
    topology: dict[str, list[str]]
    plans: list[SessionPlan]
    client: dict[str, ClientLog]
    final: dict[str, dict[str, str | None]]  # sid -> role -> state (None: no record)
    results: dict[str, dict[str, Any]]  # sid -> role -> decoded result
    effects: list[Effect]
    mismatches: list[tuple[str, float, str, str, str]]  # service, t, key, first, later
    restart_failures: list[tuple[float, str, str]]
    task_errors: list[tuple[float, str, str]]
    client_errors: list[tuple[float, str, str]]
    quiescent: bool
    leftovers: list[str]
    counters: Counter[str]
    trace_hash: str
    trace: list[str]
    end_time: float
    fault_free: bool = False  # no fault of any kind: every session must end as requested
    violations: list[Any] = field(default_factory=list)


class _Handle:
    """A node incarnation and the parts built for it."""

    def __init__(
        self,
        name: str,
        inc: Incarnation,
        node: Node,
        store: SimStore,
        transport: SimTransport,
        service: SimServiceClient,
    ) -> None:
        self.name = name
        self.inc = inc
        self.node = node
        self.store = store
        self.transport = transport
        self.service = service
        self.ready = False  # start() returned: the node serves clients


class _TraceLog(logging.Handler):
    """Puts the runtime's warnings and errors into the trace (they are part of the run)."""

    def __init__(self, trace: Trace) -> None:
        super().__init__(logging.WARNING)
        self._trace = trace

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text += f" [{type(exc).__name__}: {exc}]"
        self._trace("log", f"{OWNER.get()} {record.levelname} {record.name}: {text}")


def _rng(seed: int, part: str) -> random.Random:
    # One stream per part, so that a change in how one part draws leaves the others alone.
    return random.Random(f"{seed}/{part}")


class Cluster:
    """The simulated world of one seed."""

    def __init__(self, seed: int, options: Options, loop: SimLoop, trace: Trace) -> None:
        self.seed = seed
        self.options = options
        self.loop = loop
        self.trace = trace
        self.rng_faults = _rng(seed, "faults")
        self.rng_net = _rng(seed, "network")
        self.rng_disk = _rng(seed, "disk")
        self.rng_svc = _rng(seed, "services")
        self.rng_client = _rng(seed, "client")
        self.counters: Counter[str] = Counter()
        self.registry = Registry(CHOREOGRAPHIES)
        self.topology = self._topology(_rng(seed, "topology"))
        # Each node's wall clock is off by a little (as with NTP), the same across its restarts.
        skews = _rng(seed, "clocks")
        skewed = options.clock_skew and skews.random() < 0.5
        self.skew = {n: skews.uniform(-2.0, 2.0) if skewed else 0.0 for n in self.topology}
        self.host_of = {r: n for n, roles in self.topology.items() for r in roles}
        self.disks = {n: SimDisk(n) for n in self.topology}
        self.models = {
            n: ServiceModel(n, trace, dedup=options.service_dedup) for n in self.topology
        }
        self.network = SimNetwork(loop, self.rng_net, trace, crash_point=self.crash_point)
        self.config = node_config()
        self.live: dict[str, _Handle | None] = dict.fromkeys(self.topology)
        self.generation: Counter[str] = Counter()
        self.dead: list[_Handle] = []  # kept so that no dead task is collected mid-run
        self.harness: list[asyncio.Task[Any]] = []
        self.injecting = False
        self.triggers: dict[str, list[CrashTrigger]] = {n: [] for n in self.topology}
        self.hot = 0.0  # probability of a crash at each control-message crash point
        self.hot_budget = 0
        self.failpoint_triggers: list[FailpointTrigger] = []
        self.failpoint_hits: Counter[tuple[str, str]] = Counter()  # (node, point), faults on
        self.restart_failures: list[tuple[float, str, str]] = []
        self.quarantined: list[tuple[str, str]] = []
        self.start_attempts: Counter[str] = Counter()
        self.lose_response = 0.0
        self.slow_service = 0.0
        self.plans: list[SessionPlan] = []
        self.client: dict[str, ClientLog] = {}
        self.client_errors: list[tuple[float, str, str]] = []
        self.client_tasks: list[asyncio.Task[None]] = []
        self.wall: Callable[[], float] | None = None  # the virtual wall clock, for Node(clock=)
        self.node_accepts_clock = "clock" in inspect.signature(Node).parameters

    # -- the world ---------------------------------------------------------------------------
    @staticmethod
    def _topology(rng: random.Random) -> dict[str, list[str]]:
        roll = rng.random()
        if roll < 0.15:
            return {"a": ["a"], "b": ["b"], "cd": ["c", "d"]}
        if roll < 0.25:
            return {"ab": ["a", "b"], "c": ["c"], "d": ["d"]}
        return {r: [r] for r in ROLES}

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """A task of the harness itself (owned by no node)."""
        task = self.loop.create_task(coro, context=owner_context(None))
        self.harness.append(task)
        return task

    async def boot(self, name: str) -> None:
        """Start a new incarnation of node `name` over its disk."""
        if self.live[name] is not None:
            return
        self.generation[name] += 1
        inc = Incarnation(name, self.generation[name])
        store = self.options.store_class(
            self.disks[name],
            inc,
            self.rng_disk,
            self.trace,
            on_write=lambda: self.crash_point(name, "write"),
        )
        transport = self.network.attach(name, inc)
        service = SimServiceClient(
            self.models[name],
            inc,
            self.loop,
            self.rng_svc,
            backoff=BACKOFF,
            lose_response=self.lose_response,
            slow=self.slow_service,
            crash_point=self.crash_point,
        )
        extra: dict[str, Any] = {}
        if self.node_accepts_clock and self.wall is not None:
            wall, skew = self.wall, self.skew[name]
            extra["clock"] = (lambda: wall() + skew) if skew else wall
        ctx = owner_context(inc)
        # The Node is built in its own context too: anything it schedules belongs to it.
        node = ctx.run(
            Node,
            name,
            self.topology[name],
            self.registry,
            transport,
            store=store,
            service=service,
            config=self.config,
            **extra,
        )
        handle = _Handle(name, inc, node, store, transport, service)
        self.live[name] = handle
        self.start_attempts[name] += 1
        self.trace("node", f"start {inc}")
        starting = self.loop.create_task(node.start(), context=owner_context(inc))
        assert isinstance(starting, SimTask)
        starting.handled = True  # its failure is reported here, as a failed restart
        await asyncio.wait({starting})
        if starting.cancelled() or not inc.alive:
            return  # crashed while starting; its crash scheduled the next restart
        exc = starting.exception()
        if exc is not None and not isinstance(exc, NodeCrashed):
            detail = f"{type(exc).__name__}: {exc}"
            self.restart_failures.append((self.loop.time(), str(inc), detail))
            self.trace("node", f"start failed {inc}: {detail}")
            self.crash(
                name, "start failed", restart=self.start_attempts[name] < 4, kind="start_failed"
            )
            return
        handle.ready = True
        self.trace("node", f"ready {inc}")
        self._note_quarantine(handle)

    def _note_quarantine(self, handle: _Handle) -> None:
        # A session the runtime cannot rebuild from what it wrote itself failed to restart.
        for (sid, role), reason in getattr(handle.node.store, "quarantined", {}).items():
            entry = (f"{handle.inc}", f"session {sid} at {role} quarantined: {reason}")
            if entry not in self.quarantined:
                self.quarantined.append(entry)
                self.restart_failures.append((self.loop.time(), *entry))

    def crash(self, name: str, why: str, *, restart: bool = True, kind: str = "point") -> None:
        """Kill the live incarnation of `name` now; schedule its restart.

        `kind` is what caused it, counted as `crashes:<kind>`: "point" (the N-th crash point
        of the harness), "hot" (around a control message), "timed", "failpoint" (a named
        point of the runtime) or "start_failed".
        """
        handle = self.live[name]
        if handle is None or not handle.inc.alive:
            return
        inc = handle.inc
        inc.alive = False
        self.live[name] = None
        self.dead.append(handle)
        lost = handle.store.sim_crash()
        handle.transport.kill()
        cancelled = self.loop.cancel_tasks_of(inc)
        if restart:
            self.counters["crashes"] += 1  # the final reboot is not a fault
            self.counters[f"crashes:{kind}"] += 1
        self.trace("crash", f"{inc} ({why}): lost {lost} writes, cancelled {cancelled} tasks")
        if not restart:
            return
        if self.injecting:
            rng = self.rng_faults
            roll = rng.random()
            if roll < 0.7:
                downtime = rng.uniform(0.01, 2.0)
            elif roll < 0.9:
                # Longer than the receive timeout: peers waiting on it time out meanwhile.
                downtime = rng.uniform(RECEIVE_TIMEOUT_S, 2.5 * RECEIVE_TIMEOUT_S)
            else:
                # Longer than the initiator's decision timeout.
                downtime = rng.uniform(DECISION_TIMEOUT_S, 1.5 * DECISION_TIMEOUT_S)
        else:
            downtime = 0.05
        self.loop.call_later(downtime, self._restart_due, name, context=owner_context(None))

    def _restart_due(self, name: str) -> None:
        if self.live[name] is None:
            self.spawn(self.boot(name))

    def _timed_crash(self, name: str) -> None:
        if self.injecting:
            self.crash(name, "timed", kind="timed")

    def crash_point(self, name: str, point: str) -> None:
        """A moment where node `name` may crash: a write, a send, a delivery, a service call.

        Two kinds of crash land here: planned ones, at the N-th crash point of a node, and
        "hot" ones, drawn at each point around a control message (DONE, ABORT, DECISION,
        QUERY sent, delivered, acknowledged): the outcome protocol's riskiest moments, which
        a crash at a random time would almost never hit.
        """
        if not self.injecting:
            return
        rng = self.rng_faults
        hot = self.hot and point.endswith("-control") and self.hot_budget > 0
        if hot and rng.random() < self.hot:
            self.hot_budget -= 1
            self._crash_at_point(name, f"hot {point}", sync=rng.random() < 0.5, kind="hot")
            return
        pending = self.triggers.get(name)
        if not pending:
            return
        trigger = pending[0]
        trigger.countdown -= 1
        if trigger.countdown > 0:
            return
        pending.pop(0)
        self._crash_at_point(name, point, sync=trigger.sync)

    def _crash_at_point(self, name: str, point: str, *, sync: bool, kind: str = "point") -> None:
        if sync:
            # Inside the operation: it raises NodeCrashed in the dying node's code.
            self.crash(name, f"at {point}", kind=kind)
        else:
            # Just after it: whatever else is ready runs first, then the process dies.
            self.loop.call_soon(
                lambda: self.crash(name, f"after {point}", kind=kind), context=owner_context(None)
            )

    def at_failpoint(self, point: str) -> None:
        """The runtime's failpoint handler: its code, in some node's task, reached `point`.

        Counts the hit for the node owning the task (while faults are injected) and, if a
        trigger asks for this hit, crashes that node right here, as `kill -9` at that instant
        would: the node dies, then `NodeCrashed` ends the code that reached the point.
        """
        if not self.injecting:
            return
        owner = OWNER.get()
        if owner is None or not owner.alive:
            return  # not a node's code, or a dead node's: only live nodes count hits
        handle = self.live.get(owner.node)
        if handle is None or handle.inc is not owner:
            return
        key = (owner.node, point)
        self.failpoint_hits[key] += 1
        hit = self.failpoint_hits[key]
        for trigger in self.failpoint_triggers:
            if trigger.fired or (trigger.node, trigger.point, trigger.hit) != (*key, hit):
                continue
            trigger.fired = True
            self.counters[f"failpoint:{point}"] += 1
            self.crash(owner.node, f"at failpoint {point} (hit {hit})", kind="failpoint")
            raise NodeCrashed(f"{owner} crashed at failpoint {point}")

    # -- the fault plan ----------------------------------------------------------------------
    def plan_faults(self) -> None:
        """Draw this seed's faults. Timed faults start near the client's bursts of sessions,
        since a session lasts only tens of milliseconds: a fault at a random time of the
        phase would mostly find the cluster idle."""
        rng = self.rng_faults
        o = self.options
        nodes = sorted(self.topology)
        busy = sorted({round(p.start_at, 6) for p in self.plans}) or [0.0]

        def near_activity() -> float:
            return rng.choice(busy) + rng.uniform(0.0, 0.15)

        if o.crashes and rng.random() < 0.6:
            self.hot = rng.uniform(0.01, 0.15)
            self.hot_budget = rng.randint(1, 3)
        if o.crashes:
            n = rng.choices([0, 1, 2, 3, 4], weights=[1, 4, 4, 2, 1])[0]
            for _ in range(n):
                node = rng.choice(nodes)
                if rng.random() < 0.7:
                    # The N-th crash point of the node: lands inside the sessions' work.
                    t = CrashTrigger(node, countdown=rng.randint(1, 150), sync=rng.random() < 0.5)
                    self.triggers[node].append(t)
                else:
                    # Sometimes two nodes at once (a rack losing power).
                    both = [node, rng.choice(nodes)] if rng.random() < 0.2 else [node]
                    at = near_activity()
                    for victim in both:
                        self.loop.call_later(
                            at, self._timed_crash, victim, context=owner_context(None)
                        )
        if o.network_faults and rng.random() < 0.7:
            self.network.faults = NetworkFaults(
                lose_request=rng.uniform(0.0, 0.05),
                lose_ack=rng.uniform(0.0, 0.05),
                duplicate=rng.uniform(0.0, 0.08),
                stall=rng.uniform(0.0, 0.03),
                jitter_s=rng.uniform(0.0002, 0.005),
            )
        if o.partitions:
            for _ in range(rng.choices([0, 1, 2], weights=[5, 3, 2])[0]):
                start = near_activity() - rng.uniform(0.0, 0.1)
                roll = rng.random()
                if roll < 0.6:
                    length = rng.uniform(0.05, 2.0)
                elif roll < 0.9:
                    length = rng.uniform(RECEIVE_TIMEOUT_S, 2 * RECEIVE_TIMEOUT_S)
                else:
                    length = rng.uniform(DECISION_TIMEOUT_S, 1.4 * DECISION_TIMEOUT_S)
                a = rng.choice(nodes)
                b = rng.choice([x for x in nodes if x != a]) if rng.random() < 0.6 else None
                self.network.partitions.append(Partition(start, start + length, a, b))
                self.counters["partitions"] += 1
        if o.service_faults:
            self.lose_response = rng.uniform(0.0, 0.05) if rng.random() < 0.5 else 0.0
            self.slow_service = rng.uniform(0.0, 0.05) if rng.random() < 0.3 else 0.0
            for name in nodes:
                if rng.random() < 0.3:
                    start = near_activity() - rng.uniform(0.0, 0.1)
                    length = rng.uniform(0.05, 3.0) if rng.random() < 0.85 else rng.uniform(12, 20)
                    self.models[name].outages.append((start, start + length))
                    self.counters["service_outages"] += 1

    def plan_failpoints(self) -> None:
        """In some seeds, crash a node at the N-th hit of a runtime failpoint.

        Drawn from a stream of its own, so that the seeds without such a crash run exactly as
        they did before these crashes existed (the handler is not even installed for them: with
        a handler, the journal waits for each row's durability before `after_journal`).
        """
        o = self.options
        if not (o.crashes and o.failpoint_crashes):
            return
        rng = _rng(self.seed, "failpoints")
        if rng.random() >= 0.5:
            return
        for _ in range(rng.choices([1, 2], weights=[3, 1])[0]):
            point = rng.choice(failpoints.POINTS)
            roles = _FAILPOINT_ROLES.get(point)
            nodes = sorted(
                n for n, hosted in self.topology.items() if roles is None or roles & set(hosted)
            )
            weights = [max(_ROLE_WEIGHT[r] for r in self.topology[n]) for n in nodes]
            node = rng.choices(nodes, weights=weights)[0]
            hit = rng.randint(1, _FAILPOINT_MAX_HIT[point])
            if any((t.node, t.point, t.hit) == (node, point, hit) for t in self.failpoint_triggers):
                continue
            self.failpoint_triggers.append(FailpointTrigger(node, point, hit))
            self.trace("plan", f"crash {node} at hit {hit} of failpoint {point}")

    def heal(self) -> None:
        self.trace("heal", "restart dead nodes, end partitions, stop faults")
        self.injecting = False
        self.network.heal()
        now = self.loop.time()
        for model in self.models.values():
            model.outages = [(s, min(e, now)) for s, e in model.outages if s < now]
        self.lose_response = self.slow_service = 0.0
        for h in self.live.values():
            if h is not None:
                h.service.lose_response = h.service.slow = 0.0
        for name in sorted(self.live):
            if self.live[name] is None:
                self.spawn(self.boot(name))

    # -- the client --------------------------------------------------------------------------
    def plan_sessions(self) -> None:
        """The client's sessions: a few bursts of concurrent ones, spread over the phase."""
        rng = self.rng_client
        lo, hi = self.options.sessions
        n = rng.randint(lo, hi)
        later = rng.randint(1, 3)
        bursts = [
            0.0,
            *sorted(rng.uniform(0.0, 0.6 * self.options.fault_phase_s) for _ in range(later)),
        ]
        for i in range(n):
            request = make_request(rng, i)
            # The first sessions all start at once; the others join a burst, a little apart.
            burst = bursts[0] if i < 2 else rng.choice(bursts)
            at = burst + rng.uniform(0.0, 0.03)
            sid = f"s{i}"
            initiator = next(c.initiator for c in CHOREOGRAPHIES if c.name == request.choreography)
            self.plans.append(SessionPlan(sid, request, at, initiator))
            self.client[sid] = ClientLog()

    async def run_client(self, plan: SessionPlan) -> None:
        log = self.client[plan.sid]
        rng = self.rng_client
        await asyncio.sleep(plan.start_at)
        host = self.host_of[plan.initiator]
        started = False
        while True:
            handle = self.live[host]
            if handle is None or not handle.ready:
                log.errors.append((self.loop.time(), "initiator down"))
                await asyncio.sleep(rng.uniform(0.2, 1.0))
                continue
            node = handle.node
            if started and rng.random() < 0.5:
                call: Any = self._status(node, plan)
            else:
                call = node.start_session(
                    plan.request.choreography,
                    [plan.request.order],
                    session_id=plan.sid,
                    wait=False,
                )
            # A request to the node runs as the node's handler: a crash cancels it.
            task = self.loop.create_task(call, context=owner_context(handle.inc))
            assert isinstance(task, SimTask)
            task.handled = True
            await asyncio.wait({task})
            now = self.loop.time()
            if task.cancelled():
                log.errors.append((now, "request cut short by a crash"))
            elif task.exception() is not None:
                exc = task.exception()
                text = f"{type(exc).__name__}: {exc}"
                log.errors.append((now, text))
                if not isinstance(exc, NodeCrashed | KeyError) and type(exc).__name__ not in (
                    "NodeStopping",
                ):
                    self.client_errors.append((now, plan.sid, text))
                if isinstance(exc, KeyError):
                    started = False  # the node does not know it (any more): start it again
            else:
                status = task.result()
                started = True
                log.statuses.append((now, status.state))
                self.trace("client", f"{plan.sid} {status.state}")
                if status.state in SessionState.TERMINAL:
                    log.terminal.append((now, status.state))
                    return
            await asyncio.sleep(rng.uniform(0.3, 1.5))

    @staticmethod
    async def _status(node: Node, plan: SessionPlan) -> Any:
        return node.status(plan.sid, plan.initiator)

    # -- quiescence --------------------------------------------------------------------------
    def busy(self) -> list[str]:
        """Why the cluster is not quiescent (empty when it is)."""
        why: list[str] = []
        pending = [
            p.sid for p, t in zip(self.plans, self.client_tasks, strict=True) if not t.done()
        ]
        if pending:
            why.append(f"client still waiting for {', '.join(pending)}")
        for name in sorted(self.live):
            h = self.live[name]
            if h is None or not h.ready:
                why.append(f"node {name} down")
                continue
            running = sorted(
                f"{s}@{r} ({rec.state if (rec := h.node.store.session(s, r)) else 'no record'})"
                for s, r in getattr(h.node, "sessions", {})
            )
            if running:
                why.append(f"node {name} runs {', '.join(running)}")
            out = h.node.store.outbox_size()
            if out:
                stuck = sorted(
                    f"{m.session}#{m.seq}>{m.receiver}" for m in h.node.store.pending_outbox()
                )
                why.append(f"node {name} outbox {', '.join(stuck[:6])}")
            if h.store.sim_pending():
                why.append(f"node {name} has writes pending")
        return why

    async def settle(self, deadline_s: float) -> bool:
        deadline = self.loop.time() + deadline_s
        while self.loop.time() < deadline:
            if not self.busy():
                return True
            await asyncio.sleep(0.25)
        return not self.busy()

    # -- the run -----------------------------------------------------------------------------
    async def main(self) -> tuple[bool, list[str]]:
        self.plan_sessions()
        self.plan_faults()
        self.plan_failpoints()
        if self.failpoint_triggers:
            failpoints.set_handler(self.at_failpoint)  # removed by run_seed when the run ends
        self.injecting = True
        for name in sorted(self.topology):
            await self.boot(name)
        self.client_tasks = [self.spawn(self.run_client(p)) for p in self.plans]
        await asyncio.sleep(self.options.fault_phase_s)
        self.heal()
        quiet = await self.settle(self.options.settle_s)
        leftovers = [] if quiet else self.busy()
        self.trace("phase", f"settled={quiet}")
        if self.options.final_reboot:
            for name in sorted(self.live):
                self.crash(name, "final reboot", restart=False)
            for name in sorted(self.live):
                await self.boot(name)
            quiet_again = await self.settle(self.options.settle_s)
            if not quiet_again:
                leftovers += [f"after reboot: {w}" for w in self.busy()]
            quiet = quiet and quiet_again
        return quiet, leftovers

    def final_states(self) -> tuple[dict[str, dict[str, str | None]], dict[str, dict[str, Any]]]:
        for h in self.live.values():
            if h is not None:
                self._note_quarantine(h)
        states: dict[str, dict[str, str | None]] = {}
        results: dict[str, dict[str, Any]] = {}
        for p in self.plans:
            states[p.sid] = {}
            results[p.sid] = {}
            for role in p.roles:
                state, result = self._record(p.sid, role)
                states[p.sid][role] = state
                results[p.sid][role] = result
        return states, results

    def _record(self, sid: str, role: str) -> tuple[str | None, Any]:
        host = self.host_of[role]
        h = self.live[host]
        if h is not None:
            rec = h.node.store.session(sid, role)
            if rec is None:
                return None, None
            return rec.state, decode_value(rec.result) if rec.result is not None else None
        row = (
            self.disks[host]
            .conn.execute(
                "SELECT state, result FROM sessions WHERE session_id=? AND role=?", (sid, role)
            )
            .fetchone()
        )
        if row is None:
            return None, None
        return row[0], decode_value(row[1]) if row[1] is not None else None


def run_seed(seed: int, options: Options | None = None) -> RunResult:
    """Run one seed to its end and check it; deterministic in `seed` and `options`."""
    options = options or Options()
    loop = SimLoop()
    trace = Trace(loop, keep=options.keep_trace)
    cluster = Cluster(seed, options, loop, trace)
    runtime_log = logging.getLogger("accompanist_py")
    handler = _TraceLog(trace)
    saved = (runtime_log.handlers[:], runtime_log.propagate, runtime_log.level)
    runtime_log.handlers = [handler]
    runtime_log.propagate = False
    runtime_log.setLevel(logging.WARNING)
    # Cyclic garbage collection runs finalizers (a dead task's `finally`) at moments that
    # depend on the process's history, not on the seed: keep it off during the run.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with warnings.catch_warnings(), virtual_clock(loop) as wall:
            # A crash interrupts code between making a coroutine and awaiting it; Python's
            # complaint about it, when the garbage goes, is about the crash, not the runtime.
            warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
            cluster.wall = wall.time
            quiet, leftovers = run_in(loop, cluster.main)
            final, results = cluster.final_states()
            cluster.live.clear()
            cluster.dead.clear()
            gc.collect()
    finally:
        failpoints.set_handler(None)  # installed by Cluster.main for this run only
        runtime_log.handlers, runtime_log.propagate, _ = saved
        runtime_log.setLevel(saved[2])
        if gc_was_enabled:
            gc.enable()
    for disk in cluster.disks.values():
        disk.close()
    effects = sorted(
        (e for m in cluster.models.values() for e in m.effects), key=lambda e: (e.t, e.key)
    )
    counters = cluster.counters + cluster.network.counters
    counters["service_transient"] = sum(m.transient for m in cluster.models.values())
    result = RunResult(
        seed=seed,
        topology=cluster.topology,
        plans=cluster.plans,
        client=cluster.client,
        final=final,
        results=results,
        effects=effects,
        mismatches=[(m.name, *x) for m in cluster.models.values() for x in m.mismatches],
        restart_failures=cluster.restart_failures,
        task_errors=[(t, str(o), text) for t, o, text in loop.task_errors],
        client_errors=cluster.client_errors,
        quiescent=quiet,
        leftovers=leftovers,
        counters=counters,
        trace_hash=trace.digest(),
        trace=trace.lines,
        end_time=loop.time(),
        fault_free=options.fault_free,
    )
    result.violations = invariants.check(result)
    return result
