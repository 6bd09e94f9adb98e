"""`python -m bench new-workload`: what it scaffolds works, passes its own test and lints clean.

The scaffold is written into a copy of the repository's packages under tmp_path, never into the
checkout itself; the generated test then runs there in a subprocess (real services, sidecars
and, when installed, the Temporal dev server), so this module takes 15-30 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import __main__ as cli
from bench import scaffold

REPO = scaffold.REPO_ROOT
PACKAGES = ("accompanist_py", "baselines", "bench", "workloads")
RUFF = Path(sys.executable).with_name("ruff")
WORKLOAD_MODULES = ("__init__", "checker", "choreography", "data", "services", "spec", "workload")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the repository's packages and configuration, to scaffold into."""
    for package in PACKAGES:
        shutil.copytree(
            REPO / package,
            tmp_path / package,
            ignore=shutil.ignore_patterns("__pycache__", "node_modules"),
        )
    # The Restate server binary (about 100 MB) is shared, not copied.
    modules = Path("baselines", "restate", "node_modules")
    (tmp_path / modules).symlink_to(REPO / modules, target_is_directory=True)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_scaffolded_workload_passes_its_own_test_and_ruff(checkout: Path, capsys) -> None:
    assert cli.main(["new-workload", "parcel_desk", "--root", str(checkout)]) == 0
    out = capsys.readouterr().out
    created = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    expected = {
        *(f"workloads/parcel_desk/{module}.py" for module in WORKLOAD_MODULES),
        "baselines/temporal/parcel_desk.py",
        "tests/workloads/test_parcel_desk.py",
    }
    assert expected <= set(created)
    assert "Next steps" in out and "docs/adding-a-workload.md" in out
    assert not (REPO / "workloads" / "parcel_desk").exists()

    files = [str(checkout / path) for path in sorted(expected)]
    lint = _run([str(RUFF), "check", "--no-cache", *files], checkout, 60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    formatted = _run([str(RUFF), "format", "--check", "--no-cache", *files], checkout, 60)
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr

    listed = _run([sys.executable, "-m", "bench", "list"], checkout, 120)
    assert "parcel_desk" in listed.stdout, listed.stdout + listed.stderr

    test = _run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/workloads/test_parcel_desk.py",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        checkout,
        280,
    )
    assert test.returncode == 0, test.stdout[-4000:] + test.stderr[-2000:]
    assert "7 passed" in test.stdout, test.stdout[-2000:]


def test_the_longest_allowed_name_still_gives_ruff_clean_code(checkout: Path) -> None:
    name = "a" * (scaffold.MAX_NAME_LENGTH - 4) + "_b_c"
    files = [str(path) for path in scaffold.scaffold(name, checkout)]
    lint = _run([str(RUFF), "check", "--no-cache", *files], checkout, 60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    formatted = _run([str(RUFF), "format", "--check", "--no-cache", *files], checkout, 60)
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr


@pytest.mark.parametrize(
    "name",
    ["Parcel", "parcel-desk", "9lives", "_parcel", "parcel__desk", "class", "x" * 40],
)
def test_an_invalid_name_exits_2_and_writes_nothing(name: str, tmp_path: Path, capsys) -> None:
    assert cli.main(["new-workload", name, "--root", str(tmp_path)]) == 2
    assert repr(name) in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["warehouse", "hotel", "saga", "ledger"])
def test_an_existing_workload_or_module_exits_2_and_writes_nothing(name: str, capsys) -> None:
    before = sorted(p.name for p in (REPO / "workloads").iterdir())
    assert cli.main(["new-workload", name]) == 2
    assert "exist already" in capsys.readouterr().err
    assert sorted(p.name for p in (REPO / "workloads").iterdir()) == before
