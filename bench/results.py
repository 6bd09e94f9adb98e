"""The results folder: where every stage reads and writes its files.

``results/<run-id>/`` holds one run::

    run.json              the configuration the run was started with
    environment.json      versions and machine, collected when the run started
    summary.csv           analysis: one row per (workload, system, scenario)
    ratios.csv            analysis: every other system / accompanist_py
    capacity.csv          analysis: sustainable throughput per (workload, sweep, system)
    failed_cells.json     the cells that failed to deploy or load, and why (bench.run)
    capacity_stops.json   where each system left each sweep, and why (bench.run)
    cpu_by_kind.csv       analysis: CPU-seconds per saga of each process kind
    failure_detection.csv the timeouts, retries and event loops of both systems, as they ran
                          (bench.fairness)
    charts/*.png          plots
    report.md             the report
    .gitignore            until the run is published: keeps the whole folder out of git
    raw/<workload>/<system>/<scenario>/rep<k>/      one cell (git-ignored: large)
        cell.json         identity, topology, floor_ms, load, crash plan, sweep, CPU window
        requests.csv      Locust: one row per scheduled saga
        requests.loadgen.json   Locust's account: sagas scheduled, rows written, CPU seconds
        faults.csv        crash windows
        cpu.csv           CPU seconds per process during the load (Locust as ``loadgen``)
        links.csv         measured round trips of the latency links
        check.json        the consistency checker's verdict: {"consistent": bool, ...}
        logs/             process logs

A run is *published* (:func:`publish_run`, ``bench run --publish`` or ``bench publish RUN``)
when it becomes the reference: its folder joins git and ``results/latest/`` becomes a copy of it
(not a symlink: friendlier to git) without raw/. Unpublished runs stay out of git, the way a
virtual environment keeps itself out: a ``.gitignore`` of ``*`` inside the folder.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
LATEST = "latest"
FAILURE_DETECTION_CSV = "failure_detection.csv"
_IGNORE_ALL = ".gitignore"
# A published run's cell records, packed: requests, faults, CPU, probes, links, checks, metadata.
RAW_ARCHIVE = "raw-records.tar.gz"
RAW_RECORDS = frozenset({".csv", ".json"})


def new_run_id(matrix: str) -> str:
    """A sortable, unique-enough run id: ``20260101-120000-quick``."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{matrix}"


def resolve_run(run: str | Path, results_dir: Path = RESULTS_DIR) -> Path:
    """A run folder from a path, a run id, or ``latest``."""
    path = Path(run)
    if path.is_dir():
        return path
    if (results_dir / str(run)).is_dir():
        return results_dir / str(run)
    raise FileNotFoundError(f"no run folder {run!r} (neither a path nor in {results_dir})")


@dataclass(frozen=True)
class CellDir:
    """The folder of one cell and its identity."""

    path: Path
    workload: str
    system: str
    scenario: str
    rep: int

    @property
    def label(self) -> str:
        """The cell's identity as bench.matrix.Cell spells it: workload/system/scenario/repK."""
        return f"{self.workload}/{self.system}/{self.scenario}/rep{self.rep}"

    @property
    def requests_csv(self) -> Path:
        return self.path / "requests.csv"

    @property
    def faults_csv(self) -> Path:
        return self.path / "faults.csv"

    @property
    def cpu_csv(self) -> Path:
        return self.path / "cpu.csv"

    @property
    def links_csv(self) -> Path:
        return self.path / "links.csv"

    @property
    def check_json(self) -> Path:
        return self.path / "check.json"

    @property
    def meta_json(self) -> Path:
        return self.path / "cell.json"

    def meta(self) -> dict[str, Any]:
        """cell.json, or {} if the runner wrote none."""
        return read_json(self.meta_json)


def cell_dir(run_dir: Path, workload: str, system: str, scenario: str, rep: int) -> CellDir:
    """The folder of a cell (created)."""
    path = Path(run_dir) / "raw" / workload / system / scenario / f"rep{rep}"
    path.mkdir(parents=True, exist_ok=True)
    return CellDir(path, workload, system, scenario, rep)


def cell_dirs(run_dir: Path) -> Iterator[CellDir]:
    """Every cell of a run that has a requests.csv, in a stable order."""
    for requests in sorted((Path(run_dir) / "raw").glob("*/*/*/rep*/requests.csv")):
        path = requests.parent
        scenario, system, workload = path.parent.name, path.parent.parent.name, path.parents[2].name
        yield CellDir(path, workload, system, scenario, int(path.name.removeprefix("rep")))


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    """Write pretty JSON (a person opens these)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, or {} if it is missing."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}


def new_run_dir(name: str, results_dir: Path = RESULTS_DIR) -> Path:
    """Create ``results_dir/<run-id>/`` for a new run, out of git until it is published."""
    run_dir = Path(results_dir) / new_run_id(name)
    run_dir.mkdir(parents=True)
    (run_dir / _IGNORE_ALL).write_text("# unpublished run (bench.results.publish_run)\n*\n")
    return run_dir


def is_published(run_dir: Path) -> bool:
    """Whether git may track the run folder (it has no ignore-everything marker)."""
    return not (Path(run_dir) / _IGNORE_ALL).exists()


def publish_run(run_dir: Path, results_dir: Path = RESULTS_DIR, latest: str = LATEST) -> Path:
    """Make `run_dir` a reference run: its raw records archived (:func:`archive_raw`), the
    folder trackable by git, and copied to ``results/<latest>``."""
    archive_raw(run_dir)
    (Path(run_dir) / _IGNORE_ALL).unlink(missing_ok=True)
    return refresh_latest(run_dir, results_dir, latest)


def archive_raw(run_dir: Path) -> Path | None:
    """Pack every cell's records (the text files under ``raw/``, logs and databases left out)
    into ``RAW_ARCHIVE``, which git keeps while ``raw/`` stays ignored: anyone can re-analyse a
    published run. None if the run has no raw folder."""
    raw = Path(run_dir) / "raw"
    if not raw.is_dir():
        return None
    path = Path(run_dir) / RAW_ARCHIVE
    with tarfile.open(path, "w:gz") as tar:
        for record in sorted(raw.rglob("*")):
            if record.is_file() and record.suffix in RAW_RECORDS:
                tar.add(record, arcname=str(record.relative_to(run_dir)))
    return path


def refresh_latest(run_dir: Path, results_dir: Path = RESULTS_DIR, name: str = LATEST) -> Path:
    """Replace ``results/<name>`` with a copy of ``run_dir`` minus its raw data."""
    latest = results_dir / name
    if latest.resolve() == Path(run_dir).resolve():
        return latest
    if latest.is_symlink() or latest.is_file():
        latest.unlink()
    elif latest.exists():
        shutil.rmtree(latest)
    shutil.copytree(run_dir, latest, ignore=shutil.ignore_patterns("raw", RAW_ARCHIVE, _IGNORE_ALL))
    return latest
