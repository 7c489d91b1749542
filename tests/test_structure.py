"""The structure the code promises: layers that hold, and a public surface each module states.

* The import-linter contracts in ``pyproject.toml`` are kept, and they are not vacuous: the
  same check on a copy of the tree with one upward import added (the core importing the CLI),
  one sideways import (the simulator importing the ingest pipeline) or one cycle fails and
  names the offending import.
* Every module states its public names in ``__all__``: exactly the public names it defines
  (re-exports are not allowed, except in a package whose modules are private, such as
  ``bench.codecbench``), so ``from module import *`` and the docs agree with the code.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("ingest", "queries", "simulator", "bench")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for pkg in PACKAGES:
        shutil.copytree(
            REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__", "results")
        )
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_layer_contracts_are_kept() -> None:
    out = _lint_imports(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.parametrize(
    ("module", "line", "expected"),
    [
        (
            "ingest/core/errors.py",
            "import ingest.cli.main",
            "ingest.core.errors -> ingest.cli.main",
        ),
        (
            "simulator/verify.py",
            "import ingest.pipeline.writer",
            "simulator.verify -> ingest.pipeline.writer",
        ),
        (
            "queries/read/series.py",
            "import queries.api.app",
            "queries.read.series -> queries.api.app",
        ),
        (
            "ingest/storage/layout.py",
            "import ingest.storage.table",
            "No cycles are allowed in ingest.storage",
        ),
    ],
)
def test_an_import_against_the_layers_fails(
    tree_copy: Path, module: str, line: str, expected: str
) -> None:
    path = tree_copy / module
    original = path.read_text()
    path.write_text(original + f"\n{line}  # noqa\n")
    try:
        out = _lint_imports(tree_copy)
    finally:
        path.write_text(original)
    assert out.returncode != 0, out.stdout
    assert "BROKEN" in out.stdout
    assert expected in out.stdout, out.stdout


def _modules() -> list[Path]:
    return sorted(
        p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py") if p.name != "__main__.py"
    )


def _defined_public(tree: ast.Module) -> list[str]:
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                elts = target.elts if isinstance(target, ast.Tuple) else [target]
                names.extend(t.id for t in elts if isinstance(t, ast.Name))
    return [n for n in names if not n.startswith("_") and n not in ("T", "log", "logger")]


def _declared(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            value = node.value
            assert isinstance(value, ast.List), "__all__ must be a list literal"
            return [ast.literal_eval(e) for e in value.elts]
    return None


def test_every_module_states_exactly_the_public_names_it_defines() -> None:
    problems = []
    for path in _modules():
        rel = path.relative_to(REPO)
        tree = ast.parse(path.read_text())
        declared = _declared(tree)
        if declared is None:
            problems.append(f"{rel}: no __all__")
            continue
        defined = _defined_public(tree)
        facade = path.name == "__init__.py" and any(
            p.name.startswith("_") and p.name != "__init__.py" for p in path.parent.glob("*.py")
        )
        if facade:
            from_private = {
                alias.asname or alias.name
                for n in tree.body
                if isinstance(n, ast.ImportFrom)
                and n.module
                and n.module.rsplit(".", 1)[-1].startswith("_")
                for alias in n.names
            }
            stray = [x for x in declared if x not in from_private and x not in defined]
            if stray:
                problems.append(f"{rel}: exports {stray}, not from its private modules")
            continue
        extra = [x for x in declared if x not in defined and x != "__version__"]
        missing = [x for x in defined if x not in declared and x != "__version__"]
        if extra:
            problems.append(f"{rel}: __all__ names what it does not define: {extra}")
        if missing:
            problems.append(f"{rel}: public names missing from __all__: {missing}")
    assert not problems, "\n".join(problems)


def test_only_the_lifecycle_bases_write_the_async_context_methods() -> None:
    """Every resource is an ``AsyncResource`` or a ``StartClose`` (ingest.core.lifecycle):
    one ``__aenter__``/``__aexit__`` pair, with the close-on-failed-start rule in one place.
    A Protocol may declare them (a declaration is not an implementation)."""
    allowed = REPO / "ingest" / "core" / "lifecycle.py"
    found = []
    for path in [*_modules(), *sorted((REPO / "tests").rglob("*.py"))]:
        if path == allowed:
            continue
        for cls in ast.walk(ast.parse(path.read_text())):
            if not isinstance(cls, ast.ClassDef):
                continue
            if any(isinstance(b, ast.Name) and b.id == "Protocol" for b in cls.bases):
                continue
            found += [
                f"{path.relative_to(REPO)}: {cls.name}.{f.name}"
                for f in cls.body
                if isinstance(f, ast.AsyncFunctionDef) and f.name in ("__aenter__", "__aexit__")
            ]
    assert not found, "\n".join(found)
