"""The half of every consistency checker that does not depend on the workload.

A workload checker turns the services' `GET /state` documents into `Effect`s (one per applied
commit, active or compensated) plus its own resource invariants (stock, capacity, money).
`reconcile` then judges every saga: all commit steps active (committed), none active (aborted
with no net effect), anything else is a violation; it also flags effects without their
idempotency record, effects for sagas the client never sent, and client outcomes that the
services contradict. `main` is the shared command line:

    python -m workloads.<name>.checker --service NAME=URL ... [--sagas FILE] [--out report.json]
        [--tls-ca CA --tls-cert CERT --tls-key KEY]

A service behind HTTPS that admits only named callers is read with a certificate it admits
(`--tls-*`; the harness uses its own, `client/harness`).
"""

from __future__ import annotations

import argparse
import csv
import json
import ssl
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from accompanist_py.tls import client_context
from workloads.saga import COMMITTED, COMPENSATED, REJECTED, Step, split_key

State = Mapping[str, Any]


@dataclass(frozen=True)
class Violation:
    """A broken invariant: which one, about what (a saga id, an item ...), and how."""

    invariant: str
    subject: str
    detail: str


@dataclass(frozen=True)
class Effect:
    """The trace a commit step left at a service; `active` is False once compensated."""

    service: str
    step: str
    key: str
    active: bool
    data: Mapping[str, Any]

    @property
    def saga_id(self) -> str:
        return split_key(self.key)[0]


@dataclass
class Report:
    """What the checker found: saga counts by outcome and every violation."""

    workload: str
    committed: int = 0
    compensated: int = 0
    rejected: int = 0
    sent: int | None = None
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        verdict = "consistent" if self.ok else f"{len(self.violations)} VIOLATIONS"
        sent = "" if self.sent is None else f", {self.sent} sent"
        lines = [
            f"{self.workload}: {verdict}: {self.committed} committed, "
            f"{self.compensated} compensated, {self.rejected} rejected{sent}"
        ]
        lines += [f"  {v.invariant} [{v.subject}]: {v.detail}" for v in self.violations[:20]]
        if len(self.violations) > 20:
            lines.append(f"  ... and {len(self.violations) - 20} more")
        return "\n".join(lines)


def _saga_of(key: str) -> str:
    commit_key = key.removesuffix(":undo")
    return split_key(commit_key)[0]


def reconcile(
    workload: str,
    steps: Sequence[Step],
    effects: Iterable[Effect],
    state_by_service: Mapping[str, State],
    sent: Mapping[str, str | None] | None,
    committed_check: Callable[[str, Mapping[str, Effect]], list[str]],
) -> Report:
    """Judge every saga the services saw (and every saga sent) from the effects they hold.

    `committed_check(saga_id, effects_by_step)` returns the ways a saga whose every commit
    step is active still disagrees across services (amounts, accounts ...).
    """
    report = Report(workload, sent=None if sent is None else len(sent))
    commit_steps = {s.name for s in steps if s.undo is not None}
    records = {
        service: {r["key"]: r for r in state.get("idempotency", [])}
        for service, state in state_by_service.items()
    }
    by_saga: dict[str, dict[str, Effect]] = defaultdict(dict)
    for effect in effects:
        saga_id, key_step = split_key(effect.key)
        record = records.get(effect.service, {}).get(effect.key)
        if key_step != effect.step:
            report.violations.append(
                Violation(
                    "effect keyed by its step",
                    saga_id,
                    f"{effect.step} effect at {effect.service} under key {effect.key!r}",
                )
            )
            continue
        if record is None or record["status"] != 200 or record["tombstone"]:
            report.violations.append(
                Violation(
                    "effect written with its idempotency record",
                    saga_id,
                    f"{effect.step} at {effect.service} has record {record}",
                )
            )
        by_saga[saga_id][effect.step] = effect

    seen = set(by_saga)
    for service_records in records.values():
        seen.update(_saga_of(key) for key in service_records)

    if sent is not None:
        for saga_id in sorted(seen - set(sent)):
            report.violations.append(
                Violation(
                    "no effect for a saga never sent", saga_id, "the services hold records of it"
                )
            )

    for saga_id in sorted(seen | set(sent or ())):
        found = by_saga.get(saga_id, {})
        active = {step for step, effect in found.items() if effect.active}
        outcome = None if sent is None else sent.get(saga_id)
        if active == commit_steps:
            observed = COMMITTED
            for detail in committed_check(saga_id, found):
                report.violations.append(Violation("committed saga agrees", saga_id, detail))
        elif not active:
            observed = REJECTED if outcome == REJECTED else COMPENSATED
        else:
            report.violations.append(
                Violation(
                    "all or nothing",
                    saga_id,
                    f"active {sorted(active)}, missing {sorted(commit_steps - active)}",
                )
            )
            continue
        if outcome in (COMMITTED, COMPENSATED, REJECTED) and (outcome == COMMITTED) != (
            observed == COMMITTED
        ):
            report.violations.append(
                Violation(
                    "client outcome matches effects",
                    saga_id,
                    f"client saw {outcome}, services show {observed}",
                )
            )
            continue
        if outcome == REJECTED and found:
            report.violations.append(
                Violation(
                    "rejected saga applied nothing",
                    saga_id,
                    f"steps {sorted(found)} were applied, then undone",
                )
            )
        if observed == COMMITTED:
            report.committed += 1
        elif observed == REJECTED:
            report.rejected += 1
        elif saga_id in seen or outcome == COMPENSATED:
            report.compensated += 1
    return report


def conservation(
    invariant: str, expected: Mapping[str, int], actual: Mapping[str, int], what: str
) -> list[Violation]:
    """Violations wherever `actual[k] != expected[k]`, over the keys of both."""
    return [
        Violation(
            invariant, subject, f"{what} is {actual.get(subject)}, expected {expected.get(subject)}"
        )
        for subject in sorted(set(expected) | set(actual))
        if expected.get(subject) != actual.get(subject)
    ]


def fetch_states(
    urls: Mapping[str, str], timeout: float = 30.0, context: ssl.SSLContext | None = None
) -> dict[str, State]:
    """GET /state of each service (name -> base URL); `context` for https:// ones."""
    states = {}
    for name, url in urls.items():
        state_url = f"{url.rstrip('/')}/state"
        with urllib.request.urlopen(state_url, timeout=timeout, context=context) as response:
            states[name] = json.load(response)
    return states


def load_sent(path: str | Path) -> dict[str, str | None]:
    """Client outcomes by saga id, from JSON ({id: outcome} or [{saga_id, outcome}]) or CSV."""
    path = Path(path)
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            return {row["saga_id"]: row.get("outcome") or None for row in csv.DictReader(handle)}
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        return dict(data)
    return {row["saga_id"]: row.get("outcome") for row in data}


CheckFn = Callable[..., Report]


def main(check: CheckFn, argv: Sequence[str] | None = None) -> int:
    """The command line of a workload checker; returns the exit status (1 on violations)."""
    parser = argparse.ArgumentParser(description="Check a saga workload for consistency.")
    parser.add_argument(
        "--service",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="a service's base URL; repeat for each service",
    )
    parser.add_argument("--sagas", help="CSV (saga_id,outcome) or JSON of the sagas sent")
    parser.add_argument("--out", help="write the JSON report here")
    parser.add_argument("--seed", type=int, help="default: what the services were seeded with")
    parser.add_argument("--size", type=int, help="default: what the services were seeded with")
    parser.add_argument("--tls-ca", type=Path, help="the CA of the services' certificates")
    parser.add_argument("--tls-cert", type=Path, help="a client certificate they admit")
    parser.add_argument("--tls-key", type=Path, help="its private key")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    context = client_context(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
    urls = {}
    for spec in args.service:
        name, sep, url = spec.partition("=")
        if not sep:
            parser.error(f"--service expects NAME=URL, got {spec!r}")
        urls[name] = url
    sent = load_sent(args.sagas) if args.sagas else None
    report = check(fetch_states(urls, context=context), args.seed, args.size, sent)
    if args.out:
        Path(args.out).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    print(report.summary())
    return 0 if report.ok else 1


def seeding(
    state_by_service: Mapping[str, State], seed: int | None, size: int | None
) -> tuple[int, int, float]:
    """(seed, size, abort_rate) to rebuild the initial data: given, else as the services say."""
    first = next(iter(state_by_service.values()))
    return (
        first["seed"] if seed is None else seed,
        first["size"] if size is None else size,
        first["abort_rate"],
    )
