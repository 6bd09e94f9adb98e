"""The load stage: write a requests file, run Locust headless, hand back the raw CSV.

The harness (never the Locust process) generates a workload's requests and writes them as JSONL
with :func:`write_requests`; :func:`run_locust` runs ``bench/load/locustfile.py`` as a
subprocess with a :class:`LoadProfile` and returns the path of the raw per-request CSV
(columns in :data:`RAW_COLUMNS`).
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
)


class LoadError(RuntimeError):
    """Locust failed or wrote no raw CSV; the message includes its log tail."""


@dataclass(frozen=True)
class LoadProfile:
    """How to load the gateway.

    ``closed``: ``users`` users, each waiting ``think_time_s`` between a saga's outcome and the
    next saga. ``open``: Poisson arrivals at ``rate_rps``, latency from the intended start.
    """

    mode: Literal["closed", "open"]
    users: int = 1
    think_time_s: float = 0.0
    rate_rps: float = 10.0
    max_in_flight: int = 500
    request_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.mode not in ("closed", "open"):
            raise ValueError(f"load mode must be 'closed' or 'open', got {self.mode!r}")
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
) -> Path:
    """Run Locust headless for ``duration_s`` seconds (warm-up included) and wait for it.

    ``host`` is the gateway's base URL. Returns ``raw_csv`` once Locust has exited and the file
    exists; requests in flight at the end are given ``request_timeout_s`` to finish.
    """
    raw_csv = Path(raw_csv)
    log_path = Path(log_path) if log_path else raw_csv.with_suffix(".locust.log")
    users = profile.users if profile.mode == "closed" else 1
    stop_timeout = math.ceil(profile.request_timeout_s + 5)
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
    return raw_csv
