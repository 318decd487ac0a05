"""The shipped corpus: real English prose that every Python install already has.

Two sources, both part of the standard library, so demos and tests need no download:
- `pydoc_data.topics`: the language reference topics that `help()` shows (one document per topic);
- the docstrings of the standard library's own modules, read with `ast` (never imported, so no
  module runs code), one document per module: its docstring, then each class's and function's.

Documents come in a fixed order (topics by name, modules by path), so the corpus is identical
across runs on the same Python version; `fingerprint()` names it in the data manifest.
"""

from __future__ import annotations

import ast
import hashlib
import os
import platform
import sysconfig
from pathlib import Path
from typing import Iterator

# packages left out: tests and demos (code, not prose), the GUI, vendored copies
_SKIP_DIRS = {
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idlelib",
    "turtledemo",
    "tkinter",
    "lib2to3",
    "ensurepip",
    "__pycache__",
    "venv",
    "pydoc_data",
}
_MIN_CHARS = 200  # a module with less documentation than this adds nothing but noise


def _topic_documents() -> Iterator[str]:
    from pydoc_data import topics

    for name in sorted(topics.topics):
        text = topics.topics[name].strip()
        if text:
            yield text


def _module_document(path: Path) -> str | None:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return None
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                parts.append(doc.strip())
    text = "\n\n".join(parts)
    return text if len(text) >= _MIN_CHARS else None


def _stdlib_files() -> Iterator[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for dirpath, dirnames, filenames in os.walk(root):
        # sorted in place so os.walk visits folders in a fixed order
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("config-"))
        for f in sorted(filenames):
            if f.endswith(".py"):
                yield Path(dirpath) / f


def documents() -> Iterator[str]:
    """Every document of the corpus, in a fixed order."""
    yield from _topic_documents()
    for path in _stdlib_files():
        doc = _module_document(path)
        if doc is not None:
            yield doc


def fingerprint() -> str:
    """Where the corpus came from, for the manifest: it depends on the Python version."""
    return f"python {platform.python_version()} pydoc_data.topics + stdlib docstrings"


def sha256() -> str:
    h = hashlib.sha256()
    for doc in documents():
        h.update(doc.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()
