"""``python -m bench new-workload NAME``: scaffold a saga workload that works as generated.

The templates in ``bench/scaffold_templates/`` mirror the tree they produce: ``NAME`` in a path
and ``${name}`` / ``${Name}`` in a file become the workload's name and its CamelCase form. They
make ``workloads/NAME/`` (seed data, steps, services, checker, choreography, descriptor), the
Temporal twin ``baselines/temporal/NAME.py`` and the end-to-end test
``tests/workloads/test_NAME.py``, which also runs the workload on the Restate and DBOS twins
(generic over a descriptor's steps, so a new workload has them without a file of its own): a
two-service saga (hold at inventory, charge at billing, confirm at inventory, each with its
compensation) whose test passes before anything is edited. The generated modules import their
siblings relatively, so that their import blocks sort the same way whatever the name is and stay
ruff-clean. docs/adding-a-workload.md is the walkthrough.
"""

from __future__ import annotations

import keyword
import re
import sys
from pathlib import Path
from string import Template

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).resolve().parent / "scaffold_templates"
TEMPLATE_SUFFIX = ".tmpl"
PLACEHOLDER = "NAME"
# Long enough for any sensible name, short enough that no generated line passes 100 columns.
MAX_NAME_LENGTH = 32
_SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


class ScaffoldError(ValueError):
    """The workload cannot be scaffolded under this name; the message says why."""


def camel_case(name: str) -> str:
    """``order_flow`` -> ``OrderFlow``: the prefix of the Temporal twin's class name."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def targets(name: str, root: Path = REPO_ROOT) -> dict[Path, Path]:
    """Every file the scaffold writes under ``root``, mapped to its template."""
    out = {}
    for template in sorted(TEMPLATES.rglob(f"*{TEMPLATE_SUFFIX}")):
        relative = template.relative_to(TEMPLATES).with_suffix("")
        parts = [part.replace(PLACEHOLDER, name) for part in relative.parts]
        out[Path(root, *parts)] = template
    return out


def validate(name: str, root: Path = REPO_ROOT) -> None:
    """Raise `ScaffoldError` unless ``name`` is a new workload's valid name under ``root``."""
    if not _SNAKE_CASE.fullmatch(name) or keyword.iskeyword(name):
        raise ScaffoldError(
            f"{name!r} is not a valid workload name: use a lowercase Python identifier in "
            "snake_case (letters, digits, single underscores, starting with a letter), "
            "e.g. 'order_flow'"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise ScaffoldError(f"{name!r} is longer than {MAX_NAME_LENGTH} characters")
    # A module of the same name clashes too: workloads/saga.py would shadow the new package,
    # and a twin named worker.py would replace baselines/temporal/worker.py.
    package = root / "workloads" / name
    clashes = [
        package,
        package.with_suffix(".py"),
        *(path for path in targets(name, root) if package not in path.parents),
    ]
    taken = [str(path.relative_to(root)) for path in clashes if path.exists()]
    if taken:
        raise ScaffoldError(f"cannot scaffold {name!r}, these exist already: {', '.join(taken)}")


def scaffold(name: str, root: Path = REPO_ROOT) -> list[Path]:
    """Write the workload ``name`` under ``root``; return the files created, in order.

    Nothing is written if `validate` refuses the name.
    """
    root = Path(root)
    validate(name, root)
    substitutions = {"name": name, "Name": camel_case(name)}
    created = []
    for target, template in targets(name, root).items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(Template(template.read_text()).substitute(substitutions))
        created.append(target)
    return created


def next_steps(name: str) -> str:
    """What to do after scaffolding, as printed by the command."""
    return f"""\
Next steps:
  1. Run its test (services, sidecars, the Temporal, Restate and DBOS twins, every outcome):
       .venv/bin/pytest tests/workloads/test_{name}.py
  2. Make it your saga: rename the services and steps in workloads/{name}/spec.py,
     services.py and data.py, then the invariants in checker.py.
  3. Write the choreography by hand in workloads/{name}/choreography.py (it starts as
     linear_saga); keep the name {name}_saga or update workload.py.
  4. Add it to a matrix in bench/matrix.py and check `python -m bench list`.
Walkthrough: docs/adding-a-workload.md"""


def main(name: str, root: Path = REPO_ROOT) -> int:
    """The command: scaffold, print what was created and what next; 2 on a refused name."""
    try:
        created = scaffold(name, root)
    except ScaffoldError as exc:
        print(f"bench new-workload: {exc}", file=sys.stderr)
        return 2
    print(f"Created workload {name!r}:")
    for path in created:
        print(f"  {path.relative_to(root)}")
    print(next_steps(name))
    return 0
