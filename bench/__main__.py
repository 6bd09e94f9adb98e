"""The harness CLI: ``python -m bench {run,sweep,publish,list,plot,report,new-workload}``.

``run`` runs cells into a new ``results/<run-id>/``: those of named matrices (``--matrix``), or
exactly the ones its flags name (``--workload W --system S --scenario X --rate N ...``; each flag
repeats or takes commas, and axes not given come from the matrix, ``default`` if neither
``--matrix`` nor ``--sweep`` is given), then any capacity sweeps (``--sweep``, varied by the
same flags where they mean something to a sweep). ``sweep`` runs one capacity sweep, its
rates, duration and repetitions set by flags. Neither touches ``results/latest`` or git unless
``--publish``; ``publish`` makes an existing run the reference (results/latest and the README's
headline). Publishing refuses a run in which a cell failed, unless ``--publish-anyway``.
``--dry-run`` prints the cells and the time estimate and runs nothing. ``list`` shows what can
be run; ``plot`` and ``report`` post-process an existing run folder (``results/<run-id>``, a
path, or ``latest``); ``new-workload`` scaffolds a workload folder, its Temporal twin and its
test (``bench.scaffold``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bench import analysis, plots, report, scaffold
from bench.matrix import MATRICES, SCENARIOS, SWEEPS, SYSTEMS, Plan, Sweep
from bench.results import RESULTS_DIR, cell_dirs, publish_run, resolve_run
from bench.topology import TopologyError, available_topologies, load_topology
from launch import BACKENDS

README = RESULTS_DIR.parent / "README.md"
T = TypeVar("T")


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
    """Print workloads, topologies, systems, scenarios, matrices and sweeps."""
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
    print("sweeps:")
    for s in SWEEPS.values():
        print(f"  {s.name:<24} at most {s.estimated_s() / 60:.0f} min: {s.description}")
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


def _listed(convert: Callable[[str], T]) -> Callable[[str], list[T]]:
    """An argparse type for ``a,b,c`` (with ``action="extend"`` a flag may also repeat)."""

    def parse(text: str) -> list[T]:
        try:
            return [convert(item.strip()) for item in text.split(",") if item.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc

    return parse


def _known(kind: str, known: Sequence[str]) -> Callable[[str], str]:
    def check(name: str) -> str:
        if name not in known:
            raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(known)}")
        return name

    return check


def _positive(convert: Callable[[str], T]) -> Callable[[str], T]:
    def check(text: str) -> T:
        value = convert(text)
        if not value > 0:  # type: ignore[operator]
            raise ValueError("must be above 0")
        return value

    return check


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError("must be between 0 and 1")
    return value


def _workloads() -> list[str]:
    names = _workload_names()
    return names if isinstance(names, list) else []


class FlagError(Exception):
    """Flags that name no plan (a usage error, reported as such)."""


# Flags that name or vary cells of a matrix; with --sweep they vary the sweep's steps instead.
_CELL_FLAGS = ("scenario", "rate", "duration", "abort_rate", "repetitions")


def _backend_flags(args: argparse.Namespace) -> dict[str, Any]:
    """Plan fields from --backend, --cpus and --image; refused before anything runs when the
    docker backend cannot run here, rather than as a failure of every cell."""
    if args.backend != "docker":
        if args.cpus is not None or args.image is not None:
            raise FlagError("--cpus and --image are for containers: give --backend docker too")
        return {"backend": args.backend}
    if not args.dry_run:
        from launch.container import image_available

        problem = image_available(args.image) if args.image else image_available()
        if problem is not None:
            raise FlagError(f"--backend docker cannot run: {problem}")
    return {"backend": "docker", "cpus": args.cpus, "image": args.image}


def plan_of_run(args: argparse.Namespace) -> Plan:
    """The cells (and sweeps) that ``bench run``'s flags name.

    ``--matrix`` names matrices; the cell flags replace their axes (``--workload``,
    ``--system``, ``--scenario``, ``--repetitions``) or vary every scenario (``--rate``,
    ``--duration``, ``--abort-rate``). Without ``--matrix`` they vary the ``default`` matrix,
    unless ``--sweep`` is given: then only the sweeps run (and the matrices named). The flags
    that mean something to a sweep apply to it as well: ``--workload`` and ``--system`` choose,
    ``--rate`` gives its rates, ``--duration`` and ``--abort-rate`` (one each) its steps, and
    ``--repetitions`` the repetitions of its lowest rate. ``--scenario`` means nothing to a
    sweep (it has its own), so it needs ``--matrix`` beside ``--sweep``.
    """
    if args.sweep and args.scenario and not args.matrix:
        raise FlagError("--scenario names matrix cells, and a sweep has its own scenario: "
                        "add --matrix, or drop --sweep")  # fmt: skip
    names = args.matrix or ([] if args.sweep else ["default"])
    matrices = tuple(
        MATRICES[name].varied(
            workloads=args.workload,
            systems=args.system,
            scenarios=[SCENARIOS[s] for s in args.scenario],
            rates_rps=args.rate,
            durations_s=args.duration,
            abort_rates=args.abort_rate,
            repetitions=args.repetitions,
        )
        for name in names
    )
    sweeps = tuple(
        _varied_sweep(SWEEPS[name], args, args.rate, args.duration, args.abort_rate)
        for name in args.sweep
    )
    label = "+".join([*names, *args.sweep])
    if not args.matrix and not args.sweep and any(getattr(args, f) for f in _CELL_FLAGS):
        label = "custom"
    return Plan(args.name or label, matrices, sweeps, **_backend_flags(args))


def plan_of_sweep(args: argparse.Namespace) -> Plan:
    """The one sweep that ``bench sweep``'s flags name."""
    durations = [args.duration] if args.duration else []
    sweep = _varied_sweep(SWEEPS[args.sweep_name], args, args.rates, durations, [])
    return Plan(args.name or f"sweep-{sweep.name}", (), (sweep,), **_backend_flags(args))


def _varied_sweep(
    sweep: Sweep,
    args: argparse.Namespace,
    rates: Sequence[float],
    durations: Sequence[int],
    abort_rates: Sequence[float],
) -> Sweep:
    """`sweep` as the flags vary it: a sweep steps one scenario, so one duration and abort
    rate at most."""
    for flag, values in (("--duration", durations), ("--abort-rate", abort_rates)):
        if len(values) > 1:
            raise FlagError(f"a sweep steps through one scenario: give one {flag}, not {values}")
    return sweep.varied(
        workloads=args.workload,
        systems=args.system,
        rates_rps=rates,
        duration_s=durations[0] if durations else None,
        abort_rate=abort_rates[0] if abort_rates else None,
        repetitions=args.repetitions,
    )


def _print_plan(plan: Plan) -> None:
    cells = plan.cells()
    print(f"plan {plan.name}: {len(cells)} cells, about {plan.estimated_s() / 60:.1f} min at most")
    limit = f", at most {plan.cpus:g} cores each" if plan.cpus else ""
    print(f"  backend: {plan.backend}{limit}")
    for cell in cells:
        print(f"  {cell.label}")
    for system, scenario in plan.skipped():
        print(f"  skipped {scenario} on {system}: not crash tolerant")
    for sweep in plan.sweeps:
        rates = ", ".join(f"{r:g}" for r in sweep.rates_rps)
        print(
            f"  sweep {sweep.name}: {', '.join(sweep.workloads)} x {', '.join(sweep.systems)} "
            f"at {rates} sagas/s ({sweep.repetitions} reps at {sweep.rates_rps[0]:g}), "
            f"{sweep.scenario.duration_s} s a step, until each system stops"
        )


def publish(
    run_dir: Path, anyway: bool = False, results_dir: Path = RESULTS_DIR, readme: Path = README
) -> bool:
    """Make `run_dir` the reference: trackable, copied to results/latest, in the README's
    headline. A run with failed cells is refused (False) unless `anyway`: its tables would
    rest on fewer cells than its plan named."""
    failed = analysis.read_failures(run_dir)
    if failed and not anyway:
        labels = ", ".join(f["label"] for f in failed)
        print(f"not published: {len(failed)} cell(s) failed ({labels}); see {run_dir}/report.md. "
              f"Rerun, or publish it as it is: python -m bench publish {run_dir} "
              "--publish-anyway", file=sys.stderr)  # fmt: skip
        return False
    print(f"published: {publish_run(run_dir, results_dir)}")
    if report.refresh_readme(readme, run_dir):
        print(f"README headline refreshed from {run_dir.name}")
    return True


def _execute(plan: Plan, args: argparse.Namespace) -> int:
    if args.dry_run:
        _print_plan(plan)
        return 0
    from bench.run import run_plan  # imports Temporal's SDK: only when running

    run_dir = run_plan(plan)
    if args.publish or args.publish_anyway:
        return 0 if publish(run_dir, args.publish_anyway) else 1
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the cells (and sweeps) the flags name into results/<run-id>/."""
    return _execute(plan_of_run(args), args)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run one capacity sweep into results/<run-id>/."""
    return _execute(plan_of_sweep(args), args)


def cmd_publish(args: argparse.Namespace) -> int:
    """Make an existing run the reference: trackable, copied to results/latest, in the README."""
    return 0 if publish(resolve_run(args.run), args.publish_anyway) else 1


def cmd_new_workload(args: argparse.Namespace) -> int:
    """Scaffold workloads/NAME/, its Temporal twin and its test (bench.scaffold)."""
    return scaffold.main(args.name, args.root)


def _add_selection(parser: argparse.ArgumentParser) -> None:
    """Flags that choose workloads and systems, shared by ``run`` and ``sweep``."""
    names = _listed(_known("workload", _workloads()))
    parser.add_argument("--workload", type=names, action="extend", default=[], metavar="W")
    systems = _listed(_known("system", list(SYSTEMS)))
    parser.add_argument("--system", type=systems, action="extend", default=[], metavar="S")
    parser.add_argument("--repetitions", type=_positive(int), metavar="K")
    parser.add_argument("--name", help="the run id's suffix (default: from what runs)")
    parser.add_argument(
        "--publish",
        action="store_true",
        help="make the run the reference: results/latest, the README's headline, tracked by "
        "git; refused if a cell failed",
    )
    _add_publish_anyway(parser)
    parser.add_argument("--dry-run", action="store_true", help="print the cells; run nothing")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="process",
        help="where a cell's processes run: host processes, or a container each on the host "
        "network (needs a Docker daemon and the image of `make image`; Locust stays on the host)",
    )
    parser.add_argument(
        "--cpus",
        type=_positive(float),
        metavar="N",
        help="with --backend docker: at most N cores per container, to model separate machines "
        "(the latency proxy, part of the harness, is not limited)",
    )
    parser.add_argument(
        "--image", help="with --backend docker: the image to run (default: accompanist)"
    )


def _add_publish_anyway(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--publish-anyway",
        action="store_true",
        help="publish even if some cells failed (the report and summary.csv list them)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m bench``."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run cells (named by a matrix or by flags) into results/<run-id>/",
        description="Every flag repeats or takes commas, e.g. --system accompanist,temporal-"
        "tuned --rate 5 --rate 20. Axes not given come from the --matrix (default: default).",
    )
    run.add_argument(
        "--matrix", type=_listed(_known("matrix", list(MATRICES))), action="extend", default=[]
    )
    _add_selection(run)
    scenarios = _listed(_known("scenario", list(SCENARIOS)))
    run.add_argument("--scenario", type=scenarios, action="extend", default=[], metavar="X")
    for flag, convert, metavar, text in (
        ("--rate", _positive(float), "N",
         "open loop at N sagas/s, fixed rate (a closed-loop scenario becomes open)"),
        ("--duration", _positive(int), "D", "seconds per cell, warm-up included"),
        ("--abort-rate", _fraction, "R",
         "share of requests the services refuse (the sagas then compensate)"),
    ):  # fmt: skip
        run.add_argument(
            flag, type=_listed(convert), action="extend", default=[], metavar=metavar, help=text
        )
    run.add_argument(
        "--sweep",
        type=_listed(_known("sweep", list(SWEEPS))),
        action="extend",
        default=[],
        help="then run this capacity sweep; --workload, --system, --rate, --duration, "
        "--abort-rate and --repetitions apply to it too, and without --matrix only it runs",
    )
    run.set_defaults(func=cmd_run)
    sweep = sub.add_parser("sweep", help="run a capacity sweep into results/<run-id>/")
    sweep.add_argument("sweep_name", nargs="?", default="capacity", choices=sorted(SWEEPS))
    _add_selection(sweep)
    sweep.add_argument(
        "--rates", type=_listed(_positive(float)), action="extend", default=[], metavar="N,N,..."
    )
    sweep.add_argument("--duration", type=_positive(int), metavar="D", help="seconds per step")
    sweep.set_defaults(func=cmd_sweep)
    pub = sub.add_parser("publish", help="make a run the reference (results/latest, README)")
    pub.add_argument("run", help="run id or folder")
    _add_publish_anyway(pub)
    pub.set_defaults(func=cmd_publish)
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
    except FlagError as exc:
        print(f"bench {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
