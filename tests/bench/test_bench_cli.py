"""The CLI a user expects: flags name exactly the cells they ask for, runs stay out of git and
out of results/latest until published, and publishing refreshes the README's headline."""

from __future__ import annotations

import math
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from synthetic_cells import write_synthetic_cell

from bench import __main__ as cli
from bench.analysis import read_table
from bench.load import LoadError
from bench.matrix import MATRICES, SYSTEMS, Cell, Plan
from bench.report import HEADLINE_END, HEADLINE_START, refresh_readme
from bench.results import RAW_ARCHIVE, CellDir, is_published, publish_run
from bench.run import run_plan


def plan(*argv: str) -> Plan:
    args = cli.build_parser().parse_args(argv)
    return cli.plan_of_run(args) if args.command == "run" else cli.plan_of_sweep(args)


def labels(p: Plan) -> list[str]:
    return [c.label for c in p.cells()]


def test_flags_name_exactly_one_cell() -> None:
    p = plan("run", "--workload", "warehouse", "--system", "accompanist", "--scenario", "local")
    assert labels(p) == ["warehouse/accompanist/local/rep1"] and not p.sweeps


def test_flags_repeat_or_take_commas_and_multiply() -> None:
    by_commas = plan("run", "--workload", "warehouse,hotel", "--system",
                     "accompanist,temporal-tuned", "--scenario", "three-zones",
                     "--rate", "5,20")  # fmt: skip
    by_repeats = plan("run", "--workload", "warehouse", "--workload", "hotel", "--system",
                      "accompanist", "--system", "temporal-tuned", "--scenario", "three-zones",
                      "--rate", "5", "--rate", "20")  # fmt: skip
    assert labels(by_commas) == labels(by_repeats)
    assert len(labels(by_commas)) == 2 * 2 * 2
    assert "hotel/temporal-tuned/three-zones-20rps/rep1" in labels(by_commas)
    cell = by_commas.cells()[0]
    assert cell.scenario.load.mode == "open" and cell.scenario.load.rate_rps == 5.0


def test_rate_duration_abort_rate_and_repetitions_change_the_cells_they_name() -> None:
    p = plan("run", "--workload", "hotel", "--system", "temporal-distributed", "--scenario",
             "local-sequential", "--rate", "7", "--duration", "20", "--abort-rate", "0.3",
             "--repetitions", "3")  # fmt: skip
    cells = p.cells()
    assert [c.rep for c in cells] == [1, 2, 3]
    scenario = cells[0].scenario
    assert scenario.name == "local-sequential-7rps-20s-abort0.3"
    assert (scenario.load.mode, scenario.load.rate_rps) == ("open", 7.0)
    assert (scenario.duration_s, scenario.warmup_s, scenario.abort_rate) == (20, 2.0, 0.3)


def test_a_matrix_names_its_cells_and_flags_narrow_it() -> None:
    assert labels(plan("run", "--matrix", "sequential")) == [
        c.label for c in MATRICES["sequential"].cells()
    ]
    narrowed = plan("run", "--matrix", "sequential", "--system", "accompanist-default")
    assert {c.system for c in narrowed.cells()} == {"accompanist-default"}
    assert len(narrowed.cells()) == 2 * 3  # two workloads, three repetitions


def test_crash_scenarios_skip_the_system_that_is_not_crash_tolerant() -> None:
    p = plan("run", "--matrix", "crashes")
    assert "accompanist-default" not in {c.system for c in p.cells()}
    assert ("accompanist-default", "three-zones-runtime-crashes") in p.skipped()


def test_sweeps_alone_or_after_cells() -> None:
    only = plan("run", "--sweep", "capacity", "--workload", "hotel")
    assert only.cells() == []
    assert [s.workloads for s in only.sweeps] == [("hotel",)]
    both = plan("run", "--matrix", "three-zones", "--sweep", "capacity")
    assert both.cells() and len(both.sweeps) == 1
    custom = plan("sweep", "--workload", "warehouse", "--system", "accompanist,temporal-tuned",
                  "--rates", "2,5", "--duration", "10", "--repetitions", "3")  # fmt: skip
    (sweep,) = custom.sweeps
    assert sweep.systems == ("accompanist", "temporal-tuned") and sweep.rates_rps == (2.0, 5.0)
    assert [c.label for c in sweep.cells("warehouse", 2.0, sweep.systems)][:2] == [
        "warehouse/accompanist/capacity-10s-2rps/rep1",
        "warehouse/temporal-tuned/capacity-10s-2rps/rep1",
    ]
    assert len(sweep.cells("warehouse", 5.0, sweep.systems)) == 2  # one repetition above


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--system", "nope"],
        ["run", "--scenario", "nowhere"],
        ["run", "--workload", "nothing"],
        ["run", "--rate", "0"],
        ["run", "--abort-rate", "2"],
        ["sweep", "--rates", "x"],
    ],
)
def test_unknown_names_and_bad_values_are_refused(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert "error" in capsys.readouterr().err


def test_dry_run_prints_the_cells_and_the_estimate(capsys) -> None:
    assert cli.main(["run", "--dry-run", "--matrix", "quick", "--sweep", "quick"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"plan quick+quick: {len(SYSTEMS) - 1} cells, about")
    assert "warehouse/accompanist/three-zones-crashes-quick/rep1" in out
    assert "skipped three-zones-crashes-quick on accompanist-default" in out
    assert "sweep quick: warehouse x accompanist, accompanist-default" in out


def fake_run(run_dir: Path, cell: Cell, progress: Callable[[str], None]) -> CellDir:
    return write_synthetic_cell(run_dir, cell)


def _git_ignored(repo: Path, path: Path) -> bool:
    result = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", str(path)],
                            check=False)  # fmt: skip
    return result.returncode == 0


def test_a_run_stays_untracked_and_unpublished_until_published(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    results = tmp_path / "results"
    quick = plan("run", "--workload", "warehouse", "--system", "accompanist,temporal-tuned",
                 "--scenario", "local", "--rate", "5", "--duration", "4")  # fmt: skip
    run_dir = run_plan(quick, results_dir=results, run=fake_run)
    assert (run_dir / "report.md").exists() and (run_dir / "summary.csv").exists()
    assert not (results / "latest").exists() and not is_published(run_dir)
    assert _git_ignored(tmp_path, run_dir / "summary.csv")

    latest = publish_run(run_dir, results)
    assert is_published(run_dir) and not _git_ignored(tmp_path, run_dir / "summary.csv")
    assert (latest / "report.md").exists() and not (latest / ".gitignore").exists()
    assert not _git_ignored(tmp_path, latest / "summary.csv")
    # The cells' records travel with the run, packed; the latest copy is the tables alone.
    with tarfile.open(run_dir / RAW_ARCHIVE) as tar:
        packed = set(tar.getnames())
    records = {str(p.relative_to(run_dir)) for p in (run_dir / "raw").rglob("requests.csv")}
    assert records and records <= packed and all(n.endswith((".csv", ".json")) for n in packed)
    assert not (latest / RAW_ARCHIVE).exists() and not (latest / "raw").exists()


def test_publishing_rewrites_only_the_readme_headline_block(tmp_path: Path) -> None:
    run_dir = run_plan(plan("run", "--matrix", "sequential", "--workload", "warehouse",
                            "--repetitions", "1"), results_dir=tmp_path, run=fake_run)  # fmt: skip
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{HEADLINE_START}\nold figures\n{HEADLINE_END}\noutro\n")
    assert refresh_readme(readme, run_dir)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{HEADLINE_END}\noutro\n")
    assert "old figures" not in text and run_dir.name in text
    assert "| warehouse | `local-sequential`: one saga at a time, 1 rep |" in text
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not refresh_readme(plain, run_dir) and plain.read_text() == "no markers\n"


def test_sweep_flags_vary_the_sweep_and_pull_in_no_matrix() -> None:
    p = plan("run", "--sweep", "capacity", "--repetitions", "5", "--duration", "20",
             "--rate", "2,10", "--abort-rate", "0.2")  # fmt: skip
    assert p.cells() == [] and p.name == "capacity"
    (sweep,) = p.sweeps
    assert (sweep.repetitions, sweep.rates_rps) == (5, (2.0, 10.0))
    assert (sweep.scenario.duration_s, sweep.scenario.abort_rate) == (20, 0.2)
    assert len(sweep.cells("warehouse", 2.0, sweep.systems)) == 5 * len(sweep.systems)
    # Beside a matrix the same flags vary both.
    both = plan("run", "--matrix", "sequential", "--sweep", "capacity", "--repetitions", "2")
    assert {c.rep for c in both.cells()} == {1, 2} and both.sweeps[0].repetitions == 2
    # Without --matrix or --sweep, cell flags vary the default matrix.
    custom = plan("run", "--repetitions", "2")
    assert custom.name == "custom" and len(custom.cells()) == 2 * len(MATRICES["default"].cells())


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--sweep", "capacity", "--scenario", "local"],  # a sweep has its own scenario
        ["run", "--sweep", "capacity", "--duration", "10,20"],  # and one step duration
        ["run", "--sweep", "capacity", "--abort-rate", "0.1,0.2"],
    ],
)
def test_flags_that_mean_nothing_to_a_sweep_are_refused(argv: list[str], capsys) -> None:
    assert cli.main([*argv, "--dry-run"]) == 2
    assert "error" in capsys.readouterr().err


def _failing(label: str) -> Callable[[Path, Cell, Callable[[str], None]], CellDir]:
    def run(run_dir: Path, cell: Cell, progress: Callable[[str], None]) -> CellDir:
        if cell.label == label:
            raise LoadError("locust exited with 1, raw CSV ...\nTraceback ...")
        return write_synthetic_cell(run_dir, cell)

    return run


def test_a_failed_cell_is_listed_everywhere_and_blocks_publishing(tmp_path: Path) -> None:
    results = tmp_path / "results"
    two = plan("run", "--workload", "warehouse", "--system", "accompanist,temporal-tuned",
               "--scenario", "local", "--rate", "5", "--duration", "4",
               "--repetitions", "2")  # fmt: skip
    failing = "warehouse/temporal-tuned/local-5rps-4s/rep2"
    run_dir = run_plan(two, results_dir=results, run=_failing(failing))
    summary = read_table(run_dir / "summary.csv").set_index("system")
    row = summary.loc["temporal-tuned"]
    assert row.status == "failed" and row.failure == "rep2: locust exited with 1, raw CSV ..."
    assert row.reps == 1 and summary.loc["accompanist", "status"] == "ok"
    ratio = read_table(run_dir / "ratios.csv").iloc[0]
    assert not ratio.comparable and math.isnan(ratio.p50_ratio) and "failed" in ratio.note
    headline = (run_dir / "report.md").read_text().split("## Configuration")[0]
    assert f"`{failing}`: locust exited with 1" in headline
    readme = tmp_path / "README.md"
    readme.write_text(f"{HEADLINE_START}\nold\n{HEADLINE_END}\n")

    assert not cli.publish(run_dir, results_dir=results, readme=readme)
    assert not (results / "latest").exists() and not is_published(run_dir)
    assert "old" in readme.read_text()
    assert cli.publish(run_dir, anyway=True, results_dir=results, readme=readme)
    assert (results / "latest" / "summary.csv").exists() and failing in readme.read_text()


def test_a_run_whose_every_cell_failed_still_reports_them(tmp_path: Path) -> None:
    one = plan("run", "--workload", "warehouse", "--system", "accompanist", "--scenario",
               "local-sequential")  # fmt: skip
    run_dir = run_plan(one, results_dir=tmp_path, run=_failing(one.cells()[0].label))
    row = read_table(run_dir / "summary.csv").iloc[0]
    assert (row.status, row.requests, row.reps) == ("failed", 0, 0)
    assert "failed: rep1: locust exited with 1" in (run_dir / "report.md").read_text()
