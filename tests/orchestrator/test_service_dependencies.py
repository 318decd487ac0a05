"""The service installs what it imports: every third-party package that orchestrator/ and provision/
import (and the trainer modules they import, e.g. trainer.artifacts) is in `[project] dependencies`.

Read from the source (every import, the ones inside functions included), so an import that only
runs for an s3:// store or one provider is checked as well as the ones at the top of a module.
Who may import whom (torch never in the service) is tests/test_import_rules.py's.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("orchestrator", "provision", "trainer")
#: modules that are part of another declared distribution's API, pinned release by release by it
CARRIED_BY = {"botocore": "boto3", "pydantic_core": "pydantic"}

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in the file; `from a import b` gives a and a.b."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _module_file(name: str) -> Path | None:
    path = REPO.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _reachable_third_party(*roots: str) -> dict[str, str]:
    """Third-party top-level module -> one `file:line` importing it, over every module under
    `roots` and every first-party module they import (e.g. trainer.artifacts from the service)."""
    todo = [p for root in roots for p in (REPO / root).rglob("*.py")]
    seen: set[Path] = set()
    third: dict[str, str] = {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name, line in _imports(path):
            top = name.split(".")[0]
            if top in FIRST_PARTY:
                parts = name.split(".")
                todo += [f for i in range(1, len(parts) + 1) if (f := _module_file(".".join(parts[:i])))]
            elif top and top not in sys.stdlib_module_names:
                third.setdefault(top, f"{path.relative_to(REPO)}:{line}")
    return third


def _names(requirements: list[str]) -> set[str]:
    return {_normal(re.split(r"[\s\[<>=!~;@]", r, maxsplit=1)[0]) for r in requirements}


def _normal(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def test_the_service_declares_every_package_it_imports():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = _names(project["dependencies"])
    providers = importlib.metadata.packages_distributions()
    missing = []
    for module, where in sorted(_reachable_third_party("orchestrator", "provision").items()):
        distributions = {_normal(d) for d in providers.get(CARRIED_BY.get(module, module), [module])}
        if not distributions & declared:
            missing.append(f"{module} ({where}): none of {sorted(distributions)} in [project] dependencies")
    assert not missing, "\n".join(missing)
