"""The machinery every workload service shares: idempotent operations over one SQLite file.

A workload describes each of its services as a `ServiceDef`: its tables, how to seed them,
its committing operations (each paired with the compensation that undoes it), its read-only
queries and the `GET /state` view the consistency checker reads. This module turns that
description into an aiohttp process that honours docs/contracts.md: the dedup record of an
`Idempotency-Key` is written in the same transaction as the effect, a repeated key returns the
stored response, compensating a commit that never happened leaves a tombstone that makes the
late commit answer 409 `{"error": "compensated"}`, business aborts are 409 and malformed input
is 400. `main()` is the command line shared by every `workloads.<name>.services` module.

Optionally a service is guarded (see docs/security.md): with `ServiceTLS` it serves HTTPS and
takes only connections that present a certificate from the deployment CA, and with
`allow_uris` only those whose certificate names an allowed caller (403 otherwise); with a
bearer `token`, a request without it is answered 401 before anything runs. `GET /health` needs
neither the URI nor the token (it reveals nothing), only the TLS handshake. Like every
service, this module knows nothing of accompanist_py: it reads the URIs from the certificate
itself.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import signal
import sqlite3
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

Payload = dict[str, Any]
Result = dict[str, Any]

COMPENSATED = {"error": "compensated"}


class Abort(Exception):
    """A business abort (out of stock, payment declined ...): answered 409 and never retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadRequest(Exception):
    """Malformed or inconsistent input: answered 400, nothing recorded."""


def field(payload: Mapping[str, Any], name: str, kind: type) -> Any:
    """Return `payload[name]`, raising BadRequest unless it is present and of type `kind`."""
    value = payload.get(name)
    # bool is an int in Python; a JSON `true` is never a valid quantity or amount.
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        raise BadRequest(f"field {name!r} must be a {kind.__name__}")
    return value


def positive_int(payload: Mapping[str, Any], name: str) -> int:
    """Return `payload[name]` as an int > 0, raising BadRequest otherwise."""
    value = field(payload, name, int)
    if value <= 0:
        raise BadRequest(f"field {name!r} must be positive")
    return value


# A commit applies its effect under `key` and returns the step's result, or raises Abort.
CommitFn = Callable[[sqlite3.Connection, str, Payload], Result]
# An undo reverses the effect recorded under `commit_key`; it runs only if that commit applied.
UndoFn = Callable[[sqlite3.Connection, str, Payload], Result]
QueryFn = Callable[[sqlite3.Connection, Payload], Result]
SeedFn = Callable[[sqlite3.Connection, int, int, float], None]
StateFn = Callable[[sqlite3.Connection], Result]


@dataclass(frozen=True)
class Commit:
    """A mutating operation and the compensating operation that undoes it."""

    name: str
    apply: CommitFn
    undo_name: str
    undo: UndoFn


@dataclass(frozen=True)
class Query:
    """A read-only operation: no idempotency record, no compensation."""

    name: str
    run: QueryFn


@dataclass(frozen=True)
class ServiceDef:
    """Everything that makes one service of a workload."""

    name: str
    schema: str
    seed: SeedFn
    commits: tuple[Commit, ...] = ()
    queries: tuple[Query, ...] = ()
    state: StateFn = lambda db: {}


_KIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
-- One row per idempotency key: the response a repeat gets. A tombstone is the row a
-- compensation leaves for a commit it never saw; its stored response is the 409 "compensated".
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    tombstone INTEGER NOT NULL DEFAULT 0
);
"""


def open_db(path: str | Path) -> sqlite3.Connection:
    """Open a service database in WAL mode, with transactions managed explicitly."""
    db = sqlite3.connect(str(path), isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL survives a crash of the process, which is the fault the benchmark injects.
    db.execute("PRAGMA synchronous=NORMAL")
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed on success, rolled back on any exception."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def prepare(
    db: sqlite3.Connection, service: ServiceDef, seed: int, size: int, abort_rate: float
) -> None:
    """Create the tables and seed them, once: a restarted service keeps its data."""
    db.executescript(_KIT_SCHEMA + service.schema)
    with transaction(db):
        if db.execute("SELECT 1 FROM meta WHERE name = 'seed'").fetchone():
            return
        service.seed(db, seed, size, abort_rate)
        db.executemany(
            "INSERT INTO meta (name, value) VALUES (?, ?)",
            [
                ("service", service.name),
                ("seed", str(seed)),
                ("size", str(size)),
                ("abort_rate", str(abort_rate)),
            ],
        )


def _stored(db: sqlite3.Connection, key: str) -> sqlite3.Row | None:
    return db.execute(
        "SELECT operation, status, body, tombstone FROM idempotency WHERE key = ?", (key,)
    ).fetchone()


def _record(
    db: sqlite3.Connection,
    key: str,
    operation: str,
    status: int,
    body: Result,
    tombstone: bool = False,
) -> None:
    db.execute(
        "INSERT INTO idempotency (key, operation, status, body, tombstone) VALUES (?, ?, ?, ?, ?)",
        (key, operation, status, json.dumps(body), int(tombstone)),
    )


def _replay(row: sqlite3.Row, key: str, operation: str) -> tuple[int, Result]:
    if row["operation"] != operation:
        raise BadRequest(f"idempotency key {key!r} was used for {row['operation']!r}")
    return row["status"], json.loads(row["body"])


def execute_commit(
    db: sqlite3.Connection, commit: Commit, key: str, payload: Payload
) -> tuple[int, Result]:
    """Apply `commit` once under `key`; return (status, body), stored or fresh."""
    with transaction(db):
        row = _stored(db, key)
        if row is not None:
            return _replay(row, key, commit.name)
        # The savepoint lets an Abort discard partial writes yet keep its 409 record.
        db.execute("SAVEPOINT effect")
        try:
            status, body = 200, commit.apply(db, key, payload)
        except Abort as abort:
            db.execute("ROLLBACK TO effect")
            status, body = 409, {"error": abort.reason}
        db.execute("RELEASE effect")
        _record(db, key, commit.name, status, body)
        return status, body


def execute_undo(
    db: sqlite3.Connection, commit: Commit, key: str, payload: Payload
) -> tuple[int, Result]:
    """Compensate the commit named by `payload["commit_key"]` once, under `key`."""
    commit_key = field(payload, "commit_key", str)
    if key != f"{commit_key}:undo":
        raise BadRequest(f"Idempotency-Key of a compensation must be {commit_key + ':undo'!r}")
    with transaction(db):
        row = _stored(db, key)
        if row is not None:
            return _replay(row, key, commit.undo_name)
        done = _stored(db, commit_key)
        if done is None:
            _record(db, commit_key, commit.name, 409, COMPENSATED, tombstone=True)
            status, body = 200, {"compensated": False}
        elif done["operation"] != commit.name:
            raise BadRequest(f"commit_key {commit_key!r} is a {done['operation']!r}")
        elif done["status"] != 200:
            status, body = 200, {"compensated": False}
        else:
            db.execute("SAVEPOINT effect")
            try:
                status, body = 200, {"compensated": True, **commit.undo(db, commit_key, payload)}
            except Abort as abort:
                db.execute("ROLLBACK TO effect")
                status, body = 409, {"error": abort.reason}
            db.execute("RELEASE effect")
        _record(db, key, commit.undo_name, status, body)
        return status, body


def service_state(db: sqlite3.Connection, service: ServiceDef) -> Result:
    """The `GET /state` document: the service's own view plus its idempotency records."""
    meta = {row["name"]: row["value"] for row in db.execute("SELECT name, value FROM meta")}
    records = [
        {
            "key": r["key"],
            "operation": r["operation"],
            "status": r["status"],
            "tombstone": bool(r["tombstone"]),
        }
        for r in db.execute("SELECT * FROM idempotency ORDER BY key")
    ]
    return {
        "service": service.name,
        "seed": int(meta.get("seed", 0)),
        "size": int(meta.get("size", 0)),
        "abort_rate": float(meta.get("abort_rate", 0)),
        "idempotency": records,
        **service.state(db),
    }


@dataclass(frozen=True)
class ServiceTLS:
    """HTTPS for a service: its certificate and key, and the CA its callers' certificates
    must come from. With `allow_uris`, a caller's certificate must also carry one of these
    URI subjectAltNames (e.g. `spiffe://accompanist/sidecar/warehouse`)."""

    cert: Path
    key: Path
    ca: Path
    allow_uris: tuple[str, ...] = ()

    def server_context(self) -> ssl.SSLContext:
        """Presents the service's certificate; a caller without a valid one fails the handshake."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert), str(self.key))
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


def _peer_uris(request: web.Request) -> list[str]:
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    return [value for kind, value in (cert or {}).get("subjectAltName", ()) if kind == "URI"]


def _guard(public: Handler, allow_uris: Sequence[str], token: str | None) -> Middleware:
    """The middleware that refuses a caller before its request reaches an operation; the
    `public` handler (the health probe) is open to any caller that passed the handshake."""
    allowed = frozenset(allow_uris)
    expected = token.encode() if token is not None else None

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.handler is public:
            return await handler(request)
        if allowed and allowed.isdisjoint(_peer_uris(request)):
            return web.json_response(
                {"error": "client certificate names no allowed caller"}, status=403
            )
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if expected is not None and not (
            scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)
        ):
            return web.json_response(
                {"error": "missing or wrong bearer token"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return guard


def build_app(
    service: ServiceDef,
    db: sqlite3.Connection,
    *,
    allow_uris: Sequence[str] = (),
    token: str | None = None,
) -> web.Application:
    """The aiohttp application serving `service` from the prepared database `db`.

    With `allow_uris` (the connection must be TLS with a verified client certificate) or
    `token`, every route but `GET /health` first checks the caller (403 / 401).
    """
    commits = {c.name: c for c in service.commits}
    undos = {c.undo_name: c for c in service.commits}
    queries = {q.name: q for q in service.queries}

    async def operation(request: web.Request) -> web.Response:
        name = request.match_info["operation"]
        if name not in commits and name not in undos and name not in queries:
            return web.json_response({"error": f"unknown operation {name!r}"}, status=404)
        try:
            payload = json.loads(await request.read() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return web.json_response({"error": f"malformed JSON body: {error}"}, status=400)
        if not isinstance(payload, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        key = request.headers.get("Idempotency-Key", "")
        try:
            if name in queries:
                status, body = 200, queries[name].run(db, payload)
            elif not key:
                raise BadRequest("missing Idempotency-Key header")
            elif name in commits:
                status, body = execute_commit(db, commits[name], key, payload)
            else:
                status, body = execute_undo(db, undos[name], key, payload)
        except BadRequest as error:
            status, body = 400, {"error": str(error)}
        except Abort as abort:
            status, body = 409, {"error": abort.reason}
        return web.json_response(body, status=status)

    async def state(request: web.Request) -> web.Response:
        return web.json_response(service_state(db, service))

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"service": service.name, "ok": True})

    app = web.Application()
    app.router.add_post("/ops/{operation}", operation)
    app.router.add_get("/state", state)
    app.router.add_get("/health", health)
    if allow_uris or token is not None:
        app.middlewares.append(_guard(health, allow_uris, token))
    return app


async def serve(
    service: ServiceDef,
    db_path: str,
    host: str,
    port: int,
    seed: int,
    size: int,
    abort_rate: float,
    *,
    tls: ServiceTLS | None = None,
    token: str | None = None,
) -> None:
    """Run `service` until SIGTERM or SIGINT, then close the server and the database.

    With `tls` it serves HTTPS to callers with a certificate from `tls.ca` (and, if given, one
    of `tls.allow_uris`); with `token`, callers must send `Authorization: Bearer <token>`.
    """
    ssl_context = tls.server_context() if tls is not None else None
    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    db = open_db(db_path)
    prepare(db, service, seed, size, abort_rate)
    app = build_app(service, db, allow_uris=tls.allow_uris if tls else (), token=token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # backlog: a burst of connects beyond aiohttp's 128 would otherwise overflow the listen queue
    # and cost the callers a 1 s SYN retransmission, which is the kernel's latency, not ours.
    await web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The line accompanist_py.eventloop.announce prints for the runtime's processes, spelled out
    # here because a service never imports the runtime: the harness records every process's loop.
    print(f"event loop: {type(loop).__module__.split('.')[0]}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        db.close()


def main(services: Sequence[ServiceDef], argv: Sequence[str] | None = None) -> None:
    """The command line of a workload's services module: run one of `services`."""
    by_name = {s.name: s for s in services}
    parser = argparse.ArgumentParser(description="Run one service of a saga workload.")
    parser.add_argument("--service", required=True, choices=sorted(by_name))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--db", required=True, help="SQLite file (created and seeded if new)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--size",
        type=int,
        default=10_000,
        help="how many sagas the seeded stock and balances absorb",
    )
    parser.add_argument(
        "--abort-rate",
        type=float,
        default=0.1,
        help="0 seeds no abort traps; any other value seeds them",
    )
    parser.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate")
    parser.add_argument("--tls-key", type=Path, help="the certificate's private key")
    parser.add_argument(
        "--tls-ca", type=Path, help="callers must present a certificate from this CA"
    )
    parser.add_argument(
        "--allow-uri",
        action="append",
        default=[],
        metavar="URI",
        help="callers' certificates must carry one of these URIs (repeatable)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        help="callers must send 'Authorization: Bearer <the file's token>' (not to /health); "
        "a file, so that the token is not in the process list",
    )
    args = parser.parse_args(argv)
    if args.size <= 0 or not 0 <= args.abort_rate <= 1:
        parser.error("--size must be positive and --abort-rate within [0, 1]")
    files = {"--tls-cert": args.tls_cert, "--tls-key": args.tls_key, "--tls-ca": args.tls_ca}
    tls = None
    if any(files.values()):
        if not all(files.values()):
            parser.error("--tls-cert, --tls-key and --tls-ca go together")
        for flag, path in files.items():
            if not path.is_file():
                parser.error(f"{flag}: no such file {path}")
        tls = ServiceTLS(args.tls_cert, args.tls_key, args.tls_ca, tuple(args.allow_uri))
        try:
            tls.server_context()
        except ssl.SSLError as exc:
            parser.error(
                f"--tls-cert, --tls-key, --tls-ca: not a usable certificate, key and CA: {exc}"
            )
    elif args.allow_uri:
        parser.error("--allow-uri needs --tls-cert, --tls-key and --tls-ca")
    token = None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            parser.error(f"--token-file: {exc}")
        if len(token) < 16:
            parser.error(
                "--token-file: the token must be at least 16 characters (as the sidecar's "
                "[service] token)"
            )
    try:
        import uvloop
    except ImportError:  # uvloop is a dependency; stay usable without it all the same
        run = asyncio.run
    else:
        run = uvloop.run
    run(
        serve(
            by_name[args.service],
            args.db,
            args.host,
            args.port,
            args.seed,
            args.size,
            args.abort_rate,
            tls=tls,
            token=token,
        )
    )
