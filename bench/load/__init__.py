"""The load stage: write a requests file, run Locust headless, hand back the raw CSV.

The harness (never the Locust process) generates a workload's requests and writes them as JSONL
with :func:`write_requests`; :func:`run_locust` runs ``bench/load/locustfile.py`` as a
subprocess with a :class:`LoadProfile` and returns the path of the raw per-request CSV
(columns in :data:`RAW_COLUMNS`), once it has checked that every saga Locust scheduled has
exactly one row there.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from accompanist_py.backoff import Backoff

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
RAW_COLUMNS = (
    "saga_id",
    "intended_start",
    "start",
    "end",
    "latency_ms",
    "status",
    "outcome",
    "reason",
    "error",
    "warmup",
    "attempts",
)


class LoadError(RuntimeError):
    """Locust failed or wrote no raw CSV; the message includes its log tail."""


@dataclass(frozen=True)
class LoadProfile:
    """How to load the gateway.

    ``closed``: ``users`` users, each waiting ``think_time_s`` between a saga's outcome and the
    next saga. ``open``: ``rate_rps`` arrivals a second, latency from the intended start;
    ``arrivals`` spaces them evenly (``fixed``: the offered rate is exact) or as a Poisson
    process (``poisson``).
    """

    mode: Literal["closed", "open"]
    users: int = 1
    think_time_s: float = 0.0
    rate_rps: float = 10.0
    max_in_flight: int = 500
    request_timeout_s: float = 30.0  # one saga's deadline from its intended start, retries included
    arrivals: Literal["fixed", "poisson"] = "fixed"
    # A post that gets no answer or a 503 (the system is unreachable or restarting) is posted
    # again with its saga id, with the runtime's own backoff (accompanist_py.backoff), while the
    # saga's deadline allows.
    retry_initial_s: float = Backoff.initial_s
    retry_max_s: float = Backoff.max_s
    retry_multiplier: float = Backoff.multiplier

    def __post_init__(self) -> None:
        if self.mode not in ("closed", "open"):
            raise ValueError(f"load mode must be 'closed' or 'open', got {self.mode!r}")
        if self.arrivals not in ("fixed", "poisson"):
            raise ValueError(f"arrivals must be 'fixed' or 'poisson', got {self.arrivals!r}")
        if self.users < 1 or self.rate_rps <= 0 or self.think_time_s < 0:
            raise ValueError(f"invalid load profile {self}")

    def requests_needed(self, duration_s: float) -> int:
        """How many distinct requests to pre-generate (Locust cycles with new ids beyond)."""
        if self.mode == "open":
            return math.ceil(self.rate_rps * duration_s * 1.5) + 50
        # Closed loop: bounded by think time, or by a generous 200 sagas/s per user.
        per_user = duration_s / max(self.think_time_s, 0.005)
        return min(math.ceil(self.users * per_user) + 50, 200_000)


def write_requests(
    path: Path, requests: Iterable[Mapping[str, Any]], id_prefix: str = "saga"
) -> Path:
    """Write ``{"saga_id", "request"}`` JSON lines for the Locust process.

    A request that carries its own ``saga_id`` (as the workloads' generators do, so that the
    checker can tell what each saga should end as) keeps it; others get ``<id_prefix>-<n>``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i, request in enumerate(requests):
            saga_id = str(request.get("saga_id") or f"{id_prefix}-{i:06d}")
            f.write(json.dumps({"saga_id": saga_id, "request": dict(request)}) + "\n")
    return path


def read_outcomes(raw_csv: Path) -> dict[str, str | None]:
    """Saga id -> the outcome the client saw (None when it saw none), for the checker."""
    with Path(raw_csv).open(newline="") as f:
        return {row["saga_id"]: row["outcome"] or None for row in csv.DictReader(f)}


def load_account_path(raw_csv: Path) -> Path:
    """Where the Locust run that wrote `raw_csv` reports the sagas it scheduled, the rows it
    wrote and its own CPU seconds."""
    return Path(raw_csv).with_suffix(".loadgen.json")


def _account(raw_csv: Path) -> dict[str, Any] | None:
    try:
        return json.loads(load_account_path(raw_csv).read_text())
    except (FileNotFoundError, ValueError):
        return None


def read_load_cpu(raw_csv: Path) -> tuple[float, float] | None:
    """(user, system) CPU seconds of the Locust run that wrote `raw_csv`, if it reported them."""
    account = _account(raw_csv)
    if account is None:
        return None
    return float(account["cpu_user_s"]), float(account["cpu_system_s"])


def check_rows(raw_csv: Path) -> int:
    """The number of rows of `raw_csv`, once checked to be the number of sagas its Locust run
    scheduled: a saga without a row (or with two) would bias every figure drawn from the file.

    Raises LoadError when they differ or the run left no account.
    """
    account = _account(raw_csv)
    if account is None:
        raise LoadError(f"{load_account_path(raw_csv)}: missing; cannot tell what was scheduled")
    with Path(raw_csv).open(newline="") as f:
        rows = sum(1 for _ in csv.DictReader(f))
    if rows != account["scheduled"]:
        raise LoadError(f"{raw_csv}: {rows} rows for {account['scheduled']} sagas scheduled")
    return rows


def run_locust(
    host: str,
    workload: str,
    requests_file: Path,
    raw_csv: Path,
    profile: LoadProfile,
    duration_s: int,
    warmup_s: float = 0.0,
    log_path: Path | None = None,
    seed: int = 0,
    stop_timeout_s: float | None = None,
) -> Path:
    """Run Locust headless for ``duration_s`` seconds (warm-up included) and wait for it.

    ``host`` is the gateway's base URL. Sagas in flight at the end are given ``stop_timeout_s``
    to finish (default: their request timeout, and then some, which is all they can take); any
    still unfinished then is an error row. Returns ``raw_csv`` once Locust has exited and
    :func:`check_rows` found a row for every saga it scheduled. Locust's own CPU seconds are
    then in :func:`read_load_cpu`.
    """
    raw_csv = Path(raw_csv)
    log_path = Path(log_path) if log_path else raw_csv.with_suffix(".locust.log")
    users = profile.users if profile.mode == "closed" else 1
    if stop_timeout_s is None:
        stop_timeout_s = profile.request_timeout_s + 5
    stop_timeout = math.ceil(stop_timeout_s)
    argv = [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--headless",
        "--host", host,
        "--users", str(users),
        "--spawn-rate", str(users),
        "--run-time", f"{int(duration_s)}s",
        "--stop-timeout", str(stop_timeout),
        "--exit-code-on-error", "0",
        "--only-summary",
        "--loglevel", "WARNING",
        "--requests-file", str(requests_file),
        "--raw-csv", str(raw_csv),
        "--workload", workload,
        "--rate", str(profile.rate_rps),
        "--think-time", str(profile.think_time_s),
        "--warmup", str(warmup_s),
        "--request-timeout", str(profile.request_timeout_s),
        "--max-in-flight", str(profile.max_in_flight),
        "--arrival-seed", str(seed),
        "--arrivals", profile.arrivals,
        "--account-json", str(load_account_path(raw_csv)),
        "--retry-initial", str(profile.retry_initial_s),
        "--retry-max", str(profile.retry_max_s),
        "--retry-multiplier", str(profile.retry_multiplier),
        "ClosedLoop" if profile.mode == "closed" else "OpenLoop",
    ]  # fmt: skip
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        try:
            # The harness's own argv/cwd never leak into Locust: everything is on its command line.
            proc = subprocess.run(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=duration_s + stop_timeout + 60,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LoadError(f"locust did not finish in time; see {log_path}") from exc
    if proc.returncode != 0 or not raw_csv.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise LoadError(f"locust exited with {proc.returncode}, raw CSV {raw_csv}:\n{tail}")
    check_rows(raw_csv)
    return raw_csv
