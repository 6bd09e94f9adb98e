"""The invariant checker: what must hold at the end of every simulated run, whatever the faults.

`check(result)` returns one `Violation` per broken rule, each naming the session, the states
of its roles and the effects its services applied, so that a failing seed explains itself:

1. nothing stuck (`stuck`): every session the client started is terminal at its initiator and
   at every role holding a record of it; the cluster went quiescent (`not_quiescent`);
2. agreement (`disagreement`): all roles holding a record are in the same terminal state;
3. all or nothing: a completed session committed every transaction of its path once and undid
   none (`partial_commit`); an aborted one undid every commit that took effect
   (`not_compensated`); no service holds effects of a session never started (`orphan_effect`);
4. exactly once: no key applied twice (`duplicate_effect`), no commit undone twice
   (`duplicate_compensation`), no key sent with two different payloads (`key_reuse`);
5. the client saw the final state (`client_mismatch`): every terminal state the client was
   told equals the initiator's final state; and in a run without faults, every session ends
   as its request asked (`wrong_outcome`: completed, or compensated/failed at the step that
   refuses);
6. every node could restart (`restart_failed`), no task of a live node died of an unhandled
   error (`unhandled_error`), and the node's API answered the client (`client_error`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim_services import Effect
from sim_workload import TRANSACTIONS

from accompanist_py.store import SessionState

if TYPE_CHECKING:
    from sim_cluster import RunResult

KINDS = (
    "stuck",
    "not_quiescent",
    "disagreement",
    "partial_commit",
    "not_compensated",
    "orphan_effect",
    "duplicate_effect",
    "duplicate_compensation",
    "key_reuse",
    "client_mismatch",
    "wrong_outcome",
    "restart_failed",
    "unhandled_error",
    "client_error",
)

TERMINAL = SessionState.TERMINAL
ABORTED = frozenset({SessionState.COMPENSATED, SessionState.FAILED})


@dataclass(frozen=True)
class Violation:
    """One broken invariant."""

    kind: str
    session: str | None
    detail: str

    def format(self, seed: int) -> str:
        where = f" session {self.session}" if self.session else ""
        return f"seed {seed}:{where} {self.kind}: {self.detail}"


def _session_of(key: str) -> str:
    return key.split(":", 1)[0]


def _txn_of(key: str) -> str:
    parts = key.split(":")
    return parts[1] if len(parts) > 1 else ""


def _states(states: dict[str, str | None]) -> str:
    return " ".join(f"{role}={state or '-'}" for role, state in states.items())


def _effects(effects: list[Effect]) -> str:
    return "; ".join(str(e) for e in effects) or "none"


def check(r: RunResult) -> list[Violation]:
    """Every invariant broken by run `r`."""
    out: list[Violation] = []
    by_session: dict[str, list[Effect]] = defaultdict(list)
    for e in r.effects:
        by_session[_session_of(e.key)].append(e)
    planned = {p.sid for p in r.plans}

    for p in r.plans:
        states = r.final[p.sid]
        effects = by_session.get(p.sid, [])
        context = (
            f"({p.request.describe()}) states: {_states(states)}; effects: {_effects(effects)}"
        )
        log = r.client[p.sid]
        at_initiator = states[p.initiator]

        # 1. nothing stuck
        unfinished = [role for role, s in states.items() if s is not None and s not in TERMINAL]
        if at_initiator is None or unfinished:
            seen = log.statuses[-1][1] if log.statuses else "no status"
            roles = ", ".join(unfinished) if unfinished else f"{p.initiator} (no record)"
            out.append(
                Violation(
                    "stuck", p.sid, f"not terminal at {roles}; client last saw {seen}; {context}"
                )
            )

        # 2. agreement
        terminal = sorted({s for s in states.values() if s in TERMINAL})
        if len(terminal) > 1:
            out.append(Violation("disagreement", p.sid, f"roles end {terminal}; {context}"))

        # 3. all or nothing
        txns = TRANSACTIONS[p.request.choreography]
        commits = [e for e in effects if e.kind == "commit" and _txn_of(e.key) in txns]
        undone = {e.commit_key for e in effects if e.kind == "undo"}
        if at_initiator == SessionState.COMPLETED:
            expected = p.request.expected_commits()
            committed = {e.key for e in commits}
            for txn in expected:
                key = f"{p.sid}:{txn}"
                if key not in committed:
                    out.append(
                        Violation("partial_commit", p.sid, f"completed without {key}; {context}")
                    )
                elif key in undone:
                    out.append(
                        Violation("partial_commit", p.sid, f"completed but {key} undone; {context}")
                    )
            for key in sorted(committed - {f"{p.sid}:{t}" for t in expected}):
                out.append(
                    Violation("partial_commit", p.sid, f"completed with extra {key}; {context}")
                )
        elif at_initiator in ABORTED:
            for e in commits:
                if e.key not in undone:
                    out.append(
                        Violation(
                            "not_compensated",
                            p.sid,
                            f"ended {at_initiator} but {e.key} stays applied; {context}",
                        )
                    )

        if r.fault_free and at_initiator != p.request.expected_outcome():
            out.append(
                Violation(
                    "wrong_outcome",
                    p.sid,
                    f"no fault, yet it ended {at_initiator}, not "
                    f"{p.request.expected_outcome()}; {context}",
                )
            )

        # 5. the client saw the final state
        seen_terminal = sorted({s for _, s in log.terminal})
        if seen_terminal and seen_terminal != [at_initiator]:
            out.append(
                Violation(
                    "client_mismatch",
                    p.sid,
                    f"client was told {seen_terminal}, initiator ends {at_initiator}; {context}",
                )
            )

    # 3. no effects for sessions never started
    for sid in sorted(set(by_session) - planned):
        out.append(
            Violation("orphan_effect", sid, f"never started, effects: {_effects(by_session[sid])}")
        )

    # 4. exactly once
    applied = Counter((e.service, e.key) for e in r.effects if e.kind == "commit")
    for (service, key), n in sorted(applied.items()):
        if n > 1:
            effects = [e for e in r.effects if e.key == key]
            out.append(
                Violation(
                    "duplicate_effect",
                    _session_of(key),
                    f"{service} applied {key} {n} times: {_effects(effects)}",
                )
            )
    undos = Counter((e.service, e.commit_key) for e in r.effects if e.kind == "undo")
    for (service, key), n in sorted(undos.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        if n > 1:
            effects = [e for e in r.effects if key in (e.key, e.commit_key)]
            out.append(
                Violation(
                    "duplicate_compensation",
                    _session_of(key or ""),
                    f"{service} undid {key} {n} times: {_effects(effects)}",
                )
            )
    for service, t, key, first, later in r.mismatches:
        out.append(
            Violation(
                "key_reuse",
                _session_of(key),
                f"{service} got key {key} with payload {later} at {t:.4f}, first {first}",
            )
        )

    # 1. quiescence (reported once, with what was still going on)
    if not r.quiescent:
        out.append(Violation("not_quiescent", None, "; ".join(r.leftovers[:12])))

    # 6. restarts, errors nobody handled, the client API
    for t, inc, detail in r.restart_failures:
        out.append(Violation("restart_failed", None, f"{inc} at {t:.4f}: {detail}"))
    for t, owner, detail in r.task_errors:
        out.append(Violation("unhandled_error", None, f"task of {owner} at {t:.4f}: {detail}"))
    for t, sid, detail in r.client_errors:
        out.append(Violation("client_error", sid, f"at {t:.4f}: {detail}"))
    return out
