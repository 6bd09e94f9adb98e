"""The harness CLI: ``python -m bench {run,list,plot,report,new-workload}``.

``list`` shows what can be run; ``plot`` and ``report`` post-process an existing run folder
(``results/<run-id>``, a path, or ``latest``); ``new-workload`` scaffolds a workload folder, its
Temporal twin and its test (``bench.scaffold``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import analysis, plots, report, scaffold
from bench.matrix import MATRICES, SCENARIOS, SYSTEMS
from bench.results import cell_dirs, resolve_run
from bench.topology import TopologyError, available_topologies, load_topology


def _workload_names() -> list[str] | str:
    """Workloads via ``workloads.discover()``, or why they cannot be listed."""
    try:
        workloads = importlib.import_module("workloads")
    except ImportError as exc:
        return f"(workloads package not importable: {exc})"
    discover = getattr(workloads, "discover", None)
    if discover is None:
        return "(workloads.discover() does not exist yet)"
    found = discover()
    names = found.keys() if isinstance(found, dict) else [getattr(w, "name", w) for w in found]
    return sorted(str(n) for n in names)


def cmd_list(args: argparse.Namespace) -> int:
    """Print workloads, topologies, systems, scenarios and matrices."""
    names = _workload_names()
    print("workloads:")
    print("  " + (names if isinstance(names, str) else ", ".join(names) or "(none)"))
    print("topologies:")
    for name, path in available_topologies().items():
        try:
            print(f"  {name:<24} {load_topology(path).description}")
        except TopologyError as exc:
            print(f"  {name:<24} INVALID: {exc}")
    print("systems:")
    for system in SYSTEMS.values():
        print(f"  {system.name:<24} {system.description}")
    print("scenarios:")
    for sc in SCENARIOS.values():
        print(f"  {sc.name:<28} {sc.description}")
    print("matrices:")
    for m in MATRICES.values():
        cells = len(m.cells())
        print(f"  {m.name:<24} {cells} cells, about {m.estimated_s() / 60:.0f} min: "
              f"{m.description}")  # fmt: skip
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Draw the charts of an existing run."""
    run_dir = resolve_run(args.run)
    for path in plots.plot_run(run_dir):
        print(path)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Re-analyse (if raw data is present), re-plot and write report.md for an existing run."""
    run_dir = resolve_run(args.run)
    if any(True for _ in cell_dirs(run_dir)):
        for path in analysis.analyse(run_dir):
            print(path)
        plots.plot_run(run_dir)
    print(report.write_report(run_dir))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run a matrix into results/<run-id>/ and refresh results/latest/."""
    from bench.run import run_matrix  # imports Temporal's SDK: only when running

    run_matrix(args.matrix)
    return 0


def cmd_new_workload(args: argparse.Namespace) -> int:
    """Scaffold workloads/NAME/, its Temporal twin and its test (bench.scaffold)."""
    return scaffold.main(args.name, args.root)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m bench``."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a benchmark matrix into results/<run-id>/")
    run.add_argument("--matrix", default="default", choices=sorted(MATRICES))
    run.set_defaults(func=cmd_run)
    sub.add_parser("list", help="list workloads, topologies, systems, matrices").set_defaults(
        func=cmd_list
    )
    plot = sub.add_parser("plot", help="draw the charts of an existing run")
    plot.add_argument("run", nargs="?", default="latest", help="run id, folder, or 'latest'")
    plot.set_defaults(func=cmd_plot)
    rep = sub.add_parser("report", help="analyse, plot and write report.md for an existing run")
    rep.add_argument("run", nargs="?", default="latest", help="run id, folder, or 'latest'")
    rep.set_defaults(func=cmd_report)
    new = sub.add_parser("new-workload", help="scaffold a new workload folder")
    new.add_argument("name", help="the workload's name: a lowercase snake_case identifier")
    new.add_argument(
        "--root",
        type=Path,
        default=scaffold.REPO_ROOT,
        help="the checkout to write into (default: this one)",
    )
    new.set_defaults(func=cmd_new_workload)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FileNotFoundError as exc:
        print(f"bench {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
