"""accompanist_py: resilient choreographic programming in Python.

Write a saga once, as one async function over named roles; run each role's part in a sidecar
next to its service. The public surface:

    choreography     declare `async def f(op, *inputs)` over roles
    Op               the per-role projector a choreography receives (locally, comm, broadcast,
                     call, transact, enclave)
    Located          a value that lives at some roles only
    Transaction      a saga step: commit + compensate service operations
    testing          run every role in one process (`run_local`, `LocalCluster`)
"""

from accompanist_py.choreography import Choreography, choreography
from accompanist_py.errors import (
    AbsentValueError,
    BusinessAbort,
    ChoreographyError,
    ReceiveTimeoutError,
    ReplayDivergenceError,
    SelfSendError,
    ServiceError,
    UndeclaredRoleError,
)
from accompanist_py.located import Located
from accompanist_py.projector import Choice, Op
from accompanist_py.saga import Transaction

__all__ = [
    "AbsentValueError",
    "BusinessAbort",
    "Choice",
    "Choreography",
    "ChoreographyError",
    "Located",
    "Op",
    "ReceiveTimeoutError",
    "ReplayDivergenceError",
    "SelfSendError",
    "ServiceError",
    "Transaction",
    "UndeclaredRoleError",
    "choreography",
]
