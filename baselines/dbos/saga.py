"""Every workload's saga as one DBOS workflow, and the host that runs it inside a process.

DBOS Transact is durable execution as a library: no server, a system database (here SQLite)
beside the process that runs the workflows. The workflow is `workloads.saga.run_saga` over the
workload's steps (the `steps` of its descriptor), so it sends the requests every other system
sends, under the same idempotency keys, in the same order, and compensates in reverse order on a
refusal. Each call is one DBOS step (`service_call`), checkpointed in the system database when it
returns: a step whose process died mid-call runs again on recovery, which the idempotency key
makes harmless. A step retries a transient failure itself, with the sidecars' backoff, until the
sidecars' deadline (`baselines.contract`): DBOS's own step retries have no cap on the interval.

The workflow id is the saga id, so a saga posted again joins the workflow the first post
started, and a restarted host resumes every workflow it left unfinished (`DBOS.launch`).

    host = DbosHost(Path("dbos.sqlite"), {"warehouse": "http://127.0.0.1:8001", ...})
    await host.start()                       # inside the process's event loop
    outcome = await host.run("warehouse", "order-1", request)
    await host.stop()
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import ssl
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
from dbos import DBOS, DBOSConfig, SetWorkflowID

from baselines.contract import CALL_POLICY, attempt, retrying
from baselines.dbos import SQLITE_PRAGMAS
from workloads import discover
from workloads.saga import CompensationRefused, Refused, run_saga

APP_NAME = "accompanist-bench"
# A saga posted again while its workflow runs (after a crash of this process, say) gets a
# handle that polls the system database for the result: every 50 ms, the sidecars' first retry
# interval, rather than DBOS's default second, which would add up to a second to every saga
# the load generator posts again.
RESULT_POLL_S = CALL_POLICY.backoff.initial_s


class _Calls:
    """The process's service URLs and its one keep-alive HTTP(S) session (DBOS steps are plain
    functions, so they find it here)."""

    urls: dict[str, str] = {}
    tls: ssl.SSLContext | None = None
    session: aiohttp.ClientSession | None = None


@DBOS.step(name="service_call")
async def service_call(role: str, operation: str, key: str, body: dict[str, Any]) -> dict:
    """One step's call, retried until it answers: `{"result": ...}` or `{"refused": ...}`."""
    if _Calls.session is None:
        raise RuntimeError("DbosHost.start() was not called in this process")
    url = _Calls.urls.get(role)
    if url is None:
        raise LookupError(f"this host has no URL for service {role!r}")  # a deployment bug
    answer = await retrying(partial(attempt, _Calls.session, url, operation, key, body))
    return answer.as_record()


@functools.cache
def _steps(workload: str) -> tuple[Any, ...]:
    """A workload's steps, looked up once per process (not on every workflow run or replay)."""
    return tuple(discover()[workload].steps)


@DBOS.workflow(name="saga")
async def saga(workload: str, saga_id: str, request: dict[str, Any]) -> dict[str, Any]:
    """The workload's saga: `{"saga_id", "outcome", "reason"}`."""

    async def step(role: str, operation: str, key: str, body: dict[str, Any]) -> dict:
        answer = await service_call(role, operation, key, body)
        if "refused" in answer:
            raise Refused(answer["refused"])
        return answer["result"]

    try:
        done = await run_saga(saga_id, _steps(workload), request, step)
    except CompensationRefused as error:
        raise RuntimeError(f"saga {saga_id}: {error}") from error  # a service bug: fail visibly
    return {k: done[k] for k in ("saga_id", "outcome", "reason")}


def system_database(path: Path, pragmas: tuple[str, ...] = SQLITE_PRAGMAS) -> sa.Engine:
    """The SQLite system database at `path`: DBOS's own engine (IMMEDIATE transactions, its
    busy timeout, foreign keys) with WAL and synchronous=NORMAL (`SQLITE_PRAGMAS`)."""
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(connection: sqlite3.Connection, _record: Any) -> None:
        # As DBOS's own SQLite engine does: writers take the lock when they begin, so that two
        # transactions never race on a read they both mean to write after.
        connection.isolation_level = "IMMEDIATE"
        for pragma in pragmas:
            connection.execute(f"PRAGMA {pragma}")

    return engine


class DbosHost:
    """DBOS in this process: launched once, running sagas by id until stopped."""

    def __init__(
        self,
        database: Path,
        service_urls: Mapping[str, str],
        *,
        tls: ssl.SSLContext | None = None,
        executor_id: str = "local",
        pragmas: tuple[str, ...] = SQLITE_PRAGMAS,
    ) -> None:
        self.database = Path(database)
        self.service_urls = {name: url.rstrip("/") for name, url in service_urls.items()}
        self.tls = tls
        self.executor_id = executor_id
        self.pragmas = pragmas  # tuning.py varies them

    async def start(self) -> None:
        """Open the session and launch DBOS from inside the running loop, so that the
        workflows it recovers run on this loop too (DBOS runs them on a loop of its own
        otherwise); recovery of this executor's unfinished workflows starts here."""
        _Calls.urls, _Calls.tls = dict(self.service_urls), self.tls
        connector = aiohttp.TCPConnector(limit=0, ssl=self.tls or True)
        _Calls.session = aiohttp.ClientSession(connector=connector)
        self.database.parent.mkdir(parents=True, exist_ok=True)
        config: DBOSConfig = {
            "name": APP_NAME,
            "system_database_engine": system_database(self.database, self.pragmas),
            "executor_id": self.executor_id,
            "log_level": "WARNING",
        }
        DBOS(config=config)
        DBOS.launch()

    async def run(self, workload: str, saga_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """Start the saga `saga_id` (or join it, if it exists) and wait for its outcome."""
        with SetWorkflowID(saga_id):
            handle = await DBOS.start_workflow_async(saga, workload, saga_id, request)
        return await handle.get_result(polling_interval_sec=RESULT_POLL_S)

    async def result(self, saga_id: str) -> dict[str, Any]:
        """Wait for the outcome of the saga `saga_id`, which must exist, without starting it."""
        handle = await DBOS.retrieve_workflow_async(saga_id)
        return await handle.get_result(polling_interval_sec=RESULT_POLL_S)

    async def stop(self) -> None:
        """Shut DBOS down and close the session."""
        DBOS.destroy(destroy_registry=False)
        # DBOS made its own thread pool this loop's default executor and has just shut it
        # down: give the loop a working one back, or every later `asyncio.to_thread` fails.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor())
        if _Calls.session is not None:
            await _Calls.session.close()
            _Calls.session = None


__all__ = ["DbosHost", "saga", "service_call"]
