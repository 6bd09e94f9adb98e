"""Errors a choreography author or an operator can meet, each naming what went wrong where."""

from __future__ import annotations


class ChoreographyError(Exception):
    """A choreography was misused: the message says which role, value or step."""


class UndeclaredRoleError(ChoreographyError):
    """An operation named a role that the choreography did not declare."""


class SelfSendError(ChoreographyError):
    """`comm` or `broadcast` would send a value from a role to itself."""


class AbsentValueError(ChoreographyError):
    """A located value was read at a role where it does not exist."""


class ReceiveTimeoutError(ChoreographyError):
    """A receive waited longer than its timeout for the message (sender, seq)."""


class ReplayDivergenceError(ChoreographyError):
    """Replaying a session did something other than what its journal or outbox recorded.

    The choreography is not deterministic: time, randomness or external state was read outside
    `locally`/`call`, so the replayed run would send a different message for a sequence number
    that peers may already have seen.
    """


class ServiceError(Exception):
    """A service answered a call with a non-retryable error (a 4xx other than 409)."""

    def __init__(self, operation: str, status: int, reason: str) -> None:
        super().__init__(f"service operation {operation!r} failed with {status}: {reason}")
        self.operation = operation
        self.status = status
        self.reason = reason


class BusinessAbort(ServiceError):
    """A service refused a step for a business reason (409): out of stock, payment declined."""

    def __init__(self, operation: str, reason: str) -> None:
        super().__init__(operation, 409, reason)
        self.args = (reason,)

    def __str__(self) -> str:
        return self.reason


class ServiceUnavailableError(Exception):
    """A service stayed unreachable (or kept failing with 5xx) past the call deadline."""


class ConfigError(Exception):
    """A configuration file is missing, malformed or inconsistent."""


class Overloaded(Exception):
    """A node takes no new session for now (admission control); nothing was stored.

    A client hears 503 with Retry-After; a peer's batch is retried by its outbox."""

    retry_after_s = 1
