"""The outcome protocol of one session at one role: a state machine with no I/O.

One decider. The initiator decides the outcome, commit or abort. Every other role taking part
(a participant) votes once: DONE when its part has returned and everything it did is durable,
listing the roles it sent messages to, or ABORT (a veto) when its part failed first. After its
DONE a participant obeys only the initiator. The initiator commits once its own part has
returned and it holds a DONE from every role known to take part (termination detection by
diffusion: a role takes part only if some participant sent to it, and that one's DONE names
it); it aborts on the first veto, on its own part's failure, or at its deadline.

Durable before visible. Every transition returns `Effects`, which the executor (`RoleSession`)
carries out in this order: make the new state durable (together with the control messages to
send, staged in the outbox), then let those messages leave, then cancel the part, compensate,
finish. So no role, client or service hears of a state that a crash could undo.

    at           state      event                               -> state, effects
    initiator    running    own part returned + every DONE      -> completed: DECISION commit
                                                                   to every participant
    initiator    running    own part failed | ABORT | deadline  -> aborting: DECISION abort to
                                                                   every role, cancel, compensate
    initiator    aborting   compensated                         -> compensated | failed
    initiator    decided    DONE | ABORT | QUERY from p         -> (same): DECISION again to p
    participant  running    own part returned                   -> awaiting: DONE to initiator
    participant  running    own part failed                     -> aborting: ABORT to initiator,
                                                                   compensate
    participant  running | awaiting, DECISION abort             -> aborting: cancel, compensate
    participant  awaiting   DECISION commit                     -> completed
    participant  aborting   compensated and DECISION abort      -> compensated | failed
    participant  awaiting | aborting, no DECISION, timer        -> (same): QUERY to initiator

A DECISION commit can only follow this role's DONE, so one arriving in any other state is a
protocol violation (reported, ignored). A participant never aborts after its DONE: the
initiator's deadline is what ends a session whose peer never returns. A participant's query
is answered from the initiator's record, or with "presumed abort" if it has none: an
initiator keeps the record of every decided session at least until every participant has
acknowledged the decision, so having none means it never decided commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from accompanist_py.message import Control
from accompanist_py.store.memory import SessionState

RUNNING = SessionState.RUNNING
AWAITING = SessionState.AWAITING
ABORTING = SessionState.ABORTING
COMPLETED = SessionState.COMPLETED
COMPENSATED = SessionState.COMPENSATED
FAILED = SessionState.FAILED
TERMINAL = SessionState.TERMINAL


@dataclass(frozen=True)
class Decision:
    """The initiator's outcome of a session."""

    commit: bool
    reason: str | None = None
    failed: bool = False

    @property
    def final_state(self) -> str:
        if self.commit:
            return COMPLETED
        return FAILED if self.failed else COMPENSATED

    def body(self) -> dict[str, Any]:
        return {
            "outcome": "commit" if self.commit else "abort",
            "reason": self.reason,
            "failed": self.failed,
        }

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Decision:
        """From a validated DECISION body."""
        return cls(body["outcome"] == "commit", body["reason"], body["failed"])

    @classmethod
    def of_finished(cls, state: str, reason: str | None) -> Decision:
        """The decision a finished session's terminal state stands for."""
        return cls(state == COMPLETED, reason, state == FAILED)


PRESUMED_ABORT = Decision(
    False, "the initiator has no record of this session: presumed aborted", failed=True
)

Message = tuple[str, int, dict[str, Any]]  # (receiver, control seq, body)


@dataclass(frozen=True)
class Effects:
    """What a transition asks of its executor, in this order."""

    state: str | None = None  # the new state, made durable first
    send: tuple[Message, ...] = ()  # staged in the outbox with the state, sent once durable
    reply: tuple[Message, ...] = ()  # answers and queries: not stored, sent once durable
    cancel_part: bool = False
    compensate: bool = False
    finish: bool = False
    violation: str | None = None  # a peer broke the protocol: log it, change nothing


NOTHING = Effects()


@dataclass
class Outcome:
    """Where one session stands in the outcome protocol at one role."""

    role: str
    initiator: str
    roles: tuple[str, ...]
    state: str = RUNNING
    decision: Decision | None = None  # the initiator's, once decided here or heard
    involved: frozenset[str] = frozenset()  # roles this role sent to (known once its part ends)
    votes: dict[str, frozenset[str]] = field(default_factory=dict)  # initiator: DONE senders
    part_returned: bool = False
    compensated: bool = False

    @property
    def is_initiator(self) -> bool:
        return self.role == self.initiator

    @property
    def waiting_for_decision(self) -> bool:
        """A participant that has voted (or vetoed) and not yet heard the decision."""
        return (
            not self.is_initiator
            and self.decision is None
            and self.state
            in (
                AWAITING,
                ABORTING,
            )
        )

    def participants(self) -> set[str]:
        """Roles known to take part (initiator's view): its own sends and every DONE's."""
        known = set(self.involved) | set(self.votes)
        for involved in self.votes.values():
            known |= involved
        known.discard(self.role)
        return known

    # -- events of this role's own part --------------------------------------------------
    def part_ended(self, involved: set[str]) -> Effects:
        if self.state != RUNNING:
            return NOTHING  # cancelled by an abort it raced with
        self.part_returned = True
        self.involved = frozenset(involved)
        if self.is_initiator:
            return self._maybe_commit()
        self.state = AWAITING
        body = {"involved": sorted(self.involved)}
        return Effects(state=AWAITING, send=((self.initiator, Control.DONE, body),))

    def part_failed(self, reason: str, failed: bool, involved: set[str]) -> Effects:
        if self.state != RUNNING:
            return NOTHING
        if self.is_initiator:
            return self._decide(Decision(False, reason, failed))
        self.state = ABORTING
        body = {"reason": reason, "failed": failed, "involved": sorted(involved)}
        return Effects(
            state=ABORTING,
            send=((self.initiator, Control.ABORT, body),),
            cancel_part=True,  # when the failure comes from outside the part
            compensate=True,
        )

    def compensation_done(self) -> Effects:
        self.compensated = True
        if self.decision is None or self.state in TERMINAL:
            return NOTHING  # a vetoing participant still waits for the initiator's word
        return self._end()

    # -- messages from peers -------------------------------------------------------------
    def done(self, sender: str, involved: list[str]) -> Effects:
        if self.decision is not None:
            return self._tell(sender)
        self.votes[sender] = frozenset(involved)
        return self._maybe_commit()

    def veto(self, sender: str, reason: str, failed: bool) -> Effects:
        if self.decision is not None:
            return self._tell(sender)
        return self._decide(Decision(False, reason, failed))

    def query(self, sender: str) -> Effects:
        return self._tell(sender) if self.decision is not None else NOTHING

    def decided(self, decision: Decision) -> Effects:
        if self.state in TERMINAL or self.decision is not None:
            return NOTHING  # a repeat
        if decision.commit and self.state != AWAITING:
            return Effects(violation=f"DECISION commit while {self.state}, before this role's DONE")
        self.decision = decision
        if decision.commit:
            return self._end()
        if self.state == ABORTING:  # vetoed: compensation runs or has run
            return self._end() if self.compensated else NOTHING
        self.state = ABORTING
        return Effects(state=ABORTING, cancel_part=True, compensate=True)

    # -- time ----------------------------------------------------------------------------
    def deadline_passed(self, waited_s: float) -> Effects:
        """The initiator's deadline: abort what is not decided yet."""
        if not self.is_initiator or self.decision is not None:
            return NOTHING
        missing = sorted(self.participants() - set(self.votes))
        why = f"no decision within {waited_s:g}s"
        if missing:
            why += f": no vote from {', '.join(missing)}"
        elif not self.part_returned:
            why += ": the initiator's own part had not returned"
        return self._decide(Decision(False, why, failed=True))

    def query_due(self) -> Effects:
        if not self.waiting_for_decision:
            return NOTHING
        return Effects(reply=((self.initiator, Control.QUERY, {}),))

    # -- after a restart -----------------------------------------------------------------
    def recovered(self, own: dict[str, Any] | None) -> Effects:
        """Redo the effects of the durable state, whose messages a crash may have lost.

        `own` is what the state recorded: the decision (initiator, aborting), or the vote's
        involved roles and the veto's reason (participant). Staging a message the outbox
        already holds is a no-op, so this is safe whether or not the crash lost anything.
        """
        own = own or {}
        if self.is_initiator and self.state == ABORTING:
            self.decision = Decision(False, own.get("reason"), bool(own.get("failed")))
            return Effects(send=self._to_all(self.decision), compensate=True)
        if self.state == AWAITING:
            body = {"involved": sorted(own.get("involved", []))}
            return Effects(send=((self.initiator, Control.DONE, body),))
        if self.state == ABORTING:
            body = {
                "reason": own.get("reason", "aborted"),
                "failed": bool(own.get("failed", True)),
                "involved": sorted(own.get("involved", [])),
            }
            send = ((self.initiator, Control.ABORT, body),) if own.get("vetoed") else ()
            return Effects(send=send, compensate=True)
        return NOTHING

    # -- the initiator's decision --------------------------------------------------------
    def _maybe_commit(self) -> Effects:
        if not self.part_returned or not self.participants() <= set(self.votes):
            return NOTHING
        self.decision = Decision(True)
        self.state = COMPLETED
        body = self.decision.body()
        send = tuple((p, Control.DECISION, body) for p in sorted(self.participants()))
        return Effects(state=COMPLETED, send=send, finish=True)

    def _decide(self, decision: Decision) -> Effects:
        self.decision = decision
        self.state = ABORTING
        return Effects(
            state=ABORTING, send=self._to_all(decision), cancel_part=True, compensate=True
        )

    def _to_all(self, decision: Decision) -> tuple[Message, ...]:
        # Every role, not only those known to take part: one that received a message from a
        # participant not yet heard from must not run a session that is already over.
        body = decision.body()
        return tuple((r, Control.DECISION, body) for r in self.roles if r != self.role)

    def _tell(self, sender: str) -> Effects:
        assert self.decision is not None
        return Effects(reply=((sender, Control.DECISION, self.decision.body()),))

    def _end(self) -> Effects:
        assert self.decision is not None
        self.state = self.decision.final_state
        return Effects(state=self.state, finish=True)
